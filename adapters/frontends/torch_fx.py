"""Native capture: a live ``nn.Module`` becomes zfprobe's graph straight from ``torch.fx``.

Why: the ONNX route (:mod:`zfprobe.adapters.frontends.torch_adapter`) exports the module with
torch's TorchScript ONNX exporter, serializes it and runs it once in onnxruntime, three heavy
steps (5-60 s on the model-zoo nets) to learn a graph torch can hand over directly. Here:

1. **Record** the module's own forward pass on the example as an fx graph
   (:mod:`zfprobe.adapters.frontends.torch_record`: every torch call watched, modules whose type
   has a converter kept as one call), with every tensor's static shape and the value of everything
   that is not an activation (sizes, constants, tensors computed from parameters only).
2. **Or**, where a recording cannot be exact, **trace** the module symbolically with ``torch.fx``
   (the same leaf rule; every submodule in inference mode, the flags restored after) and **run**
   the traced graph once on the example for the same shapes and values.
3. **Convert** each call to zfprobe's canonical ops (ONNX opset-17 semantics, static parameters as
   attributes) through the table :data:`CONVERTERS`, one converter per torch module type,
   function or tensor method (like onnx2torch's ``add_converter``, in reverse). A call that has
   no converter, or a converter that meets arguments it does not handle, raises
   :class:`CaptureError`: the caller then falls back to the ONNX route. Nothing is guessed.
4. **Check** the built graph on the example with the torch backend against the module's own
   output; any difference also means :class:`CaptureError` (never a wrong graph).

Names: a module call is named by its module path (``layer4.1.relu``; a second call of the same
module ``layer4.1.relu_1``), a functional op by the path of the module whose forward calls it
and its op type (``layer1.0.Relu_1``), exactly as the ONNX route names them. Parameters and
buffers stay live (``graph.parameter_refs``); a constant the forward computes from parameters
only (``self.weight * self.gain``, weight standardization) is a :class:`LiveComputation`,
recomputed by the torch backend from the live parameters at every run.
"""
from __future__ import annotations

import contextlib
import operator
from typing import Any, Callable

import numpy as np

from zfprobe.adapters.frontends.torch_record import first_paths, holds_tensor, note_result
from zfprobe.engine.graph import Graph, Node
from zfprobe.errors import ZfprobeError

INPUT_NAME = "input"


class CaptureError(ZfprobeError):
    """torch.fx capture cannot give an exact graph of this module (the ONNX route takes over)."""


class LiveComputation:
    """A ``parameter_refs`` handle for a constant the forward computes from parameters only: the
    fx sub-graph that computes it, re-run on the module's live parameters by the torch backend."""

    def __init__(self, graph, params: list[str]):
        self.graph, self.params = graph, params

    def compute(self, module):
        import torch
        import torch.fx as fx

        with torch.no_grad():
            return fx.Interpreter(module, graph=self.graph).run()

    def __repr__(self) -> str:
        return f"LiveComputation(<- {sorted(self.params)})"


class LiveMethod:
    """A ``parameter_refs`` handle for ``parameter.<method>(*args)`` (a Linear weight's
    transpose, a PReLU slope reshaped): one call on the live parameter, no fx graph to run."""

    def __init__(self, param: str, method: str, args: tuple):
        self.param, self.method, self.args = param, method, tuple(args)
        self.params = [param]

    def compute(self, module):
        import torch

        from zfprobe.adapters.backends.torch_backend import resolve_ref

        with torch.no_grad():
            return getattr(resolve_ref(module, self.param), self.method)(*self.args)

    def __repr__(self) -> str:
        return f"LiveMethod({self.param}.{self.method}{self.args})"


