"""The op table: how each forward op is reversed in the deconvnet.

One entry per op type, registered with :func:`inverse`. An entry receives the forward node and
the signals arriving at its outputs, and returns the signals for its inputs, written as
canonical ops into the program. Linear ops get their exact adjoint; rectifiers follow the rule
(``deconvnet``: relu(signal); ``gradient``: signal * 1[x > 0]; ``guided``: both); other
nonlinearities their local derivative (see docs/methods.md for the policy table).

``CHECKS`` holds per-op conditions that make a node impossible to invert (e.g. a Pad in reflect
mode); they run over the whole path before anything is built.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from zfprobe.engine.graph import Graph, Node
from zfprobe.ops.geometry import axis_windows
from zfprobe.ops.onnx_semantics import pool_divisors
from zfprobe.engine.program import ProgramBuilder
from zfprobe.ops.registry import DECOMPOSITIONS

from zfprobe.engine.op_table import CHECKS, INVERSES, InverseFn, Signal, check, inverse  # noqa: F401 (re-exported)

UNSUPPORTED_HINT = (
    "zfprobe has no exact reversal for it; probe a layer below it, or replace it in the model "
    "(e.g. export with a supported equivalent)"
)


def check_invertible(graph: Graph, node: Node) -> Optional[str]:
    """Why ``node`` cannot be inverted, or None if it can."""
    if node.op_type not in INVERSES:
        return UNSUPPORTED_HINT
    for tensor in node.inputs:
        if tensor and not graph.is_constant(tensor) and graph.dtypes.get(tensor, np.dtype(np.float32)).kind != "f":
            return f"its input '{tensor}' is not floating point; probe a layer below it"
    fn = CHECKS.get(node.op_type)
    return fn(graph, node) if fn else None


class InverseContext:
    """What a reversal needs: the program builder, the forward graph, the options, and
    per-seed copies of forward tensors (``saved``)."""

    def __init__(self, builder: ProgramBuilder, graph: Graph, options, seed_image: str, single_image: bool = False):
        self.b = builder
        self.single_image = single_image
        self.graph = graph
        self.options = options
        self.seed_image = seed_image
        self._saved: dict[str, str] = {}
        self.extra_outputs: dict[str, str] = {}
        self.seed_tensor: str | None = None  # the probed layer (its own ceiling does not mask the seed)

    # -- forward -----------------------------------------------------------------------------
    def emit_forward(self, node: Node) -> None:
        if node.op_type == "MaxPool":
            # Keep the switches: the optional second output of MaxPool.
            idx = node.outputs[0] + "::switches"
            self.extra_outputs[node.outputs[0]] = idx
            self.b.nodes.append(Node(node.name, node.op_type, node.inputs, [node.outputs[0], idx], node.attrs, node.source))
        else:
            self.b.nodes.append(node)

    def saved(self, tensor: str) -> str:
        """The forward tensor ``tensor`` for each seed: [K, ...], or [1, ...] (broadcasting)
        when the program is built for a single image."""
        if self.single_image:
            return tensor
        if tensor not in self._saved:
            self._saved[tensor] = self.b.op("Gather", tensor, self.seed_image, axis=0, hint="saved")
        return self._saved[tensor]

    def switches(self, pooled: str) -> str:
        return self.extra_outputs[pooled]

    # -- helpers -----------------------------------------------------------------------------
    def shape(self, tensor: str) -> tuple[int, ...]:
        return self.graph.shape(tensor)

    def sum(self, signals: list[str]) -> Signal:
        if not signals:
            return None
        if len(signals) == 1:
            return signals[0]
        return self.b.op("Sum", *signals, hint="fanin")

    def batch_shape(self, ref: str, rest: tuple[int, ...]) -> str:
        """A shape tensor [K, *rest] where K is the batch size of ``ref`` at run time."""
        k = self.b.op("Shape", ref, hint="shape", start=0, end=1)
        return self.b.op("Concat", k, self.b.const(list(rest), "rest", np.int64), axis=0, hint="shape")

    def zeros(self, ref: str, rest: tuple[int, ...]) -> str:
        return self.b.op("ConstantOfShape", self.batch_shape(ref, rest), value=0.0, hint="zeros")

    def zeros_like_seed(self, shape: tuple[int, ...]) -> str:
        return self.zeros("zf_seed", tuple(shape[1:]))

    def mask(self, x: str, op: str, threshold: float) -> str:
        """1.0 where ``x op threshold`` else 0.0 (x per seed)."""
        cmp = self.b.op(op, self.saved(x), self.b.const(threshold, "thr"), hint="cmp")
        return self.b.op("Cast", cmp, to=1, hint="mask")

    def mul(self, a: str, b: str) -> str:
        return self.b.op("Mul", a, b)

    def unbroadcast(self, g: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str:
        """Sum ``g`` (shaped like the output) down to an input that was broadcast."""
        if tuple(in_shape) == tuple(out_shape):
            return g
        lead = len(out_shape) - len(in_shape)
        padded = (1,) * lead + tuple(in_shape)
        axes = [i for i, (a, o) in enumerate(zip(padded, out_shape)) if a == 1 and o != 1 and i > 0]
        if axes:
            g = self.b.op("ReduceSum", g, axes=axes, keepdims=1, hint="unbroadcast")
        if lead or len(in_shape) != len(out_shape):
            g = self.b.op("Reshape", g, shape=[-1] + list(in_shape[1:]), hint="unbroadcast")
        return g


def _rectify(ctx: InverseContext, g: str, nonlinearity: str = "Relu", **attrs) -> str:
    return ctx.b.op(nonlinearity, g, hint="rectify", **attrs)


def _spatial_in_out(ctx: InverseContext, node: Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])


def _conv_transpose(ctx: InverseContext, g: str, weight: str, attrs: dict, in_shape, out_shape, group: int) -> str:
    """The adjoint of a Conv / AveragePool window: a transposed conv landing on exactly ``in_shape``."""
    windows = axis_windows(attrs, len(attrs["kernel_shape"]))
    pads = [w.transposed_pads(in_shape[2 + i], out_shape[2 + i]) for i, w in enumerate(windows)]
    return ctx.b.op("ConvTranspose", g, weight, hint="filter_T", kernel_shape=[w.kernel for w in windows],
                    strides=[w.stride for w in windows], dilations=[w.dilation for w in windows],
                    pads=[p[0] for p in pads] + [p[1] for p in pads], output_padding=[p[2] for p in pads], group=group)


# ------------------------------------------------------------------ rectifiers -------------
@inverse("Relu")
def _relu(ctx, node, gy):
    x, g = node.inputs[0], gy[0]
    rule = ctx.options.rule
    if rule == "deconvnet":
        return [_rectify(ctx, g)]
    m = ctx.mask(x, "Greater", 0.0)
    if rule == "gradient":
        return [ctx.mul(g, m)]
    return [ctx.mul(_rectify(ctx, g), m)]


@inverse("Clip")
def _clip(ctx, node, gy):
    """ReLU6-style clips (min 0) rectify like ReLU below and pass the local derivative above;
    other clips take their local derivative under every rule. The probed layer's own ReLU6 does
    not apply its ceiling to the seed (``seed_past_ceiling``, docs/methods.md)."""
    x, g = node.inputs[0], gy[0]
    lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    rule = ctx.options.rule
    if lo == 0.0 and node.outputs[0] == ctx.seed_tensor and getattr(ctx.options, "seed_past_ceiling", False):
        hi = np.inf
    upper = ctx.mask(x, "Less", hi) if np.isfinite(hi) else None
    lower = ctx.mask(x, "Greater", lo) if np.isfinite(lo) else None
    if lo == 0.0 and rule != "gradient":
        g = _rectify(ctx, g)
        if rule == "deconvnet":
            lower = None
    for m in (lower, upper):
        if m is not None:
            g = ctx.mul(g, m)
    return [g]


# ------------------------------------------------------------------ smooth nonlinearities ---
@inverse("Sigmoid")
def _sigmoid(ctx, node, gy):
    s = ctx.b.op("Sigmoid", ctx.saved(node.inputs[0]))
    ds = ctx.mul(s, ctx.b.op("Sub", ctx.b.const(1.0, "one"), s))
    return [ctx.mul(gy[0], ds)]


@inverse("Tanh")
def _tanh(ctx, node, gy):
    t = ctx.b.op("Tanh", ctx.saved(node.inputs[0]))
    dt = ctx.b.op("Sub", ctx.b.const(1.0, "one"), ctx.mul(t, t))
    return [ctx.mul(gy[0], dt)]


@inverse("HardSigmoid")
def _hardsigmoid(ctx, node, gy):
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    x = ctx.saved(node.inputs[0])
    z = ctx.b.op("Add", ctx.mul(x, ctx.b.const(alpha, "alpha")), ctx.b.const(beta, "beta"))
    inside = ctx.b.op("And", ctx.b.op("Greater", z, ctx.b.const(0.0, "zero")), ctx.b.op("Less", z, ctx.b.const(1.0, "one")))
    d = ctx.b.op("Where", inside, ctx.b.const(alpha, "alpha"), ctx.b.const(0.0, "zero"))
    return [ctx.mul(gy[0], d)]


@inverse("HardSwish")
def _hardswish(ctx, node, gy):
    x = ctx.saved(node.inputs[0])
    mid = ctx.b.op("Add", ctx.b.op("Div", x, ctx.b.const(3.0, "three")), ctx.b.const(0.5, "half"))
    d = ctx.b.op("Where", ctx.b.op("Less", x, ctx.b.const(-3.0, "m3")), ctx.b.const(0.0, "zero"),
                 ctx.b.op("Where", ctx.b.op("Greater", x, ctx.b.const(3.0, "p3")), ctx.b.const(1.0, "one"), mid))
    return [ctx.mul(gy[0], d)]


@inverse("Softmax")
def _softmax(ctx, node, gy):
    axis = node.attrs["axis"]
    s = ctx.b.op("Softmax", ctx.saved(node.inputs[0]), axis=axis)
    dot = ctx.b.op("ReduceSum", ctx.mul(gy[0], s), axes=[axis], keepdims=1)
    return [ctx.mul(s, ctx.b.op("Sub", gy[0], dot))]


@check("Softmax")
def _softmax_check(graph, node):
    if node.attrs.get("legacy_flatten"):
        return "it is a pre-opset-13 Softmax over several axes; probe the logits below it"
    return None


# ------------------------------------------------------------------ convolution -------------
@inverse("Conv")
def _conv(ctx, node, gy):
    in_shape, out_shape = _spatial_in_out(ctx, node)
    return [_conv_transpose(ctx, gy[0], node.inputs[1], node.attrs, in_shape, out_shape, node.attrs["group"])] \
        + [None] * (len(node.inputs) - 1)


@check("Conv")
def _conv_check(graph, node):
    if not graph.is_constant(node.inputs[1]):
        return "its weights are computed at run time, not constants"
    return None


# ------------------------------------------------------------------ pooling -----------------
@inverse("AveragePool")
def _avgpool(ctx, node, gy):
    in_shape, out_shape = _spatial_in_out(ctx, node)
    a = node.attrs
    divisors = pool_divisors(in_shape[2:], axis_windows(a, len(a["kernel_shape"])), bool(a.get("count_include_pad", 0)))
    g = ctx.b.op("Div", gy[0], ctx.b.const(divisors[None, None], "divisor"))
    channels = in_shape[1]
    ones = ctx.b.const(np.ones((channels, 1, *a["kernel_shape"]), np.float32), "window")
    return [_conv_transpose(ctx, g, ones, a, in_shape, out_shape, channels)]


@inverse("GlobalAveragePool")
def _gap(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    spread = ctx.b.op("Expand", gy[0], shape=[1, 1, *in_shape[2:]])
    return [ctx.b.op("Div", spread, ctx.b.const(float(np.prod(in_shape[2:])), "area"))]


@inverse("GlobalMaxPool")
def _gmp(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    c, area = in_shape[1], int(np.prod(in_shape[2:]))
    x = ctx.b.op("Reshape", ctx.saved(node.inputs[0]), shape=[-1, c, area])
    idx = ctx.b.op("ArgMax", x, axis=2, keepdims=1, select_last_index=0)
    g = ctx.b.op("Reshape", gy[0], shape=[-1, c, 1])
    if ctx.single_image:
        idx = ctx.b.op("Expand", idx, ctx.b.op("Shape", g))
    flat = ctx.b.op("ScatterElements", ctx.zeros(gy[0], (c, area)), idx, g, axis=2, reduction="add")
    return [ctx.b.op("Reshape", flat, shape=[-1, *in_shape[1:]])]


@inverse("ReduceMean", "ReduceSum")
def _reduce(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    axes = node.attrs["axes"]
    kept = [1 if i in axes else s for i, s in enumerate(in_shape)]
    g = ctx.b.op("Reshape", gy[0], shape=[-1, *kept[1:]])
    g = ctx.b.op("Expand", g, shape=[1, *in_shape[1:]])
    if node.op_type == "ReduceMean":
        g = ctx.b.op("Div", g, ctx.b.const(float(np.prod([in_shape[i] for i in axes])), "count"))
    return [g]


@check("ReduceMean", "ReduceSum")
def _reduce_check(graph, node):
    if 0 in node.attrs["axes"]:
        return "it reduces over the batch axis"
    return None


# ------------------------------------------------------------------ normalization -----------
@inverse("BatchNormalization")
def _batchnorm(ctx, node, gy):
    """Inference BatchNorm is affine per channel: the adjoint scales by gamma / sqrt(var + eps).
    The scale is computed in the program from the live parameters, not frozen here."""
    _, scale, _, _, var = node.inputs[:5]
    rank = len(ctx.shape(node.inputs[0]))
    std = ctx.b.op("Sqrt", ctx.b.op("Add", var, ctx.b.const(node.attrs.get("epsilon", 1e-5), "eps")))
    factor = ctx.b.op("Reshape", ctx.b.op("Div", scale, std), shape=[-1] + [1] * (rank - 2))
    return [ctx.mul(gy[0], factor)] + [None] * (len(node.inputs) - 1)


@check("BatchNormalization")
def _bn_check(graph, node):
    if not all(graph.is_constant(t) for t in node.inputs[1:5]):
        return "its statistics are not constants (training-mode BatchNorm); export the model in eval mode"
    return None


@inverse("LRN")
def _lrn(ctx, node, gy):
    """Identity by default, as in the paper; with lrn='gradient' the exact derivative."""
    if ctx.options.lrn == "identity":
        return [gy[0]]
    a = node.attrs
    alpha, beta, bias, size = float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0)), int(a["size"])
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    shape = ctx.shape(node.inputs[0])
    c, area = shape[1], int(np.prod(shape[2:]))
    x = ctx.saved(node.inputs[0])

    def channel_window_sum(t: str, before: int, after: int) -> str:
        # A sum over a window of channels: an average pool along the channel axis, times size.
        t4 = ctx.b.op("Reshape", t, shape=[-1, 1, c, area])
        s = ctx.b.op("AveragePool", t4, kernel_shape=[size, 1], strides=[1, 1], pads=[before, 0, after, 0],
                     count_include_pad=1, ceil_mode=0)
        s = ctx.mul(s, ctx.b.const(float(size), "lrn_size"))
        return ctx.b.op("Reshape", s, shape=[-1, *shape[1:]])

    sq_sum = channel_window_sum(ctx.mul(x, x), lo, hi)
    d = ctx.b.op("Add", ctx.mul(sq_sum, ctx.b.const(alpha / size, "a_n")), ctx.b.const(bias, "bias"))
    direct = ctx.mul(gy[0], ctx.b.op("Pow", d, ctx.b.const(-beta, "mbeta")))
    u = ctx.mul(ctx.mul(gy[0], x), ctx.b.op("Pow", d, ctx.b.const(-beta - 1.0, "mbeta1")))
    cross = ctx.mul(ctx.mul(channel_window_sum(u, hi, lo), x), ctx.b.const(2.0 * alpha * beta / size, "coef"))
    return [ctx.b.op("Sub", direct, cross)]


# ------------------------------------------------------------------ dense --------------------
@inverse("Gemm")
def _gemm(ctx, node, gy):
    a = node.attrs
    g = ctx.b.op("Gemm", gy[0], node.inputs[1], alpha=a["alpha"], beta=0.0, transA=0, transB=1 - a["transB"])
    return [g] + [None] * (len(node.inputs) - 1)


@check("Gemm")
def _gemm_check(graph, node):
    if node.attrs.get("transA"):
        return "its data input is transposed (transA=1), which moves the batch axis"
    if not graph.is_constant(node.inputs[1]):
        return "its weight matrix is computed at run time"
    return None


@inverse("MatMul")
def _matmul(ctx, node, gy):
    w_t = ctx.b.op("Transpose", node.inputs[1], perm=[1, 0])
    return [ctx.b.op("MatMul", gy[0], w_t), None]


@check("MatMul")
def _matmul_check(graph, node):
    if graph.is_constant(node.inputs[0]) or not graph.is_constant(node.inputs[1]):
        return "only data @ constant-weights products are supported"
    if len(graph.shape(node.inputs[1])) != 2:
        return "only 2-D weight matrices are supported"
    return None


# ------------------------------------------------------------------ arithmetic ---------------
@inverse("Add", "Sum", "Sub")
def _add(ctx, node, gy):
    out_shape = ctx.shape(node.outputs[0])
    result = []
    for i, t in enumerate(node.inputs):
        if not t or ctx.graph.is_constant(t):
            result.append(None)
            continue
        g = ctx.unbroadcast(gy[0], ctx.shape(t), out_shape)
        if node.op_type == "Sub" and i == 1:
            g = ctx.b.op("Neg", g)
        result.append(g)
    return result


@inverse("Mul")
def _mul(ctx, node, gy):
    """By a constant: scale. Two variables (e.g. x * sigmoid(x)): product rule on forward values."""
    out_shape = ctx.shape(node.outputs[0])
    a, b = node.inputs
    result = []
    for mine, other in ((a, b), (b, a)):
        if ctx.graph.is_constant(mine):
            result.append(None)
            continue
        factor = other if ctx.graph.is_constant(other) else ctx.saved(other)
        result.append(ctx.unbroadcast(ctx.mul(gy[0], factor), ctx.shape(mine), out_shape))
    return result


@inverse("Neg")
def _neg(ctx, node, gy):
    return [ctx.b.op("Neg", gy[0])]


# ------------------------------------------------------------------ shape ops ----------------
@inverse("Identity", "Dropout")
def _identity(ctx, node, gy):
    return [gy[0]] + [None] * (len(node.inputs) - 1)


@inverse("Cast")
def _cast(ctx, node, gy):
    return [gy[0]]


@check("Cast")
def _cast_check(graph, node):
    if np.dtype(graph.dtypes.get(node.outputs[0], np.float32)).kind != "f":
        return "it casts to a non-floating type"
    return None


@inverse("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _reshape_back(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    return [ctx.b.op("Reshape", gy[0], shape=[-1] + list(in_shape[1:]))] + [None] * (len(node.inputs) - 1)


@check("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _reshape_check(graph, node):
    if node.op_type == "Flatten" and node.attrs.get("axis", 1) == 0:
        return "it flattens the batch axis"
    if node.op_type in ("Squeeze", "Unsqueeze") and 0 in node.attrs.get("axes", []):
        return "it squeezes or inserts the batch axis"
    return None


@inverse("Transpose")
def _transpose(ctx, node, gy):
    perm = node.attrs["perm"]
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return [ctx.b.op("Transpose", gy[0], perm=inv)]


@check("Transpose")
def _transpose_check(graph, node):
    if node.attrs["perm"][0] != 0:
        return "it moves the batch axis"
    return None


@inverse("Concat")
def _concat(ctx, node, gy):
    axis = node.attrs["axis"]
    result, start = [], 0
    for t in node.inputs:
        width = ctx.shape(t)[axis]
        if ctx.graph.is_constant(t):
            result.append(None)
        else:
            result.append(ctx.b.op("Slice", gy[0], starts=[start], ends=[start + width], axes=[axis], steps=[1]))
        start += width
    return result


@check("Concat")
def _concat_check(graph, node):
    if node.attrs["axis"] == 0:
        return "it concatenates along the batch axis"
    return None


@inverse("Split")
def _split(ctx, node, gy):
    axis = node.attrs["axis"]
    ref = next(g for g in gy if g is not None)
    parts = [g if g is not None else ctx.zeros(ref, tuple(ctx.shape(o)[1:])) for g, o in zip(gy, node.outputs)]
    return [ctx.b.op("Concat", *parts, axis=axis)]


@check("Split")
def _split_check(graph, node):
    return "it splits along the batch axis" if node.attrs["axis"] == 0 else None


# Op families kept in their own modules (zfprobe/ops/<family>.py) register into the tables of
# zfprobe.engine.op_table; importing this module imports all of them, so it holds the whole table.
import zfprobe.ops  # noqa: E402

zfprobe.ops.import_all()


def decompose(program: Graph, keep=frozenset()) -> Graph:
    """``program`` with each node that has a default decomposition
    (:data:`zfprobe.ops.registry.DECOMPOSITIONS`) and whose op is not in ``keep`` (the ops a
    backend has kernels for) replaced by that decomposition; ``program`` itself if there is none."""
    if not any(n.op_type in DECOMPOSITIONS and n.op_type not in keep for n in program.nodes):
        return program
    nodes, constants = [], dict(program.constants)
    for node in program.nodes:
        if node.op_type in DECOMPOSITIONS and node.op_type not in keep:
            parts, consts = DECOMPOSITIONS[node.op_type](node)
            nodes.extend(parts)
            constants.update(consts)
        else:
            nodes.append(node)
    return Graph(nodes=nodes, inputs=list(program.inputs), outputs=list(program.outputs), constants=constants,
                 shapes=program.shapes, dtypes=program.dtypes, parameter_refs=program.parameter_refs,
                 name=program.name, metadata=dict(program.metadata))

