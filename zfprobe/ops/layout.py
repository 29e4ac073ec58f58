"""Ops that move or copy values without arithmetic: Slice (any step), Pad (every mode), Gather
with constant indices, Tile, Expand, SpaceToDepth and DepthToSpace (YOLO's Focus, PixelShuffle).

Each is linear, and its reversal is the exact adjoint: a copy becomes a sum over the copies
(``A^T`` of the 0/1 index matrix along the axis, :mod:`zfprobe.ops.axismap`), so a reflect or
edge Pad folds the padded values back onto the pixels they repeat; a permutation (SpaceToDepth,
DepthToSpace) is undone by the inverse permutation.
"""
from __future__ import annotations

import numpy as np

from zfprobe.engine.op_table import check, inverse
from zfprobe.ops.axismap import apply_transposed, index_matrix
from zfprobe.ops.onnx_semantics import CONSTANT_PAD, COPY_PAD_MODES
from zfprobe.ops.geometry import AxisWindow
from zfprobe.ops.registry import ONNX_NORMALIZERS
from zfprobe.ops.spatial import AXIS_MATRICES, SPATIAL_RULES, SpatialRule



# ------------------------------------------------------------------ Slice --------------------
def slice_index(start: int, end: int, step: int) -> np.ndarray:
    """The input positions a canonical (clamped) slice keeps, in output order."""
    if step < 0:
        end = max(end, -1)  # canonical negative-step slices end at -n-1 (ONNX: before index 0)
    return np.arange(start, end, step, dtype=np.int64)


@inverse("Slice")
def _slice(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    rank = len(in_shape)
    a = node.attrs
    steps = a.get("steps") or [1] * len(a["starts"])
    g = gy[0]
    pads = [0] * (2 * rank)
    strided = []
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], steps):
        if st == 1:
            pads[ax] = s
            pads[ax + rank] = in_shape[ax] - max(e, s)
        else:
            strided.append((ax, index_matrix(slice_index(s, e, st), in_shape[ax])))
    for ax, m in strided:
        g = apply_transposed(ctx, g, ax, m, rank, hint="slice_T")
    if any(pads):
        g = ctx.b.op("Pad", g, pads=pads, mode=CONSTANT_PAD, value=0.0)
    return [g]


@check("Slice")
def _slice_check(graph, node):
    a = node.attrs
    if 0 in a["axes"]:
        in_shape = graph.shape(node.inputs[0])
        i = a["axes"].index(0)
        steps = a.get("steps") or [1] * len(a["axes"])
        if a["starts"][i] != 0 or a["ends"][i] < in_shape[0] or steps[i] != 1:
            return "it slices the batch axis"
    return None


# ------------------------------------------------------------------ Pad ----------------------
def pad_index(n: int, begin: int, end: int, mode: str) -> np.ndarray:
    """The input position each output position of a non-constant Pad copies (numpy's modes are
    ONNX's: reflect excludes the edge, edge repeats it, wrap is circular)."""
    return np.pad(np.arange(n, dtype=np.int64), (begin, end), mode=mode)


