"""Runs zfprobe programs with torch: native kernels, on the model's device, with live weights.

A program (forward ops + the reversed network, see :mod:`zfprobe.engine.deconv`) is a graph of
canonical zfprobe ops (ONNX opset-17 semantics, static parameters as attributes). This backend
interprets it: each op type maps to a *converter* in the table :data:`OPS` (registered with
:func:`converter`, like onnx2torch's ``add_converter``) that reads the node's attributes once
and returns a small function of torch tensors. A program is compiled once into a list of such
steps (plus the point after which each intermediate tensor is freed) and cached.

Live weights: when the backend is bound to an ``nn.Module``, every constant listed in
``graph.parameter_refs`` (constant name -> dotted parameter / buffer path) is read from the
module at *every* run, so editing a weight in place (or assigning a new ``nn.Parameter``)
changes the next projection without re-attaching. Other constants (folded shapes, program
constants) are converted to device tensors once per program.

Everything runs under ``torch.inference_mode()``: no autograd graph is ever built, and no
parameter gradient is touched. On a GPU, TF32 is switched off while a program runs (and the
user's setting restored after): cuDNN convolutions default to TF32, whose 10-bit mantissa would
put projections ~1e-3 off their float32 values.

Max-pooling switches follow ONNX's layout, not torch's: the index is flattened over the whole
``N x C x H x W`` tensor (:func:`zfprobe.ops.onnx_semantics.switch_index`), which the explicit
``Unpool`` op of the reversal (:mod:`zfprobe.ops.maxpool`) reads; its kernel here is one
``scatter_add_``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from zfprobe.errors import ZfprobeError
from zfprobe.engine.graph import Graph, Node
from zfprobe.ops.geometry import axis_windows
from zfprobe.ops.onnx_semantics import (UnknownDtypeError, dtype_name, is_symmetric, pad_pairs, pool_divisors,
                                        switch_in_image, switch_index, unpadded)

Converter = Callable[[Node], Callable[..., Any]]
OPS: dict[str, Converter] = {}


def converter(*op_types: str):
    """Register ``fn(node) -> step``; ``step(*input_tensors)`` returns a tensor or a tuple."""

    def register(fn: Converter) -> Converter:
        for op in op_types:
            OPS[op] = fn
        return fn

    return register


class UnsupportedTorchOpError(ZfprobeError):
    """A program node whose op type the torch backend cannot execute."""


def _torch():
    import torch

    return torch


class _Float32Math:
    """While active on a CUDA device: convolutions and matmuls in full float32, not TF32.

    torch >= 2.9 has per-backend ``fp32_precision`` switches and refuses to mix them with the
    legacy ``allow_tf32`` flags once either was set, so the newer API is used where it exists.
    """

    _NEW = (("cuda", "matmul"), ("cudnn", "conv"))
    _LEGACY = (("cuda", "matmul"), ("cudnn", None))

    def __init__(self, device):
        self.active = getattr(device, "type", str(device)) == "cuda"
        self.saved: list = []

    @staticmethod
    def _switch(backend: str, part: str | None):
        obj = getattr(_torch().backends, backend)
        return getattr(obj, part) if part else obj

    def __enter__(self):
        if not self.active:
            return self
        try:
            for backend, part in self._NEW:
                obj = self._switch(backend, part)
                self.saved.append((obj, "fp32_precision", obj.fp32_precision))
            for obj, attr, _ in self.saved:
                setattr(obj, attr, "ieee")
        except (AttributeError, RuntimeError):
            self.__exit__()  # put back whatever the newer API had already switched
            for backend, part in self._LEGACY:
                obj = self._switch(backend, part)
                self.saved.append((obj, "allow_tf32", obj.allow_tf32))
            for obj, attr, _ in self.saved:
                setattr(obj, attr, False)
        return self

    def __exit__(self, *exc):
        for obj, attr, value in reversed(self.saved):
            setattr(obj, attr, value)
        self.saved = []
        return False


def _F():
    import torch.nn.functional as F

    return F


def _onnx_dtype(code: int):
    """Cast's ``to`` (an ONNX data type code) as a torch dtype."""
    try:
        return getattr(_torch(), dtype_name(code))
    except UnknownDtypeError as exc:
        raise UnsupportedTorchOpError(f"Cast: {exc}") from None


def _torch_pad(pads: Sequence[int], rank: int) -> list[int]:
    """ONNX pads [b_0..b_{r-1}, e_0..e_{r-1}] -> torch's F.pad order (last axis first)."""
    out = [p for pair in reversed(pad_pairs(pads, rank)) for p in pair]
    while len(out) > 2 and out[-1] == 0 and out[-2] == 0:  # drop leading (batch, channel) zeros
        out = out[:-2]
    return out


