"""Receptive-field-windowed deconvnet: unit seeds travel down inside their receptive field only.

A seed that keeps a single unit is non-zero, at every layer below, only inside that unit's
receptive field. The full reversed network computes every other position anyway (zeros, at full
cost). This variant computes each seed's signal only in a window that follows the receptive
field: the window at a tensor is ``h x w`` positions starting at ``a * p + b`` (``p``: the seed's
position, ``a``: the accumulated stride, ``b``: the accumulated offset). Window sizes are the
same for every seed, so all K seeds still run as one batch; only the offsets differ, and the
forward tensors a reversal needs (rectifier inputs, switches) are gathered per seed at those
offsets with index tensors the host computes (:class:`WindowPlan`).

The result is exact: translation commutes with every windowed reversal, positions outside a
tensor are masked to zero at every tensor, and the final window is pasted into the image. The
conv5 units of a 224x224 ZFNet need about a quarter of the full reverse work this way.

Window starts are tables, one start per seed row (column) position, so they need not be an
affine function of the seed's position: upsampling ops (Resize, ConvTranspose, DepthToSpace)
map a window's start to ``floor(start / factor)``. Where two windows of one tensor differ by an
offset that depends on the seed, and for the ops that act along an axis as a fixed matrix
(Resize, reflect / edge Pad, strided Slice, spatial Gather, Tile), the program applies per-seed
sub-blocks of the axis matrices (host-computed inputs), which are exact at the borders too.
Each op's geometry is its rule in :mod:`zfprobe.ops.spatial` (sliding windows, pointwise) or its
per-axis matrix (``AXIS_MATRICES``). Applies when the seeds are single units and every op on the
path is local in space; global ops (Instance- / Group- / LayerNorm over space, pools to 1x1,
dense layers) use the full program.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfprobe.engine.graph import Graph, Node
from zfprobe.ops.geometry import AxisWindow, axis_windows
from zfprobe.ops.layout import depth_to_space_steps, undo_permutation
from zfprobe.ops.spatial import axis_matrices, channels_last_pointwise, spatial_rule
from zfprobe.engine.inverses import INVERSES, InverseContext, check_invertible
from zfprobe.engine.program import ProgramBuilder

SEED_WINDOW = "zf_seed_window"
OUTPUT_WINDOW = "zf_projection_window"

# Window ops with an in-window reversal here (the geometry itself is each op's spatial rule).
_WINDOW_KERNELS = {"Conv", "MaxPool", "AveragePool", "Pad", "Slice", "SpaceToDepth"}
_UPSAMPLING = {"ConvTranspose", "DepthToSpace"}


@dataclass(frozen=True)
class Span:
    """Along one axis: the window size and its start for each seed position along that axis."""

    size: int
    starts: tuple[int, ...]

    def union(self, other: "Span") -> "Span":
        lo = np.minimum(self.starts, other.starts)
        hi = np.maximum(np.asarray(self.starts) + self.size, np.asarray(other.starts) + other.size)
        return Span(int((hi - lo).max()), tuple(int(v) for v in lo))

    def delta(self, other: "Span") -> int | None:
        """``self.start - other.start`` when it is the same for every seed, else None."""
        d = np.asarray(self.starts) - np.asarray(other.starts)
        return int(d[0]) if (d == d[0]).all() else None

    def through(self, window: AxisWindow) -> "Span":
        """The input span a sliding window's outputs in this span read."""
        lo, hi = window.input_span(0, self.size)
        return Span(hi - lo, tuple(window.first_tap(s) for s in self.starts))

    def through_matrix(self, m: np.ndarray) -> "Span":
        """The input span that rows ``[start, start + size)`` of ``m [n_out, n_in]`` read."""
        n_out = m.shape[0]
        los, his = [], []
        for s in self.starts:
            rows = m[max(s, 0):min(s + self.size, n_out)]
            cols = np.flatnonzero(np.abs(rows).sum(0)) if len(rows) else np.zeros(0, np.int64)
            los.append(int(cols[0]) if len(cols) else 0)
            his.append(int(cols[-1]) + 1 if len(cols) else 1)
        return Span(max(h - l for l, h in zip(los, his)), tuple(los))


@dataclass(frozen=True)
class Window:
    """A per-seed window of a 4-D tensor: rows and columns."""

    rows: Span
    cols: Span

    @property
    def h(self) -> int:
        return self.rows.size

    @property
    def w(self) -> int:
        return self.cols.size

    def union(self, other: "Window") -> "Window":
        return Window(self.rows.union(other.rows), self.cols.union(other.cols))

    def offsets(self, py: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.rows.starts, np.int64)[py], np.asarray(self.cols.starts, np.int64)[px]

    def bounds(self) -> tuple[int, int, int, int]:
        """Smallest and largest start over the seeds: (min row, max row, min col, max col)."""
        return min(self.rows.starts), max(self.rows.starts), min(self.cols.starts), max(self.cols.starts)