@inverse("Pad")
def _pad(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    rank = len(in_shape)
    pads = list(node.attrs["pads"])
    mode = node.attrs.get("mode", CONSTANT_PAD)
    g = gy[0]
    if mode != CONSTANT_PAD:
        for ax in range(1, rank):
            if pads[ax] or pads[ax + rank]:
                m = index_matrix(pad_index(in_shape[ax], pads[ax], pads[ax + rank], mode), in_shape[ax])
                g = apply_transposed(ctx, g, ax, m, rank, hint="pad_fold")
        return [g]
    if any(p < 0 for p in pads):  # negative pads crop; their adjoint pads back with zeros
        back = [max(0, -p) for p in pads]
        g = ctx.b.op("Pad", g, pads=back, mode=CONSTANT_PAD, value=0.0)
        pads = [max(0, p) for p in pads]
    axes = [a for a in range(1, rank) if pads[a] or pads[a + rank]]
    if axes:
        g = ctx.b.op("Slice", g, starts=[pads[a] for a in axes], ends=[pads[a] + in_shape[a] for a in axes],
                     axes=axes, steps=[1] * len(axes))
    return [g]


@check("Pad")
def _pad_check(graph, node):
    mode = node.attrs.get("mode", CONSTANT_PAD)
    rank = len(graph.shape(node.inputs[0]))
    pads = node.attrs["pads"]
    if pads[0] or pads[rank]:
        return "it pads the batch axis"
    if mode != CONSTANT_PAD and mode not in COPY_PAD_MODES:
        return f"it pads in an unknown mode '{mode}'"
    if mode != CONSTANT_PAD and any(p < 0 for p in pads):
        return f"it crops (negative pads) in '{mode}' mode"
    return None


# ------------------------------------------------------------------ Gather -------------------
@ONNX_NORMALIZERS.register("Gather")
def _normalize_gather(ctx, node):
    rank = len(ctx.shape(node.inputs[0]))
    node.attrs = {"axis": int(node.attrs.get("axis", 0)) % rank}
    return node


@inverse("Gather")
def _gather(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    axis = node.attrs.get("axis", 0) % len(in_shape)
    idx = np.asarray(ctx.graph.constants[node.inputs[1]], np.int64).reshape(-1)
    idx = np.where(idx < 0, idx + in_shape[axis], idx)
    flat_shape = [-1, *in_shape[1:axis], len(idx), *in_shape[axis + 1:]]
    g = ctx.b.op("Reshape", gy[0], shape=flat_shape, hint="gather_T")
    return [apply_transposed(ctx, g, axis, index_matrix(idx, in_shape[axis]), len(in_shape), hint="gather_T"), None]


@check("Gather")
def _gather_check(graph, node):
    if not graph.is_constant(node.inputs[1]):
        return "its indices are computed at run time, not constants"
    if node.attrs.get("axis", 0) % len(graph.shape(node.inputs[0])) == 0:
        return "it gathers along the batch axis"
    return None


# ------------------------------------------------------------------ Tile / Expand ------------
@ONNX_NORMALIZERS.register("Tile")
def _normalize_tile(ctx, node):
    reps = ctx.const(node.inputs[1])
    if reps is not None:
        node.inputs = node.inputs[:1]
        node.attrs = {"repeats": [int(r) for r in reps.reshape(-1)]}
    return node


@inverse("Tile")
def _tile(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    g = gy[0]
    for ax, r in enumerate(node.attrs["repeats"]):
        if ax and r != 1:
            index = np.tile(np.arange(in_shape[ax], dtype=np.int64), r)
            g = apply_transposed(ctx, g, ax, index_matrix(index, in_shape[ax]), len(in_shape), hint="tile_T")
    return [g]


@check("Tile")
def _tile_check(graph, node):
    if "repeats" not in node.attrs:
        return "its repeats are computed at run time, not constants"
    if node.attrs["repeats"][0] != 1:
        return "it tiles the batch axis"
    return None


@ONNX_NORMALIZERS.register("Expand")
def _normalize_expand(ctx, node):
    shape = ctx.const(node.inputs[1])
    if shape is not None:
        node.inputs = node.inputs[:1]
        node.attrs = {"shape": [int(s) for s in shape.reshape(-1)]}
    return node


@inverse("Expand")
def _expand(ctx, node, gy):
    return [ctx.unbroadcast(gy[0], ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0]))]


@check("Expand")
def _expand_check(graph, node):
    if "shape" not in node.attrs:
        return "its target shape is computed at run time, not a constant"
    in_shape, out_shape = graph.shape(node.inputs[0]), graph.shape(node.outputs[0])
    if len(out_shape) != len(in_shape) or out_shape[0] != in_shape[0]:
        return "it adds or broadcasts the batch axis"
    return None


# ------------------------------------------------------------------ SpaceToDepth family ------
def depth_to_space_steps(shape, block: int, mode: str):
    """DepthToSpace as Reshape -> Transpose -> Reshape (the ONNX definition): returns the
    intermediate shape, the permutation and the output shape, for an input ``[N, C, H, W]``."""
    n, c, h, w = shape
    if mode == "CRD":
        mid, perm = [n, c // block ** 2, block, block, h, w], [0, 1, 4, 2, 5, 3]
    else:  # DCR
        mid, perm = [n, block, block, c // block ** 2, h, w], [0, 3, 4, 1, 5, 2]
    return mid, perm, [n, c // block ** 2, h * block, w * block]


def space_to_depth_steps(shape, block: int):
    n, c, h, w = shape
    return [n, c, h // block, block, w // block, block], [0, 3, 5, 1, 2, 4], [n, c * block ** 2, h // block, w // block]


def undo_permutation(ctx, g: str, mid, perm, in_shape) -> str:
    """Adjoint (= inverse) of Reshape(mid) -> Transpose(perm) -> Reshape(out)."""
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    permuted = [mid[p] for p in perm]
    g = ctx.b.op("Reshape", g, shape=[-1] + permuted[1:], hint="s2d_T")
    g = ctx.b.op("Transpose", g, perm=inv, hint="s2d_T")
    return ctx.b.op("Reshape", g, shape=[-1] + list(in_shape[1:]), hint="s2d_T")


@ONNX_NORMALIZERS.register("DepthToSpace", "SpaceToDepth")
def _normalize_s2d(ctx, node):
    attrs = {"blocksize": int(node.attrs["blocksize"])}
    if node.op_type == "DepthToSpace":
        attrs["mode"] = node.attrs.get("mode", "DCR")
    node.attrs = attrs
    return node


@inverse("DepthToSpace")
def _depth_to_space(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    mid, perm, _ = depth_to_space_steps(in_shape, node.attrs["blocksize"], node.attrs.get("mode", "DCR"))
    return [undo_permutation(ctx, gy[0], mid, perm, in_shape)]


@inverse("SpaceToDepth")
def _space_to_depth(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    mid, perm, _ = space_to_depth_steps(in_shape, node.attrs["blocksize"])
    return [undo_permutation(ctx, gy[0], mid, perm, in_shape)]


@check("DepthToSpace", "SpaceToDepth")
def _s2d_check(graph, node):
    if len(graph.shape(node.inputs[0])) != 4:
        return "it is not on a 4-D [N, C, H, W] tensor"
    return None


# ------------------------------------------------------------------ spatial geometry --------
@SPATIAL_RULES.register("Slice")
def _slice_geometry(graph, node):
    """A Slice of positive step ``st`` from ``start`` along H or W is a 1-tap window of stride
    ``st`` whose first tap is ``start`` (YOLO's Focus: step 2); along channels it is pointwise."""
    a = node.attrs
    steps = a.get("steps") or [1] * len(a["starts"])
    windows = [AxisWindow(), AxisWindow()]
    local = {"starts": list(a["starts"]), "ends": list(a["ends"])}
    for i, (start, axis, step) in enumerate(zip(a["starts"], a["axes"], steps)):
        if axis in (2, 3):
            if step < 1:
                return None
            windows[axis - 2] = AxisWindow(1, int(step), 1, -int(start))
            local["starts"][i], local["ends"][i] = 0, np.iinfo(np.int32).max  # clamped to the window
        elif axis != 1:
            return None
    return SpatialRule(tuple(windows), 0.0, local)


@SPATIAL_RULES.register("Pad")
def _pad_geometry(graph, node):
    """A constant Pad of H and W is a 1-tap window with that begin pad; it reads its value
    outside the map. Reflect, edge and wrap copy far positions: no window."""
    p = list(node.attrs["pads"])
    if node.attrs.get("mode", "constant") != "constant" or p[0] or p[1] or p[4] or p[5] or min(p) < 0:
        return None
    windows = (AxisWindow(1, 1, 1, p[2], p[6]), AxisWindow(1, 1, 1, p[3], p[7]))
    return SpatialRule(windows, float(node.attrs.get("value", 0.0) or 0.0), {"pads": [0] * 8})


@SPATIAL_RULES.register("SpaceToDepth")
def _space_to_depth_geometry(graph, node):
    """Output (y, x) holds the ``b x b`` block at (b*y, b*x): a b-tap window of stride b."""
    b = int(node.attrs["blocksize"])
    return SpatialRule((AxisWindow(b, b), AxisWindow(b, b)), 0.0, {})


@AXIS_MATRICES.register("Slice")
def _slice_matrices(graph, node):
    a, shape = node.attrs, graph.shape(node.inputs[0])
    steps = a.get("steps") or [1] * len(a["starts"])
    return {ax: index_matrix(slice_index(s, e, st), shape[ax]) for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], steps)}


@AXIS_MATRICES.register("Pad")
def _pad_matrices(graph, node):
    """Every mode as a copy matrix (a constant Pad's padding rows are zero: it adds a constant)."""
    shape, pads = graph.shape(node.inputs[0]), list(node.attrs["pads"])
    mode, rank = node.attrs.get("mode", "constant"), len(shape)
    out = {}
    for ax in range(rank):
        b, e = pads[ax], pads[ax + rank]
        if not (b or e):
            continue
        if mode == CONSTANT_PAD:
            src = np.arange(-b, shape[ax] + e, dtype=np.int64)
            m = np.zeros((len(src), shape[ax]), np.float32)
            keep = (src >= 0) & (src < shape[ax])
            m[np.flatnonzero(keep), src[keep]] = 1.0
            out[ax] = m
        elif mode in COPY_PAD_MODES and b >= 0 and e >= 0:
            out[ax] = index_matrix(pad_index(shape[ax], b, e, mode), shape[ax])
        else:
            return None
    return out


@AXIS_MATRICES.register("Gather")
def _gather_matrices(graph, node):
    shape = graph.shape(node.inputs[0])
    axis = node.attrs.get("axis", 0) % len(shape)
    if not graph.is_constant(node.inputs[1]) or np.asarray(graph.constants[node.inputs[1]]).ndim != 1:
        return None
    idx = np.asarray(graph.constants[node.inputs[1]], np.int64)
    return {axis: index_matrix(np.where(idx < 0, idx + shape[axis], idx), shape[axis])}


@AXIS_MATRICES.register("Tile")
def _tile_matrices(graph, node):
    shape = graph.shape(node.inputs[0])
    return {ax: index_matrix(np.tile(np.arange(shape[ax], dtype=np.int64), r), shape[ax])
            for ax, r in enumerate(node.attrs.get("repeats", [])) if r != 1}


@AXIS_MATRICES.register("Expand")
def _expand_matrices(graph, node):
    shape, out = graph.shape(node.inputs[0]), graph.shape(node.outputs[0])
    if len(shape) != len(out):
        return None
    return {ax: np.ones((out[ax], 1), np.float32) for ax in range(len(shape)) if shape[ax] == 1 and out[ax] != 1}