@contextlib.contextmanager
def inference_flags(model):
    """Every submodule in eval mode for the block; each ``training`` flag restored exactly after.

    The flags are set directly (not through ``train()`` / ``eval()``, which a model may
    override with side effects)."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, flag in saved:
            m.training = flag


# ------------------------------------------------------------------ converter table ---------
Converter = Callable[["_Builder", "Call"], Any]
CONVERTERS: dict[Any, Converter] = {}


def converts(*targets):
    """Register ``fn(builder, call) -> output`` for torch module types, functions or method names."""

    def register(fn: Converter) -> Converter:
        for t in targets:
            CONVERTERS[t] = fn
        return fn

    return register


class Call:
    """One fx call with its arguments resolved: activations as tensor names, the rest as values."""

    def __init__(self, node, module, args: tuple, kwargs: dict, raw_args: tuple, raw_kwargs: dict,
                 out_shape, scope: str, op_label: str):
        self.node, self.module, self.args, self.kwargs = node, module, args, kwargs
        self.raw_args, self.raw_kwargs = raw_args, raw_kwargs
        self.out_shape, self.scope, self.op_label = out_shape, scope, op_label

    def arg(self, i: int, name: str, default=None):
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)


class _Tensor(str):
    """The name of an activation tensor (a str, so Node inputs take it as is)."""


def _fail(call: Call, why: str):
    raise CaptureError(f"{call.op_label} at '{call.scope or '(top level)'}': {why}")


def _ints(v, n: int) -> list[int]:
    if isinstance(v, int):
        return [int(v)] * n
    v = [int(a) for a in v]
    return v * n if len(v) == 1 else v


# ------------------------------------------------------------------ the builder --------------
class _Builder:
    """Collects canonical nodes, constants and shapes while the converters run."""

    def __init__(self, model):
        self.model = model
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.refs: dict[str, Any] = {}
        self._count = 0
        self.call: Call | None = None
        self.pending: list[Node] = []

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}:{self._count}"

    def const(self, value, hint: str = "const") -> str:
        name = self.fresh(hint)
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.constants[name] = arr
        return name

    def param(self, path: str, tensor) -> str:
        """A parameter / buffer of the model, read live by the torch backend."""
        if path not in self.constants:
            t = tensor.detach()
            self.constants[path] = np.ascontiguousarray(t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy())
            self.refs[path] = path
        return path

    def emit(self, op_type: str, inputs: list, attrs: dict | None = None, shape=None) -> _Tensor:
        """One canonical node; ``shape``: its output's static shape (default: the call's)."""
        call = self.call
        out = _Tensor(self.fresh(f"{call.scope or 'top'}/{op_type}"))
        node = Node(op_type, op_type, [str(i) if i is not None else "" for i in inputs], [out], dict(attrs or {}),
                    source=call.node.name)
        self.pending.append(node)
        self.nodes.append(node)
        self.shapes[out] = tuple(shape if shape is not None else call.out_shape)
        self.dtypes[out] = np.dtype(np.float32)
        return out

    def shape(self, t) -> tuple:
        return self.shapes[t] if t in self.shapes else tuple(self.constants[t].shape)

    def operand(self, v) -> str:
        """A tensor name for an argument: activations as they are, numbers as float32 constants."""
        if isinstance(v, str):  # an activation, a parameter or a constant already named
            return v
        import torch

        if isinstance(v, torch.Tensor):
            return self.const(v.detach().float().cpu().numpy())
        if isinstance(v, (int, float, bool)):
            return self.const(np.float32(v))
        raise CaptureError(f"operand of type {type(v).__name__}")


# ------------------------------------------------------------------ shared conversions -------
def _pool_attrs(call: Call, nd: int, kernel, stride, padding, dilation, ceil_mode) -> dict:
    k = _ints(kernel, nd)
    s = _ints(stride if stride not in (None, []) else kernel, nd)
    p = _ints(padding, nd)
    d = _ints(dilation, nd)
    return {"kernel_shape": k, "strides": s, "pads": p + p, "dilations": d, "ceil_mode": int(bool(ceil_mode))}


def _conv(b: _Builder, call: Call, x, weight: str, bias: str | None, stride, padding, dilation, groups):
    w_shape = b.shape(weight)
    nd = len(w_shape) - 2
    kernel = list(w_shape[2:])
    s, d = _ints(stride, nd), _ints(dilation, nd)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * (2 * nd)
        elif padding == "same":  # torch: total = d*(k-1), the smaller half first
            total = [d[i] * (kernel[i] - 1) for i in range(nd)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            _fail(call, f"padding '{padding}'")
    else:
        p = _ints(padding, nd)
        pads = p + p
    attrs = {"kernel_shape": kernel, "strides": s, "dilations": d, "pads": pads, "group": int(groups)}
    return b.emit("Conv", [x, weight] + ([bias] if bias else []), attrs)


def _module_param(b: _Builder, call: Call, name: str) -> str | None:
    t = getattr(call.module, name, None)
    if t is None:
        return None
    return b.param(f"{call.node.target}.{name}", t)


# ------------------------------------------------------------------ module converters --------
def _module_converters():
    import torch.nn as nn

    @converts(nn.Conv1d, nn.Conv2d, nn.Conv3d)
    def conv_module(b, call):
        m = call.module
        if m.padding_mode != "zeros":
            _fail(call, f"padding_mode '{m.padding_mode}'")
        return _conv(b, call, call.args[0], _module_param(b, call, "weight"), _module_param(b, call, "bias"),
                     m.stride, m.padding, m.dilation, m.groups)

    @converts(nn.Linear)
    def linear_module(b, call):
        return _linear(b, call, call.args[0], _module_param(b, call, "weight"), _module_param(b, call, "bias"))

    @converts(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    def batchnorm_module(b, call):
        m = call.module
        if m.running_mean is None:
            _fail(call, "BatchNorm without running statistics normalizes by the batch")
        c = m.num_features
        w = _module_param(b, call, "weight") or b.const(np.ones(c, np.float32))
        bias = _module_param(b, call, "bias") or b.const(np.zeros(c, np.float32))
        return b.emit("BatchNormalization", [call.args[0], w, bias, _module_param(b, call, "running_mean"),
                                             _module_param(b, call, "running_var")], {"epsilon": float(m.eps)})

    @converts(nn.ReLU)
    def relu_module(b, call):
        return b.emit("Relu", [call.args[0]])

    @converts(nn.ReLU6)
    def relu6_module(b, call):
        return b.emit("Clip", [call.args[0]], {"min": 0.0, "max": 6.0})

    @converts(nn.Hardtanh)
    def hardtanh_module(b, call):
        return b.emit("Clip", [call.args[0]], {"min": float(call.module.min_val), "max": float(call.module.max_val)})

    @converts(nn.LeakyReLU)
    def leaky_module(b, call):
        return b.emit("LeakyRelu", [call.args[0]], {"alpha": float(call.module.negative_slope)})

    @converts(nn.ELU)
    def elu_module(b, call):
        return b.emit("Elu", [call.args[0]], {"alpha": float(call.module.alpha)})

    for cls, op in ((nn.Sigmoid, "Sigmoid"), (nn.Tanh, "Tanh"), (nn.Hardswish, "HardSwish"), (nn.Mish, "Mish")):
        converts(cls)(lambda b, call, op=op: b.emit(op, [call.args[0]]))

    # nothing to compute in inference: the output is the input tensor (no node, as in the ONNX route)
    converts(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)(
        lambda b, call: call.args[0])

    @converts(nn.SELU)
    def selu_module(b, call):
        return b.emit("Selu", [call.args[0]], {"alpha": _SELU_ALPHA, "gamma": _SELU_SCALE})

    @converts(nn.CELU)
    def celu_module(b, call):
        return b.emit("Celu", [call.args[0]], {"alpha": float(call.module.alpha)})

    @converts(nn.Softplus)
    def softplus_module(b, call):
        return _softplus(b, call, call.args[0], call.module.beta, call.module.threshold)

    @converts(nn.PReLU)
    def prelu_module(b, call):
        return _prelu(b, call, call.args[0], _module_param(b, call, "weight"))

    @converts(nn.SiLU)
    def silu_module(b, call):
        return b.emit("Swish", [call.args[0]], {"alpha": 1.0})

    @converts(nn.Hardsigmoid)
    def hardsigmoid_module(b, call):
        return b.emit("HardSigmoid", [call.args[0]], {"alpha": 1.0 / 6.0, "beta": 0.5})

    @converts(nn.GELU)
    def gelu_module(b, call):
        return b.emit("Gelu", [call.args[0]], {"approximate": call.module.approximate})

    @converts(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
    def maxpool_module(b, call):
        m = call.module
        if m.return_indices:
            _fail(call, "return_indices")
        nd = len(b.shape(call.args[0])) - 2
        return b.emit("MaxPool", [call.args[0]], _pool_attrs(call, nd, m.kernel_size, m.stride, m.padding,
                                                              m.dilation, m.ceil_mode))

    @converts(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
    def avgpool_module(b, call):
        m = call.module
        return _avg_pool(b, call, call.args[0], m.kernel_size, m.stride, m.padding, m.ceil_mode,
                         m.count_include_pad, getattr(m, "divisor_override", None))

    @converts(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
    def adaptive_avg_module(b, call):
        return _adaptive_avg(b, call, call.args[0])

    @converts(nn.AdaptiveMaxPool2d)
    def adaptive_max_module(b, call):
        return _adaptive_max(b, call, call.args[0])

    @converts(nn.Flatten)
    def flatten_module(b, call):
        return _flatten(b, call, call.args[0], call.module.start_dim, call.module.end_dim)

    @converts(nn.LocalResponseNorm)
    def lrn_module(b, call):
        m = call.module
        if m.size % 2 == 0:
            _fail(call, "an even LRN size (torch and ONNX centre its window differently)")
        return b.emit("LRN", [call.args[0]], {"size": int(m.size), "alpha": float(m.alpha), "beta": float(m.beta),
                                              "bias": float(m.k)})

    @converts(nn.LayerNorm)
    def layernorm_module(b, call):
        m = call.module
        return _layer_norm(b, call, call.args[0], m.normalized_shape, _module_param(b, call, "weight"),
                           _module_param(b, call, "bias"), m.eps)

    @converts(nn.GroupNorm)
    def groupnorm_module(b, call):
        m = call.module
        return _group_norm(b, call, call.args[0], m.num_groups, _module_param(b, call, "weight"),
                           _module_param(b, call, "bias"), m.eps)

    @converts(nn.Softmax)
    def softmax_module(b, call):
        return _softmax(b, call, call.args[0], call.module.dim)

    @converts(nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
    def pad_module(b, call):
        return _pad(b, call, call.args[0], list(call.module.padding), "constant", float(getattr(call.module, "value", 0.0)))

    @converts(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
    def upsample_module(b, call):
        m = call.module
        return _interpolate(b, call, call.args[0], m.size, m.scale_factor, m.mode, m.align_corners, None)

    @converts(nn.ChannelShuffle)
    def shuffle_module(b, call):
        x = call.args[0]
        n, c, h, w = b.shape(x)
        g = int(call.module.groups)
        y = b.emit("Reshape", [x], {"shape": [-1, g, c // g, h, w]}, shape=(n, g, c // g, h, w))
        y = b.emit("Transpose", [y], {"perm": [0, 2, 1, 3, 4]}, shape=(n, c // g, g, h, w))
        return b.emit("Reshape", [y], {"shape": [-1, c, h, w]})


# ------------------------------------------------------------------ functional pieces --------
def _linear(b, call, x, w, bias):
    if len(b.shape(x)) == 2:
        return b.emit("Gemm", [x, w] + ([bias] if bias else []), {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1})
    y = b.emit("MatMul", [x, _transposed(b, w)])
    return b.emit("Add", [y, bias]) if bias else y


def _transposed(b: _Builder, w: str) -> str:
    """The constant ``w.T``; live (a :class:`LiveMethod`) when ``w`` is a parameter."""
    return _derived(b, w, f"{w}.T", b.constants[w].T, "t")


def _derived(b: _Builder, w: str, name: str, value: np.ndarray, method: str, *args) -> str:
    """The constant ``w.<method>(*args)`` (its value given, a numpy view where it can be: a
    copy of every Linear weight's transpose cost 0.1 s of convnext_tiny's attach); live (a
    :class:`LiveMethod`) when ``w`` is a parameter."""
    if name not in b.constants:
        b.constants[name] = value
        if b.refs.get(w) == w:
            b.refs[name] = LiveMethod(w, method, args)
    return name


# torch's SELU constants (ONNX's defaults are the same numbers rounded to float32)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _softplus(b, call, x, beta, threshold):
    """``log(1 + exp(beta x)) / beta``; torch returns ``x`` itself where ``beta x > threshold``,
    which equals the formula in float32 from a threshold of 15 on (its default is 20)."""
    beta, threshold = float(beta), float(threshold)
    if threshold < 15.0:
        _fail(call, f"softplus threshold {threshold} (below 15 torch's linear part differs from the formula)")
    if beta == 1.0:
        return b.emit("Softplus", [x])
    y = b.emit("Mul", [x, b.const(np.float32(beta))])
    y = b.emit("Softplus", [y])
    return b.emit("Div", [y, b.const(np.float32(beta))])


def _prelu(b, call, x, w):
    """PReLU: the slope (one, or one per channel) as a constant broadcast over ``x``'s axes
    after the channel axis, ``[C, 1, ...]`` (ONNX broadcasts from the last axis)."""
    slope = b.shape(w)
    rank = len(b.shape(x))
    if len(slope) != 1:
        _fail(call, f"a PReLU weight of shape {slope}")
    if slope[0] == 1 or rank < 3:
        return b.emit("PRelu", [x, w])
    shape = (slope[0],) + (1,) * (rank - 2)
    name = f"{w}.reshape{shape}"
    return b.emit("PRelu", [x, _derived(b, w, name, b.constants[w].reshape(shape), "reshape", shape)])


def _avg_pool(b, call, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    if divisor_override:
        _fail(call, "divisor_override")
    nd = len(b.shape(x)) - 2
    attrs = _pool_attrs(call, nd, kernel, stride, padding, 1, ceil_mode)
    attrs.pop("dilations")
    attrs["count_include_pad"] = int(bool(count_include_pad))
    return b.emit("AveragePool", [x], attrs)


def _adaptive_avg(b, call, x):
    in_sp, out_sp = b.shape(x)[2:], call.out_shape[2:]
    if all(o == 1 for o in out_sp):
        return b.emit("GlobalAveragePool", [x])
    if any(i % o for i, o in zip(in_sp, out_sp)):
        return _adaptive_avg_matrices(b, call, x, in_sp, out_sp)
    k = [i // o for i, o in zip(in_sp, out_sp)]
    return b.emit("AveragePool", [x], {"kernel_shape": k, "strides": k, "pads": [0] * (2 * len(k)), "ceil_mode": 0,
                                       "count_include_pad": 0})


def _pooling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Adaptive average pooling along one axis as a matrix [n_in, n_out]: output i averages the
    inputs floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1 (torch's windows)."""
    m = np.zeros((n_in, n_out), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[lo:hi, i] = 1.0 / (hi - lo)
    return m


def _adaptive_avg_matrices(b, call, x, in_sp, out_sp):
    """Uneven adaptive 2-D average pooling (e.g. VGG's 7x7 pool on a smaller map): a MatMul with
    the width matrix, a transpose, a MatMul with the height matrix, a transpose back."""
    if len(in_sp) != 2:
        _fail(call, f"uneven adaptive pooling over {len(in_sp)} axes")
    n, c = b.shape(x)[:2]
    (h, w), (oh, ow) = in_sp, out_sp
    y = b.emit("MatMul", [x, b.const(_pooling_matrix(w, ow))], shape=(n, c, h, ow))
    y = b.emit("Transpose", [y], {"perm": [0, 1, 3, 2]}, shape=(n, c, ow, h))
    y = b.emit("MatMul", [y, b.const(_pooling_matrix(h, oh))], shape=(n, c, ow, oh))
    return b.emit("Transpose", [y], {"perm": [0, 1, 3, 2]})


def _adaptive_max(b, call, x):
    if all(o == 1 for o in call.out_shape[2:]):
        return b.emit("GlobalMaxPool", [x])
    _fail(call, "adaptive max pooling to more than one position")


def _flatten(b, call, x, start, end):
    rank = len(b.shape(x))
    start, end = start % rank, end % rank
    if end == rank - 1:
        return b.emit("Flatten", [x], {"axis": start})
    return _reshape(b, call, x)


def _reshape(b, call, x):
    if b.shape(x)[0] != call.out_shape[0]:
        _fail(call, "a reshape that moves the batch axis")
    return b.emit("Reshape", [x], {"shape": [-1] + [int(s) for s in call.out_shape[1:]]})


def _layer_norm(b, call, x, normalized_shape, w, bias, eps):
    k = len(normalized_shape)
    shape = tuple(int(s) for s in normalized_shape)
    w = w or b.const(np.ones(shape, np.float32))
    bias = bias or b.const(np.zeros(shape, np.float32))
    return b.emit("LayerNormalization", [x, w, bias], {"axis": -k, "epsilon": float(eps)})


def _group_norm(b, call, x, groups, w, bias, eps):
    c = b.shape(x)[1]
    w = w or b.const(np.ones(c, np.float32))
    bias = bias or b.const(np.zeros(c, np.float32))
    return b.emit("GroupNormalization", [x, w, bias], {"num_groups": int(groups), "epsilon": float(eps)})


def _softmax(b, call, x, dim):
    if dim is None:
        _fail(call, "softmax without dim")
    return b.emit("Softmax", [x], {"axis": int(dim) % len(b.shape(x))})


def _pad(b, call, x, pad, mode, value):
    rank = len(b.shape(x))
    pad = [int(p) for p in pad]
    if len(pad) % 2:
        _fail(call, "odd pad list")
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # torch: last axis first
        ax = rank - 1 - i
        begins[ax], ends[ax] = pad[2 * i], pad[2 * i + 1]
    if mode != "constant":
        _fail(call, f"pad mode '{mode}'")
    return b.emit("Pad", [x], {"pads": begins + ends, "mode": "constant", "value": float(value or 0.0)})


def _interpolate(b, call, x, size, scale_factor, mode, align_corners, recompute):
    in_shape, out_shape = b.shape(x), call.out_shape
    nd = len(in_shape) - 2
    if mode not in ("nearest", "bilinear", "linear", "trilinear"):
        _fail(call, f"interpolation mode '{mode}'")
    if scale_factor is not None and not recompute:
        sf = [float(s) for s in _floats(scale_factor, nd)]
    else:
        sf = [out_shape[2 + i] / in_shape[2 + i] for i in range(nd)]
    if mode == "nearest":
        ctm, canon_mode = "asymmetric", "nearest"
    else:
        ctm, canon_mode = ("align_corners" if align_corners else "pytorch_half_pixel"), "linear"
    attrs = {"mode": canon_mode, "coordinate_transformation_mode": ctm, "nearest_mode": "floor",
             "cubic_coeff_a": -0.75, "exclude_outside": 0, "scales": [1.0, 1.0] + sf,
             "out_size": [int(s) for s in out_shape]}
    return b.emit("Resize", [x], attrs)


def _floats(v, n):
    if isinstance(v, (int, float)):
        return [float(v)] * n
    v = list(v)
    return v * n if len(v) == 1 else v


# ------------------------------------------------------------------ function converters ------
def _function_converters():
    import torch
    import torch.nn.functional as F

    def unary(op, attrs=None):
        return lambda b, call: b.emit(op, [call.args[0]], attrs)

    for fns, op, attrs in (
            ((F.relu, torch.relu, torch.relu_, "relu", "relu_"), "Relu", None),
            ((F.relu6,), "Clip", {"min": 0.0, "max": 6.0}),
            ((torch.sigmoid, F.sigmoid, "sigmoid", "sigmoid_"), "Sigmoid", None),
            ((torch.tanh, F.tanh, "tanh", "tanh_"), "Tanh", None),
            ((F.hardswish,), "HardSwish", None),
            ((F.hardsigmoid,), "HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5}),
            ((F.silu,), "Swish", {"alpha": 1.0}),
            ((F.mish,), "Mish", None),
            ((torch.exp, "exp"), "Exp", None),
            ((operator.neg, torch.neg, "neg"), "Neg", None),
            ((torch.sqrt, "sqrt"), "Sqrt", None),
    ):
        converts(*fns)(unary(op, attrs))

    # no computation in inference: the output is the input tensor (no node)
    converts(F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout, "contiguous", "clone", "detach")(
        lambda b, call: call.args[0])

    @converts(F.selu, torch.selu, torch.selu_, "selu", "selu_")
    def selu(b, call):
        return b.emit("Selu", [call.args[0]], {"alpha": _SELU_ALPHA, "gamma": _SELU_SCALE})

    @converts(F.elu, F.elu_)
    def elu(b, call):
        return b.emit("Elu", [call.args[0]], {"alpha": float(call.arg(1, "alpha", 1.0))})

    @converts(F.celu, torch.celu)
    def celu(b, call):
        return b.emit("Celu", [call.args[0]], {"alpha": float(call.arg(1, "alpha", 1.0))})

    @converts(F.softplus)
    def softplus(b, call):
        return _softplus(b, call, call.args[0], call.arg(1, "beta", 1.0), call.arg(2, "threshold", 20.0))

    @converts(F.prelu, torch.prelu)
    def prelu(b, call):
        return _prelu(b, call, call.args[0], _param_operand(b, call, call.arg(1, "weight")))

    @converts(F.gelu)
    def gelu(b, call):
        return b.emit("Gelu", [call.args[0]], {"approximate": call.arg(1, "approximate", "none")})

    @converts(F.leaky_relu, F.leaky_relu_)
    def leaky(b, call):
        return b.emit("LeakyRelu", [call.args[0]], {"alpha": float(call.arg(1, "negative_slope", 0.01))})

    @converts(F.hardtanh, F.hardtanh_)
    def hardtanh(b, call):
        return b.emit("Clip", [call.args[0]], {"min": float(call.arg(1, "min_val", -1.0)),
                                               "max": float(call.arg(2, "max_val", 1.0))})

    @converts(torch.clamp, torch.clip, "clamp", "clip", "clamp_", "clip_", torch.clamp_min, "clamp_min", "clamp_min_")
    def clamp(b, call):
        lo, hi = call.arg(1, "min"), call.arg(2, "max")
        if call.op_label.startswith("clamp_min") or call.node.target is torch.clamp_min:
            hi = None
        if isinstance(lo, _Tensor) or isinstance(hi, _Tensor) or hasattr(lo, "shape") or hasattr(hi, "shape"):
            _fail(call, "clamp with tensor bounds")
        return b.emit("Clip", [call.args[0]], {"min": -np.inf if lo is None else float(lo),
                                               "max": np.inf if hi is None else float(hi)})

    def binary(op):
        def run(b, call):
            x, y = call.arg(0, "input"), call.arg(1, "other")
            alpha = call.kwargs.get("alpha", 1)
            if alpha != 1:
                _fail(call, "alpha")
            if not isinstance(x, _Tensor) and not isinstance(y, _Tensor):
                _fail(call, "no activation operand")
            return b.emit(op, [b.operand(x), b.operand(y)])
        return run

    for fns, op in (((operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__"), "Add"),
                    ((operator.sub, operator.isub, torch.sub, "sub", "sub_"), "Sub"),
                    ((operator.mul, operator.imul, torch.mul, "mul", "mul_"), "Mul"),
                    ((operator.truediv, operator.itruediv, torch.div, "div", "div_"), "Div")):
        converts(*fns)(binary(op))

    @converts(torch.cat, torch.concat)
    def cat(b, call):
        xs = call.arg(0, "tensors")
        dim = call.arg(1, "dim", 0)
        if not all(isinstance(t, _Tensor) for t in xs):
            _fail(call, "concatenation with constants")
        return b.emit("Concat", [*xs], {"axis": int(dim) % len(call.out_shape)})

    @converts(torch.flatten, "flatten")
    def flatten(b, call):
        return _flatten(b, call, call.args[0], call.arg(1, "start_dim", 0), call.arg(2, "end_dim", -1))

    @converts(torch.reshape, "view", "reshape", "view_as", "reshape_as", "squeeze", "unsqueeze", torch.squeeze,
              torch.unsqueeze)
    def reshape(b, call):
        return _reshape(b, call, call.args[0])

    @converts(torch.transpose, "transpose", "permute", torch.permute)
    def transpose(b, call):
        x = call.args[0]
        rank = len(b.shape(x))
        if call.op_label == "permute" or call.node.target is torch.permute:
            dims = call.args[1:] if len(call.args) > 2 or isinstance(call.arg(1, "dims"), int) else call.arg(1, "dims")
            perm = [int(d) % rank for d in dims]
        else:
            d0, d1 = int(call.arg(1, "dim0")) % rank, int(call.arg(2, "dim1")) % rank
            perm = list(range(rank))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        if perm[0] != 0:
            _fail(call, "a transpose that moves the batch axis")
        return b.emit("Transpose", [x], {"perm": perm})

    @converts(torch.mean, "mean", torch.sum, "sum", torch.amax, "amax")
    def reduce(b, call):
        x = call.args[0]
        rank = len(b.shape(x))
        dims = call.arg(1, "dim")
        if dims is None:
            _fail(call, "reduction over every axis (the batch axis too)")
        dims = [dims] if isinstance(dims, int) else list(dims)
        axes = sorted(int(d) % rank for d in dims)
        if 0 in axes or call.kwargs.get("dtype") is not None:
            _fail(call, "reduction over the batch axis")
        label = getattr(call.node.target, "__name__", str(call.node.target))
        op = {"mean": "ReduceMean", "sum": "ReduceSum", "amax": "ReduceMax"}[label]
        return b.emit(op, [x], {"axes": axes, "keepdims": int(bool(call.arg(2, "keepdim", False)))})

    @converts(F.conv1d, F.conv2d, F.conv3d)
    def conv(b, call):
        return _conv(b, call, call.args[0], _param_operand(b, call, call.arg(1, "weight")),
                     _param_operand(b, call, call.arg(2, "bias")) if call.arg(2, "bias") is not None else None,
                     call.arg(3, "stride", 1), call.arg(4, "padding", 0), call.arg(5, "dilation", 1),
                     call.arg(6, "groups", 1))

    @converts(F.linear)
    def linear(b, call):
        bias = call.arg(2, "bias")
        return _linear(b, call, call.args[0], _param_operand(b, call, call.arg(1, "weight")),
                       _param_operand(b, call, bias))

    @converts(F.batch_norm)
    def batch_norm(b, call):
        if call.arg(5, "training", False):
            _fail(call, "batch_norm in training mode (statistics of the batch)")
        x, mean, var = call.args[0], call.arg(1, "running_mean"), call.arg(2, "running_var")
        if mean is None or var is None:
            _fail(call, "batch_norm without running statistics")
        c = b.shape(x)[1]
        w, bias = call.arg(3, "weight"), call.arg(4, "bias")
        ins = [x, _param_operand(b, call, w) if w is not None else b.const(np.ones(c, np.float32)),
               _param_operand(b, call, bias) if bias is not None else b.const(np.zeros(c, np.float32)),
               _param_operand(b, call, mean), _param_operand(b, call, var)]
        return b.emit("BatchNormalization", ins, {"epsilon": float(call.arg(7, "eps", 1e-5))})

    @converts(F.local_response_norm)
    def lrn(b, call):
        size = int(call.arg(1, "size"))
        if size % 2 == 0:
            _fail(call, "an even LRN size (torch and ONNX centre its window differently)")
        return b.emit("LRN", [call.args[0]], {"size": size, "alpha": float(call.arg(2, "alpha", 1e-4)),
                                              "beta": float(call.arg(3, "beta", 0.75)), "bias": float(call.arg(4, "k", 1.0))})

    @converts(torch.matmul, operator.matmul, "matmul")
    def matmul(b, call):
        x, w = call.args[0], call.args[1]
        if not isinstance(x, _Tensor) or isinstance(w, _Tensor) or len(b.shape(w)) != 2:
            _fail(call, "a matmul other than activation @ matrix")
        return b.emit("MatMul", [x, _param_operand(b, call, w)])

    @converts(F.layer_norm)
    def layer_norm(b, call):
        w, bias = call.arg(2, "weight"), call.arg(3, "bias")
        return _layer_norm(b, call, call.args[0], call.arg(1, "normalized_shape"),
                           _param_operand(b, call, w),
                           _param_operand(b, call, bias), call.arg(4, "eps", 1e-5))

    @converts(F.group_norm)
    def group_norm(b, call):
        w, bias = call.arg(2, "weight"), call.arg(3, "bias")
        return _group_norm(b, call, call.args[0], call.arg(1, "num_groups"),
                           _param_operand(b, call, w),
                           _param_operand(b, call, bias), call.arg(4, "eps", 1e-5))

    @converts(F.max_pool1d, F.max_pool2d, F.max_pool3d)
    def max_pool(b, call):
        if call.arg(6, "return_indices", False):
            _fail(call, "return_indices")
        x = call.args[0]
        nd = len(b.shape(x)) - 2
        return b.emit("MaxPool", [x], _pool_attrs(call, nd, call.arg(1, "kernel_size"), call.arg(2, "stride"),
                                                   call.arg(3, "padding", 0), call.arg(4, "dilation", 1),
                                                   call.arg(5, "ceil_mode", False)))

    @converts(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
    def avg_pool(b, call):
        return _avg_pool(b, call, call.args[0], call.arg(1, "kernel_size"), call.arg(2, "stride"),
                         call.arg(3, "padding", 0), call.arg(4, "ceil_mode", False),
                         call.arg(5, "count_include_pad", True), call.arg(6, "divisor_override"))

    @converts(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
    def adaptive_avg(b, call):
        return _adaptive_avg(b, call, call.args[0])

    @converts(F.adaptive_max_pool2d)
    def adaptive_max(b, call):
        if call.arg(2, "return_indices", False):
            _fail(call, "return_indices")
        return _adaptive_max(b, call, call.args[0])

    @converts(F.pad)
    def pad(b, call):
        return _pad(b, call, call.args[0], call.arg(1, "pad"), call.arg(2, "mode", "constant"), call.arg(3, "value", 0.0))

    @converts(F.interpolate, F.upsample)
    def interpolate(b, call):
        if call.arg(6, "antialias", False):
            _fail(call, "antialias")
        return _interpolate(b, call, call.args[0], call.arg(1, "size"), call.arg(2, "scale_factor"),
                            call.arg(3, "mode", "nearest"), call.arg(4, "align_corners"),
                            call.arg(5, "recompute_scale_factor"))

    @converts(F.softmax, torch.softmax, "softmax")
    def softmax(b, call):
        return _softmax(b, call, call.args[0], call.arg(1, "dim"))

    @converts(torch.chunk, "chunk", torch.split, "split")
    def split(b, call):
        x = call.args[0]
        rank = len(b.shape(x))
        dim = int(call.arg(2, "dim", 0)) % rank
        outs = call.node.meta["zf_shapes"]
        if dim == 0:
            _fail(call, "a split of the batch axis")
        sizes = [s[dim] for s in outs]
        node_out = []
        for k, s in enumerate(outs):  # one Slice per piece: each piece is its own layer
            start = sum(sizes[:k])
            node_out.append(b.emit("Slice", [x], {"starts": [start], "ends": [start + sizes[k]], "axes": [dim],
                                                  "steps": [1]}, shape=s))
        return tuple(node_out)

    @converts(operator.getitem)
    def getitem(b, call):
        x, idx = call.args
        if isinstance(x, (tuple, list)):
            return x[idx]
        if not isinstance(x, _Tensor):
            _fail(call, "indexing a non-tensor")
        shape = b.shape(x)
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis for i in idx):
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (len(shape) - len(idx) + 1) + idx[k + 1:]
        starts, ends, axes, steps = [], [], [], []
        for ax, s in enumerate(idx):
            if not isinstance(s, slice):
                _fail(call, f"index {s!r} (only slices)")
            if s == slice(None):
                continue
            if ax == 0:
                _fail(call, "a slice of the batch axis")
            st, en, stp = s.indices(shape[ax])
            if stp <= 0:
                _fail(call, "a negative step")
            starts.append(st), ends.append(en), axes.append(ax), steps.append(stp)
        if not axes:
            return b.emit("Identity", [x])
        return b.emit("Slice", [x], {"starts": starts, "ends": ends, "axes": axes, "steps": steps})


def _in_place(n, module) -> bool:
    """Whether the call writes its result into its first argument (``x.relu_()``,
    ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``, ``x += y``)."""
    if n.op == "call_module":
        return bool(getattr(module, "inplace", False))
    if n.op == "call_method":
        return n.target.endswith("_") and not n.target.endswith("__")
    name = getattr(n.target, "__name__", "")
    if n.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
        return True
    if name.endswith("_") and not name.endswith("__"):
        return True
    return bool(n.kwargs.get("inplace", False)) or (
        name in ("relu", "relu6", "leaky_relu", "hardtanh", "elu", "selu", "celu", "hardswish", "hardsigmoid", "silu",
                 "mish", "dropout")
        and any(a is True for a in n.args[1:]))


# Libraries' functions that torch.fx keeps as one call (``torch.fx.wrap``), by qualified name.
@converts("torchvision.ops.stochastic_depth.stochastic_depth", "timm.layers.drop.drop_path")
def _drop_path(b, call):
    """Stochastic depth / drop path: the identity in inference (``training`` False)."""
    training = call.arg(3, "training", True) if "stochastic_depth" in call.op_label else call.arg(2, "training", False)
    if training:
        _fail(call, "stochastic depth in training mode")
    return call.args[0]


def _param_operand(b: _Builder, call: Call, v) -> str | None:
    """A weight-like argument: a parameter / buffer path, a derived constant, or a fresh constant
    (None for an optional one left out)."""
    if v is None:
        return None
    if isinstance(v, _Tensor):
        _fail(call, "a weight computed from the input")
    if isinstance(v, str):  # a constant name from get_attr or a live computation
        return v
    return b.operand(v)


_READY = False


def _ensure_table() -> None:
    global _READY
    if not _READY:
        _module_converters()
        _function_converters()
        _READY = True


# ------------------------------------------------------------------ capture ------------------
def _tracer(model):
    import torch
    import torch.fx as fx

    # fx's own Tracer.getattr finds a parameter's name by walking root.named_parameters() on every
    # attribute read: quadratic in the number of parameters (0.1 s of repvgg_a0's 0.3 s trace).
    # The same first-name-wins lookup from two dicts built once:
    params, buffers = first_paths(model.named_parameters()), first_paths(model.named_buffers())

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return type(m) in CONVERTERS

        def getattr(self, attr, attr_val, parameter_proxy_cache):
            if not isinstance(attr_val, torch.Tensor):
                return attr_val
            name = params.get(id(attr_val)) if isinstance(attr_val, torch.nn.Parameter) else None
            if name is None and self.proxy_buffer_attributes:
                name = buffers.get(id(attr_val))
            if name is None:
                return attr_val
            if name not in parameter_proxy_cache:
                parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
            return parameter_proxy_cache[name]

        def create_arg(self, a):
            # fx's walks root.named_parameters() / named_buffers() for every tensor argument
            if isinstance(a, torch.Tensor):
                name = params.get(id(a)) if isinstance(a, torch.nn.Parameter) else buffers.get(id(a))
                if name is not None:
                    return self.create_node("get_attr", name, (), {})
            return super().create_arg(a)

    return Tracer()


def _trace(model):
    tracer = _tracer(model)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise CaptureError(f"torch.fx cannot trace it: {type(exc).__name__}: {_first_line(exc)}") from None
    return tracer.root, graph  # (no GraphModule: its generated Python code would cost ~20 ms and is never run)


def _first_line(exc) -> str:
    s = str(exc).strip()
    return s.splitlines()[0][:200] if s else ""


def _trusted_types():
    """Module types whose converter copies the module's own attributes into one canonical node
    (checked against torch in tests/adapters/test_torch_fx*.py). The capture check feeds their
    outputs from the module's own run instead of recomputing them (see :func:`_verify`): they
    are most of a CNN's arithmetic, and a second run of them would double the cost of attach."""
    import torch.nn as nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _run_once(root, graph, x):
    """One forward pass through the traced graph: per node, the shapes of its tensor output(s),
    the value of every node that is not an activation, and a copy of each trusted module call's
    input and output (for the check). Returns the model's output too."""
    import torch
    import torch.fx as fx

    active: set = set()  # nodes whose value depends on the input
    for n in graph.nodes:
        if n.op == "placeholder" or any(a in active for a in n.all_input_nodes):
            active.add(n)
    values: dict = {}
    trusted = _trusted_types()
    modules = dict(root.named_modules())
    kept: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            note_result(n, result)
            if n not in active or not holds_tensor(result):
                values[n] = result
            elif n.op == "call_module" and isinstance(modules.get(n.target), trusted) and isinstance(result, torch.Tensor):
                inp = self.env.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
                if isinstance(inp, torch.Tensor):  # copies: a later in-place op may overwrite them
                    kept[n] = (inp.clone(), result.clone())
            return result

    with torch.no_grad():
        out = Recorder(root, graph=graph).run(x)
    return active, values, kept, out


def _scope(n) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else path
    return path if isinstance(path, str) else ""


def _qualified(fn) -> str:
    """``module.name`` of a function (for converters of libraries' fx-wrapped functions)."""
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__name__', '')}"


def _label(n) -> str:
    t = n.target
    if n.op == "call_method":
        return str(t)
    return getattr(t, "__name__", str(t))


def capture_graph(model, x, verify: bool = True) -> Graph:
    """The zfprobe graph of ``model`` from torch.fx (see the module docstring); raises
    :class:`CaptureError` where it cannot be exact. ``x``: the example, batch 1."""
    from zfprobe.adapters.frontends import torch_record as _rec

    _ensure_table()
    with inference_flags(model):  # one watched forward of the module (torch_record.py) ...
        try:
            recorded = _rec.record(model, x, CONVERTERS, _trusted_types())
        except Exception:  # a RecordError, or a forward that fails while watched: the trace decides
            recorded = None
    if recorded is not None:
        try:
            return _convert(model, x, *recorded, verify=verify, how=RECORDED)
        except CaptureError:
            pass
    # ... else fx's symbolic trace
    with inference_flags(model):
        root, graph = _trace(model)
        try:
            active, values, kept, expected = _run_once(root, graph, x)
        except Exception as exc:
            raise CaptureError(f"the traced graph does not run: {type(exc).__name__}: {_first_line(exc)}") from None
    return _convert(model, x, root, graph, active, values, kept, expected, verify=verify, how=TRACED)


RECORDED = "torch.fx graph recorded from one forward (TorchFunctionMode) + zfprobe converters"
TRACED = "torch.fx symbolic trace + zfprobe converters"


def _convert(model, x, root, graph, active, values, kept, expected, verify: bool = True, how: str = TRACED) -> Graph:
    """The zfprobe graph from a captured fx graph and the values of its run (see :func:`capture_graph`);
    ``how``: the capture, for ``metadata["frontend"]``."""
    import torch
    import torch.fx as fx

    b = _Builder(model)
    env: dict = {}
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    module_of = dict(model.named_modules(remove_duplicate=False))
    calls_of: dict[str, int] = {}
    order: list[tuple[Node, str, str]] = []  # (node, scope, label), for naming
    inputs: list[str] = []
    outputs: list[str] = []
    fed: dict = {}  # trusted calls' outputs -> (input, output) from the module's own run

    def resolve(a):
        return fx.node.map_arg(a, lambda n: env[n])

    for n in graph.nodes:
        if n.op == "placeholder":
            if inputs:
                raise CaptureError("the module takes more than one input")
            name = _Tensor(INPUT_NAME)
            b.shapes[name] = tuple(n.meta["zf_shapes"])
            b.dtypes[name] = np.dtype(np.float32)
            inputs.append(name)
            env[n] = name
            continue
        if n.op == "output":
            outs = resolve(n.args[0])
            if isinstance(outs, dict):  # e.g. torchvision's segmenters: {"out": ..., "aux": ...}
                outs = list(outs.values())
            outs = [outs] if isinstance(outs, str) else list(outs) if isinstance(outs, (tuple, list)) else [outs]
            if not all(isinstance(o, _Tensor) for o in outs):
                raise CaptureError("the module returns something other than tensors computed from its input")
            outputs = list(dict.fromkeys(outs))
            continue
        if n not in active:  # parameters, buffers and what the forward computes from them alone
            v = values[n]
            if n.op == "get_attr" and n.target in named and isinstance(v, torch.Tensor):
                env[n] = b.param(n.target, v)
            elif isinstance(v, torch.Tensor):
                env[n] = _live_constant(b, graph, n, v, named)
            else:
                env[n] = v
            continue
        if n in values:  # a static value read from an activation (x.shape, x.size(1), ...)
            env[n] = values[n]
            continue
        if n.op == "call_module":
            module = module_of[n.target]
            key, scope, label = type(module), n.target, type(module).__name__
        elif n.op == "call_function":
            module, key, scope, label = None, n.target, _scope(n), _label(n)
        elif n.op == "call_method":
            module, key, scope, label = None, n.target, _scope(n), str(n.target)
        else:
            raise CaptureError(f"fx node '{n.name}' ({n.op})")
        fn = CONVERTERS.get(key) if not isinstance(key, str) or n.op == "call_method" else None
        if fn is None and n.op == "call_function":
            fn = CONVERTERS.get(_qualified(key))
        if fn is None:
            raise CaptureError(f"no converter for {label} (fx node '{n.name}', in '{scope or '(top level)'}')")
        shapes = n.meta.get("zf_shapes")
        call = Call(n, module, resolve(n.args), resolve(n.kwargs), n.args, n.kwargs,
                    shapes if isinstance(shapes, tuple) else None, scope, label)
        b.call, b.pending = call, []
        try:
            result = fn(b, call)
        except CaptureError:
            raise
        except Exception as exc:  # arguments the converter did not expect (e.g. a module called with keywords)
            raise CaptureError(f"{label} (fx node '{n.name}', in '{scope or '(top level)'}'): "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
        if n in kept:
            fed[result] = kept[n]
        if n.op == "call_module":
            k = calls_of.get(n.target, 0)
            calls_of[n.target] = k + 1
        for i, node in enumerate(b.pending):
            module_output = n.op == "call_module" and i == len(b.pending) - 1
            order.append((node, scope, node.op_type, module_output, calls_of[n.target] - 1 if module_output else 0))
        env[n] = result
        first = n.args[0] if n.args else None
        if _in_place(n, module) and isinstance(first, fx.Node) and first in active:
            env[first] = result  # later readers of the mutated tensor read the result

    if not outputs:
        raise CaptureError("the module returns no tensor")
    leaves = {p for p, m in module_of.items() if p and not any(True for _ in m.children())}
    aliases = _name_nodes(order, leaves)
    used = {i for node in b.nodes for i in node.inputs if i}
    g = Graph(nodes=b.nodes, inputs=inputs, outputs=outputs,
              constants={k: v for k, v in b.constants.items() if k in used},
              shapes=b.shapes, dtypes=b.dtypes, name=type(model).__name__)
    g.parameter_refs = {k: v for k, v in b.refs.items() if k in g.constants}
    g.metadata = {"format": "torch", "aliases": aliases, "frontend": how}
    from zfprobe.engine.fusion import fuse

    g = fuse(g)
    if verify:
        _verify(g, model, x, expected, fed)
    return g


def _live_constant(b: _Builder, graph, n, value, named) -> str:
    """A constant computed from parameters only: a snapshot now, a :class:`LiveComputation` for
    the torch backend (an fx graph of the node and its ancestors, outputting the node)."""
    import torch.fx as fx

    needed, stack = set(), [n]
    while stack:
        m = stack.pop()
        if m in needed:
            continue
        needed.add(m)
        stack.extend(m.all_input_nodes)
    sub = fx.Graph()
    remap: dict = {}
    params = []
    for m in graph.nodes:
        if m in needed:
            remap[m] = sub.node_copy(m, lambda a: remap[a])
            if m.op == "get_attr":
                params.append(m.target)
    sub.output(remap[n])
    name = b.fresh(f"derived/{n.name}")
    t = value.detach()
    b.constants[name] = np.ascontiguousarray(t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy())
    if params and all(p in named for p in params):
        b.refs[name] = LiveComputation(sub, params)
    return name


def _name_nodes(order, leaves: set[str]) -> dict[str, str]:
    """Node names like the ONNX route's: a module call by its path (``relu``, a second call
    ``relu_1``), as is the last op of a leaf module traced through; any other functional op
    ``<path>.<Op>`` (``layer1.0.Relu_1``). Returns the aliases: every enclosing module path ->
    the output of its last node."""
    taken: set[str] = set()
    aliases: dict[str, str] = {}
    last = {scope: i for i, (_, scope, _, _, _) in enumerate(order)}
    for i, (node, scope, op, is_module_output, call_index) in enumerate(order):
        if not is_module_output and scope in leaves and last[scope] == i:
            is_module_output = True
        if is_module_output:
            name = scope if call_index == 0 else f"{scope}_{call_index}"
        else:
            name = f"{scope}.{op}" if scope else op
        base, k = name, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        node.name = name
        if scope:
            segs = scope.split(".")
            for i in range(1, len(segs) + 1):
                aliases[".".join(segs[:i])] = node.outputs[0]
    return aliases


def _verify(graph: Graph, model, x, expected, fed: dict | None = None) -> None:
    """The built graph run by the torch backend equals the module's own run on the example.

    ``fed``: graph tensor -> (input, output) of a trusted module call (see :func:`_trusted_types`)
    from the module's own run. Those nodes are not rerun: their outputs are fed from that run
    (their shapes checked), and the graph's value of each one's input is compared with the
    module's, so every other op is still checked, on the module's own values at those points."""
    import torch

    from zfprobe.adapters.backends.torch_backend import TorchBackend

    exp = [expected] if isinstance(expected, torch.Tensor) else [e for e in _flat(expected)]
    fed = {t: v for t, v in (fed or {}).items() if graph.producer(t) is not None
           and graph.producer(t).op_type in ("Conv", "BatchNormalization") and len(graph.producer(t).outputs) == 1}
    for t, (_, out) in fed.items():
        if tuple(out.shape) != tuple(graph.shapes[t]):
            raise CaptureError(f"'{graph.producer(t).name}' computes shape {tuple(out.shape)}, the graph says "
                               f"{tuple(graph.shapes[t])}")
    # the inputs of the fed nodes, where the graph computes them (compared with the module's)
    checks = {graph.producer(t).inputs[0]: inp for t, (inp, _) in fed.items()}
    checks = {t: v for t, v in checks.items() if t not in fed and t not in graph.inputs}
    wanted = list(graph.outputs) + [t for t in checks if t not in graph.outputs]
    try:
        cut = Graph(nodes=[n for n in graph.nodes if n.outputs[0] not in fed], inputs=list(graph.inputs) + list(fed),
                    outputs=wanted, constants=graph.constants, shapes=graph.shapes, dtypes=graph.dtypes,
                    parameter_refs=graph.parameter_refs, name=graph.name, metadata=graph.metadata)
        program = cut.subgraph(wanted)
        feeds = {t: out for t, (_, out) in fed.items() if t in program.inputs}
        feeds[graph.inputs[0]] = x
        got = TorchBackend(model, x.device).run_tensors(program, feeds, wanted)
    except Exception as exc:
        raise CaptureError(f"the captured graph does not run: {type(exc).__name__}: {_first_line(exc)}") from None
    if len(graph.outputs) != len(exp):
        raise CaptureError("the captured graph has a different number of outputs")
    pairs = list(zip(got, exp, graph.outputs)) + [(g, checks[t], t) for g, t in zip(got[len(graph.outputs):], wanted[len(graph.outputs):])]
    for g, e, t in pairs:
        e = e.detach().float()
        if tuple(g.shape) != tuple(e.shape):
            raise CaptureError(f"the captured graph computes shape {tuple(g.shape)}, the module {tuple(e.shape)}")
        scale = float(e.abs().max()) if e.numel() else 0.0
        err = float((g.float() - e).abs().max()) if e.numel() else 0.0
        # float32 noise (kernels that sum in another order) grows with depth on random-weight nets
        # to ~3e-4 of the output's scale; a wrong conversion is off by far more than 1e-3
        if not err <= 1e-3 * scale + 1e-5:
            where = "the module's output" if t in graph.outputs else f"the module at '{graph.producer(t).name}'"
            raise CaptureError(f"the captured graph differs from {where} by {err:.3g} (scale {scale:.3g})")


def _flat(v):
    import torch

    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (tuple, list)):
        for a in v:
            yield from _flat(a)
    elif isinstance(v, dict):
        for a in v.values():
            yield from _flat(a)
