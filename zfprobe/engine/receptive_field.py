"""Receptive fields from the graph: which input pixels a unit of any layer can see.

Two answers per tensor, both computed by one walk over the graph (no data, no framework):

* **exact boxes** (:meth:`TensorRF.box`): for every index along every spatial axis, the first and
  last input pixel that can influence it, clipped to the image. Window ops (Conv, pools) take the
  min / max over the taps that land on existing positions (padding sees nothing); Pad, Slice,
  Split, Concat along a spatial axis and Transpose move positions around; elementwise ops and
  joins (Add, Mul, Concat along channels, ...) take the union of their inputs' boxes; reductions
  and global pools see the union of everything below. This equals the bounding box of the input
  pixels with a non-zero gradient for the unit (for generic weights), which the tests check.
* **nominal geometry** (:class:`AxisGeometry`): the textbook ``(jump, start, size)`` per axis,
  unclipped: unit ``i`` sees ``[start + i*jump, start + i*jump + size - 1]``. ``zfprobe layers``
  shows ``size`` and ``jump`` (the stride in input pixels), and mining crops the fixed-size
  nominal box so all patches of a layer have one size (grey beyond the image border).

Ops the walk does not know are treated conservatively: every unit sees the union of everything
its inputs see (``exact`` becomes False for the tensor and everything computed from it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zfprobe.engine.graph import Graph
from zfprobe.ops.geometry import axis_windows

_EMPTY_LO = np.iinfo(np.int64).max // 4  # lo > hi marks "sees nothing" (a padding position)

WINDOW_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool"}
GLOBAL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd",
              "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}
# Ops that act position by position (possibly across channels): outputs see the union of inputs.
POINTWISE_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Clip", "Identity", "Dropout", "BatchNormalization", "LRN",
    "InstanceNormalization", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Exp", "Log", "Sqrt", "Pow",
    "Max", "Min", "Sum", "Mean", "Cast", "Erf", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Where", "Equal", "Greater", "Less", "Not", "And", "Or", "Mish", "ThresholdedRelu", "Shrink",
    "Swish", "Softsign", "Celu",
}


@dataclass
class AxisGeometry:
    """Nominal (unclipped) receptive field along one input axis: unit i sees
    ``[start + i*jump, start + i*jump + size - 1]``. ``jump == 0`` means every unit sees the same box."""

    jump: int
    start: int
    size: int

    def box(self, i: int) -> tuple[int, int]:
        lo = self.start + i * self.jump
        return lo, lo + self.size - 1


@dataclass
class _Axis:
    """One tensor axis that indexes input positions along input axis ``src``."""

    src: int
    lo: np.ndarray   # int64 [n]: first input pixel seen by index i (clipped; _EMPTY_LO if none)
    hi: np.ndarray   # int64 [n]: last input pixel seen by index i (-1 if none)
    nominal: AxisGeometry


@dataclass
class TensorRF:
    """The receptive fields of one tensor's units (batch axis excluded from all indices)."""

    tensor: str
    shape: tuple[int, ...]              # the tensor's shape (batch 1)
    image_size: tuple[int, ...]         # input spatial size (H, W)
    axes: list[_Axis | None]            # per tensor axis (axis 0 = batch): the spatial mapping, if any
    fixed: dict[int, tuple[int, int]] = field(default_factory=dict)  # src axis -> box seen by all units
    exact: bool = True

    # -- nominal geometry -------------------------------------------------------------------
    def geometry(self) -> list[AxisGeometry]:
        """Nominal geometry per input axis (H, W); an axis not tracked is global (jump 0)."""
        out = []
        for src, n in enumerate(self.image_size):
            ax = self._axis_for(src)
            if ax is not None:
                out.append(ax.nominal)
            else:
                lo, hi = self.fixed.get(src, (0, n - 1))
                out.append(AxisGeometry(0, lo, hi - lo + 1))
        return out

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(g.size for g in self.geometry())

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(g.jump for g in self.geometry())

    @property
    def is_global(self) -> bool:
        """True when every unit sees the whole image (FC layers, global pools)."""
        return all(g.jump == 0 and g.start <= 0 and g.start + g.size >= n for g, n in zip(self.geometry(), self.image_size))

    def _axis_for(self, src: int) -> _Axis | None:
        for ax in self.axes:
            if ax is not None and ax.src == src:
                return ax
        return None

    def _src_index(self, position: tuple[int, ...], src: int) -> int | None:
        """The index along the tensor axis that tracks ``src`` (position covers axes 2..)."""
        for a, ax in enumerate(self.axes):
            if ax is not None and ax.src == src:
                if a < 2:
                    return 0
                return int(position[a - 2])
        return None

    # -- boxes -----------------------------------------------------------------------------
    def box(self, position: tuple[int, ...] = ()) -> tuple[tuple[int, int], ...] | None:
        """Exact box ``((y0, y1), (x0, x1))`` (inclusive, clipped to the image) for the unit at
        ``position`` (indices of the axes after batch and channel), or None if it sees nothing."""
        out = []
        for src, n in enumerate(self.image_size):
            i = self._src_index(tuple(position), src)
            if i is None:
                lo, hi = self.fixed.get(src, (0, n - 1))
            else:
                ax = self._axis_for(src)
                lo, hi = int(ax.lo[i]), int(ax.hi[i])
                if src in self.fixed:
                    lo, hi = min(lo, self.fixed[src][0]), max(hi, self.fixed[src][1])
            if lo > hi:
                return None
            out.append((max(lo, 0), min(hi, n - 1)))
        return tuple(out)

    def nominal_box(self, position: tuple[int, ...] = ()) -> tuple[tuple[int, int], ...]:
        """Unclipped nominal box (may extend beyond the image); every unit's has the same size."""
        out = []
        for src, g in enumerate(self.geometry()):
            i = self._src_index(tuple(position), src)
            out.append(g.box(0 if i is None else i))
        return tuple(out)


