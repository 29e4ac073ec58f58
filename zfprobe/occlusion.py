"""Occlusion sensitivity (PAPER.md section 5, Zeiler & Fergus Fig. 7).

A square of a fill value slides over the image; for every position of the square zfprobe records

(b) the total activation (summed over space) of the feature map of ``layer`` that is strongest on
    the unoccluded image,
(d) the probability of the target class (the given label, else the top-1 class of the unoccluded
    image),
(e) the most probable class,

and (c) projects that strongest feature map of the unoccluded image to pixel space with the
deconvnet.

Positions: the square's top-left corners lie on a grid ``0, stride, 2*stride, ...`` in each
direction, as long as the square fits; when the stride does not divide ``size - image``, one last
position flush with the bottom / right border is added, so every pixel is covered and the square
never leaves the image.

Probabilities: a graph output produced by ``Softmax`` is used as is; otherwise the first graph
output is taken as logits and ``softmax`` is applied to it (flattened per image). A model whose
first output is not a class vector (at least 2 values per image) has no class output: the
probability and label maps are refused with :class:`NoClassOutputError`, the activation map
still works.

Two exact ways to compute the maps (``method``):

``plain``
    builds every occluded image and runs the whole network on batches of them.
``incremental`` (the default through ``auto``)
    Krypton-style incremental inference (Nakandala et al., SIGMOD 2019). The network's first
    layers form a chain of spatially local ops (Conv, pooling, LRN, BatchNorm, element-wise
    ops). Each occluded image differs from the original only inside the square, so at each of
    these layers only a window around the square changes. zfprobe computes the original
    activations once; then for each position it recomputes, layer by layer, only the affected
    window: the layer's input window is cut from the cached original map (padded with the op's
    pad value where it leaves the map) with the previous layer's new window pasted in, and the
    op runs on it without padding. The last window is pasted into the cached map and the rest
    of the network runs on the batch as usual. Every op is the model's own op run by the
    probe's backend, so the result equals the plain computation up to float rounding. How far
    the incremental part goes is chosen by a cost model (multiply-adds of the windows plus copy
    costs against the full layers).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from zfprobe.ops.geometry import AxisWindow
from zfprobe.errors import ImageError, OptionError, ZfprobeError
from zfprobe.graph import Graph, Node

METHODS = ("auto", "incremental", "plain")
FILLS = ("grey", "zero", "mean")
GREY_PIXEL = 128.0
DEFAULT_MEMORY_BUDGET = 512 * 1024**2
MAX_BATCH = 64

PROBABILITY_NOTE = ("probabilities: the model's Softmax output when it has one, else softmax of its first output "
                    "(taken as logits), flattened per image")
POSITION_NOTE = ("square top-left corners on a grid 0, stride, 2*stride, ... while the square fits, plus one "
                 "position flush with the bottom/right border when the stride does not divide (image - size)")


class NoClassOutputError(ZfprobeError):
    """The model has no class output, so probability and label maps cannot be made."""


# --------------------------------------------------------------------------------------------
# positions, fill, class output


def positions(n: int, size: int, stride: int) -> list[int]:
    """Top-left corners along one axis of length ``n`` (see the module docstring)."""
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def check_geometry(height: int, width: int, size: int, stride: int) -> None:
    if int(size) != size or size < 1:
        raise OptionError(f"the square size must be a positive whole number of pixels, not {size}")
    if int(stride) != stride or stride < 1:
        raise OptionError(f"the stride must be at least 1 pixel, not {stride}")
    if size > min(height, width):
        raise OptionError(f"the occluding square ({size}x{size} px) is larger than the image ({height}x{width} px); "
                          f"use --size {min(height, width)} or less")


def fill_values(fill, prep, channels: int) -> tuple[np.ndarray, str]:
    """The per-channel model-space value of the square, and a description.

    ``grey``: pixel value 128 (of 0..255), normalized like the image; ``mean``: the dataset mean
    (model value 0 when the preprocessing subtracts a mean); ``zero``: 0 in model space; a number:
    that pixel value (0..255), normalized like the image.
    """
    if isinstance(fill, str) and fill not in FILLS:
        try:
            fill = float(fill)
        except ValueError:
            raise OptionError(f"unknown fill '{fill}'; choose grey, zero, mean or a pixel value 0..255") from None
    if not isinstance(fill, str) and not (np.isfinite(fill) and 0 <= float(fill) <= 255):
        raise OptionError(f"fill {fill} is not a pixel value 0..255; choose grey, zero, mean or a pixel value 0..255")
    if fill == "zero":
        return np.zeros(channels, np.float32), "zero (0 in model space)"
    if prep is None:
        raise OptionError(f"fill '{fill}' is in pixel space and needs the model's preprocessing; use fill='zero'")
    mean = prep._per_channel(prep.mean)
    std = prep._per_channel(prep.std)
    if fill == "mean":
        return np.zeros(channels, np.float32), f"mean (the dataset mean {tuple(float(m) for m in mean)}: 0 in model space)"
    pixel = GREY_PIXEL if fill == "grey" else float(fill)
    value = (pixel * prep.scale - mean) / std  # mean / std are in the model's channel order already
    label = "grey (pixel 128)" if fill == "grey" else f"pixel {pixel:g}"
    return value.astype(np.float32), label


@dataclass(frozen=True)
class ClassOutput:
    tensor: str          # the tensor read
    classes: int
    softmax: bool        # True when zfprobe applies softmax (the tensor holds logits)

    @property
    def source(self) -> str:
        return f"softmax of the logits '{self.tensor}'" if self.softmax else f"the model's Softmax output '{self.tensor}'"


def class_output(graph: Graph) -> ClassOutput | None:
    """The model's class output: a Softmax output if there is one, else the first output."""

    def classes(t: str) -> int:
        shape = graph.shapes.get(t)
        if not shape or len(shape) < 2:
            return 0
        k = int(np.prod(shape[1:]))
        return k if k >= 2 and all(d == 1 for d in sorted(shape[1:])[:-1]) else 0

    for t in graph.outputs:
        node = graph.producer(t)
        if node is not None and node.op_type == "Softmax" and classes(t):
            return ClassOutput(t, classes(t), False)
    t = graph.outputs[0]
    return ClassOutput(t, classes(t), True) if classes(t) else None