def _spatial_pad(pads: Sequence[int], nd: int) -> list[int]:
    """ONNX spatial pads [b.., e..] for ``nd`` spatial axes -> F.pad order (last axis first)."""
    return [p for pair in reversed(pad_pairs(pads, nd)) for p in pair]


def _static(node: Node, key: str, inputs: tuple, index: int):
    """A static parameter: the canonical attribute, else the (constant) input ``index``."""
    if key in node.attrs and node.attrs[key] is not None:
        return node.attrs[key]
    if len(inputs) > index and inputs[index] is not None:
        return inputs[index].tolist()
    return None


# ------------------------------------------------------------------ convolution ------------
# On CPU, torch's oneDNN convolutions can be faster on channels-last (NHWC) tensors: with this flag 4-D
# convolutions take and give channels-last there (other ops follow it or copy; results are the
# same, only the memory layout differs). Off by default: end to end (ZFNet, 64 seeds) it did not pay
# for the layout conversions of the other ops here; switch it on to try.
CHANNELS_LAST_ON_CPU = False


def _layout(fn, nd: int):
    if nd != 2:
        return fn
    torch = _torch()
    cl = torch.channels_last

    def run(x, w, *rest):
        if CHANNELS_LAST_ON_CPU and x.device.type == "cpu":
            x = x.contiguous(memory_format=cl)
            w = w.contiguous(memory_format=cl)
        return fn(x, w, *rest)

    return run


@converter("Conv")
def _conv(node: Node):
    F = _F()
    a = node.attrs
    nd = len(a["kernel_shape"])
    fn = _layout({1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd], nd)
    strides, dilations, group = list(a["strides"]), list(a["dilations"]), int(a["group"])
    pads = list(a["pads"])
    if is_symmetric(pads):
        padding = pads[:nd]
        return lambda x, w, b=None: fn(x, w, b, strides, padding, dilations, group)
    torch_pads = _spatial_pad(pads, nd)
    return lambda x, w, b=None: fn(F.pad(x, torch_pads), w, b, strides, 0, dilations, group)


@converter("ConvTranspose")
def _conv_transpose(node: Node):
    F = _F()
    a = node.attrs
    nd = len(a["kernel_shape"])
    fn = _layout({1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd], nd)
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    group = int(a.get("group", 1))
    pads = list(a.get("pads", [0] * 2 * nd))
    out_pad = list(a.get("output_padding", [0] * nd))
    if a.get("output_shape") is not None:
        raise UnsupportedTorchOpError("ConvTranspose with output_shape is not supported by the torch backend")
    direct = is_symmetric(pads) and all(op < max(s, d) for op, s, d in zip(out_pad, strides, dilations))
    if direct:
        padding = pads[:nd]
        return lambda x, w, b=None: fn(x, w, b, strides, padding, out_pad, group, dilations)
    # General geometry: the full transposed output, then crop (pads) / extend (output_padding).
    windows = axis_windows(dict(a, pads=pads), nd)
    crop = [p for i in reversed(range(nd)) for p in windows[i].transposed_crop(int(out_pad[i]))]

    def run(x, w, b=None):
        y = F.pad(fn(x, w, None, strides, 0, 0, group, dilations), crop)
        # ONNX adds the bias everywhere, also on the output padding the crop appended
        return y if b is None else y + b.reshape([1, -1] + [1] * nd)

    return run