# --------------------------------------------------------------------------------------------
def input_spatial_axes(shape: tuple[int, ...], layout: str | None = None) -> list[int]:
    """Spatial axes of an image input: NCHW (dim 1 is 1 or 3) -> [2, 3], NHWC -> [1, 2]."""
    if len(shape) < 3:
        return []
    if layout is None:
        layout = "NCHW" if shape[1] in (1, 3) or len(shape) != 4 else "NHWC"
    if layout.upper() == "NHWC":
        return list(range(1, len(shape) - 1))
    return list(range(2, len(shape)))


def receptive_fields(graph: Graph, tensors: list[str] | None = None, layout: str | None = None) -> dict[str, TensorRF]:
    """Receptive fields of ``tensors`` (default: every tensor) of ``graph``'s first input."""
    image = graph.inputs[0]
    in_shape = graph.shape(image)
    spatial = input_spatial_axes(in_shape, layout)
    image_size = tuple(in_shape[a] for a in spatial)
    axes: list[_Axis | None] = [None] * len(in_shape)
    for src, a in enumerate(spatial):
        n = in_shape[a]
        idx = np.arange(n, dtype=np.int64)
        axes[a] = _Axis(src, idx.copy(), idx.copy(), AxisGeometry(1, 0, 1))
    rfs: dict[str, TensorRF] = {image: TensorRF(image, in_shape, image_size, axes)}
    nodes = graph.ancestors(tensors) if tensors is not None else graph.nodes
    for node in nodes:
        ins = [rfs[t] for t in node.inputs if t and t in rfs]
        if not ins:
            continue
        for k, out in enumerate(node.outputs):
            if not out or out not in graph.shapes:
                continue
            try:
                rf = _propagate(graph, node, k, ins, graph.shape(out), image_size)
            except Exception:  # malformed attributes: stay conservative rather than fail
                rf = None
            if rf is None:
                rf = _collapse(ins, graph.shape(out), image_size, exact=False)
            rf.tensor = out
            rfs[out] = rf
    if tensors is None:
        return rfs
    return {t: rfs[t] for t in tensors if t in rfs}


def receptive_field(graph: Graph, tensor: str, layout: str | None = None) -> TensorRF:
    """The receptive field of one tensor (see :func:`receptive_fields`)."""
    rf = receptive_fields(graph, [tensor], layout).get(tensor)
    if rf is None:  # does not depend on the input: sees nothing; report the whole image
        in_shape = graph.shape(graph.inputs[0])
        size = tuple(in_shape[a] for a in input_spatial_axes(in_shape, layout))
        rf = TensorRF(tensor, graph.shape(tensor), size, [None] * len(graph.shape(tensor)), exact=False)
    return rf