class NotWindowable(Exception):
    """The path has an op the windowed reversal does not cover; use the full program."""


def _is_spatial4(graph: Graph, t: str) -> bool:
    return len(graph.shape(t)) == 4


def _upsampling_spans(graph: Graph, node: Node, win: Window) -> Window:
    """ConvTranspose and DepthToSpace: the inputs that the outputs in ``win`` read."""
    if node.op_type == "DepthToSpace":
        b = int(node.attrs["blocksize"])
        windows = [AxisWindow(1, 1, 1, 0, 0)] * 2
        factor = [b, b]
    else:
        windows = axis_windows(node.attrs, 2)
        factor = [w.stride for w in windows]
    spans = []
    for span, w, f in zip((win.rows, win.cols), windows, factor):
        if node.op_type == "DepthToSpace":
            lo = [s // f for s in span.starts]
            hi = [(s + span.size - 1) // f + 1 for s in span.starts]
        else:  # input i writes outputs i*s - p + t*d: the inputs writing into [s, s + size)
            lo = [-(-(s + w.pad_begin - w.span + 1) // w.stride) for s in span.starts]
            hi = [(s + span.size - 1 + w.pad_begin) // w.stride + 1 for s in span.starts]
        spans.append(Span(max(h - l for l, h in zip(lo, hi)), tuple(lo)))
    return Window(spans[0], spans[1])


def _aligned(graph: Graph, node: Node, win_in: Window) -> Window:
    """The output-side window an upsampling op's reversal reads, aligned to the input window."""
    if node.op_type == "DepthToSpace":
        b = int(node.attrs["blocksize"])
        return Window(Span(win_in.h * b, tuple(s * b for s in win_in.rows.starts)),
                      Span(win_in.w * b, tuple(s * b for s in win_in.cols.starts)))
    wy, wx = axis_windows(node.attrs, 2)
    return Window(win_in.rows.through(wy), win_in.cols.through(wx))


def _matrices(graph: Graph, node: Node) -> dict[int, np.ndarray] | None:
    if spatial_rule(graph, node) is not None:
        return None
    m = axis_matrices(graph, node)
    return m if m is not None and m and set(m) <= {2, 3} else None


def _input_window(graph: Graph, node: Node, win: Window) -> Window:
    """The window of ``node``'s signal input that the outputs in ``win`` read (its geometry rule)."""
    rule = spatial_rule(graph, node)
    if rule is not None:
        if rule.pointwise:
            return win
        wy, wx = rule.windows
        return Window(win.rows.through(wy), win.cols.through(wx))
    if node.op_type in _UPSAMPLING:
        return _upsampling_spans(graph, node, win)
    m = _matrices(graph, node)
    rows = win.rows.through_matrix(m[2]) if 2 in m else win.rows
    cols = win.cols.through_matrix(m[3]) if 3 in m else win.cols
    return Window(rows, cols)


def _is_layout_transpose(graph: Graph, node: Node) -> bool:
    """The NHWC -> NCHW transpose a channels-last front-end puts right after the image input."""
    return node.op_type == "Transpose" and node.inputs[0] == graph.inputs[0] and node.attrs.get("perm") == [0, 3, 1, 2]


TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _input_layout(graph: Graph, node: Node, layout: str) -> str:
    """The layout (NCHW or NHWC) of ``node``'s signal input, given its output's; ConvNeXt's
    channels-last blocks sit between a TO_LAST and a TO_FIRST Transpose."""
    if node.op_type == "Transpose" and not _is_layout_transpose(graph, node):
        perm = list(node.attrs.get("perm", []))
        if layout == "NHWC" and perm == TO_LAST:
            return "NCHW"
        if layout == "NCHW" and perm == TO_FIRST:
            return "NHWC"
        raise NotWindowable(node.name)
    return layout


def _check_windowable(graph: Graph, node: Node, layout: str = "NCHW") -> None:
    if _is_layout_transpose(graph, node):
        return
    if check_invertible(graph, node):
        raise NotWindowable(node.name)
    if node.op_type == "Transpose":
        _input_layout(graph, node, layout)
        return
    if layout == "NHWC":
        if not channels_last_pointwise(graph, node):
            raise NotWindowable(node.name)
        return
    rule = spatial_rule(graph, node)
    op = node.op_type
    if rule is None:
        if any(len(graph.shapes.get(t, ())) != 4 for t in [*graph.variable_inputs(node), *node.outputs] if t):
            raise NotWindowable(node.name)
        if op in _UPSAMPLING or _matrices(graph, node) is not None:
            return
        raise NotWindowable(node.name)
    if rule.pointwise:
        if op == "Slice" and any(a in (2, 3) for a in node.attrs["axes"]):
            raise NotWindowable(node.name)
        return
    if op not in _WINDOW_KERNELS:
        raise NotWindowable(node.name)
    if op == "MaxPool" and any(d != 1 for d in node.attrs.get("dilations") or [1, 1]):
        raise NotWindowable(node.name)  # the in-window unpool reads dense switches
    if op == "Slice" and 1 in node.attrs["axes"]:
        raise NotWindowable(node.name)  # a window over space and a cut over channels at once


def plan_windows(graph: Graph, layer: str, layouts: dict[str, str] | None = None) -> tuple[list[Node], dict[str, Window]]:
    """Window of every tensor on the path for a 1x1 seed window at ``layer`` (or NotWindowable).

    A channels-last image input is seen through its layout transpose: the windows end at the
    transpose's (channels-first) output, and the host transposes the pasted result back.
    """
    if not _is_spatial4(graph, layer):
        raise NotWindowable(layer)
    forward = graph.ancestors([layer])
    path = [n for n in forward if graph.variable_inputs(n)]
    _, _, sh, sw = graph.shape(layer)
    windows: dict[str, Window] = {layer: Window(Span(1, tuple(range(sh))), Span(1, tuple(range(sw))))}
    layouts = {} if layouts is None else layouts
    layouts[layer] = "NCHW"
    for node in reversed(path):
        outs = [windows[o] for o in node.outputs if o in windows]
        if not outs or _is_layout_transpose(graph, node):
            continue
        out_layouts = {layouts[o] for o in node.outputs if o in windows}
        if len(out_layouts) != 1:
            raise NotWindowable(node.name)
        layout = out_layouts.pop()
        _check_windowable(graph, node, layout)
        in_layout = _input_layout(graph, node, layout)
        win = outs[0]
        for other in outs[1:]:
            win = win.union(other)
        inp = win if layout == "NHWC" or node.op_type == "Transpose" else _input_window(graph, node, win)
        for t in graph.variable_inputs(node):
            if layouts.setdefault(t, in_layout) != in_layout:
                raise NotWindowable(node.name)
            windows[t] = windows[t].union(inp) if t in windows else inp
    return forward, windows


# Per element of a window, what the windowed reversal pays on top of the op's own arithmetic:
# per-seed gathers of the forward values it reads, the validity mask, placing windows into
# unions. Measured on the model-zoo corpus (benchmarks/zoo.py): a gathered element costs about
# as much as a few multiply-adds of a convolution.
WINDOW_OVERHEAD_MACS = 8.0
# The windowed program must be estimated at most this fraction of the full program to run
# (the estimate ignores kernel efficiency and fixed costs: on the corpus, estimates up to 0.3
# measured at most 0.62).
WINDOWED_MAX_FRACTION = 0.3


def _macs_per_position(graph: Graph, node: Node) -> float:
    """Multiply-adds of ``node``'s reversal per output position (all channels)."""
    out = graph.shape(node.outputs[0])
    c_out = out[1] if len(out) > 1 else 1
    if node.op_type in ("Conv", "ConvTranspose"):
        w = graph.shape(node.inputs[1])
        return float(c_out * int(np.prod(w[1:]))) if node.op_type == "Conv" else float(w[0] * int(np.prod(w[2:])))
    if node.op_type in ("MaxPool", "AveragePool"):
        return float(c_out * int(np.prod(node.attrs["kernel_shape"])))
    return float(c_out)


def projection_costs(graph: Graph, layer: str) -> tuple[float, float]:
    """Estimated multiply-adds per seed of (windowed, full) reversal of unit seeds at ``layer``,
    from the window plan alone (nothing is built); NotWindowable where windows do not apply.

    Full: every reversed op over its whole output. Windowed: the same ops over their windows
    (which can outgrow the tensor where windows of paths with different strides merge), plus
    :data:`WINDOW_OVERHEAD_MACS` per element of every input window."""
    forward, windows = plan_windows(graph, layer)
    windowed = full = 0.0
    for node in forward:
        out = node.outputs[0]
        if not graph.variable_inputs(node) or out not in windows or len(graph.shape(out)) != 4:
            continue
        per_position = _macs_per_position(graph, node)
        _, _, h, w = graph.shape(out)
        win = windows[out]
        full += per_position * h * w
        windowed += per_position * win.h * win.w
        for t in graph.variable_inputs(node):
            if t in windows and len(graph.shape(t)) == 4:
                windowed += WINDOW_OVERHEAD_MACS * graph.shape(t)[1] * windows[t].h * windows[t].w
    return windowed, full


class WindowContext(InverseContext):
    """An InverseContext whose forward tensors and shapes are per-seed windows."""

    def __init__(self, builder: ProgramBuilder, graph: Graph, options, seed_image: str, seed_hw: tuple[int, int],
                 n_images_one: bool):
        super().__init__(builder, graph, options, seed_image, single_image=False)
        self.seed_hw = seed_hw
        self.n_images_one = n_images_one
        self.window: Window | None = None
        self.layouts: dict[str, str] = {}          # tensor -> NCHW / NHWC (channels-last blocks)
        self.index_inputs: dict[tuple, str] = {}   # (H, W, window, pad) -> input name
        self.offset_inputs: dict[Window, tuple[str, str]] = {}
        self.plan: list[dict] = []
        self._flat: dict[tuple, str] = {}
        self._gathered: dict[tuple, str] = {}

    def nhwc(self, tensor: str) -> bool:
        return self.layouts.get(tensor) == "NHWC"

    def shape(self, tensor: str) -> tuple[int, ...]:
        full = self.graph.shape(tensor)
        if self.window is None or len(full) != 4:
            return full
        if self.nhwc(tensor):
            return (full[0], self.window.h, self.window.w, full[3])
        return (full[0], full[1], self.window.h, self.window.w)

    def _pads(self, H: int, W: int, win: Window) -> tuple[int, int, int, int]:
        r0, r1, c0, c1 = win.bounds()
        return max(0, -r0), max(0, -c0), max(0, r1 + win.h - H), max(0, c1 + win.w - W)

    def window_index(self, H: int, W: int, win: Window, per_image: bool) -> str:
        """Program input: flat indices [K, h*w] of each seed's window in the padded tensor
        (offset to the seed's image when the tensor holds one plane per image)."""
        pads = self._pads(H, W, win)
        per_image = per_image and not self.n_images_one
        key = (H, W, win, pads, per_image)
        if key not in self.index_inputs:
            name = f"zf_window_index/{len(self.index_inputs)}"
            self.index_inputs[key] = name
            self.b.shapes[name] = (1, win.h * win.w)
            self.b.dtypes[name] = np.dtype(np.int64)
            self.plan.append({"input": name, "kind": "index", "H": H, "W": W, "window": win, "pads": pads,
                              "per_image": per_image})
        return self.index_inputs[key]

    def window_offsets(self, win: Window) -> tuple[str, str]:
        """Program inputs: each seed's window origin [K, 1, 1, 1] (y and x)."""
        if win not in self.offset_inputs:
            names = []
            for axis in ("y", "x"):
                name = f"zf_window_origin/{len(self.offset_inputs)}{axis}"
                self.b.shapes[name] = (1, 1, 1, 1)
                self.b.dtypes[name] = np.dtype(np.int64)
                self.plan.append({"input": name, "kind": "origin_" + axis, "window": win})
                names.append(name)
            self.offset_inputs[win] = (names[0], names[1])
        return self.offset_inputs[win]

    def gather_window(self, tensor: str, win: Window, pad_value: float = 0.0,
                      shape: tuple[int, ...] | None = None, per_image: bool = True) -> str:
        """Per-seed window [K, C, h, w] of a tensor [N, C, H, W] (``pad_value`` outside it).
        ``per_image=False`` for constants, which have one plane for all images."""
        key = (tensor, win, pad_value)
        if key in self._gathered:
            return self._gathered[key]
        _, c, H, W = shape or self.graph.shape(tensor)
        top, left, bottom, right = self._pads(H, W, win)
        flat_key = (tensor, (top, left, bottom, right), pad_value)
        if flat_key not in self._flat:
            t = tensor
            if top or left or bottom or right:
                t = self.b.op("Pad", t, pads=[0, 0, top, left, 0, 0, bottom, right], mode="constant", value=pad_value)
                self.b.dtypes[t] = self.b.dtypes.get(tensor, np.dtype(np.float32))
            if per_image and not self.n_images_one:
                t = self.b.op("Transpose", t, perm=[1, 0, 2, 3])
            self._flat[flat_key] = self.b.op("Reshape", t, shape=[c, -1], hint="flat")
        idx = self.window_index(H, W, win, per_image)
        g = self.b.op("Gather", self._flat[flat_key], idx, axis=1, hint="window")       # [C, K, h*w]
        g = self.b.op("Transpose", g, perm=[1, 0, 2])
        out = self.b.op("Reshape", g, shape=[-1, c, win.h, win.w], hint="window")
        self._gathered[key] = out
        return out

    def along_axis(self, g: str, matrix: np.ndarray, src: Span, dst: Span, axis: int) -> str:
        """``dst[i] = sum_j matrix[dst_i, src_j] g[src_j]`` along ``axis`` (2: rows, 3: cols), with
        absolute indices ``start + i`` per seed (out of range: 0): a per-seed sub-block of
        ``matrix [n_dst, n_src]``, a program input the host fills (:class:`WindowPlan`)."""
        name = f"zf_window_matrix/{len(self.plan)}"
        shape = (1, 1, dst.size, src.size) if axis == 2 else (1, 1, src.size, dst.size)
        self.b.shapes[name] = shape
        self.b.dtypes[name] = np.dtype(np.float32)
        self.plan.append({"input": name, "kind": "matrix", "axis": axis, "matrix": matrix, "src": src, "dst": dst})
        return self.b.op("MatMul", name, g, hint="axis_T") if axis == 2 else self.b.op("MatMul", g, name, hint="axis_T")

    def constant_window(self, value: np.ndarray, hint: str, win: Window, pad_value: float) -> str:
        """Per-seed window of a constant map [1, C, H, W]."""
        name = f"zf_{hint}/{'x'.join(map(str, value.shape))}/{pad_value}"
        if name not in self.b.constants:
            self.b.constants[name] = value.astype(np.float32)
        return self.gather_window(name, win, pad_value, shape=value.shape, per_image=False)

    def saved(self, tensor: str) -> str:
        full = self.graph.shape(tensor)
        if len(full) == 4 and self.nhwc(tensor):  # gathered channels-first, handed back channels-last
            first = self.b.op("Transpose", tensor, perm=TO_FIRST, hint="to_first")
            self.b.dtypes[first] = self.b.dtypes.get(tensor, np.dtype(np.float32))
            n, h, w, c = full
            win = self.gather_window(first, self.window, shape=(n, c, h, w))
            return self.b.op("Transpose", win, perm=TO_LAST, hint="to_last")
        if len(full) == 4 and full[2:] != (1, 1):
            return self.gather_window(tensor, self.window)
        return super().saved(tensor)

    def spatial_size(self, tensor: str) -> tuple[int, int]:
        full = self.graph.shape(tensor)
        return tuple(full[1:3]) if self.nhwc(tensor) else tuple(full[2:])

    def valid(self, tensor: str, win: Window) -> str:
        """1 where the window lies inside ``tensor``, else 0: [K, 1, h, w] ([K, h, w, 1] for a
        channels-last tensor)."""
        H, W = self.spatial_size(tensor)
        mask = self.constant_window(np.ones((1, 1, H, W), np.float32), "inside", win, 0.0)
        return self.b.op("Transpose", mask, perm=TO_LAST, hint="to_last") if self.nhwc(tensor) else mask


def _place(ctx: WindowContext, signal: str, have: Window, want: Window, n: tuple[int, int],
           channels_last: bool = False) -> str:
    """Re-embed a signal computed in window ``have`` into the window ``want`` of a tensor of
    spatial size ``n``: a constant pad when the offset is the same for every seed, else per-seed
    shift matrices (positions outside the tensor are dropped; they are masked anyway)."""
    if have == want:
        return signal
    dy, dx = have.rows.delta(want.rows), have.cols.delta(want.cols)
    if dy is not None and dx is not None:
        bottom, right = want.h - have.h - dy, want.w - have.w - dx
        if min(dy, dx, bottom, right) >= 0:
            pads = [0, dy, dx, 0, 0, bottom, right, 0] if channels_last else [0, 0, dy, dx, 0, 0, bottom, right]
            return ctx.b.op("Pad", signal, pads=pads, mode="constant", value=0.0)
    if channels_last:
        signal = ctx.b.op("Transpose", signal, perm=TO_FIRST, hint="to_first")
    if have.rows != want.rows:
        signal = ctx.along_axis(signal, np.eye(n[0], dtype=np.float32), have.rows, want.rows, 2)
    if have.cols != want.cols:
        signal = ctx.along_axis(signal, np.eye(n[1], dtype=np.float32), have.cols, want.cols, 3)
    return ctx.b.op("Transpose", signal, perm=TO_LAST, hint="to_last") if channels_last else signal


def _upsampling_op(ctx: WindowContext, node: Node, g: str, win_out: Window, win_in: Window) -> str:
    """ConvTranspose's reversal is a strided convolution, DepthToSpace's the inverse permutation:
    both read an output window aligned to the input window, which the signal is shifted into
    (per seed; outputs beyond the tensor read zero)."""
    aligned = _aligned(ctx.graph, node, win_in)
    n = tuple(ctx.graph.shape(node.outputs[0])[2:])
    g = _place(ctx, g, win_out, aligned, n)
    a = node.attrs
    if node.op_type == "ConvTranspose":
        return ctx.b.op("Conv", g, node.inputs[1], kernel_shape=list(a["kernel_shape"]), strides=list(a["strides"]),
                        dilations=list(a["dilations"]), pads=[0, 0, 0, 0], group=int(a["group"]), hint="convT_adjoint")
    in_shape = ctx.graph.shape(node.inputs[0])
    mid, perm, _ = depth_to_space_steps((1, in_shape[1], win_in.h, win_in.w), int(a["blocksize"]), a.get("mode", "DCR"))
    return undo_permutation(ctx, g, mid, perm, (1, in_shape[1], win_in.h, win_in.w))


def _matrix_op(ctx: WindowContext, node: Node, g: str, win_out: Window, win_in: Window) -> str:
    """An op that acts along H and W as fixed matrices ``A``: per-seed sub-blocks of ``A^T``."""
    m = _matrices(ctx.graph, node)
    if 2 in m:
        g = ctx.along_axis(g, np.ascontiguousarray(m[2].T), win_out.rows, win_in.rows, 2)
    if 3 in m:
        g = ctx.along_axis(g, np.ascontiguousarray(m[3].T), win_out.cols, win_in.cols, 3)
    return g


def _window_op(ctx: WindowContext, node: Node, g: str, win_out: Window, win_in: Window) -> str:
    """The reversal of a window op from its output window to its input window."""
    a = node.attrs
    if node.op_type == "Pad":
        return g  # the signal stays; only its window moves
    if node.op_type == "Slice":
        wy, wx = spatial_rule(ctx.graph, node).windows
        if (wy.stride, wx.stride) == (1, 1):
            return g
        c = ctx.graph.shape(node.inputs[0])[1]
        ones = ctx.b.const(np.ones((c, 1, 1, 1), np.float32), "scatter")
        return ctx.b.op("ConvTranspose", g, ones, kernel_shape=[1, 1], strides=[wy.stride, wx.stride],
                        dilations=[1, 1], pads=[0, 0, 0, 0], output_padding=[0, 0], group=c, hint="slice_T")
    if node.op_type == "SpaceToDepth":  # DCR DepthToSpace is SpaceToDepth's inverse permutation
        return ctx.b.op("DepthToSpace", g, blocksize=int(a["blocksize"]), mode="DCR", hint="s2d_T")
    k, s = a["kernel_shape"], a["strides"]
    if node.op_type == "Conv":
        return ctx.b.op("ConvTranspose", g, node.inputs[1], kernel_shape=list(k), strides=list(s),
                        dilations=list(a["dilations"]), pads=[0, 0, 0, 0], output_padding=[0, 0], group=a["group"])
    c = ctx.graph.shape(node.inputs[0])[1]
    if node.op_type == "AveragePool":
        from zfprobe.ops.geometry import axis_windows
        from zfprobe.ops.onnx_semantics import pool_divisors

        in_shape = ctx.graph.shape(node.inputs[0])
        counts = pool_divisors(in_shape[2:], axis_windows(a, 2), bool(a.get("count_include_pad", 0)))
        g = ctx.b.op("Div", g, ctx.constant_window(counts[None, None], "divisor", win_out, 1.0))
        ones = ctx.b.const(np.ones((c, 1, *k), np.float32), "window")
        return ctx.b.op("ConvTranspose", g, ones, kernel_shape=list(k), strides=list(s), dilations=[1, 1],
                        pads=[0, 0, 0, 0], output_padding=[0, 0], group=c)
    # MaxPool: unpool through this image's switches, in window coordinates.
    _, _, H, W = ctx.graph.shape(node.inputs[0])
    switch_name = ctx.switches(node.outputs[0])
    ctx.b.dtypes[switch_name] = np.dtype(np.int64)
    switches = ctx.gather_window(switch_name, win_out, 0.0, shape=ctx.graph.shape(node.outputs[0]))
    rem = ctx.b.op("Mod", switches, ctx.b.const(H * W, "plane", np.int64))
    y = ctx.b.op("Div", rem, ctx.b.const(W, "width", np.int64))
    x = ctx.b.op("Mod", rem, ctx.b.const(W, "width", np.int64))
    oy, ox = ctx.window_offsets(win_in)
    local = ctx.b.op("Add", ctx.b.op("Mul", ctx.b.op("Sub", y, oy), ctx.b.const(win_in.w, "w_in", np.int64)), ctx.b.op("Sub", x, ox))
    plane = ctx.b.const((np.arange(c, dtype=np.int64) * win_in.h * win_in.w).reshape(1, c, 1, 1), "planes", np.int64)
    local = ctx.b.op("Add", local, plane)
    inside = ctx.b.op("Cast", ctx.valid(node.outputs[0], win_out), to=9)
    local = ctx.b.op("Where", inside, local, ctx.b.const(0, "zero", np.int64))
    per_seed = c * win_out.h * win_out.w
    local = ctx.b.op("Reshape", local, shape=[-1, per_seed])
    upd = ctx.b.op("Reshape", g, shape=[-1, per_seed])
    flat = ctx.b.op("ScatterElements", ctx.zeros(g, (c * win_in.h * win_in.w,)), local, upd, axis=1, reduction="add")
    return ctx.b.op("Reshape", flat, shape=[-1, c, win_in.h, win_in.w])


def build_windowed_deconvnet(graph: Graph, layer: str, options, n_images_one: bool) -> Graph:
    """The windowed program: inputs image, zf_seed_window [K, C, 1, 1], zf_seed_image and the
    window index / origin inputs listed in ``metadata['windows']``; output the image window."""
    layouts: dict[str, str] = {}
    forward, windows = plan_windows(graph, layer, layouts)
    image = graph.inputs[0]
    b = ProgramBuilder(graph)
    _, c_layer, sh, sw = graph.shape(layer)
    b.shapes[SEED_WINDOW] = (1, c_layer, 1, 1)
    b.dtypes[SEED_WINDOW] = np.dtype(np.float32)
    b.shapes["zf_seed_image"] = (1,)
    b.dtypes["zf_seed_image"] = np.dtype(np.int64)
    ctx = WindowContext(b, graph, options, "zf_seed_image", (sh, sw), n_images_one)
    ctx.layouts = layouts
    ctx.seed_tensor = layer
    for node in forward:
        ctx.emit_forward(node)

    contributions: dict[str, list[tuple[str, Window]]] = {layer: [(SEED_WINDOW, windows[layer])]}

    def signal_at(tensor: str) -> str | None:
        parts = contributions.pop(tensor, [])
        if not parts:
            return None
        want = windows[tensor]
        placed = [_place(ctx, s, w, want, ctx.spatial_size(tensor), ctx.nhwc(tensor)) for s, w in parts]
        total = placed[0] if len(placed) == 1 else b.op("Sum", *placed)
        return b.op("Mul", total, ctx.valid(tensor, want), hint="inside")

    terminal, layout = image, "NCHW"
    for node in reversed(forward):
        if not graph.variable_inputs(node):
            continue
        if _is_layout_transpose(graph, node):
            terminal, layout = node.outputs[0], "NHWC"
            continue
        outs = [signal_at(o) if o in windows else None for o in node.outputs]
        if all(g is None for g in outs):
            continue
        out_windows = [windows[o] for o in node.outputs if o in windows]
        win_out = out_windows[0]
        for other in out_windows[1:]:
            win_out = win_out.union(other)
        rule = None if ctx.nhwc(node.outputs[0]) or node.op_type == "Transpose" else spatial_rule(graph, node)
        if rule is None and node.op_type != "Transpose" and not ctx.nhwc(node.outputs[0]):
            win_in = _input_window(graph, node, win_out)
            kernel = _upsampling_op if node.op_type in _UPSAMPLING else _matrix_op
            contributions.setdefault(node.inputs[0], []).append((kernel(ctx, node, outs[0], win_out, win_in), win_in))
            continue
        if rule is not None and node.op_type in _WINDOW_KERNELS and not rule.pointwise:
            win_in = _input_window(graph, node, win_out)
            contributions.setdefault(node.inputs[0], []).append((_window_op(ctx, node, outs[0], win_out, win_in), win_in))
            continue
        if len(out_windows) > 1:  # Split: outputs may come back in different windows
            outs = [_place(ctx, g, windows[o], win_out, graph.shape(o)[2:]) if g is not None else None
                    for g, o in zip(outs, node.outputs)]
        ctx.window = win_out
        in_grads = INVERSES[node.op_type](ctx, node, outs)
        ctx.window = None
        for tensor, g in zip(node.inputs, in_grads):
            if g is not None and tensor and not graph.is_constant(tensor):
                contributions.setdefault(tensor, []).append((g, win_out))

    final = signal_at(terminal)
    b.add("Identity", [final], outputs=[OUTPUT_WINDOW])
    win = windows[terminal]
    b.shapes[OUTPUT_WINDOW] = (1, graph.shape(terminal)[1], win.h, win.w)
    program = b.build(inputs=[image, SEED_WINDOW, "zf_seed_image", *[p["input"] for p in ctx.plan]],
                      outputs=[OUTPUT_WINDOW], name=f"windowed_deconv({graph.name}:{layer}:{options.rule})",
                      metadata={"layer": layer, "rule": options.rule, "lrn": options.lrn})
    program.metadata["windows"] = ctx.plan
    program.metadata["image_window"] = win
    program.metadata["layout"] = layout
    return program


def _sub_blocks(entry: dict, pos: np.ndarray) -> np.ndarray:
    """Per seed, rows ``dst.start + i`` and columns ``src.start + j`` of the entry's matrix
    (zero outside it), as [K, 1, dst, src] (rows axis) or [K, 1, src, dst] (columns axis)."""
    m, src, dst = entry["matrix"], entry["src"], entry["dst"]
    big = np.pad(m, ((dst.size + 1, dst.size + 1), (src.size + 1, src.size + 1)))  # zero borders
    ds = np.asarray(dst.starts, np.int64)[pos] + dst.size + 1
    ss = np.asarray(src.starts, np.int64)[pos] + src.size + 1
    ri = np.clip(ds[:, None] + np.arange(dst.size)[None, :], 0, big.shape[0] - 1)
    ci = np.clip(ss[:, None] + np.arange(src.size)[None, :], 0, big.shape[1] - 1)
    blocks = big[ri[:, :, None], ci[:, None, :]]                                    # [K, dst, src]
    if entry["axis"] == 3:
        blocks = blocks.transpose(0, 2, 1)
    return np.ascontiguousarray(blocks[:, None]).astype(np.float32)


class WindowPlan:
    """Host side: the window index / origin inputs for a batch of unit seeds."""

    def __init__(self, program: Graph):
        self.program = program

    def feeds(self, positions: np.ndarray, seed_image: np.ndarray, seed_hw: tuple[int, int]) -> dict[str, np.ndarray]:
        py, px = positions[:, 0].astype(np.int64), positions[:, 1].astype(np.int64)
        out: dict[str, np.ndarray] = {}
        for entry in self.program.metadata["windows"]:
            if entry["kind"] == "matrix":
                out[entry["input"]] = _sub_blocks(entry, py if entry["axis"] == 2 else px)
                continue
            win: Window = entry["window"]
            oy, ox = win.offsets(py, px)
            if entry["kind"] == "index":
                top, left, bottom, right = entry["pads"]
                hp, wp = entry["H"] + top + bottom, entry["W"] + left + right
                rows = (oy[:, None] + top + np.arange(win.h)[None, :])            # [K, h]
                cols = (ox[:, None] + left + np.arange(win.w)[None, :])           # [K, w]
                flat = rows[:, :, None] * wp + cols[:, None, :]
                flat = flat.reshape(len(py), -1)
                if entry["per_image"]:
                    flat = flat + seed_image[:, None] * hp * wp
                out[entry["input"]] = flat.astype(np.int64)
            elif entry["kind"] == "origin_y":
                out[entry["input"]] = oy.reshape(-1, 1, 1, 1).astype(np.int64)
            else:
                out[entry["input"]] = ox.reshape(-1, 1, 1, 1).astype(np.int64)
        return out

    def paste(self, windows: np.ndarray, positions: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
        """Put each seed's image window into a full-size projection (clipped to the image), in
        the image input's layout (``image_shape``: one image's shape, without the batch axis)."""
        win: Window = self.program.metadata["image_window"]
        k, c = windows.shape[:2]
        nhwc = self.program.metadata.get("layout") == "NHWC"
        H, W = image_shape[:2] if nhwc else image_shape[1:]
        out = np.zeros((k, c, H, W), np.float32)
        oy, ox = win.offsets(positions[:, 0].astype(np.int64), positions[:, 1].astype(np.int64))
        for i in range(k):
            y0, x0 = int(oy[i]), int(ox[i])
            ys, xs = max(0, y0), max(0, x0)
            ye, xe = min(H, y0 + win.h), min(W, x0 + win.w)
            if ye > ys and xe > xs:
                out[i, :, ys:ye, xs:xe] = windows[i, :, ys - y0:ye - y0, xs - x0:xe - x0]
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1)) if nhwc else out