# ------------------------------------------------------------------ pooling ----------------
@converter("MaxPool")
def _maxpool(node: Node):
    torch, F = _torch(), _F()
    a = node.attrs
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * 2 * nd))
    ceil = bool(a.get("ceil_mode", 0))
    windows = axis_windows(a, nd)
    want_idx = len([o for o in node.outputs if o]) > 1
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    if want_idx and nd != 2:
        raise UnsupportedTorchOpError("MaxPool switches (Indices output) are supported for 2-D pooling only")
    native = is_symmetric(pads) and all(pads[i] <= kernel[i] // 2 for i in range(nd))

    def padded(x):
        """x padded with -inf as ONNX pads it, plus a ceil-mode window's overhang: then floor mode."""
        pairs = [(w.pad_begin, w.pad_end + w.ceil_overhang(int(n))) for w, n in zip(windows, x.shape[2:])]
        return F.pad(x, [p for pair in reversed(pairs) for p in pair], value=-math.inf)

    def run(x):
        if not want_idx:
            if native:
                return fn(x, kernel, strides, pads[:nd], dilations, ceil)
            return fn(padded(x), kernel, strides, 0, dilations, False)
        n, c, h, w = x.shape
        if native:
            y, idx = fn(x, kernel, strides, pads[:nd], dilations, ceil, return_indices=True)
            row, col = 0, idx  # torch's index is already row-major within the unpadded plane
        else:
            xp = padded(x)
            y, idx = fn(xp, kernel, strides, 0, dilations, False, return_indices=True)
            row, col = unpadded(idx, xp.shape[3], pads[0], pads[1])
        plane = torch.arange(n * c, device=x.device, dtype=torch.int64).view(n, c, 1, 1)
        return y, switch_index(plane, row, col, h, w)

    return run


@converter("AveragePool")
def _avgpool(node: Node):
    F = _F()
    a = node.attrs
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * 2 * nd))
    ceil = bool(a.get("ceil_mode", 0))
    include = bool(a.get("count_include_pad", 0))
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    if all(s == 1 for s in strides) and int(np.prod(kernel)) <= 16 and (include or not any(pads)):
        # stride 1, small window (e.g. LRN's channel window): a sum of shifted slices is much
        # faster than torch's pooling kernel on long thin planes
        torch_pads = _spatial_pad(pads, nd)
        offsets = list(np.ndindex(*kernel))
        divisor = float(np.prod(kernel))

        def shifted_sum(x):
            xp = F.pad(x, torch_pads) if any(pads) else x
            out_sizes = [xp.shape[2 + i] - kernel[i] + 1 for i in range(nd)]
            total = None
            for off in offsets:
                index = (slice(None), slice(None)) + tuple(slice(o, o + n) for o, n in zip(off, out_sizes))
                total = xp[index] if total is None else total + xp[index]
            return total / divisor

        return shifted_sum
    if is_symmetric(pads) and all(pads[i] <= kernel[i] // 2 for i in range(nd)) and not ceil:
        return lambda x: pool(x, kernel, strides, pads[:nd], ceil, include)
    # ONNX's pads and divisors: window sums over the zero-padded input (ceil overhang included),
    # divided by the counts of onnx_semantics.pool_divisors (a constant per input size and device)
    windows = axis_windows(a, nd)
    divisors: dict = {}

    def run(x):
        sizes = tuple(int(n) for n in x.shape[2:])
        key = (sizes, x.device, x.dtype)
        if key not in divisors:
            d = pool_divisors(sizes, windows, include)
            divisors[key] = _torch().from_numpy(d).to(device=x.device, dtype=x.dtype)
        pairs = [(w.pad_begin, w.pad_end + w.ceil_overhang(n)) for w, n in zip(windows, sizes)]
        xp = F.pad(x, [p for pair in reversed(pairs) for p in pair])
        return pool(xp, kernel, strides, 0, False, True, divisor_override=1) / divisors[key]

    return run


@converter("GlobalAveragePool")
def _gap(node: Node):
    return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@converter("GlobalMaxPool")
def _gmp(node: Node):
    return lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# ------------------------------------------------------------------ normalization ----------
@converter("BatchNormalization")
def _batchnorm(node: Node):
    F = _F()
    eps = float(node.attrs.get("epsilon", 1e-5))
    if node.attrs.get("training_mode"):
        raise UnsupportedTorchOpError("training-mode BatchNormalization is not supported")
    return lambda x, scale, bias, mean, var: F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@converter("LRN")
def _lrn(node: Node):
    """ONNX LRN: y = x / (bias + alpha / size * sum of x^2 over the channels
    [c - floor((size-1)/2), c + ceil((size-1)/2)]) ** beta (torch centres even windows differently)."""
    F = _F()
    a = node.attrs
    size, alpha, beta, bias = int(a["size"]), float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2

    def run(x):
        n, c = x.shape[:2]
        sq = (x * x).reshape(n, 1, c, -1)
        window = F.avg_pool2d(F.pad(sq, (0, 0, lo, hi)), (size, 1), 1, 0, False, True, divisor_override=1)
        return x / (bias + (alpha / size) * window.reshape(x.shape)).pow(beta)

    return run


# ------------------------------------------------------------------ nonlinearities ---------
@converter("Relu")
def _relu(node):
    return _torch().relu


@converter("LeakyRelu")
def _leaky(node):
    F = _F()
    alpha = float(node.attrs.get("alpha", 0.01))
    return lambda x: F.leaky_relu(x, alpha)


@converter("PRelu")
def _prelu(node):
    torch = _torch()
    return lambda x, slope: torch.where(x < 0, x * slope, x)


@converter("Clip")
def _clip(node):
    torch = _torch()

    def run(x, lo_t=None, hi_t=None):
        lo = node.attrs.get("min", None)
        hi = node.attrs.get("max", None)
        if lo is None and lo_t is not None:
            lo = float(lo_t.reshape(-1)[0])
        if hi is None and hi_t is not None:
            hi = float(hi_t.reshape(-1)[0])
        lo = None if lo is None or not np.isfinite(lo) else float(lo)
        hi = None if hi is None or not np.isfinite(hi) else float(hi)
        if lo is None and hi is None:
            return x
        return torch.clamp(x, lo, hi)

    return run


@converter("Sigmoid")
def _sigmoid(node):
    return _torch().sigmoid


@converter("Tanh")
def _tanh(node):
    return _torch().tanh


@converter("HardSigmoid")
def _hardsigmoid(node):
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    return lambda x: (x * alpha + beta).clamp(0.0, 1.0)


@converter("HardSwish")
def _hardswish(node):
    return _F().hardswish


@converter("Softmax", "LogSoftmax")
def _softmax(node):
    torch = _torch()
    axis = int(node.attrs.get("axis", -1))
    log = node.op_type == "LogSoftmax"
    if node.attrs.get("legacy_flatten"):
        def legacy(x):
            flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
            y = torch.log_softmax(flat, 1) if log else torch.softmax(flat, 1)
            return y.reshape(x.shape)
        return legacy
    return (lambda x: torch.log_softmax(x, axis)) if log else (lambda x: torch.softmax(x, axis))


for _name, _fn_name in (("Sqrt", "sqrt"), ("Exp", "exp"), ("Log", "log"), ("Abs", "abs"), ("Neg", "neg"),
                        ("Erf", "erf"), ("Floor", "floor"), ("Ceil", "ceil"), ("Reciprocal", "reciprocal"),
                        ("Sin", "sin"), ("Cos", "cos"), ("Not", "logical_not"), ("Sign", "sign")):
    OPS[_name] = (lambda fn_name: (lambda node: getattr(_torch(), fn_name)))(_fn_name)


OPS["Round"] = lambda node: _torch().round  # half to even, like ONNX
OPS["Softsign"] = lambda node: _F().softsign
OPS["Softplus"] = lambda node: _F().softplus
OPS["Mish"] = lambda node: _F().mish


@converter("Elu", "Celu", "Selu", "ThresholdedRelu", "Gelu", "Shrink")
def _smooth(node):
    F, torch = _F(), _torch()
    a = node.attrs
    op = node.op_type
    if op == "Elu":
        alpha = float(a.get("alpha", 1.0))
        return lambda x: F.elu(x, alpha)
    if op == "Celu":
        alpha = float(a.get("alpha", 1.0))
        return lambda x: F.celu(x, alpha)
    if op == "Selu":
        alpha, gamma = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
        return lambda x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))
    if op == "ThresholdedRelu":
        alpha = float(a.get("alpha", 1.0))
        return lambda x: torch.where(x > alpha, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if op == "Gelu":
        approximate = a.get("approximate", "none")
        return lambda x: F.gelu(x, approximate=approximate)
    bias, lambd = float(a.get("bias", 0.0)), float(a.get("lambd", 0.5))
    zero = 0.0
    return lambda x: torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, x * zero))