# ------------------------------------------------------------------ propagation --------------
def _collapse(ins: list[TensorRF], out_shape, image_size, exact: bool = True) -> TensorRF:
    """Every unit sees the union of everything the inputs see. That union is always exact;
    ``exact`` says whether it is also each unit's own box (global pools, FC layers: yes)."""
    fixed: dict[int, tuple[int, int]] = {}
    for rf in ins:
        for src in range(len(image_size)):
            lo, hi = _extent(rf, src)
            if src in fixed:
                lo, hi = min(lo, fixed[src][0]), max(hi, fixed[src][1])
            fixed[src] = (lo, hi)
    return TensorRF("", tuple(out_shape), image_size, [None] * len(out_shape), fixed, exact)


def _extent(rf: TensorRF, src: int) -> tuple[int, int]:
    ax = rf._axis_for(src)
    lo, hi = rf.fixed.get(src, (_EMPTY_LO, -1))
    if ax is not None and len(ax.lo):
        lo, hi = min(lo, int(ax.lo.min())), max(hi, int(ax.hi.max()))
    return lo, hi


def _propagate(graph: Graph, node, k: int, ins: list[TensorRF], out_shape, image_size) -> TensorRF | None:
    op = node.op_type
    x = ins[0]
    rank = len(out_shape)
    if op in WINDOW_OPS and len(node.inputs) and node.inputs[0] in graph.shapes:
        return _window(node, x, out_shape)
    if op in GLOBAL_OPS:
        return _collapse([x], out_shape, image_size, exact=True)
    if op in POINTWISE_OPS:
        return _union(ins, out_shape, image_size)
    if op == "Pad":
        return _pad(node, x, out_shape)
    if op == "Transpose":
        perm = node.attr("perm")
        return _replace_axes(x, [x.axes[p] for p in perm], out_shape)
    if op in ("Slice",):
        return _slice(node, x, out_shape)
    if op == "Split":
        axis, sizes = node.attr("axis"), node.attr("split")
        start = int(sum(sizes[:k]))
        return _take(x, axis, np.arange(start, start + sizes[k]), out_shape)
    if op == "Concat":
        return _concat(graph, node, ins, out_shape, image_size)
    if op in REDUCE_OPS:
        if op in ("ArgMax", "ArgMin"):
            axes = [node.attr("axis", 0) % len(x.shape)]
        else:
            axes = [a % len(x.shape) for a in node.attr("axes", list(range(len(x.shape))))]
        keep = node.attr("keepdims", 1)
        if any(x.axes[a] is not None for a in axes):
            return _collapse([x], out_shape, image_size, exact=True)  # pools over space: sees all
        new = [ax for a, ax in enumerate(x.axes) if keep or a not in axes]
        if len(new) == rank:  # a reduction over channels only keeps the spatial geometry
            return _replace_axes(x, new, out_shape)
        return None
    if op in AXIS_MAP_OPS:
        return _axis_maps(graph, node, x, out_shape)
    if op in ("Gemm", "MatMul"):
        return _collapse(ins, out_shape, image_size, exact=True)
    if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Softmax", "LogSoftmax"):
        same = tuple(out_shape) == tuple(x.shape)
        if op in ("Softmax", "LogSoftmax"):
            if x.axes[node.attr("axis", -1) % len(x.shape)] is not None:
                return _collapse([x], out_shape, image_size, exact=True)
            return _replace_axes(x, list(x.axes), out_shape)
        if same:
            return _replace_axes(x, list(x.axes), out_shape)
        if all(ax is None for ax in x.axes):  # nothing spatial left to rearrange
            return _replace_axes(x, [None] * rank, out_shape)
        # Positions are rearranged (e.g. Flatten before an FC layer): every unit is reported as
        # seeing everything its input sees; its own box is smaller (exact = False).
        return _collapse(ins, out_shape, image_size, exact=False)
    return None


# Ops whose output, along each axis, reads a fixed set of input positions (issue 9's geometric
# ops): their boxes come from that relation, built from the op's own rule (zfprobe.ops).
AXIS_MAP_OPS = {"Resize", "ConvTranspose", "DepthToSpace", "SpaceToDepth", "Tile", "Gather", "Expand"}