# --------------------------------------------------------------------------------------------
# the local chain at the start of the network (for incremental inference)

_UNARY = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
          "Softplus", "Softsign", "Identity", "Neg", "Abs", "Exp", "Log", "Sqrt", "Gelu", "Erf", "ThresholdedRelu",
          "Cast", "Floor", "Ceil", "Round", "Sign", "Reciprocal", "Mish", "Swish"}
_BINARY = {"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min", "Pow"}


@dataclass
class _Op:
    node: Node
    kernel: tuple[int, int]      # effective (dilated) kernel extent
    stride: tuple[int, int]
    pad: tuple[int, int]         # pad at the beginning of each spatial axis
    pad_value: float
    pointwise: bool
    n_in: tuple[int, int]
    n_out: tuple[int, int]
    channels: int
    macs_per_out: float          # multiply-adds per output spatial position (all channels)


def _spatially_constant(graph: Graph, tensor: str) -> bool:
    """A constant that broadcasts over H and W of a 4-D map (dims at H, W are 1 or absent)."""
    shape = graph.constants[tensor].shape
    tail = shape[-2:] if len(shape) >= 2 else shape[-1:]
    if len(shape) == 0:
        return True
    if len(shape) == 1:
        return shape[0] == 1
    return all(d == 1 for d in tail) and len(shape) <= 4


def _local_op(graph: Graph, node: Node, x: str) -> _Op | None:
    """How ``node`` maps a window of its input ``x`` to its output, or None if not local."""
    out = node.outputs[0] if node.outputs else ""
    if not out or len([o for o in node.outputs if o]) != 1:
        return None
    sin, sout = graph.shapes.get(x), graph.shapes.get(out)
    if not sin or not sout or len(sin) != 4 or len(sout) != 4:
        return None
    if graph.variable_inputs(node) != [x]:
        return None
    n_in, n_out, c = (sin[2], sin[3]), (sout[2], sout[3]), sout[1]
    op = node.op_type

    def pointwise(cost: float) -> _Op:
        if n_in != n_out:
            return None
        return _Op(node, (1, 1), (1, 1), (0, 0), 0.0, True, n_in, n_out, c, cost * c)

    if op in _UNARY or op == "LRN":
        return pointwise(node.attr("size", 1) if op == "LRN" else 1)
    if op == "BatchNormalization" or op in _BINARY:
        if op in _BINARY and not all(graph.is_constant(i) and _spatially_constant(graph, i)
                                     for i in node.inputs if i and i != x):
            return None
        return pointwise(2)
    if op in ("Conv", "MaxPool", "AveragePool"):
        if node.attr("auto_pad", "NOTSET") not in ("NOTSET", None):
            return None
        ks = list(node.attr("kernel_shape", []))
        if len(ks) != 2:
            return None
        strides = list(node.attr("strides", [1, 1]))
        dil = list(node.attr("dilations", [1, 1]) or [1, 1])
        pads = list(node.attr("pads", [0, 0, 0, 0]))
        keff = tuple((k - 1) * d + 1 for k, d in zip(ks, dil))
        if op == "Conv":
            if not graph.is_constant(node.inputs[1]) or any(i and not graph.is_constant(i) for i in node.inputs[2:]):
                return None
            w = graph.constants[node.inputs[1]].shape
            macs = float(w[0] * w[1] * ks[0] * ks[1])
            pad_value = 0.0
        elif op == "MaxPool":
            macs, pad_value = float(c * ks[0] * ks[1]), -np.inf
        else:
            if node.attr("ceil_mode", 0) or (any(pads) and not node.attr("count_include_pad", 0)):
                return None
            macs, pad_value = float(c * ks[0] * ks[1]), 0.0
        return _Op(node, keff, (strides[0], strides[1]), (pads[0], pads[1]), pad_value, False, n_in, n_out, c, macs)
    return None