@converter("Swish")
def _swish(node):
    torch = _torch()
    alpha = float(node.attrs.get("alpha", 1.0))
    return lambda x: x * torch.sigmoid(alpha * x)


def _normalize(x, dims, eps):
    var, mean = _torch().var_mean(x, dim=dims, keepdim=True, unbiased=False)
    return (x - mean) * (var + eps).rsqrt()


@converter("LayerNormalization")
def _layernorm(node):
    F = _F()
    axis, eps = int(node.attrs.get("axis", -1)), float(node.attrs.get("epsilon", 1e-5))

    def run(x, scale=None, bias=None):
        a = axis % x.dim()
        return F.layer_norm(x, tuple(x.shape[a:]), scale, bias, eps)

    return run


@converter("InstanceNormalization")
def _instancenorm(node):
    eps = float(node.attrs.get("epsilon", 1e-5))

    def run(x, scale, bias):
        shape = [-1] + [1] * (x.dim() - 2)
        return _normalize(x, tuple(range(2, x.dim())), eps) * scale.reshape(shape) + bias.reshape(shape)

    return run


@converter("GroupNormalization")
def _groupnorm(node):
    """Per-channel scale and bias (ONNX opset 21), like ``F.group_norm``."""
    F = _F()
    groups, eps = int(node.attrs["num_groups"]), float(node.attrs.get("epsilon", 1e-5))
    return lambda x, scale, bias: F.group_norm(x, groups, scale, bias, eps)


# ------------------------------------------------------------------ arithmetic -------------
@converter("Add")
def _add(node):
    return lambda a, b: a + b


@converter("Sub")
def _sub(node):
    return lambda a, b: a - b


@converter("Mul")
def _mul(node):
    return lambda a, b: a * b


@converter("Div")
def _div(node):
    torch = _torch()

    def run(a, b):
        if a.is_floating_point() or b.is_floating_point():
            return a / b
        return torch.div(a, b, rounding_mode="trunc")

    return run