def _reads_matrices(graph: Graph, node, x: TensorRF, out_shape) -> dict[int, np.ndarray] | None:
    """Per tensor axis, the boolean [n_out, n_in] relation "output j reads input i"."""
    from zfprobe.ops.axismap import index_matrix
    from zfprobe.ops.spatial import axis_matrices

    op, in_shape = node.op_type, x.shape
    if op in ("Resize", "Tile", "Gather", "Expand"):
        m = axis_matrices(graph, node) if len(out_shape) == len(in_shape) else None
        if m is None and op == "Gather":  # indices not a constant list: fine off the spatial axes
            return None if x.axes[node.attrs.get("axis", 0) % len(in_shape)] is not None else {}
        return None if m is None else {a: v != 0 for a, v in m.items()}
    if op == "ConvTranspose":
        nd = len(node.attrs["kernel_shape"])
        out = {}
        for i, w in enumerate(axis_windows(node.attrs, nd)):
            n_in, n_out = in_shape[2 + i], out_shape[2 + i]
            m = np.zeros((n_out, n_in), bool)
            taps = (np.arange(n_in)[:, None] * w.stride - w.pad_begin + np.arange(w.kernel)[None, :] * w.dilation)
            for i_in, row in enumerate(taps):
                row = row[(row >= 0) & (row < n_out)]
                m[row, i_in] = True
            out[2 + i] = m
        return out
    if op in ("DepthToSpace", "SpaceToDepth"):
        b = int(node.attrs["blocksize"])
        out = {}
        for a in (2, 3):
            n_in, n_out = in_shape[a], out_shape[a]
            src = np.arange(n_out) // b if op == "DepthToSpace" else None
            out[a] = index_matrix(src, n_in) != 0 if src is not None else \
                np.kron(np.eye(n_out, dtype=bool), np.ones((1, b), bool))[:, :n_in]
        return out
    return None


def _axis_maps(graph: Graph, node, x: TensorRF, out_shape) -> TensorRF | None:
    try:
        reads = _reads_matrices(graph, node, x, out_shape)
    except (KeyError, ValueError, IndexError):
        return None
    if reads is None or len(out_shape) != len(x.shape):
        return None
    axes = list(x.axes)
    for a, m in reads.items():
        ax = x.axes[a]
        if ax is None:
            continue
        any_read = m.any(axis=1)
        lo = np.where(m, ax.lo[None, :], _EMPTY_LO).min(axis=1)
        hi = np.where(m, ax.hi[None, :], -1).max(axis=1)
        lo, hi = np.where(any_read, lo, _EMPTY_LO), np.where(any_read, hi, -1)
        # nominal: the mean step between outputs, and the widest set of inputs one output reads
        g = ax.nominal
        cols = [np.flatnonzero(r) for r in m]
        first = int(cols[0][0]) if len(cols) and len(cols[0]) else 0
        width = max((int(c[-1] - c[0]) for c in cols if len(c)), default=0)
        jump = max(1, int(round(g.jump * m.shape[1] / max(1, m.shape[0])))) if g.jump else 0
        axes[a] = _Axis(ax.src, lo.astype(np.int64), hi.astype(np.int64),
                        AxisGeometry(jump, g.start + first * g.jump, g.size + width * g.jump))
    return TensorRF("", tuple(out_shape), x.image_size, axes, dict(x.fixed), x.exact)


def _replace_axes(x: TensorRF, axes, out_shape) -> TensorRF:
    return TensorRF("", tuple(out_shape), x.image_size, list(axes), dict(x.fixed), x.exact)


def _window(node, x: TensorRF, out_shape) -> TensorRF | None:
    """A sliding window per trailing axis (:class:`~zfprobe.ops.geometry.AxisWindow`): each output
    sees the union of the inputs under its taps that exist (the padding holds none)."""
    kernel = list(node.attrs["kernel_shape"])
    nd = len(kernel)
    attrs = dict(node.attrs)
    if node.op_type == "AveragePool":
        attrs.pop("dilations", None)
    rank = len(x.shape)
    if len(out_shape) != rank:
        return None
    axes = list(x.axes)
    first = rank - nd
    for i, w in enumerate(axis_windows(attrs, nd)):
        ax = x.axes[first + i]
        if ax is None:
            return None  # a window over a non-spatial axis: be conservative
        n_in, n_out = x.shape[first + i], out_shape[first + i]
        idx = np.array([w.first_tap(o) for o in range(n_out)], np.int64)[:, None] + \
            np.arange(w.kernel, dtype=np.int64)[None, :] * w.dilation
        valid = (idx >= 0) & (idx < n_in)
        safe = np.clip(idx, 0, n_in - 1)
        lo = np.where(valid, ax.lo[safe], _EMPTY_LO).min(axis=1)
        hi = np.where(valid, ax.hi[safe], -1).max(axis=1)
        g = ax.nominal
        nominal = AxisGeometry(g.jump * w.stride, g.start - w.pad_begin * g.jump, g.size + (w.span - 1) * g.jump)
        axes[first + i] = _Axis(ax.src, lo, hi, nominal)
    return TensorRF("", tuple(out_shape), x.image_size, axes, dict(x.fixed), x.exact)