def local_chain(graph: Graph) -> list[_Op]:
    """The longest chain of local ops from the input in which every tensor has one consumer."""
    x = graph.inputs[0]
    chain: list[_Op] = []
    while True:
        consumers = graph.consumers(x)
        if len(consumers) != 1 or x in graph.outputs:
            break
        node = consumers[0]
        if node.inputs.count(x) != 1:
            break
        op = _local_op(graph, node, x)
        if op is None or node.outputs[0] in graph.outputs:
            break
        chain.append(op)
        x = node.outputs[0]
    return chain


# --------------------------------------------------------------------------------------------
# window geometry


def _affected(op: _Op, axis: int, lo: int, hi: int) -> tuple[int, int]:
    """Output index range of ``op`` that reads input indices ``lo..hi`` (inclusive)."""
    window = AxisWindow(op.kernel[axis], op.stride[axis], 1, op.pad[axis])
    first, end = window.outputs_reading(lo, hi + 1, op.n_out[axis])
    if end > first:
        return first, end - 1
    # no output reads these inputs (stride > kernel): the empty range just after them
    k, s, p, n = op.kernel[axis], op.stride[axis], op.pad[axis], op.n_out[axis]
    return max(0, -((-(lo + p - k + 1)) // s)), min(n - 1, (hi + p) // s)


@dataclass
class _AxisPlan:
    """Per op: the fixed output window size and, per position, its start; the input window."""

    out_size: list[int]
    out_start: list[np.ndarray]
    in_size: list[int]
    in_start: list[np.ndarray]


def _plan_axis(chain: list[_Op], axis: int, starts: Sequence[int], size: int) -> _AxisPlan:
    lo = np.asarray(starts, np.int64)
    hi = lo + size - 1
    plan = _AxisPlan([], [], [], [])
    for op in chain:
        pairs = [_affected(op, axis, int(a), int(b)) for a, b in zip(lo, hi)]
        lo = np.array([p[0] for p in pairs], np.int64)
        hi = np.array([p[1] for p in pairs], np.int64)
        psize = int((hi - lo + 1).max())
        start = np.minimum(lo, op.n_out[axis] - psize)
        plan.out_size.append(psize)
        plan.out_start.append(start)
        window = AxisWindow(op.kernel[axis], op.stride[axis], 1, op.pad[axis])
        in_lo, in_hi = window.input_span(0, psize)
        plan.in_size.append(in_hi - in_lo)
        plan.in_start.append(np.array([window.first_tap(int(o)) for o in start], np.int64))
    return plan


def _cost(chain: list[_Op], rows: _AxisPlan, cols: _AxisPlan, end: int, suffix_macs: float,
          full_macs: Sequence[float]) -> float:
    """Estimated work per position (multiply-add equivalents) when ``end`` ops run incrementally."""
    cost = suffix_macs + sum(full_macs[end:])
    for i in range(end):
        op = chain[i]
        cost += rows.out_size[i] * cols.out_size[i] * op.macs_per_out
        if not op.pointwise:  # a window cut from the cache, with the previous window pasted in
            cin = chain[i - 1].channels if i else 1
            cost += 4.0 * rows.in_size[i] * cols.in_size[i] * max(cin, 1) + 2e5
    if end:
        last = chain[end - 1]
        cost += 2.0 * last.n_out[0] * last.n_out[1] * last.channels  # the paste into the cached map
    return cost


# --------------------------------------------------------------------------------------------
# programs


def _window_program(graph: Graph, ops: list[_Op], extra: list[str]) -> Graph:
    """The ops of one group run on a window: no padding, no ceil mode."""
    nodes = []
    for op in ops:
        node = op.node
        attrs = dict(node.attrs)
        if not op.pointwise:
            attrs["pads"] = [0, 0, 0, 0]
            if "ceil_mode" in attrs:
                attrs["ceil_mode"] = 0
        nodes.append(Node(node.name, node.op_type, list(node.inputs), list(node.outputs), attrs, node.source))
    used = {i for n in nodes for i in n.inputs if i}
    outputs = [ops[-1].node.outputs[0]] + [t for t in extra if t != ops[-1].node.outputs[0]]
    return Graph(nodes=nodes, inputs=[graph.variable_inputs(ops[0].node)[0]], outputs=outputs, constants={k: v for k, v in graph.constants.items() if k in used},
                 shapes=graph.shapes, dtypes=graph.dtypes, parameter_refs=graph.parameter_refs,
                 name=f"occlusion-window({graph.name}:{ops[0].node.name})")


def _suffix_program(graph: Graph, start: str, skip: set[str], layer: str | None, cls: ClassOutput | None) -> Graph:
    """From tensor ``start`` (the pasted map, or the images) to the layer totals and probabilities."""
    from zfprobe.program import ProgramBuilder

    wanted = ([layer] if layer else []) + ([cls.tensor] if cls else [])
    b = ProgramBuilder(graph, prefix="zf_occ")
    for node in graph.ancestors(wanted):
        if node.name not in skip:
            b.nodes.append(node)
    outputs = []
    if layer:
        rank = len(graph.shape(layer))
        total = b.op("ReduceSum", layer, axes=list(range(2, rank)), keepdims=0) if rank > 2 else \
            b.op("Flatten", layer, axis=1)
        outputs.append(total)
        b.shapes[total] = (1, graph.shape(layer)[1])
    if cls:
        flat = b.op("Flatten", cls.tensor, axis=1)
        prob = b.op("Softmax", flat, axis=1) if cls.softmax else flat
        outputs.append(prob)
        b.shapes[prob] = (1, cls.classes)
    program = b.build([start], outputs, name=f"occlusion-suffix({graph.name}:{start})")
    produced = {o for n in program.nodes for o in n.outputs} | {start}
    for node in program.nodes:
        missing = [t for t in program.variable_inputs(node) if t not in produced]
        if missing:
            raise _NotIncremental(f"node {node.name} also reads {missing[0]}")
    return program


class _NotIncremental(Exception):
    pass


# --------------------------------------------------------------------------------------------
# the engine


@dataclass
class _Engine:
    """Computes per-position layer totals and class probabilities for one image."""

    probe: object
    layer: str | None                 # the tensor whose totals are recorded
    cls: ClassOutput | None
    end: int                          # number of chain ops run incrementally
    chain: list[_Op]
    rows: _AxisPlan | None
    cols: _AxisPlan | None
    channels_last: bool = False       # an NHWC image input (plain path only)
    groups: list[list[int]] = field(default_factory=list)
    programs: list[Graph] = field(default_factory=list)
    suffix: Graph | None = None
    layer_in_prefix: int | None = None  # index of the chain op producing the layer (-1: the input)

    @property
    def method(self) -> str:
        return "incremental" if self.end else "plain"


def _choose_end(graph: Graph, chain: list[_Op], rows: _AxisPlan, cols: _AxisPlan, layer: str | None,
                cls: ClassOutput | None) -> int:
    wanted = ([layer] if layer else []) + ([cls.tensor] if cls else [])
    chain_names = {op.node.name for op in chain}
    suffix_macs = 0.0
    for node in graph.ancestors(wanted):
        if node.name in chain_names:
            continue
        suffix_macs += _node_macs(graph, node)
    needed = {n.name for n in graph.ancestors(wanted)}
    full = [op.n_out[0] * op.n_out[1] * op.macs_per_out if op.node.name in needed else 0.0 for op in chain]
    best, best_cost = 0, _cost(chain, rows, cols, 0, suffix_macs, full)
    for end in range(1, len(chain) + 1):
        if chain[end - 1].node.name not in needed:
            break
        cost = _cost(chain, rows, cols, end, suffix_macs, full)
        if cost < best_cost * 0.98:
            best, best_cost = end, cost
    return best


def multiply_adds(engine: _Engine) -> tuple[float, float]:
    """Multiply-adds per occluded position of the plain plan (the whole network) and of the
    engine's incremental plan (its first ``end`` local ops on windows only), without the
    bookkeeping; their ratio is the ideal speed-up of incremental inference."""
    graph: Graph = engine.probe.graph
    wanted = ([engine.layer] if engine.layer else []) + ([engine.cls.tensor] if engine.cls else [])
    needed = graph.ancestors(wanted)
    chain_names = {op.node.name for op in engine.chain}
    suffix = sum(_node_macs(graph, n) for n in needed if n.name not in chain_names)
    names = {n.name for n in needed}
    full = [op.n_out[0] * op.n_out[1] * op.macs_per_out if op.node.name in names else 0.0 for op in engine.chain]
    plain = suffix + sum(full)
    incremental = suffix + sum(full[engine.end:])
    for i in range(engine.end):
        incremental += engine.rows.out_size[i] * engine.cols.out_size[i] * engine.chain[i].macs_per_out
    return plain, incremental


def _node_macs(graph: Graph, node: Node) -> float:
    out = node.outputs[0] if node.outputs else ""
    size = float(np.prod(graph.shapes.get(out, (1,))[1:])) if out in graph.shapes else 0.0
    if node.op_type == "Conv" and graph.is_constant(node.inputs[1]):
        w = graph.constants[node.inputs[1]].shape
        return size * float(np.prod(w[1:]))
    if node.op_type in ("Gemm", "MatMul") and len(node.inputs) > 1 and graph.is_constant(node.inputs[1]):
        w = graph.constants[node.inputs[1]].shape
        return float(np.prod(w)) * (size / max(1, min(w)) if node.op_type == "MatMul" else 1.0)
    return size * 2.0


def build_engine(probe, layer: str | None, cls: ClassOutput | None, size: int, rows: list[int], cols: list[int],
                 method: str = "auto", channels_last: bool = False, depth: int | None = None) -> _Engine:
    """The plan and programs for one geometry, cached on the probe (so backend sessions are reused).

    ``depth`` (tests) fixes how many chain ops run incrementally instead of the cost model."""
    key = ("occlusion", layer, cls, size, tuple(rows), tuple(cols), method, channels_last, depth)
    cache = getattr(probe, "_programs", None)
    if cache is not None and key in cache:
        return cache[key]
    engine = _build_engine(probe, layer, cls, size, rows, cols, "plain" if channels_last else method, depth)
    engine.channels_last = channels_last
    if cache is not None:
        cache[key] = engine
    return engine


def _build_engine(probe, layer, cls, size, rows, cols, method, depth=None) -> _Engine:
    graph: Graph = probe.graph
    chain = local_chain(graph) if method != "plain" else []
    rplan = _plan_axis(chain, 0, rows, size) if chain else None
    cplan = _plan_axis(chain, 1, cols, size) if chain else None
    end = 0
    if chain:
        end = _choose_end(graph, chain, rplan, cplan, layer, cls)
        if method == "incremental" and end == 0:
            end = 1
        if depth is not None:
            end = min(depth, len(chain))
    while True:
        try:
            return _assemble(probe, layer, cls, chain, rplan, cplan, end)
        except _NotIncremental as exc:
            if end == 0:
                raise OptionError(f"occlusion needs a model whose outputs depend on its image input only ({exc})") from None
            end -= 1


def _assemble(probe, layer, cls, chain, rplan, cplan, end) -> _Engine:
    graph: Graph = probe.graph
    engine = _Engine(probe, layer, cls, end, chain, rplan, cplan)
    prefix = chain[:end]
    skip = {op.node.name for op in prefix}
    chain_out = {op.node.outputs[0]: i for i, op in enumerate(prefix)}
    if layer is not None and (layer in chain_out or (layer == graph.inputs[0] and end)):
        engine.layer_in_prefix = chain_out.get(layer, -1)
    cache = getattr(probe, "_programs", {})  # programs do not depend on the geometry: shared
    # groups: a windowed op and the point-wise ops after it (leading point-wise ops form a group)
    for i, op in enumerate(prefix):
        if not engine.groups or not op.pointwise:
            engine.groups.append([i])
        else:
            engine.groups[-1].append(i)
    for group in engine.groups:
        ops = [prefix[i] for i in group]
        extra = [layer] if engine.layer_in_prefix is not None and engine.layer_in_prefix in group else []
        key = ("occlusion-window", tuple(op.node.name for op in ops), tuple(extra))
        if key not in cache:
            cache[key] = _window_program(graph, ops, extra)
        engine.programs.append(cache[key])
    start = prefix[-1].node.outputs[0] if prefix else graph.inputs[0]
    suffix_layer = layer if engine.layer_in_prefix is None else None
    if suffix_layer is None and cls is None:
        return engine  # the layer lies in the windowed part and no class maps are wanted
    key = ("occlusion-suffix", start, frozenset(skip), suffix_layer, cls)
    if key not in cache:  # shared by every geometry, so the backend's session is built once
        cache[key] = _suffix_program(graph, start, skip, suffix_layer, cls)
    engine.suffix = cache[key]
    return engine


def _batch_size(graph: Graph, program: Graph, budget: int) -> int:
    per = sum(4 * int(np.prod(graph.shapes[o][1:])) for n in program.nodes for o in n.outputs if o in graph.shapes)
    return int(max(1, min(MAX_BATCH, budget // max(1, 2 * per))))


def _pad_for(cache: np.ndarray, r_start: np.ndarray, c_start: np.ndarray, h: int, w: int, value: float):
    top = max(0, -int(r_start.min()))
    left = max(0, -int(c_start.min()))
    bottom = max(0, int(r_start.max()) + h - cache.shape[1])
    right = max(0, int(c_start.max()) + w - cache.shape[2])
    padded = np.pad(cache, ((0, 0), (top, bottom), (left, right)), constant_values=value) if top + bottom + left + right \
        else cache
    return padded, (top, left)


def run_engine(engine: _Engine, image: np.ndarray, fill: np.ndarray, size: int, rows: list[int], cols: list[int],
               memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False):
    """Per-position layer totals [nr, nc, C] and probabilities [nr, nc, K] (each or None), and the
    same two for the unoccluded image ([C] and [K])."""
    probe = engine.probe
    graph: Graph = probe.graph
    backend = probe.backend
    prefix = engine.chain[:engine.end]
    x = np.ascontiguousarray(image[0], dtype=np.float32)        # [C, H, W] ([H, W, C] if channels_last)
    # caches of the original image: the input of every group, the layer, the prefix end
    group_inputs = [graph.variable_inputs(prefix[g[0]].node)[0] for g in engine.groups]
    wanted = [t for t in group_inputs if t != graph.inputs[0]]
    end_tensor = prefix[-1].node.outputs[0] if prefix else None
    if end_tensor:
        wanted.append(end_tensor)
    if engine.layer_in_prefix is not None and engine.layer not in wanted and engine.layer != graph.inputs[0]:
        wanted.append(engine.layer)
    cache = {graph.inputs[0]: x}
    if wanted:
        wanted = list(dict.fromkeys(wanted))
        for t, v in zip(wanted, probe.activations(image, wanted)):
            cache[t] = v[0]
    padded = []
    for g, t in zip(engine.groups, group_inputs):
        op = prefix[g[0]]
        i = g[0]
        padded.append(_pad_for(cache[t], engine.rows.in_start[i], engine.cols.in_start[i],
                               engine.rows.in_size[i], engine.cols.in_size[i], op.pad_value))
    layer_total0 = None
    if engine.layer_in_prefix is not None:
        lmap = cache[engine.layer].astype(np.float64)
        layer_total0 = lmap.reshape(lmap.shape[0], -1).sum(1)
        lcum = np.pad(lmap.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))  # integral image
    # the unoccluded image, through the same suffix program
    base_totals, base_probs = layer_total0, None
    if engine.suffix is not None:
        base_in = cache[end_tensor] if prefix else x
        outs = backend.run(engine.suffix, {engine.suffix.inputs[0]: base_in[None]}, engine.suffix.outputs)
        k = 0
        if engine.layer is not None and engine.layer_in_prefix is None:
            base_totals, k = outs[0][0].astype(np.float64), 1
        base_probs = outs[k][0] if engine.cls is not None else None

    nr, nc = len(rows), len(cols)
    grid = [(a, b) for a in range(nr) for b in range(nc)]
    totals = probs = None
    batch = min(_batch_size(graph, p, memory_budget) for p in ([engine.suffix] if engine.suffix else engine.programs))
    rows_a, cols_a = np.asarray(rows), np.asarray(cols)
    channels = x.shape[2] if engine.channels_last else x.shape[0]
    fill_patch = np.broadcast_to(fill.astype(np.float32)[:, None, None], (channels, size, size))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(grid), unit="pos", desc="occlusion", leave=False)
    for s0 in range(0, len(grid), batch):
        part = grid[s0:s0 + batch]
        ir = np.array([p[0] for p in part])
        ic = np.array([p[1] for p in part])
        B = len(part)
        # the previous window: starts, and the values [B, C, h, w]
        prev_r, prev_c = rows_a[ir], cols_a[ic]
        prev = np.broadcast_to(fill_patch, (B,) + fill_patch.shape)
        layer_tot = None
        if engine.layer_in_prefix == -1:
            layer_tot = _window_totals(layer_total0, lcum, prev, prev_r, prev_c)
        for gi, group in enumerate(engine.groups):
            i = group[0]
            r0, c0 = engine.rows.in_start[i][ir], engine.cols.in_start[i][ic]
            h, w = engine.rows.in_size[i], engine.cols.in_size[i]
            if prefix[i].pointwise and gi > 0:
                inp = np.ascontiguousarray(prev)
            else:
                pad_arr, (mr, mc) = padded[gi]
                inp = np.empty((B, pad_arr.shape[0], h, w), np.float32)
                ph, pw = prev.shape[2], prev.shape[3]
                dr, dc = prev_r - r0, prev_c - c0
                for b in range(B):
                    rr, cc = r0[b] + mr, c0[b] + mc
                    inp[b] = pad_arr[:, rr:rr + h, cc:cc + w]
                    # the part of the previous window inside this input window
                    ra, ca = max(0, -dr[b]), max(0, -dc[b])
                    rb, cb = min(ph, h - dr[b]), min(pw, w - dc[b])
                    if ra < rb and ca < cb:
                        inp[b, :, dr[b] + ra:dr[b] + rb, dc[b] + ca:dc[b] + cb] = prev[b, :, ra:rb, ca:cb]
            program = engine.programs[gi]
            outs = backend.run(program, {program.inputs[0]: inp}, program.outputs)
            last = group[-1]
            prev = outs[0]
            prev_r, prev_c = engine.rows.out_start[last][ir], engine.cols.out_start[last][ic]
            if engine.layer_in_prefix is not None and engine.layer_in_prefix in group:
                k = group.index(engine.layer_in_prefix)
                lpatch = outs[0] if group[k] == last else outs[1]
                layer_tot = _window_totals(layer_total0, lcum, lpatch, engine.rows.out_start[group[k]][ir],
                                           engine.cols.out_start[group[k]][ic])
        if engine.suffix is None:
            totals = totals if totals is not None else np.zeros((nr, nc, layer_tot.shape[1]), np.float64)
            totals[ir, ic] = layer_tot
            if bar is not None:
                bar.update(B)
            continue
        # the full input of the suffix: the cached map (or image) with the last window pasted in
        base = cache[prefix[-1].node.outputs[0]] if prefix else x
        full = np.empty((B,) + base.shape, np.float32)
        full[:] = base
        ph, pw = prev.shape[2], prev.shape[3]
        for b in range(B):
            if engine.channels_last:
                full[b, prev_r[b]:prev_r[b] + ph, prev_c[b]:prev_c[b] + pw, :] = prev[b].transpose(1, 2, 0)
            else:
                full[b, :, prev_r[b]:prev_r[b] + ph, prev_c[b]:prev_c[b] + pw] = prev[b]
        outs = backend.run(engine.suffix, {engine.suffix.inputs[0]: full}, engine.suffix.outputs)
        k = 0
        if engine.layer is not None and engine.layer_in_prefix is None:
            layer_tot = outs[0]
            k = 1
        if layer_tot is not None:
            if totals is None:
                totals = np.zeros((nr, nc, layer_tot.shape[1]), np.float64)
            totals[ir, ic] = layer_tot
        if engine.cls is not None:
            if probs is None:
                probs = np.zeros((nr, nc, outs[k].shape[1]), np.float32)
            probs[ir, ic] = outs[k]
        if bar is not None:
            bar.update(B)
    if bar is not None:
        bar.close()
    return totals, probs, base_totals, base_probs


def _window_totals(total0: np.ndarray, cum: np.ndarray, patch: np.ndarray, r0: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """Per position: the original per-channel total minus the window's original sum plus the new one."""
    h, w = patch.shape[2], patch.shape[3]
    r1, c1 = r0 + h, c0 + w
    orig = cum[:, r1, c1] - cum[:, r0, c1] - cum[:, r1, c0] + cum[:, r0, c0]     # [C, B]
    new = patch.astype(np.float64).reshape(patch.shape[0], patch.shape[1], -1).sum(2)  # [B, C]
    return total0[None, :] - orig.T + new


# --------------------------------------------------------------------------------------------
# the public API


@dataclass
class OcclusionResult:
    """The maps of one image (arrays indexed [row position, column position])."""

    layer: str
    tensor: str
    channel: int | None                  # the strongest feature map (None without a layer)
    size: int
    stride: int
    rows: list[int]                      # top-left corners of the square
    cols: list[int]
    fill: str
    fill_value: list[float]
    activation: np.ndarray | None        # (b) total activation of the channel
    probability: np.ndarray | None       # (d) probability of ``label``
    label_map: np.ndarray | None         # (e) most probable class
    label: int | None
    label_source: str | None             # "given" or "top-1 of the unoccluded image"
    base_activation: float | None
    base_probability: float | None
    base_label: int | None
    class_source: str | None
    class_names: list[str] | None
    projection: np.ndarray | None        # (c) [*input] in model layout
    projection_note: str
    image: np.ndarray                    # display RGB uint8 [H, W, 3]
    method: str
    incremental_layers: list[str]
    preprocessing: object = None
    image_path: str | None = None
    timings: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"rows": np.asarray(self.rows), "cols": np.asarray(self.cols),
               "centre_y": np.asarray(self.rows) + (self.size - 1) / 2,
               "centre_x": np.asarray(self.cols) + (self.size - 1) / 2}
        if self.activation is not None:
            out["activation"] = self.activation
        if self.probability is not None:
            out["probability"] = self.probability
        if self.label_map is not None:
            out["label_map"] = self.label_map
        if self.projection is not None:
            out["projection"] = self.projection
        return out

    def save(self, out_dir: str, probe=None) -> list[str]:
        from zfprobe.occlusion_render import save_result

        return save_result(self, out_dir, probe)


def occlude(probe, image, layer: str | None, size: int = 8, stride: int = 4, label: int | None = None,
            fill="grey", probability: bool | None = None, channel: int | None = None, method: str = "auto",
            project: bool = True, rule: str = "deconvnet", preprocessing=None, class_names: list[str] | None = None,
            memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False) -> OcclusionResult:
    """Occlusion maps of one image (a path, or a preprocessed array [1, ...]); see the module docstring.

    ``probability``: None computes the probability and label maps when the model has a class
    output; True requires them (:class:`NoClassOutputError` otherwise); False skips them.
    ``channel`` overrides the strongest feature map of ``layer``. ``layer`` may be None when only
    the class maps are wanted.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise OptionError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    graph: Graph = probe.graph
    prep = preprocessing if preprocessing is not None else probe.preprocessing
    display, x, image_path = probe.load_input(image, prep)
    x = probe._check_images(x)
    if x.shape[0] != 1:
        raise ImageError(f"occlusion takes one image, not a batch of {x.shape[0]}")
    if x.ndim != 4:
        raise ImageError("occlusion needs an image input [1, C, H, W] or [1, H, W, C]")
    channels_last = prep is not None and prep.layout == "NHWC"
    _, c, h, w = (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if channels_last else x.shape
    if display is None:
        g = x[0].mean(0)
        g = (g - g.min()) / max(1e-12, float(g.max() - g.min())) * 255
        display = np.repeat(np.round(g).astype(np.uint8)[..., None], 3, axis=2)
    check_geometry(h, w, size, stride)
    fill_vec, fill_desc = fill_values(fill, prep, c)

    cls = class_output(graph)
    want_probs = probability if probability is not None else cls is not None
    if want_probs or label is not None:
        if cls is None:
            what = "the probability and label maps" if label is None else f"--label {label}"
            raise NoClassOutputError(
                f"the model has no class output (its output '{graph.outputs[0]}' has shape "
                f"{list(graph.shapes.get(graph.outputs[0], ()))}, not [N, classes]): cannot make {what}; "
                "the activation map (--layer) still works")
        if label is not None and not 0 <= int(label) < cls.classes:
            raise OptionError(f"label {label} is out of range: the model has {cls.classes} classes (0..{cls.classes - 1})")
        want_probs = True
    if not want_probs:
        cls = None
    if layer is None and cls is None:
        raise OptionError("nothing to compute: give a layer, or use a model with a class output")
    tensor = probe.resolve(layer) if layer is not None else None
    if tensor is not None and channel is not None:
        n_channels = graph.shape(tensor)[1] if len(graph.shape(tensor)) > 1 else 1
        if not 0 <= channel < n_channels:
            raise OptionError(f"channel {channel} is out of range: layer {layer} has {n_channels} channels (0..{n_channels - 1})")
    names = class_names if class_names is not None else (prep.labels if prep is not None else None)

    rows, cols = positions(h, size, stride), positions(w, size, stride)
    engine = build_engine(probe, tensor, cls, size, rows, cols, method, channels_last)
    t1 = time.perf_counter()

    totals, probs, base_totals, base_probs = run_engine(engine, x, fill_vec, size, rows, cols, memory_budget, progress)
    t2 = time.perf_counter()
    if tensor is not None:
        if channel is None:
            channel = int(np.argmax(base_totals))
    base_label = int(np.argmax(base_probs)) if base_probs is not None else None
    label_source = None
    if cls is not None:
        label_source = "given" if label is not None else "top-1 of the unoccluded image"
        label = int(label) if label is not None else base_label

    projection, note = None, ""
    if project and tensor is not None and layer != probe.input_name:
        from zfprobe.seeds import feature_map, seed_tensor

        try:
            acts = probe.activations(x, layer)
            seeds, owner = seed_tensor(acts, [feature_map(acts, channel)])
            projection = probe.project(x, layer, seeds, owner, rule=rule)[0]
            note = f"deconvnet ({rule}) projection of feature map {channel} of {layer} (whole map as seed)"
        except ZfprobeError as exc:
            note = f"no projection: {exc}"
    t3 = time.perf_counter()

    return OcclusionResult(
        layer=layer or "", tensor=tensor or "", channel=channel, size=int(size), stride=int(stride),
        rows=rows, cols=cols, fill=fill_desc, fill_value=[float(v) for v in fill_vec],
        activation=totals[:, :, channel].astype(np.float32) if totals is not None else None,
        probability=probs[:, :, label].astype(np.float32) if probs is not None else None,
        label_map=probs.argmax(2).astype(np.int64) if probs is not None else None,
        label=label if cls is not None else None, label_source=label_source,
        base_activation=float(base_totals[channel]) if base_totals is not None else None,
        base_probability=float(base_probs[label]) if base_probs is not None else None,
        base_label=base_label, class_source=cls.source if cls else None, class_names=list(names) if names else None,
        projection=projection, projection_note=note, image=display, method=engine.method,
        incremental_layers=[op.node.name for op in engine.chain[:engine.end]], preprocessing=prep,
        image_path=image_path,
        timings={"plan": round(t1 - t0, 4), "maps": round(t2 - t1, 4), "projection": round(t3 - t2, 4)})


def occlusion_maps(probe, images: np.ndarray, layer: str | None, size: int, stride: int, fill: np.ndarray | float = 0.0,
                   method: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET, channels_last: bool = False):
    """Low level: raw per-position results for a preprocessed image [1, C, H, W].

    Returns ``(totals [nr, nc, C] or None, probabilities [nr, nc, K] or None, rows, cols, method)``;
    ``fill`` is in model space (a scalar or one value per channel). ``channels_last``: the image
    is [1, H, W, C].
    """
    x = probe._check_images(images)
    h, w, c = (x.shape[1], x.shape[2], x.shape[3]) if channels_last else (x.shape[2], x.shape[3], x.shape[1])
    check_geometry(h, w, size, stride)
    fill_vec = np.broadcast_to(np.asarray(fill, np.float32).reshape(-1), (c,)).copy()
    cls = class_output(probe.graph)
    tensor = probe.resolve(layer) if layer is not None else None
    rows, cols = positions(h, size, stride), positions(w, size, stride)
    engine = build_engine(probe, tensor, cls, size, rows, cols, method, channels_last)
    totals, probs, _, _ = run_engine(engine, x, fill_vec, size, rows, cols, memory_budget)
    return totals, probs, rows, cols, engine.method