@converter("Pow")
def _pow(node):
    return lambda a, b: a.pow(b)


@converter("Mod")
def _mod(node):
    torch = _torch()
    fmod = int(node.attrs.get("fmod", 0))
    return (lambda a, b: torch.fmod(a, b)) if fmod else (lambda a, b: torch.remainder(a, b))


@converter("Sum")
def _sum(node):
    def run(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    return run


@converter("Max", "Min", "Mean")
def _variadic(node):
    torch = _torch()
    pair = {"Max": torch.maximum, "Min": torch.minimum, "Mean": torch.add}[node.op_type]

    def run(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = pair(out, x)
        return out / len(xs) if node.op_type == "Mean" else out

    return run


@converter("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "And", "Or", "Xor")
def _compare(node):
    torch = _torch()
    fn = {"Greater": torch.gt, "Less": torch.lt, "GreaterOrEqual": torch.ge, "LessOrEqual": torch.le,
          "Equal": torch.eq, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor}[node.op_type]
    return fn


@converter("Where")
def _where(node):
    return _torch().where


@converter("Cast")
def _cast(node):
    dtype = _onnx_dtype(node.attrs["to"])
    return lambda x: x.to(dtype)


@converter("Constant")
def _constant(node):
    """ONNX Constant (only in the folded-from-parameters snippets of a DerivedConstant)."""
    torch = _torch()
    a = node.attrs
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            value = np.asarray(a[key])
            break
    else:
        raise UnsupportedTorchOpError(f"Constant with attributes {sorted(a)} is not supported")
    if value.dtype == np.float64:
        value = value.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(value).copy())
    return lambda: tensor


@converter("Identity", "Dropout")
def _identity(node):
    return lambda x, *rest: x


# ------------------------------------------------------------------ dense ------------------
@converter("Gemm")
def _gemm(node):
    F, torch = _F(), _torch()
    a = node.attrs
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))

    def run(x, w, c=None):
        if not ta and tb and alpha == 1.0 and (c is None or beta == 1.0 or beta == 0.0):
            return F.linear(x, w, c if beta else None)
        xa = x.t() if ta else x
        wb = w.t() if tb else w
        y = torch.matmul(xa, wb)
        if alpha != 1.0:
            y = y * alpha
        if c is not None and beta:
            y = y + (c * beta if beta != 1.0 else c)
        return y

    return run


@converter("MatMul")
def _matmul(node):
    return _torch().matmul


# ------------------------------------------------------------------ reductions -------------
@converter("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")
def _reduce(node):
    torch = _torch()
    keep = bool(node.attrs.get("keepdims", 1))
    fn = {"ReduceSum": torch.sum, "ReduceMean": torch.mean, "ReduceMax": torch.amax, "ReduceMin": torch.amin}[node.op_type]

    def run(x, axes_t=None):
        axes = _static(node, "axes", (x, axes_t), 1)
        if axes is None or len(axes) == 0:
            if node.attrs.get("noop_with_empty_axes"):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(int(v) for v in axes), keepdim=keep)

    return run


@converter("ArgMax", "ArgMin")
def _argmax(node):
    torch = _torch()
    axis = int(node.attrs.get("axis", 0))
    keep = bool(node.attrs.get("keepdims", 1))
    last = bool(node.attrs.get("select_last_index", 0))
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin

    def run(x):
        if last:
            n = x.shape[axis]
            return (n - 1) - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)

    return run


# ------------------------------------------------------------------ shapes -----------------
@converter("Reshape")
def _reshape(node):
    def run(x, shape_t=None):
        shape = list(_static(node, "shape", (x, shape_t), 1))
        if not node.attrs.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape([int(s) for s in shape])

    return run


@converter("Flatten")
def _flatten(node):
    axis = int(node.attrs.get("axis", 1))

    def run(x):
        ax = axis % x.dim() if x.dim() else 0
        lead = int(np.prod(x.shape[:ax])) if ax else 1
        return x.reshape(lead, -1)

    return run


@converter("Squeeze")
def _squeeze(node):
    def run(x, axes_t=None):
        axes = _static(node, "axes", (x, axes_t), 1)
        if axes is None:
            return x.squeeze()
        for ax in sorted((int(a) % x.dim() for a in axes), reverse=True):
            x = x.squeeze(ax)
        return x

    return run


@converter("Unsqueeze")
def _unsqueeze(node):
    def run(x, axes_t=None):
        axes = list(_static(node, "axes", (x, axes_t), 1))
        rank = x.dim() + len(axes)
        for ax in sorted(int(a) % rank for a in axes):
            x = x.unsqueeze(ax)
        return x

    return run