def _take(x: TensorRF, axis: int, source_index: np.ndarray, out_shape) -> TensorRF:
    """Output index j along ``axis`` comes from input index ``source_index[j]`` (-1: a constant)."""
    axes = list(x.axes)
    ax = x.axes[axis]
    if ax is not None:
        valid = source_index >= 0
        safe = np.clip(source_index, 0, len(ax.lo) - 1)
        lo = np.where(valid, ax.lo[safe], _EMPTY_LO)
        hi = np.where(valid, ax.hi[safe], -1)
        step = int(source_index[1] - source_index[0]) if len(source_index) > 1 else 1
        g = ax.nominal
        first = int(source_index[0]) if len(source_index) else 0
        nominal = AxisGeometry(g.jump * step, g.start + first * g.jump, g.size)
        axes[axis] = _Axis(ax.src, lo, hi, nominal)
    return TensorRF("", tuple(out_shape), x.image_size, axes, dict(x.fixed), x.exact)


def _pad(node, x: TensorRF, out_shape) -> TensorRF:
    pads = list(node.attr("pads"))
    mode = node.attr("mode", "constant")
    rank = len(x.shape)
    rf = x
    for a in range(rank):
        pb, pe = int(pads[a]), int(pads[a + rank])
        if (pb or pe) and x.axes[a] is not None:
            n = x.shape[a]
            src = np.arange(n, dtype=np.int64)
            if mode == "constant":
                index = np.concatenate([np.full(max(pb, 0), -1), src[max(-pb, 0): n - max(-pe, 0)], np.full(max(pe, 0), -1)])
            else:
                np_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(mode, "edge")
                index = np.pad(src[max(-pb, 0): n - max(-pe, 0)], (max(pb, 0), max(pe, 0)), mode=np_mode)
            shape = list(rf.shape)
            shape[a] = len(index)
            rf = _take(rf, a, index.astype(np.int64), tuple(shape))
            g = rf.axes[a].nominal
            rf.axes[a].nominal = AxisGeometry(x.axes[a].nominal.jump, x.axes[a].nominal.start - pb * x.axes[a].nominal.jump, g.size)
    return TensorRF("", tuple(out_shape), x.image_size, rf.axes, dict(x.fixed), x.exact)


def _slice(node, x: TensorRF, out_shape) -> TensorRF:
    rf = x
    for s, e, a, st in zip(node.attr("starts"), node.attr("ends"), node.attr("axes"), node.attr("steps")):
        if x.axes[a] is None:
            continue
        index = np.arange(x.shape[a], dtype=np.int64)[slice(s, e if e >= 0 else None, st)]
        shape = list(rf.shape)
        shape[a] = len(index)
        rf = _take(rf, a, index, tuple(shape))
    return TensorRF("", tuple(out_shape), x.image_size, rf.axes, dict(x.fixed), x.exact)


def _concat(graph, node, ins, out_shape, image_size) -> TensorRF:
    axis = node.attr("axis")
    variable = [t for t in node.inputs if t]
    if not all(t in graph.shapes or graph.is_constant(t) for t in variable):
        return _collapse(ins, out_shape, image_size, exact=False)
    if not ins or ins[0].axes[axis] is None:
        return _union(ins, out_shape, image_size)  # along channels: the union of the branches
    # Along a spatial axis: pieces side by side (constant pieces see nothing).
    src = ins[0].axes[axis].src
    los, his = [], []
    by_name = {}
    for t in variable:
        by_name[t] = next((r for r in ins if r.tensor == t), None)
    for t in variable:
        rf = by_name[t]
        n = graph.shape(t)[axis]
        if rf is None:
            los.append(np.full(n, _EMPTY_LO, np.int64))
            his.append(np.full(n, -1, np.int64))
        elif rf.axes[axis] is None or rf.axes[axis].src != src:
            return _collapse(ins, out_shape, image_size, exact=False)
        else:
            los.append(rf.axes[axis].lo)
            his.append(rf.axes[axis].hi)
    base = _union(ins, out_shape, image_size, skip_axis=axis)
    nominal = ins[0].axes[axis].nominal
    base.axes[axis] = _Axis(src, np.concatenate(los), np.concatenate(his), nominal)
    base.exact = False if base.exact is False else all(r.exact for r in ins)
    return base


