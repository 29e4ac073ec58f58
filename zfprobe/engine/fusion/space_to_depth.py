"""Space-to-depth written as Reshape / Transpose / Reshape, and YOLOv5's Focus (four strided
Slices concatenated on channels), into one ``SpaceToDepth`` (plus a channel permutation where
the order differs)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from zfprobe.engine.graph import Node
from zfprobe.engine.fusion.matcher import Fuser


def fuse_space_to_depth(f: Fuser) -> None:
    """Reshape [N, C, H/b, b, W/b, b] -> Transpose (block axes and C before H/b, W/b) ->
    Reshape [N, C*b*b, H/b, W/b] (torch's PixelUnshuffle, and SpaceToDepth written out) is
    SpaceToDepth followed by a constant channel permutation (a Gather over channels)."""
    for last in list(f.g.nodes):
        if last.name in f.removed or last.op_type != "Reshape":
            continue
        tr = f.producer(last.inputs[0])
        first = f.producer(tr.inputs[0]) if tr is not None and tr.op_type == "Transpose" else None
        if first is None or first.op_type != "Reshape" or f.g.is_constant(first.inputs[0]):
            continue
        x = first.inputs[0]
        shape, mid, out = (tuple(f.g.shapes.get(t, ())) for t in (x, first.outputs[0], last.outputs[0]))
        perm = list(tr.attrs.get("perm", []))
        if len(shape) != 4 or len(mid) != 6 or len(out) != 4 or sorted(perm) != list(range(6)):
            continue
        n, c, h, w = shape
        b = mid[3]
        if (b < 2 or mid != (n, c, h // b, b, w // b, b) or h % b or w % b or perm[0] != 0
                or perm[4:] != [2, 4] or out != (n, c * b * b, h // b, w // b)):
            continue
        chain = [last, tr, first]
        if not f.private(chain, last.outputs[0]):
            continue
        # output channel j enumerates the permuted axes perm[1:4] (C: 1, row in block: 3, col: 5)
        sizes = [mid[a] for a in perm[1:4]]
        idx = np.empty(c * b * b, np.int64)
        for j in range(len(idx)):
            digits = dict(zip(perm[1:4], np.unravel_index(j, sizes)))
            idx[j] = (digits[3] * b + digits[5]) * c + digits[1]
        s2d = f"{last.name}/space_to_depth"
        f.new_shapes[s2d] = out
        head = Node(f"{last.name}/SpaceToDepth", "SpaceToDepth", [x], [s2d], {"blocksize": int(b)}, last.source)
        if np.array_equal(idx, np.arange(len(idx))):
            f.replace(chain, Node(last.name, "Identity", [s2d], list(last.outputs), {}, last.source), (head,))
            continue
        index = f"{last.name}/channel_order"
        f.new_constants[index] = idx
        f.replace(chain, Node(last.name, "Gather", [s2d, index], list(last.outputs), {"axis": 1}, last.source),
                     (head,))


def slice_origin(f: Fuser, t: str, chain: list[Node]) -> Optional[tuple[str, dict[int, tuple[int, int]]]]:
    """``t`` as Slices of one tensor: (that tensor, {axis: (start, step)}), each axis sliced once
    and to its end; None if anything else is on the way."""
    per_axis: dict[int, tuple[int, int]] = {}
    n = f.producer(t)
    while n is not None and n.op_type == "Slice":
        a = n.attrs
        src_shape = f.g.shapes.get(n.inputs[0], ())
        for start, end, axis, step in zip(a["starts"], a["ends"], a["axes"], a.get("steps") or [1] * len(a["axes"])):
            if axis in per_axis or axis not in (2, 3) or step < 1 or end < src_shape[axis]:
                return None
            per_axis[axis] = (int(start), int(step))
        chain.append(n)
        t = n.inputs[0]
        n = f.producer(t)
    return (t, per_axis) if chain else None


def fuse_focus(f: Fuser) -> None:
    """Concat over channels of the ``s*s`` step-``s`` slices of one map (YOLOv5's Focus:
    x[..., ::2, ::2], x[..., 1::2, ::2], ...) is SpaceToDepth(s) and a channel Gather."""
    for cat in list(f.g.nodes):
        if cat.name in f.removed or cat.op_type != "Concat" or len(cat.inputs) < 4:
            continue
        out_shape = f.g.shapes.get(cat.outputs[0], ())
        if len(out_shape) != 4 or int(cat.attrs.get("axis", 1)) % 4 != 1:
            continue
        chain: list[Node] = []
        parts = [slice_origin(f, t, chain) for t in cat.inputs]
        if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
            continue
        x = parts[0][0]
        shape = f.g.shapes.get(x, ())
        steps = {st for _, axes in parts for _, st in axes.values()}
        if len(shape) != 4 or len(steps) != 1 or any(set(axes) != {2, 3} for _, axes in parts):
            continue
        b = steps.pop()
        offsets = [(axes[2][0], axes[3][0]) for _, axes in parts]
        if (b < 2 or len(parts) != b * b or sorted(offsets) != [(i, j) for i in range(b) for j in range(b)]
                or shape[2] % b or shape[3] % b):
            continue
        chain = list({n.name: n for n in chain}.values()) + [cat]
        if not f.private(chain, cat.outputs[0]):
            continue
        c = shape[1]
        idx = np.concatenate([(by * b + bx) * c + np.arange(c) for by, bx in offsets]).astype(np.int64)
        s2d, index = f"{cat.name}/space_to_depth", f"{cat.name}/channel_order"
        f.new_shapes[s2d] = (shape[0], c * b * b, shape[2] // b, shape[3] // b)
        f.new_constants[index] = idx
        head = Node(f"{cat.name}/SpaceToDepth", "SpaceToDepth", [x], [s2d], {"blocksize": int(b)}, cat.source)
        f.replace(chain, Node(cat.name, "Gather", [s2d, index], list(cat.outputs), {"axis": 1}, cat.source),
                     (head,))