@converter("Transpose")
def _transpose(node):
    perm = node.attrs.get("perm")

    def run(x):
        p = perm if perm is not None else list(reversed(range(x.dim())))
        return x.permute([int(i) % x.dim() for i in p])

    return run


@converter("Concat")
def _concat(node):
    torch = _torch()
    axis = int(node.attrs["axis"])
    return lambda *xs: torch.cat(xs, axis)


@converter("Split")
def _split(node):
    torch = _torch()
    axis = int(node.attrs.get("axis", 0))
    n_out = len(node.outputs)

    def run(x, split_t=None):
        split = _static(node, "split", (x, split_t), 1)
        if split is None:
            size = x.shape[axis]
            split = [-(-size // n_out)] * (n_out - 1)
            split.append(size - sum(split))
        return tuple(torch.split(x, [int(s) for s in split], dim=axis))

    return run


@converter("Slice")
def _slice(node):
    torch = _torch()
    a = node.attrs
    if "starts" not in a:
        raise UnsupportedTorchOpError("Slice with run-time bounds is not supported by the torch backend")
    spec = list(zip(a["starts"], a["ends"], a["axes"], a.get("steps", [1] * len(a["starts"]))))

    def run(x, *unused):
        for s, e, ax, st in spec:
            ax = int(ax) % x.dim()
            if st > 0:
                index = [slice(None)] * ax + [slice(int(s), int(e), int(st))]
                x = x[tuple(index)]
            else:
                idx = torch.arange(int(s), int(e), int(st), device=x.device)
                idx = idx[(idx >= 0) & (idx < x.shape[ax])]
                x = x.index_select(ax, idx)
        return x

    return run


@converter("Pad")
def _pad(node):
    F = _F()
    mode = node.attrs.get("mode", "constant")
    value = float(node.attrs.get("value", 0.0))
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]

    def run(x, *unused):
        pads = _torch_pad(node.attrs["pads"], x.dim())
        if torch_mode == "constant":
            return F.pad(x, pads, value=value)
        return F.pad(x, pads, mode=torch_mode)

    return run


@converter("Expand")
def _expand(node):
    torch = _torch()

    def run(x, shape_t=None):
        shape = [int(s) for s in _static(node, "shape", (x, shape_t), 1)]
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))

    return run


@converter("Resize")
def _resize(node):
    """ONNX Resize through its per-axis matrices (zfprobe.ops.resize): exact ONNX semantics for
    every mode and coordinate transform, one matmul per resized axis."""
    torch = _torch()
    from zfprobe.ops.resize import resize_matrices

    cache: dict = {}

    def run(x, *unused):
        key = (tuple(x.shape[1:]), x.device, x.dtype)
        if key not in cache:
            mats = resize_matrices(node.attrs, (1,) + tuple(x.shape[1:]), node.attrs["out_size"])
            cache[key] = {a: torch.from_numpy(m).to(device=x.device, dtype=x.dtype) for a, m in mats.items()}
        mats = cache[key]
        rank = x.dim()
        out = x
        for axis, a in sorted(mats.items()):
            if axis == rank - 1:
                out = torch.matmul(out, a.t())
            elif axis == rank - 2:
                out = torch.matmul(a, out)
            else:
                out = torch.matmul(out.transpose(axis, -1), a.t()).transpose(axis, -1)
        return out.contiguous()

    return run


@converter("Tile")
def _tile(node):
    def run(x, *unused):
        return x.repeat(*[int(r) for r in _static(node, "repeats", (x, *unused), 1)])

    return run


@converter("DepthToSpace", "SpaceToDepth")
def _depth_to_space(node):
    from zfprobe.ops.layout import depth_to_space_steps, space_to_depth_steps

    block = int(node.attrs["blocksize"])

    def run(x):
        shape = [-1] + list(x.shape[1:])
        if node.op_type == "DepthToSpace":
            mid, perm, out = depth_to_space_steps(shape, block, node.attrs.get("mode", "DCR"))
        else:
            mid, perm, out = space_to_depth_steps(shape, block)
        mid[0] = out[0] = -1
        return x.reshape(mid).permute(perm).reshape(out)

    return run


@converter("Shape")
def _shape(node):
    torch = _torch()
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", None)
    return lambda x: torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


@converter("ConstantOfShape")
def _constant_of_shape(node):
    torch = _torch()
    value = node.attrs.get("value", 0.0)
    arr = np.asarray(value).reshape(-1)
    fill = arr[0].item() if arr.size else 0.0
    if arr.dtype == np.float64 or not arr.size:  # a Python float (or nothing): ONNX's float32 default
        arr = np.asarray(arr if arr.size else [0.0], dtype=np.float32)
    dtype = torch.from_numpy(np.ascontiguousarray(arr[:1])).dtype
    return lambda shape: torch.full([int(s) for s in shape.tolist()], fill, dtype=dtype, device=shape.device)