def _union(ins: list[TensorRF], out_shape, image_size, skip_axis: int | None = None) -> TensorRF:
    """Elementwise join with numpy broadcasting (right-aligned): per position, the union."""
    rank = len(out_shape)
    axes: list[_Axis | None] = [None] * rank
    fixed: dict[int, tuple[int, int]] = {}
    exact = all(r.exact for r in ins)
    spill: list[tuple[int, int, int]] = []  # (src, lo, hi) that must go to fixed
    for rf in ins:
        for src, (lo, hi) in rf.fixed.items():
            spill.append((src, lo, hi))
        offset = rank - len(rf.shape)
        for a, ax in enumerate(rf.axes):
            if ax is None:
                continue
            oa = a + offset
            if oa < 0 or oa == skip_axis:
                if oa != skip_axis:
                    spill.append((ax.src, int(ax.lo.min()), int(ax.hi.max())))
                continue
            cur = axes[oa]
            n = out_shape[oa]
            lo = np.broadcast_to(ax.lo, (n,)) if len(ax.lo) in (1, n) else None
            hi = np.broadcast_to(ax.hi, (n,)) if len(ax.hi) in (1, n) else None
            if lo is None:
                spill.append((ax.src, int(ax.lo.min()), int(ax.hi.max())))
                continue
            if cur is None:
                axes[oa] = _Axis(ax.src, lo.copy(), hi.copy(), ax.nominal if len(ax.lo) == n else AxisGeometry(0, int(lo[0]), int(hi[0] - lo[0] + 1)))
            elif cur.src == ax.src:
                g1 = cur.nominal
                g2 = ax.nominal if len(ax.lo) == n else AxisGeometry(0, int(lo[0]), int(hi[0] - lo[0] + 1))
                cur.lo = np.minimum(cur.lo, lo)
                cur.hi = np.maximum(cur.hi, hi)
                cur.nominal = _nominal_union(g1, g2, n)
            else:
                spill.append((ax.src, int(ax.lo.min()), int(ax.hi.max())))
    # An input axis tracked by no output axis, or spilled, is seen in full by every unit.
    for src, lo, hi in spill:
        if src in fixed:
            lo, hi = min(lo, fixed[src][0]), max(hi, fixed[src][1])
        fixed[src] = (lo, hi)
    return TensorRF("", tuple(out_shape), ins[0].image_size, axes, fixed, exact)


def _nominal_union(a: AxisGeometry, b: AxisGeometry, n: int) -> AxisGeometry:
    """The smallest affine family that contains both families' boxes for i = 0..n-1."""
    if a.jump == b.jump:
        lo = min(a.start, b.start)
        hi = max(a.start + a.size, b.start + b.size)
        return AxisGeometry(a.jump, lo, hi - lo)
    jump = max(a.jump, b.jump)
    ends = [(g.box(i)) for g in (a, b) for i in (0, max(n - 1, 0))]
    lo0 = min(a.start, b.start)
    # per-unit extent: cover both at the first and the last index
    size = max(max(hi for _, hi in ends[1::2]) - (lo0 + jump * max(n - 1, 0)), max(a.size, b.size), max(hi for _, hi in ends[0::2]) - lo0) + 1
    return AxisGeometry(jump, lo0, size)


# ------------------------------------------------------------------ display -----------------
def describe(rf: TensorRF) -> tuple[str, str]:
    """(size, stride) strings for `zfprobe layers`: e.g. ('11x11', '4x4'); 'global' for FC."""
    if rf.is_global:
        return "global", "-"
    geo = rf.geometry()
    size = "x".join(str(g.size) for g in geo)
    stride = "x".join(str(g.jump) for g in geo)
    return size + ("" if rf.exact else "?"), stride
