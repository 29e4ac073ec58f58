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
Applies when the seeds are single units and every op on the path is spatial and local (conv,
pooling, elementwise, BatchNorm, LRN, concat / split over channels, residual adds, spatial
pad / slice); otherwise the full program is used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfprobe.graph import Graph, Node
from zfprobe.ops.spatial import spatial_rule
from zfprobe.inverses import INVERSES, InverseContext, check_invertible
from zfprobe.program import ProgramBuilder

SEED_WINDOW = "zf_seed_window"
OUTPUT_WINDOW = "zf_projection_window"

# Window ops with an in-window reversal here (the geometry itself is each op's spatial rule).
_WINDOW_KERNELS = {"Conv", "MaxPool", "AveragePool", "Pad", "Slice", "SpaceToDepth"}


@dataclass(frozen=True)
class Window:
    """Per spatial axis: size, stride factor a and offset b (window starts at a * p + b)."""

    h: int
    w: int
    ay: int
    by: int
    ax: int
    bx: int

    def union(self, other: "Window") -> "Window":
        by, bx = min(self.by, other.by), min(self.bx, other.bx)
        return Window(max(self.by + self.h, other.by + other.h) - by, max(self.bx + self.w, other.bx + other.w) - bx,
                      self.ay, by, self.ax, bx)

    def offsets(self, py: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ay * py + self.by, self.ax * px + self.bx


class NotWindowable(Exception):
    """The path has an op the windowed reversal does not cover; use the full program."""


def _is_spatial4(graph: Graph, t: str) -> bool:
    return len(graph.shape(t)) == 4


def _input_window(graph: Graph, node: Node, win: Window) -> Window:
    """The window of ``node``'s signal input that the outputs in ``win`` read (its spatial rule)."""
    rule = spatial_rule(graph, node)
    if rule is None or rule.pointwise:
        return win
    wy, wx = rule.windows
    # the window of win.h outputs starting at a*p + b reads span inputs from (a*p + b)*s - pad
    h0, h1 = wy.input_span(0, win.h)
    w0, w1 = wx.input_span(0, win.w)
    return Window(h1 - h0, w1 - w0, win.ay * wy.stride, wy.first_tap(win.by), win.ax * wx.stride, wx.first_tap(win.bx))


def _is_layout_transpose(graph: Graph, node: Node) -> bool:
    """The NHWC -> NCHW transpose a channels-last front-end puts right after the image input."""
    return node.op_type == "Transpose" and node.inputs[0] == graph.inputs[0] and node.attrs.get("perm") == [0, 3, 1, 2]


def _check_windowable(graph: Graph, node: Node) -> None:
    if _is_layout_transpose(graph, node):
        return
    if check_invertible(graph, node):
        raise NotWindowable(node.name)
    rule = spatial_rule(graph, node)
    if rule is None:
        raise NotWindowable(node.name)
    op = node.op_type
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


def plan_windows(graph: Graph, layer: str) -> tuple[list[Node], dict[str, Window]]:
    """Window of every tensor on the path for a 1x1 seed window at ``layer`` (or NotWindowable).

    A channels-last image input is seen through its layout transpose: the windows end at the
    transpose's (channels-first) output, and the host transposes the pasted result back.
    """
    if not _is_spatial4(graph, layer):
        raise NotWindowable(layer)
    forward = graph.ancestors([layer])
    path = [n for n in forward if graph.variable_inputs(n)]
    for node in path:
        _check_windowable(graph, node)
    windows: dict[str, Window] = {layer: Window(1, 1, 1, 0, 1, 0)}
    for node in reversed(path):
        outs = [windows[o] for o in node.outputs if o in windows]
        if not outs or _is_layout_transpose(graph, node):
            continue
        win = outs[0]
        for other in outs[1:]:
            win = win.union(other)
        inp = _input_window(graph, node, win)
        for t in graph.variable_inputs(node):
            if t in windows:
                if (windows[t].ay, windows[t].ax) != (inp.ay, inp.ax):
                    raise NotWindowable(node.name)
                windows[t] = windows[t].union(inp)
            else:
                windows[t] = inp
    return forward, windows


class WindowContext(InverseContext):
    """An InverseContext whose forward tensors and shapes are per-seed windows."""

    def __init__(self, builder: ProgramBuilder, graph: Graph, options, seed_image: str, seed_hw: tuple[int, int],
                 n_images_one: bool):
        super().__init__(builder, graph, options, seed_image, single_image=False)
        self.seed_hw = seed_hw
        self.n_images_one = n_images_one
        self.window: Window | None = None
        self.index_inputs: dict[tuple, str] = {}   # (H, W, window, pad) -> input name
        self.offset_inputs: dict[Window, tuple[str, str]] = {}
        self.plan: list[dict] = []
        self._flat: dict[tuple, str] = {}
        self._gathered: dict[tuple, str] = {}

    def shape(self, tensor: str) -> tuple[int, ...]:
        full = self.graph.shape(tensor)
        if self.window is None or len(full) != 4:
            return full
        return (full[0], full[1], self.window.h, self.window.w)

    def _pads(self, H: int, W: int, win: Window) -> tuple[int, int, int, int]:
        sh, sw = self.seed_hw
        top, left = max(0, -win.by), max(0, -win.bx)
        bottom = max(0, win.ay * (sh - 1) + win.by + win.h - H)
        right = max(0, win.ax * (sw - 1) + win.bx + win.w - W)
        return top, left, bottom, right

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

    def constant_window(self, value: np.ndarray, hint: str, win: Window, pad_value: float) -> str:
        """Per-seed window of a constant map [1, C, H, W]."""
        name = f"zf_{hint}/{'x'.join(map(str, value.shape))}/{pad_value}"
        if name not in self.b.constants:
            self.b.constants[name] = value.astype(np.float32)
        return self.gather_window(name, win, pad_value, shape=value.shape, per_image=False)

    def saved(self, tensor: str) -> str:
        full = self.graph.shape(tensor)
        if len(full) == 4 and full[2:] != (1, 1):
            return self.gather_window(tensor, self.window)
        return super().saved(tensor)

    def valid(self, tensor: str, win: Window) -> str:
        """1 where the window lies inside ``tensor``, else 0: [K, 1, h, w]."""
        _, _, H, W = self.graph.shape(tensor)
        return self.constant_window(np.ones((1, 1, H, W), np.float32), "inside", win, 0.0)


def _place(ctx: WindowContext, signal: str, have: Window, want: Window) -> str:
    """Re-embed a signal computed in window ``have`` into the larger window ``want``."""
    if have == want:
        return signal
    top, left = have.by - want.by, have.bx - want.bx
    bottom, right = want.by + want.h - have.by - have.h, want.bx + want.w - have.bx - have.w
    return ctx.b.op("Pad", signal, pads=[0, 0, top, left, 0, 0, bottom, right], mode="constant", value=0.0)


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
        from zfprobe.inverses import _window_counts

        in_shape, out_shape = ctx.graph.shape(node.inputs[0]), ctx.graph.shape(node.outputs[0])
        counts = _window_counts(in_shape[2:], out_shape[2:], k, s, a["pads"], bool(a.get("count_include_pad", 0)))
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
    forward, windows = plan_windows(graph, layer)
    image = graph.inputs[0]
    b = ProgramBuilder(graph)
    _, c_layer, sh, sw = graph.shape(layer)
    b.shapes[SEED_WINDOW] = (1, c_layer, 1, 1)
    b.dtypes[SEED_WINDOW] = np.dtype(np.float32)
    b.shapes["zf_seed_image"] = (1,)
    b.dtypes["zf_seed_image"] = np.dtype(np.int64)
    ctx = WindowContext(b, graph, options, "zf_seed_image", (sh, sw), n_images_one)
    for node in forward:
        ctx.emit_forward(node)

    contributions: dict[str, list[tuple[str, Window]]] = {layer: [(SEED_WINDOW, windows[layer])]}

    def signal_at(tensor: str) -> str | None:
        parts = contributions.pop(tensor, [])
        if not parts:
            return None
        want = windows[tensor]
        placed = [_place(ctx, s, w, want) for s, w in parts]
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
        if node.op_type in _WINDOW_KERNELS and not spatial_rule(graph, node).pointwise:
            win_in = _input_window(graph, node, win_out)
            contributions.setdefault(node.inputs[0], []).append((_window_op(ctx, node, outs[0], win_out, win_in), win_in))
            continue
        if len(out_windows) > 1:  # Split: outputs may come back in different windows
            outs = [_place(ctx, g, windows[o], win_out) if g is not None else None for g, o in zip(outs, node.outputs)]
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


class WindowPlan:
    """Host side: the window index / origin inputs for a batch of unit seeds."""

    def __init__(self, program: Graph):
        self.program = program

    def feeds(self, positions: np.ndarray, seed_image: np.ndarray, seed_hw: tuple[int, int]) -> dict[str, np.ndarray]:
        py, px = positions[:, 0].astype(np.int64), positions[:, 1].astype(np.int64)
        out: dict[str, np.ndarray] = {}
        for entry in self.program.metadata["windows"]:
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