@converter("Gather")
def _gather(node):
    axis = int(node.attrs.get("axis", 0))

    def run(x, idx):
        ax = axis % x.dim()
        size = x.shape[ax]
        flat = idx.reshape(-1)
        flat = flat.where(flat >= 0, flat + size)
        out = x.index_select(ax, flat)
        return out.reshape(tuple(x.shape[:ax]) + tuple(idx.shape) + tuple(x.shape[ax + 1:]))

    return run


@converter("ScatterElements")
def _scatter(node, inplace: bool = False):
    """``inplace``: the data input dies here (e.g. fresh zeros), so it is written
    in place instead of copied. Indices must be non-negative (zfprobe's programs only make such)."""
    axis = int(node.attrs.get("axis", 0))
    reduction = node.attrs.get("reduction", "none")

    def run(data, idx, upd):
        ax = axis % data.dim()
        out = data if inplace else data.clone()
        if reduction == "add":
            return out.scatter_add_(ax, idx, upd)
        if reduction == "none":
            return out.scatter_(ax, idx, upd)
        op = {"mul": "prod", "max": "amax", "min": "amin"}[reduction]
        return out.scatter_reduce_(ax, idx, upd, op)

    return run


@converter("Unpool")
def _unpool(node):
    """zfprobe's Unpool (:mod:`zfprobe.ops.maxpool`): one scatter-add of each seed's signal onto
    its image's switches (switches of one image serve every seed, as an expanded view)."""
    shape = [int(s) for s in node.attrs["shape"]]
    per_image = int(np.prod(shape))

    def run(g, switches):
        k = g.shape[0]
        idx = switch_in_image(switches.reshape(switches.shape[0], -1), per_image).expand(k, -1)
        out = g.new_zeros((k, per_image))
        return out.scatter_add_(1, idx, g.reshape(k, -1)).view(k, *shape)

    return run


# ------------------------------------------------------------------ the backend ------------
class _Compiled:
    """A program ready to run: steps, constants, and when each tensor can be freed."""

    def __init__(self, program: Graph, device, live_refs: dict[str, str], derived_refs: dict | None = None,
                 computed_refs: dict | None = None):
        derived_refs = derived_refs or {}
        # constants with a ``compute(module)`` handle (torch.fx capture's LiveComputation)
        self.computed = [(name, h) for name, h in (computed_refs or {}).items() if name in program.constants]
        torch = _torch()
        self.program = program
        self.steps: list[tuple[Node, Callable, list[str], list[str]]] = []
        missing = []
        for node in program.nodes:
            make = OPS.get(node.op_type)
            if make is None:
                missing.append(node)
                continue
            try:
                fn = make(node)
            except UnsupportedTorchOpError as exc:
                raise UnsupportedTorchOpError(f"node '{node.name}'{_node_origin(node)}: {exc}") from None
            self.steps.append((node, fn, list(node.inputs), list(node.outputs)))
        if missing:
            node = missing[0]
            kinds = sorted({n.op_type for n in missing})
            raise UnsupportedTorchOpError(
                f"the torch backend cannot execute op type {node.op_type} (node '{node.name}'{_node_origin(node)})"
                f"{'; also ' + ', '.join(k for k in kinds if k != node.op_type) if len(kinds) > 1 else ''}; "
                "use the onnxruntime backend for this model")
        # last step that reads each tensor; tensors read by no later step are dropped right away
        last_use: dict[str, int] = {}
        for i, (_, _, ins, _) in enumerate(self.steps):
            for t in ins:
                if t:
                    last_use[t] = i
        # a scatter into fresh zeros (a ConstantOfShape read by nothing else) writes them in place
        for i, (node, fn, ins, outs) in enumerate(self.steps):
            producer = program.producer(ins[0]) if node.op_type == "ScatterElements" and ins[0] else None
            if producer is not None and producer.op_type == "ConstantOfShape" and last_use.get(ins[0]) == i \
                    and sum(1 for t in ins if t == ins[0]) == 1:
                self.steps[i] = (node, _scatter(node, inplace=True), ins, outs)
        self.live = {name: path for name, path in live_refs.items() if name in program.constants}
        # constants computed from parameters (DerivedConstant handles): re-run on live parameters
        self.derived = []
        for name, handle in derived_refs.items():
            if name not in program.constants:
                continue
            try:
                steps = [(n, OPS[n.op_type](n), list(n.inputs), list(n.outputs)) for n in handle.nodes]
            except (KeyError, UnsupportedTorchOpError):
                continue  # cannot recompute it here: the snapshot stays
            self.derived.append((name, handle, steps))
        derived_names = {name for name, _, _ in self.derived} | {name for name, _ in self.computed}
        self.constants = {}
        for name, value in program.constants.items():
            if name in self.live or name in derived_names:
                continue
            arr = np.asarray(value, order="C")  # (np.ascontiguousarray would make a 0-d index 1-d)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            self.constants[name] = torch.from_numpy(arr.copy()).to(device)
        self.free_after: list[list[str]] = [[] for _ in self.steps]
        keep = set(program.outputs)
        for t, i in last_use.items():
            if t not in keep and t not in program.constants:
                self.free_after[i].append(t)


def _node_origin(node: Node) -> str:
    return f", from {node.source}" if node.source and node.source != node.name else ""


def module_device(module) -> "Any":
    """The device of a module's first parameter (or buffer); CPU for a module without any."""
    torch = _torch()
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def resolve_ref(module, path: str):
    """The parameter or buffer at dotted ``path`` of ``module`` (read fresh on every call)."""
    obj = module
    parts = path.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part)
    return getattr(obj, parts[-1])


class TorchBackend:
    """Executes zfprobe programs with torch ops.

    ``module``: the ``nn.Module`` whose parameters and buffers the graph's ``parameter_refs``
    name; they are read live at every run. Without a module, the graph's constant snapshots are
    used (e.g. for an ONNX file). ``device``: where to compute (default: the module's device,
    else CUDA when available, else CPU).
    """

    name = "torch"

    def __init__(self, module=None, device=None):
        torch = _torch()
        self.module = module
        if device is None or device == "auto":
            if module is not None:
                device = module_device(module)
            else:
                device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self._compiled: dict[int, _Compiled] = {}

    @property
    def device(self) -> str:
        return str(self._device)

    def compile(self, program: Graph) -> _Compiled:
        cached = self._compiled.get(id(program))
        if cached is not None and cached.program is program:
            return cached
        refs = program.parameter_refs if self.module is not None else {}
        compiled = _Compiled(program, self._device, {k: v for k, v in refs.items() if isinstance(v, str)},
                             {k: v for k, v in refs.items() if hasattr(v, "nodes") and hasattr(v, "params")},
                             {k: v for k, v in refs.items() if hasattr(v, "compute")})
        self._compiled[id(program)] = compiled
        return compiled

    def _live(self, compiled: _Compiled) -> dict:
        out = {}
        for name, path in compiled.live.items():
            out[name] = self._param(path)
        for name, handle, steps in compiled.derived:
            env = {param: self._param(path) for param, path in handle.params.items()}
            for node, fn, ins, outs in steps:
                result = fn(*[env[t] if t else None for t in ins])
                for o, r in zip(outs, result if isinstance(result, tuple) else (result,)):
                    if o:
                        env[o] = r.to(self._device) if r.device != self._device else r
            out[name] = env[name]
        for name, handle in compiled.computed:
            out[name] = self._tensor(handle.compute(self.module))
        return out

    def _param(self, path: str):
        return self._tensor(resolve_ref(self.module, path))

    def _tensor(self, t):
        torch = _torch()
        t = t.detach()
        if t.device != self._device:
            t = t.to(self._device)
        if t.is_floating_point() and t.dtype != torch.float32:
            t = t.float()
        return t

    def _feed(self, value):
        torch = _torch()
        if isinstance(value, torch.Tensor):
            t = value.detach()
        else:
            arr = np.asarray(value)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.to(self._device, non_blocking=True)

    def run_tensors(self, program: Graph, feeds: dict, outputs: Sequence[str] | None = None) -> list:
        """Like :meth:`run`, but returns torch tensors on the backend's device."""
        torch = _torch()
        compiled = self.compile(program)
        wanted = list(outputs or program.outputs)
        with torch.inference_mode(), _Float32Math(self._device):
            env: dict[str, Any] = dict(compiled.constants)
            env.update(self._live(compiled))
            for name, value in feeds.items():
                env[name] = self._feed(value)
            for (node, fn, ins, outs), dead in zip(compiled.steps, compiled.free_after):
                try:
                    result = fn(*[env[t] if t else None for t in ins])
                except Exception as exc:  # an internal error with the node named
                    raise RuntimeError(f"torch backend failed at node '{node.name}' ({node.op_type}{_node_origin(node)}): {exc}") from exc
                if isinstance(result, tuple):
                    for o, r in zip(outs, result):
                        if o:
                            env[o] = r
                else:
                    env[outs[0]] = result
                for t in dead:
                    env.pop(t, None)
            return [env[o] for o in wanted]

    def run(self, program: Graph, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        results = self.run_tensors(program, feeds, outputs)
        # copies: an output may be a view of a feed or of a live parameter (e.g. an Identity)
        return [np.array(r.detach().cpu().contiguous().numpy(), copy=True) for r in results]
