"""Independent oracle for zfprobe's projections, computed with torch autograd.

Definition (what zfprobe's ``Probe.project`` must return): for seed ``k``,

    proj[k] = J(x_{seed_image[k]})^T seeds[k]

the vector-Jacobian product of the probed layer's output w.r.t. the input image (when the probed
layer is itself a ReLU6 / Clip(0, m), the seed sits past that clip's ceiling: its own backward
is the rule's ReLU, see ``SEED_PAST_CEILING``), except that at
every rectifier the backward pass is replaced according to ``rule`` (``g`` = incoming signal,
``x`` = the rectifier's forward input):

=====================  ==========================  ========================  ===========================
rectifier              gradient                    deconvnet                 guided
=====================  ==========================  ========================  ===========================
Relu                   g * 1[x > 0]                relu(g)                   relu(g) * 1[x > 0]
Clip(0, m) / ReLU6     g * 1[0 < x < m]            relu(g) * 1[x < m]        relu(g) * 1[0 < x < m]
LeakyRelu(a)           g * (x > 0 ? 1 : a)         leaky_a(g)                leaky_a(g) * (x > 0 ? 1 : a)
=====================  ==========================  ========================  ===========================

Everything else -- convolutions, max pooling (the gradient routes to the arg-max: zfprobe's
"switches"; overlapping windows add), average pooling, inference BatchNorm, Gemm, Concat, Add,
Mul (product rule), reshapes, LRN (its true gradient: compare with ``lrn="gradient"``) -- is
plain autograd.

The rule-aware rectifiers are ``torch.autograd.Function`` s (:class:`RuleReLU`, ...). They read
the rule when the BACKWARD pass runs (set by :func:`rectifier_rule`, a context manager), so one
forward pass serves all three rules. Two entry points:

- :func:`oracle_from_onnx`: converts the ONNX model with onnx2torch into a ``torch.fx``
  GraphModule, REPLACES its rectifier modules (``nn.ReLU``, ``nn.ReLU6`` / ``nn.Hardtanh(0, m)``,
  onnx2torch's ``OnnxClip`` with min 0, ``nn.LeakyReLU``) by rule-aware modules, and captures
  the probed ONNX tensor with a forward hook on the module that produces it (onnx2torch creates
  one module per ONNX node and records the node's ONNX input / output names in
  ``onnx_mapping``; the forward pass stops there).
- :func:`oracle_from_module`: for a native torch module. Inside :func:`rectifier_rule` the
  functions ``torch.nn.functional.relu / relu_ / relu6 / hardtanh / hardtanh_ / leaky_relu /
  leaky_relu_`` are PATCHED (module-level attributes of ``torch.nn.functional``) with rule-aware
  versions. That covers ``F.relu(...)`` written in a forward and the modules ``nn.ReLU``,
  ``nn.ReLU6``, ``nn.Hardtanh`` and ``nn.LeakyReLU`` (whose forwards call those functions).
  It does NOT cover ``torch.relu``, ``torch.clamp`` or ``Tensor.relu()``: networks given to this
  oracle must not use them (tests/nets.py doesn't), and the oracle counts patched calls so a
  network whose rectifiers were all missed is reported (``min_rectifiers``).

Forward decisions (``decisions=``, ONNX route). A projection is discontinuous in the forward
pass's discrete decisions: each rectifier's mask and each max-pooling switch. Two correct float32
implementations of the same forward pass (torch here, onnxruntime in zfprobe) differ in the last
bits, and on a large network a few units in ten million sit so close to a decision boundary
(a ReLU input of 1e-8 next to values of 10) that they land on different sides; through such a unit
the projections then differ by far more than rounding. With ``decisions="onnxruntime"`` (the
default of the ONNX route) the oracle runs the model's own graph in onnxruntime, reads the input
of every rectifier and max-pool on the way to the probed layer, and takes the masks and switches
from THOSE values (argmax, first maximum on ties, like ONNX MaxPool's indices); all values that
flow, the rules and the whole backward pass stay torch's. That shares with zfprobe only "the
forward values of the model as onnxruntime computes them", not any of zfprobe's logic: which
tensor decides which mask, the unpooling, the rules and every adjoint are the oracle's own.
``decisions="torch"`` takes them from torch's forward pass (the native route always does).

Each seed is back-propagated separately (one forward pass per distinct image, then one backward
pass per seed and rule), so seeds never mix even when they share an image. Computation is in
float32, like the onnxruntime forward pass zfprobe relies on.

Onnx-route details worth knowing:
- onnx2torch 1.5.15 imports torchvision at import time (only for NMS / RoIAlign converters);
  torchvision from PyPI does not import beside the CPU torch build here, so a stub
  ``torchvision`` is installed in ``sys.modules`` when the real one cannot be imported.
- Only the ancestors of the probed tensor are converted (so an op the probe never needs cannot
  break the conversion, e.g. inception_v1's asymmetric-pad AveragePool). onnx2torch has no
  converter for Dropout before opset 10 (the opset-9 Caffe2 zoo graphs have ``Dropout-7`` with a
  mask output): those become ``Identity`` (inference semantics); ``Constant`` tensors become
  initializers (onnx2torch reads Conv weights only from initializers). Nothing else changes.
- onnx2torch converts ``Clip(0, None)`` to ``nn.ReLU``, ``Clip(0, 6)`` to ``nn.ReLU6``, other
  clips to ``OnnxClip``; ``HardSigmoid`` becomes ``OnnxHardSigmoid`` (a clamp of
  ``alpha*x+beta`` to [0, 1], NOT a rectifier here: plain autograd); ``LRN`` becomes
  ``nn.LocalResponseNorm`` (same formula as ONNX for odd sizes); a MaxPool with asymmetric pads
  becomes ``Sequential(ConstantPad(-inf), MaxPool2d)``.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import types
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RULES = ("deconvnet", "gradient", "guided")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_NP = {"float32": np.float32, "float64": np.float64}

# --------------------------------------------------------------------------------------------
# state: the current rule, a count of rectifier calls, the reference values for decisions

_RULE = {"rule": None, "calls": 0}
# zfprobe seeds a ReLU6 / Clip(0, m) layer past its own ceiling (docs/methods.md, "Units that
# project"): when the probed layer is such a clip, the oracle back-propagates from it as from a
# rule-aware ReLU of the clip's input. Set "on" to False for the plain definition.
SEED_PAST_CEILING = {"on": True}
_REF: dict = {"values": None}      # ONNX tensor name -> torch tensor, for the running forward


def _current_rule() -> str:
    rule = _RULE["rule"]
    if rule is None:
        raise RuntimeError("rule-aware rectifier used outside oracle.rectifier_rule(...)")
    return rule


def _count() -> None:
    _current_rule()
    _RULE["calls"] += 1


def _ref(name: str | None, like: torch.Tensor) -> torch.Tensor:
    """The tensor that decides masks / switches for a rectifier or pool reading ``like``."""
    values = _REF["values"]
    if name is None or values is None:
        return like
    ref = values[name]
    if tuple(ref.shape) != tuple(like.shape):
        raise RuntimeError(f"reference {name!r} has shape {tuple(ref.shape)}, "
                           f"the forward pass {tuple(like.shape)}")
    return ref


# --------------------------------------------------------------------------------------------
# rule-aware rectifiers: forward on x, decisions on d (= x, or onnxruntime's value of x)


class _ReluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, d):
        ctx.save_for_backward(d)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        rule = _current_rule()
        zero = torch.zeros((), dtype=g.dtype)
        if rule == "gradient":
            return torch.where(d > 0, g, zero), None
        r = g.clamp_min(0)
        if rule == "deconvnet":
            return r, None
        return torch.where(d > 0, r, zero), None  # guided


class _ClipFn(torch.autograd.Function):
    """clamp(x, 0, hi); hi None means +inf (a ReLU)."""

    @staticmethod
    def forward(ctx, x, d, hi):
        ctx.save_for_backward(d)
        ctx.hi = hi
        return x.clamp(0, hi) if hi is not None else x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        rule = _current_rule()
        zero = torch.zeros((), dtype=g.dtype)
        below = (d < ctx.hi) if ctx.hi is not None else torch.ones_like(d, dtype=torch.bool)
        inside = (d > 0) & below
        if rule == "gradient":
            return torch.where(inside, g, zero), None, None
        r = g.clamp_min(0)
        if rule == "deconvnet":
            return torch.where(below, r, zero), None, None
        return torch.where(inside, r, zero), None, None


class _LeakyFn(torch.autograd.Function):
    """A leaky rectifier with slope ``a`` below 0 (a tensor broadcast against x: one value for
    LeakyReLU, one per channel for PReLU)."""

    @staticmethod
    def forward(ctx, x, d, a):
        ctx.save_for_backward(d, a)
        return torch.where(x > 0, x, x * a)

    @staticmethod
    def backward(ctx, g):
        d, a = ctx.saved_tensors
        rule = _current_rule()
        slope = torch.where(d > 0, torch.ones_like(d), a.expand_as(d))
        if rule == "gradient":
            return g * slope, None, None
        lg = torch.where(g > 0, g, g * a)
        if rule == "deconvnet":
            return lg, None, None
        return lg * slope, None, None


def rule_relu(x: torch.Tensor, ref_name: str | None = None) -> torch.Tensor:
    _count()
    return _ReluFn.apply(x, _ref(ref_name, x).detach())


def rule_clip(x: torch.Tensor, hi: float | None, ref_name: str | None = None) -> torch.Tensor:
    _count()
    return _ClipFn.apply(x, _ref(ref_name, x).detach(), None if hi is None else float(hi))


def rule_leaky(x: torch.Tensor, alpha: float, ref_name: str | None = None) -> torch.Tensor:
    _count()
    return _LeakyFn.apply(x, _ref(ref_name, x).detach(), torch.tensor(float(alpha), dtype=x.dtype))


def rule_prelu(x: torch.Tensor, slope: torch.Tensor, ref_name: str | None = None,
               channel_axis: bool = True) -> torch.Tensor:
    """``channel_axis``: torch's F.prelu convention (a [C] slope over axis 1); else ONNX's
    (the slope broadcasts right-aligned)."""
    _count()
    a = slope.detach()
    if channel_axis and a.numel() > 1 and x.dim() > 2:
        a = a.reshape((1, -1) + (1,) * (x.dim() - 2))
    return _LeakyFn.apply(x, _ref(ref_name, x).detach(), a.to(x.dtype))


class RulePReLUOnnx(nn.Module):
    """onnx2torch's PRelu module (inputs x and slope), rule-aware."""

    def __init__(self, ref_name=None):
        super().__init__()
        self.ref_name = ref_name

    def forward(self, x, slope):
        return rule_prelu(x, slope, self.ref_name, channel_axis=False)


class RuleReLU(nn.Module):
    def __init__(self, ref_name=None):
        super().__init__()
        self.ref_name = ref_name

    def forward(self, x):
        return rule_relu(x, self.ref_name)


class RuleClip(nn.Module):
    def __init__(self, hi, ref_name=None):
        super().__init__()
        self.hi, self.ref_name = hi, ref_name

    def forward(self, x):
        return rule_clip(x, self.hi, self.ref_name)

    def extra_repr(self):
        return f"0, {self.hi}"


class RuleLeaky(nn.Module):
    def __init__(self, alpha, ref_name=None):
        super().__init__()
        self.alpha, self.ref_name = alpha, ref_name

    def forward(self, x):
        return rule_leaky(x, self.alpha, self.ref_name)


_LRN = {"mode": "gradient"}


class RuleLRN(nn.Module):
    """LRN whose backward is its true gradient (``lrn="gradient"``) or the identity
    (``lrn="identity"``, the paper's deconvnet): the value is always the LRN's."""

    def __init__(self, lrn: nn.Module):
        super().__init__()
        self.lrn = lrn

    def forward(self, x):
        y = self.lrn(x)
        if _LRN["mode"] == "identity":
            return x + (y - x).detach()
        return y


_TIE = {"last": False}


def first_max_switches(r: torch.Tensor, kernel, stride, padding, dilation, ceil_mode):
    """Max-pool switches under zfprobe's documented tie rule, computed here without any
    pooling kernel: every window is unfolded (positions outside the tensor are -inf) and the
    FIRST maximum in raster order of the window (row by row, left to right) wins
    (``torch.argmax`` returns the first maximal index). Returns flat per-plane indices into
    ``r`` ([N, C, Ho, Wo], the layout of ONNX MaxPool's ``Indices`` without the plane offset).
    """
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)   # noqa: E731
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(pair, (kernel, stride, padding, dilation))
    n, c, h, w = r.shape

    def out_size(size, k, s, p, d):
        span = size + 2 * p - d * (k - 1) - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + p:    # the last window must start inside
            o -= 1
        return o

    ho, wo = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    extra_h = max(0, (ho - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (wo - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    rp = F.pad(r, (pw, pw + extra_w, ph, ph + extra_h), value=-torch.inf)
    win = rp.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    win = win[:, :, :ho, :wo, ::dh, ::dw].reshape(n, c, ho, wo, kh * kw)
    if _TIE["last"]:      # the opposite rule, only to show that a test depends on the rule
        arg = kh * kw - 1 - win.flip(-1).argmax(-1)
    else:
        arg = win.argmax(-1)                                   # first maximum in the window
    ky, kx = arg // kw, arg % kw
    oy = torch.arange(ho).view(ho, 1) * sh - ph
    ox = torch.arange(wo).view(1, wo) * sw - pw
    y, x = oy + ky * dh, ox + kx * dw
    if ((y < 0) | (y >= h) | (x < 0) | (x >= w)).any():
        raise RuntimeError("a max-pool window lies entirely in the padding")
    return y * w + x


class RefMaxPool2d(nn.Module):
    """Max pooling with the oracle's own switches (see module docstring): the output is the
    forward tensor gathered at the switches of the reference values (the forward values
    themselves unless a reference is given), chosen by :func:`first_max_switches` -- the tie
    rule zfprobe documents -- so autograd routes the signal to those positions (overlapping
    windows add)."""

    def __init__(self, pool: nn.MaxPool2d, pad: nn.Module | None, ref_name: str):
        super().__init__()
        self.pool, self.pad, self.ref_name = pool, pad, ref_name

    def forward(self, x):
        r = _ref(self.ref_name, x).detach() if _REF["values"] is not None else x.detach()
        if self.pad is not None:
            x, r = self.pad(x), self.pad(r)
        p = self.pool
        idx = first_max_switches(r, p.kernel_size, p.stride, p.padding, p.dilation,
                                 p.ceil_mode)
        out = x.flatten(2).gather(2, idx.flatten(2))
        return out.view(idx.shape)


# --------------------------------------------------------------------------------------------
# patching torch.nn.functional (native-module route)

_ORIG = {name: getattr(F, name) for name in
         ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "prelu")}


def _p_relu(input, inplace=False):  # noqa: A002 - torch's signature
    return rule_relu(input)


def _p_relu6(input, inplace=False):  # noqa: A002
    return rule_clip(input, 6.0)


def _p_hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):  # noqa: A002
    if min_val == 0:
        return rule_clip(input, max_val)
    return _ORIG["hardtanh"](input, min_val, max_val, False)


def _p_leaky(input, negative_slope=0.01, inplace=False):  # noqa: A002
    return rule_leaky(input, negative_slope)


def _p_prelu(input, weight):  # noqa: A002
    return rule_prelu(input, weight)


_PATCHES = {
    "prelu": _p_prelu,
    "relu": _p_relu, "relu_": lambda input: _p_relu(input),
    "relu6": _p_relu6,
    "hardtanh": _p_hardtanh, "hardtanh_": lambda input, min_val=-1.0, max_val=1.0:
        _p_hardtanh(input, min_val, max_val),
    "leaky_relu": _p_leaky, "leaky_relu_": lambda input, negative_slope=0.01:
        _p_leaky(input, negative_slope),
}


@contextlib.contextmanager
def rectifier_rule(rule: str, patch_functional: bool = False):
    """Within this context rule-aware rectifiers apply ``rule``; with ``patch_functional`` the
    rectifiers of ``torch.nn.functional`` are replaced too (restored on exit)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    prev = dict(_RULE)
    _RULE["rule"], _RULE["calls"] = rule, 0
    patched = []
    try:
        if patch_functional:
            for name, fn in _PATCHES.items():
                setattr(F, name, fn)
                patched.append(name)
        yield _RULE
    finally:
        for name in patched:
            setattr(F, name, _ORIG[name])
        _RULE.update(prev)


# --------------------------------------------------------------------------------------------
# capture of one layer's output, stopping the forward pass there


class _Captured(Exception):
    def __init__(self, value):
        super().__init__("captured")
        self.value = value


def _ceiling_clip(module: nn.Module) -> bool:
    """A rectifier with an upper clip (nn.ReLU6 / Hardtanh(0, m), the swapped ONNX Clip(0, m))."""
    if isinstance(module, RuleClip):
        return module.hi is not None
    return isinstance(module, nn.Hardtanh) and module.min_val == 0


def _past_ceiling(module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The seed placed past the layer's own ceiling (zfprobe's choice, docs/methods.md): the
    layer's forward values, with the backward of the rule-aware rectifier WITHOUT its upper clip
    (computed here from the clip's input, independently of zfprobe)."""
    r = rule_clip(x, None, getattr(module, "ref_name", None))
    return output.detach() + (r - r.detach())


def _capture_hook(index):
    def hook(module, inputs, output):
        value = output[index] if index is not None else output
        if SEED_PAST_CEILING["on"] and _RULE["rule"] is not None and _ceiling_clip(module):
            value = _past_ceiling(module, inputs[0], value)
        raise _Captured(value)

    return hook


def _run_capturing(module: nn.Module, target: nn.Module, index, x: torch.Tensor) -> torch.Tensor:
    handle = target.register_forward_hook(_capture_hook(index))
    try:
        module(x)
    except _Captured as c:
        return c.value
    finally:
        handle.remove()
    raise RuntimeError("the probed layer was never computed")


def _prepare(images, seeds, seed_image, dtype=np.float32):
    images = np.asarray(images, dtype=dtype)
    seeds = np.asarray(seeds, dtype=dtype)
    if images.ndim != 4:
        raise ValueError("images must be [N, C, H, W]")
    k = seeds.shape[0]
    if seed_image is None:
        seed_image = np.zeros(k, dtype=np.int64)
    seed_image = np.asarray(seed_image, dtype=np.int64)
    if seed_image.shape != (k,):
        raise ValueError("seed_image must be [K]")
    return images, seeds, seed_image


def _vjps(forward_to_layer: Callable[[torch.Tensor], torch.Tensor], images, seeds, seed_image,
          rules, references: Callable[[int], dict] | None = None,
          layer_outputs: dict | None = None) -> dict[str, np.ndarray]:
    """For each rule, the K projections: per distinct image one forward pass (batch of 1), then
    per seed of that image and per rule one backward pass. Must run inside rectifier_rule.
    ``references(i)``: the decision values (ONNX name -> array [1, ...]) for image i.
    ``layer_outputs``: if given, filled with image index -> the layer's output [1, ...]."""
    k = seeds.shape[0]
    out_arrays = {r: np.zeros((k,) + images.shape[1:], images.dtype) for r in rules}
    for i in np.unique(seed_image):
        ks = np.flatnonzero(seed_image == i)
        x = torch.from_numpy(images[i:i + 1].copy()).requires_grad_(True)
        if references is not None:
            _REF["values"] = {n: torch.from_numpy(np.ascontiguousarray(v))
                              for n, v in references(int(i)).items()}
        try:
            out = forward_to_layer(x)
        finally:
            _REF["values"] = None
        if tuple(out.shape[1:]) != tuple(seeds.shape[1:]):
            raise ValueError(f"seeds shape {seeds.shape[1:]} != layer output shape "
                             f"{tuple(out.shape[1:])}")
        if layer_outputs is not None:
            layer_outputs[int(i)] = out.detach().numpy().copy()
        n_back = len(ks) * len(rules)
        j = 0
        for kk in ks:
            cot = torch.from_numpy(seeds[kk:kk + 1].copy()).to(out.dtype)
            for rule in rules:
                j += 1
                _RULE["rule"] = rule
                (grad,) = torch.autograd.grad(out, x, grad_outputs=cot, retain_graph=j < n_back)
                out_arrays[rule][kk] = grad[0].detach().numpy()
    return out_arrays


def _rules(rule) -> tuple[tuple[str, ...], bool]:
    if isinstance(rule, str):
        rules, single = (rule,), True
    else:
        rules, single = tuple(rule), False
    for r in rules:
        if r not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {r!r}")
    return rules, single


# --------------------------------------------------------------------------------------------
# native torch modules


def _module_forward(module: nn.Module, get_layer):
    if isinstance(get_layer, str):
        target = module.get_submodule(get_layer)
        return lambda inp: _run_capturing(module, target, None, inp)
    return lambda inp: get_layer(module, inp)


def oracle_from_module(module: nn.Module, images, get_layer, seeds, seed_image=None,
                       rule="deconvnet", min_rectifiers: int = 0):
    """Projection of ``seeds`` at a layer of a native torch ``module`` (see module docstring).

    ``get_layer``: a dotted submodule path (its forward output is the layer; the forward pass
    stops there), or a callable ``get_layer(module, x) -> tensor`` computing the layer.
    ``rule``: a rule name (returns float32 [K, C, H, W]) or a sequence of rule names (returns
    a dict rule -> array; one forward pass serves them all). Decisions: torch's forward pass.
    ``min_rectifiers``: fail unless at least this many rule-aware rectifiers ran in each
    forward pass (guards against a network whose rectifiers bypass the patched functions).
    """
    module = module.eval()
    rules, single = _rules(rule)
    images, seeds, seed_image = _prepare(images, seeds, seed_image)
    fwd = _module_forward(module, get_layer)
    with rectifier_rule(rules[0], patch_functional=True) as state:
        result = _vjps(fwd, images, seeds, seed_image, rules)
        calls = state["calls"] / max(1, len(np.unique(seed_image)))
    if calls < min_rectifiers:
        raise AssertionError(f"only {calls} rule-aware rectifier calls per forward pass, expected "
                             f">= {min_rectifiers}: the network bypasses the patched functions")
    return result[rules[0]] if single else result


def plain_gradient(module: nn.Module, images, get_layer, seeds, seed_image=None) -> np.ndarray:
    """The same VJP with unmodified torch autograd (nothing patched); for self-checks."""
    module = module.eval()
    images, seeds, seed_image = _prepare(images, seeds, seed_image)
    fwd = _module_forward(module, get_layer)
    x = torch.from_numpy(images[seed_image].copy()).requires_grad_(True)
    out = fwd(x)
    (grad,) = torch.autograd.grad(out, x, grad_outputs=torch.from_numpy(seeds.copy()))
    return grad.numpy()


def module_activations(module: nn.Module, images, get_layer) -> np.ndarray:
    """The layer's output for ``images`` (plain torch, no patching)."""
    fwd = _module_forward(module.eval(), get_layer)
    with torch.no_grad():
        return fwd(torch.from_numpy(np.asarray(images, dtype=np.float32).copy())).numpy()


# --------------------------------------------------------------------------------------------
# ONNX models via onnx2torch


def _import_onnx2torch():
    try:
        import torchvision  # noqa: F401
    except Exception:  # not installed, or the PyPI build that fails beside torch CPU
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        stub = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")

        def _missing(*args, **kwargs):
            raise NotImplementedError("torchvision is not available (stub for onnx2torch)")

        ops.nms = ops.box_convert = ops.roi_align = _missing
        stub.ops = ops
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.ops"] = ops
    import onnx2torch

    _register_global_max_pool()
    return onnx2torch


class OracleGlobalMaxPool(nn.Module):
    """GlobalMaxPool (onnx2torch has no converter): the value at the first maximum of each
    plane in raster order -- the tie rule -- gathered, so the signal goes there alone (torch's
    ``amax`` would split it evenly among equal maxima)."""

    def forward(self, x):
        flat = x.flatten(2)
        if _TIE["last"]:     # the opposite rule, only to show that a test depends on the rule
            n = flat.shape[-1]
            idx = n - 1 - flat.detach().flip(-1).argmax(-1, keepdim=True)
        else:
            idx = flat.detach().argmax(-1, keepdim=True)   # the first maximal index
        return flat.gather(2, idx).view(*x.shape[:2], *([1] * (x.dim() - 2)))


_GMP = {"done": False}


def _register_global_max_pool() -> None:
    if _GMP["done"]:
        return
    from onnx2torch.node_converters.registry import add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    @add_converter(operation_type="GlobalMaxPool", version=1)
    def _convert(node, graph):  # noqa: ARG001 - onnx2torch's converter signature
        return OperationConverterResult(torch_module=OracleGlobalMaxPool(),
                                        onnx_mapping=onnx_mapping_from_node(node))

    _GMP["done"] = True


@functools.lru_cache(maxsize=2)
def _load_onnx(path: str, mtime: float):
    import onnx

    return onnx.load(path)


def subgraph(onnx_path, targets: Sequence[str], for_onnx2torch: bool = False):
    """The part of the (cached) ONNX model at ``onnx_path`` that computes ``targets``."""
    p = str(Path(onnx_path).resolve())
    model = _load_onnx(p, os.path.getmtime(p))
    return _truncated(model, list(targets), for_onnx2torch)


def _truncated(model, targets: list[str], for_onnx2torch: bool = True):
    """A new ModelProto holding only what computing ``targets`` needs (their ancestor nodes,
    initializers and the data input), with ``targets`` as the outputs. With ``for_onnx2torch``
    it is made digestible for onnx2torch without changing any value:

    - Dropout (opset < 10 has no onnx2torch converter) -> Identity of its first output;
    - Constant nodes holding a tensor -> initializers of the same name (onnx2torch reads
      Conv weights only from initializers; the PaddlePaddle export keeps them in Constants).

    Truncating also keeps ops the oracle never needs (e.g. inception_v1's final AveragePool
    with asymmetric pads, which onnx2torch cannot convert) out of the conversion.
    """
    import onnx
    from onnx import helper

    g = model.graph
    producer = {}
    for idx, node in enumerate(g.node):
        for o in node.output:
            producer[o] = idx
    for target in targets:
        if target not in producer:
            raise KeyError(f"no node produces {target!r}")
    needed, stack = set(), [producer[t] for t in targets]
    while stack:
        idx = stack.pop()
        if idx in needed:
            continue
        needed.add(idx)
        for name in g.node[idx].input:
            if name in producer and producer[name] not in needed:
                stack.append(producer[name])
    nodes, extra_inits = [], []
    for idx in sorted(needed):
        node = g.node[idx]
        if for_onnx2torch and node.op_type == "Constant":
            attrs = {a.name: a for a in node.attribute}
            if "value" in attrs and attrs["value"].type == onnx.AttributeProto.TENSOR:
                t = onnx.TensorProto()
                t.CopyFrom(attrs["value"].t)
                t.name = node.output[0]
                extra_inits.append(t)
                continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if for_onnx2torch and new.op_type == "Dropout":
            del new.output[1:]
            del new.attribute[:]
            del new.input[1:]
            new.op_type = "Identity"
        nodes.append(new)
    used = {name for node in nodes for name in node.input}
    inits = [t for t in g.initializer if t.name in used] + extra_inits
    init_names = {t.name for t in inits}
    inputs = [i for i in g.input if i.name in used and i.name not in init_names]
    graph = helper.make_graph(
        nodes, g.name or "truncated", inputs,
        [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in targets],
        initializer=inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def hardswish_clips(model) -> set[str]:
    """Outputs of the ``Clip(x + 3, 0, 6)`` inside an exported hard-swish ``x * Clip(x + 3, 0, 6)``
    (PaddlePaddle, Keras / tf2onnx). That clip is part of a smooth-ish activation, not a
    rectifier of the network: like ONNX ``HardSwish`` (and torch's ``nn.Hardswish``) it takes
    its plain derivative under every rule, so the oracle does not swap it."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def scalar(t):
        v = consts.get(t)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    found = set()
    for n in model.graph.node:
        if n.op_type != "Clip":
            continue
        attrs = {a.name: a.f for a in n.attribute}
        lo = scalar(n.input[1]) if len(n.input) > 1 and n.input[1] else attrs.get("min")
        hi = scalar(n.input[2]) if len(n.input) > 2 and n.input[2] else attrs.get("max")
        add = producer.get(n.input[0])
        if lo != 0.0 or hi != 6.0 or add is None or add.op_type != "Add":
            continue
        xs = [a for a, b in (add.input, add.input[::-1]) if scalar(b) == 3.0]
        if not xs:
            continue
        frontier = [n.output[0]]
        for _ in range(3):  # through "* (1/6)" or "/ 6" before or after the product with x
            nxt = []
            for t in frontier:
                for c in consumers.get(t, []):
                    if c.op_type == "Mul" and xs[0] in c.input:
                        found.add(n.output[0])
                    elif c.op_type in ("Mul", "Div") and any(scalar(i) is not None for i in c.input if i != t):
                        nxt.append(c.output[0])
            frontier = nxt
    return found


def _swap_modules(module: nn.Module, keep: frozenset = frozenset()) -> tuple[int, list[str]]:
    """Replace rectifier and max-pool submodules (recursively, in place) by rule-aware /
    reference-switch ones. Returns (number of rectifiers, ONNX names of decision inputs).
    ``keep``: ONNX outputs of clips that are not rectifiers (see :func:`hardswish_clips`)."""
    from onnx2torch.node_converters.clip import OnnxClip

    count, names = 0, []
    for name, child in list(module.named_children()):
        mapping = getattr(child, "onnx_mapping", None)
        ref = mapping.inputs[0] if mapping is not None else None
        new = None
        if mapping is not None and set(mapping.outputs) & keep:
            continue
        if isinstance(child, nn.ReLU):
            new = RuleReLU(ref)
        elif isinstance(child, nn.Hardtanh) and child.min_val == 0:   # includes nn.ReLU6
            new = RuleClip(float(child.max_val), ref)
        elif isinstance(child, OnnxClip) and child.min_val is not None and child.min_val == 0:
            new = RuleClip(None if child.max_val is None else float(child.max_val), ref)
        elif isinstance(child, nn.LeakyReLU):
            new = RuleLeaky(float(child.negative_slope), ref)
        elif type(child).__name__ == "OnnxPReLU":
            new = RulePReLUOnnx(ref)
        elif isinstance(child, nn.LocalResponseNorm):
            new = RuleLRN(child)
        elif isinstance(child, nn.MaxPool2d) and ref is not None:
            new = RefMaxPool2d(child, None, ref)
        elif (isinstance(child, nn.Sequential) and ref is not None and len(child) == 2
              and isinstance(child[1], nn.MaxPool2d)):
            new = RefMaxPool2d(child[1], child[0], ref)   # explicit -inf padding, then pool
        if new is not None:
            if mapping is not None:
                new.onnx_mapping = mapping
                del child.onnx_mapping      # a wrapped pool must not be taken for the producer
            setattr(module, name, new)
            count += not isinstance(new, (RefMaxPool2d, RuleLRN))
            if ref is not None and not isinstance(new, RuleLRN):
                names.append(ref)
        else:
            c, n = _swap_modules(child, keep)
            count, names = count + c, names + n
    return count, names


class OnnxOracle:
    """The part of an ONNX model that computes ``target`` (a tensor or node name), converted by
    onnx2torch, rectifiers and max-pools swapped; reusable across calls."""

    def __init__(self, onnx_path: str | Path, target: str):
        p = str(Path(onnx_path).resolve())
        self.path = p
        model = _load_onnx(p, os.path.getmtime(p))
        names = {n.name: n.output[0] for n in model.graph.node if n.name and n.output}
        produced = {o for n in model.graph.node for o in n.output}
        if target not in produced and target in names:
            target = names[target]           # a node name: its first output
        self.target = target
        o2t = _import_onnx2torch()
        sub = _truncated(model, [target], for_onnx2torch=True)
        self.input_name = sub.graph.input[0].name
        self.gm = o2t.convert(sub, attach_onnx_mapping=True).eval().requires_grad_(False)
        self.n_rectifiers, self.decision_inputs = _swap_modules(self.gm, frozenset(hardswish_clips(sub)))
        self.producer = None
        for _, mod in self.gm.named_modules():
            mapping = getattr(mod, "onnx_mapping", None)
            if mapping is not None and target in mapping.outputs:
                outs = list(mapping.outputs)
                self.producer = (mod, outs.index(target) if len(outs) > 1 else None)
        if self.producer is None:
            raise KeyError(f"no converted module produces {target!r}")
        self._session = None
        self._gm64 = None

    def module(self, dtype=torch.float32) -> nn.Module:
        """The converted network in ``dtype``: float32 as converted, or a float64 copy (every
        weight cast; the float64 oracle, see :meth:`project`)."""
        if dtype == torch.float32:
            return self.gm
        if dtype != torch.float64:
            raise ValueError(f"unsupported oracle dtype {dtype}")
        if self._gm64 is None:
            import copy

            self._gm64 = copy.deepcopy(self.gm).double()
        return self._gm64

    def _producer_in(self, gm: nn.Module):
        if gm is self.gm:
            return self.producer
        mods = dict(self.gm.named_modules())
        name = next(n for n, m in mods.items() if m is self.producer[0])
        return gm.get_submodule(name), self.producer[1]

    def layer(self, x: torch.Tensor) -> torch.Tensor:
        gm = self.module(x.dtype)
        mod, index = self._producer_in(gm)
        return _run_capturing(gm, mod, index, x)

    def forward_values(self, images, precision: str = "float64") -> list[dict]:
        """Per image, the oracle's own forward value (torch, in ``precision``) of every
        rectifier / max-pool input on the path (ONNX name -> [1, ...] array)."""
        dtype = _DTYPES[precision]
        gm = self.module(dtype)
        images = np.asarray(images, _NP[precision])
        captured: dict = {}
        hooks = []
        for m in gm.modules():
            if isinstance(m, (RuleReLU, RuleClip, RuleLeaky, RefMaxPool2d)) and m.ref_name:
                def pre(mod, inputs, name=m.ref_name):
                    captured[name] = inputs[0].detach().numpy().copy()
                hooks.append(m.register_forward_pre_hook(pre))
        out = []
        try:
            for i in range(len(images)):
                captured.clear()
                with torch.no_grad(), rectifier_rule("gradient"):
                    self.layer(torch.from_numpy(images[i:i + 1].copy()))
                vals = dict(captured)
                if self.input_name in self.decision_inputs:
                    vals[self.input_name] = images[i:i + 1].copy()
                out.append(vals)
        finally:
            for h in hooks:
                h.remove()
        return out

    def reference_values(self, images: np.ndarray) -> list[dict]:
        """Per image, onnxruntime's values of every rectifier / max-pool input on the path."""
        names = sorted(set(self.decision_inputs) - {self.input_name})
        direct = self.input_name in self.decision_inputs     # a rectifier on the image itself
        out = []
        for i, vals in enumerate(self._ort_run(images, names)):
            vals = {n: vals[n] for n in names}
            if direct:
                vals[self.input_name] = images[i:i + 1]
            out.append(vals)
        return out

    def ort_activations(self, images) -> np.ndarray:
        """The layer's output as onnxruntime computes it (plain run, one image at a time)."""
        images = np.asarray(images, np.float32)
        return np.concatenate([v[self.target] for v in self._ort_run(images, [])])

    def _ort_run(self, images, names) -> list[dict]:
        """onnxruntime's values of ``names`` (and of the target), per image (batch of 1)."""
        if self._session is None:
            import onnxruntime as ort

            wanted = sorted(set(self.decision_inputs) - {self.input_name}) + [self.target]
            sub = subgraph(self.path, wanted)
            self._session = ort.InferenceSession(sub.SerializeToString(),
                                                 providers=["CPUExecutionProvider"])
            self._session_outputs = wanted
        out = []
        for i in range(len(images)):
            vals = self._session.run(self._session_outputs, {self.input_name: images[i:i + 1]})
            vals = dict(zip(self._session_outputs, vals))
            out.append({n: vals[n] for n in list(names) + [self.target]})
        return out

    def project(self, images, seeds, seed_image=None, rule="deconvnet",
                decisions=None, layer_outputs: dict | None = None,
                precision: str = "float32", lrn: str = "gradient"):
        """As :func:`oracle_from_module`: one rule -> array, a sequence of rules -> dict.
        ``decisions``: "onnxruntime" (the float32 default), "torch" (the oracle's own forward
        pass in ``precision``; the float64 default), or a list (per image) of dicts giving the
        value of every tensor in :attr:`decision_inputs` (see :meth:`decision_differences`).
        ``precision``: "float32", or "float64": the whole computation in double precision
        with every weight cast (images and seeds are cast up exactly), returning float64.
        ``lrn``: LRN's backward, its true gradient or the identity (zfprobe's two LRN modes).
        ``layer_outputs``: filled with image index -> torch's forward value of the layer."""
        rules, single = _rules(rule)
        if decisions is None:
            decisions = "torch" if precision == "float64" else "onnxruntime"
        images, seeds, seed_image = _prepare(images, seeds, seed_image, _NP[precision])
        refs = None
        if isinstance(decisions, (list, tuple)):
            refs = list(decisions).__getitem__
        elif decisions == "onnxruntime":
            per_image = self.reference_values(images.astype(np.float32))
            refs = per_image.__getitem__
        elif decisions != "torch":
            raise ValueError("decisions must be 'onnxruntime', 'torch' or per-image values")
        if lrn not in ("gradient", "identity"):
            raise ValueError(f"lrn must be 'gradient' or 'identity', not {lrn!r}")
        _LRN["mode"] = lrn
        try:
            with rectifier_rule(rules[0]):
                result = _vjps(self.layer, images, seeds, seed_image, rules, refs,
                               layer_outputs)
        finally:
            _LRN["mode"] = "gradient"
        return result[rules[0]] if single else result

    def decision_differences(self, images, values, eta: float = 1e-5) -> list[dict]:
        """Compare decision values from elsewhere (per image: ONNX name -> [1, ...] array, e.g.
        another runtime's forward pass) with onnxruntime's plain run of the model.

        Returns one entry per decision that comes out differently: rectifier masks (sign of the
        input; for Clip also the upper bound) and max-pool switches are not compared one by one;
        instead each tensor's values must agree within ``eta`` * max |tensor| (else the entry has
        ``"kind": "value"``), and every rectifier input whose sign differs is listed with
        ``"kind": "sign"``, its two values and the tensor's scale. A sign difference is
        *ambiguous* (float noise at a decision boundary) when both values are within
        ``eta * scale`` of zero.
        """
        ref = self.reference_values(np.asarray(images, np.float32))
        out = []
        for i, (r, v) in enumerate(zip(ref, values)):
            for name in sorted(r):
                a, b = r[name], np.asarray(v[name])
                scale = float(np.abs(a).max()) or 1.0
                diff = float(np.abs(a - b).max())
                if diff > eta * scale:
                    out.append(dict(kind="value", image=i, tensor=name, diff=diff, scale=scale))
                flip = (a > 0) != (b > 0)
                for pos in zip(*np.nonzero(flip)):
                    out.append(dict(kind="sign", image=i, tensor=name, pos=tuple(map(int, pos)),
                                    ref=float(a[pos]), other=float(b[pos]), scale=scale,
                                    ambiguous=max(abs(a[pos]), abs(b[pos])) <= eta * scale))
        return out

    def decision_kinds(self) -> dict:
        """ONNX name of each decision input -> ("relu" | "leaky", None), ("clip", hi) or
        ("pool", RefMaxPool2d module)."""
        kinds = {}
        for m in self.gm.modules():
            name = getattr(m, "ref_name", None)
            if not name:
                continue
            if isinstance(m, RefMaxPool2d):
                kinds[name] = ("pool", m)
            elif isinstance(m, RuleClip):
                kinds[name] = ("clip", m.hi)
            elif isinstance(m, RuleLeaky):
                kinds[name] = ("leaky", None)
            else:
                kinds[name] = ("relu", None)
        return kinds

    def flips(self, exact: list[dict], other: list[dict], eta: float = 1e-5,
              value_tol: float = 1e-4) -> list[dict]:
        """Every forward decision that comes out differently in ``other`` (per image: ONNX name
        -> array, e.g. zfprobe's program forward) than in ``exact`` (the float64 forward,
        :meth:`forward_values`), each judged:

        - ``kind="sign"``: a rectifier input on the other side of a boundary (0, or a Clip's
          upper bound); *proven* (a float-noise boundary flip) when both values lie within
          ``eta`` * the tensor's scale (max |x|) of that boundary;
        - ``kind="switch"``: a max-pool window whose first maximum is another position;
          *proven* when the two candidates differ by at most ``eta`` * scale in both
          forwards (a near-tie that rounding reordered);
        - ``kind="value"``: the tensor itself differs by more than ``value_tol`` * scale (then
          no flip in it is float noise; never proven).
        """
        kinds = self.decision_kinds()
        out = []
        for i, (ex, ot) in enumerate(zip(exact, other)):
            for name in sorted(ex):
                if name not in kinds:
                    continue
                a = np.asarray(ex[name], np.float64)
                b = np.asarray(ot[name], np.float64)
                scale = float(np.abs(a).max()) or 1.0
                diff = float(np.abs(a - b).max())
                if diff > value_tol * scale:
                    out.append(dict(kind="value", image=i, tensor=name, diff=diff, scale=scale,
                                    proven=False))
                kind, arg = kinds[name]
                if kind == "pool":
                    out += self._switch_flips(i, name, arg, a, b, eta * scale, scale)
                    continue
                bounds = [0.0] + ([arg] if kind == "clip" and arg is not None else [])
                for bound in bounds:      # masks: x > 0, and x < hi (so x >= hi is out)
                    side = (lambda v: v > bound) if bound == 0.0 else (lambda v: v >= bound)
                    for pos in zip(*np.nonzero(side(a) != side(b))):
                        va, vb = float(a[pos]), float(b[pos])
                        out.append(dict(kind="sign", image=i, tensor=name, boundary=bound,
                                        pos=tuple(map(int, pos)), exact=va, other=vb,
                                        scale=scale, proven=max(abs(va - bound),
                                                                abs(vb - bound)) <= eta * scale))
        return out

    @staticmethod
    def _switch_flips(i, name, mod, a, b, tol, scale):
        p = mod.pool

        def switches(v):
            t = torch.from_numpy(v)
            if mod.pad is not None:
                t = mod.pad(t)
            return first_max_switches(t, p.kernel_size, p.stride, p.padding, p.dilation,
                                      p.ceil_mode).numpy(), t.numpy()

        (sa, pa), (sb, pb) = switches(a), switches(b)
        out = []
        for pos in zip(*np.nonzero(sa != sb)):
            n, c = pos[:2]
            ia, ib = int(sa[pos]), int(sb[pos])
            fa, fb = pa[n, c].reshape(-1), pb[n, c].reshape(-1)
            gap_a, gap_b = abs(fa[ia] - fa[ib]), abs(fb[ia] - fb[ib])
            out.append(dict(kind="switch", image=i, tensor=name, pos=tuple(map(int, pos)),
                            exact=(ia, float(fa[ia]), float(fa[ib])),
                            other=(ib, float(fb[ia]), float(fb[ib])), scale=scale,
                            proven=max(gap_a, gap_b) <= tol))
        return out

    @staticmethod
    def with_decisions_of(exact: list[dict], other: list[dict], flips: list[dict]) -> list[dict]:
        """Decision values: ``exact``'s, except that every tensor holding one of ``flips`` is
        taken from ``other`` (so exactly those decisions follow ``other``: elsewhere in such a
        tensor the two agree, or :meth:`flips` would have listed it)."""
        out = []
        for i, (ex, ot) in enumerate(zip(exact, other)):
            names = {f["tensor"] for f in flips if f["image"] == i}
            out.append({n: (np.asarray(ot[n]) if n in names else v) for n, v in ex.items()})
        return out

    def activations(self, images, precision: str = "float32") -> np.ndarray:
        images = np.asarray(images, dtype=_NP[precision])
        with torch.no_grad(), rectifier_rule("gradient"):
            return np.concatenate([self.layer(torch.from_numpy(images[i:i + 1].copy())).numpy()
                                   for i in range(images.shape[0])])


@functools.lru_cache(maxsize=4)
def _onnx_oracle_cached(path: str, mtime: float, target: str) -> OnnxOracle:
    return OnnxOracle(path, target)


def clear_caches() -> None:
    """Forget the cached oracles and ONNX models (memory: the big zoo graphs, float64 copies)."""
    _onnx_oracle_cached.cache_clear()
    _load_onnx.cache_clear()
    import gc

    gc.collect()


def onnx_oracle(onnx_path: str | Path, tensor_name: str) -> OnnxOracle:
    """Cached :class:`OnnxOracle` per (file, mtime, tensor)."""
    p = str(Path(onnx_path).resolve())
    return _onnx_oracle_cached(p, os.path.getmtime(p), tensor_name)


def oracle_from_onnx(onnx_path, images, tensor_name: str, seeds, seed_image=None,
                     rule="deconvnet", decisions="onnxruntime"):
    """Projection of ``seeds`` at ONNX tensor (or node) ``tensor_name`` (see module docstring).
    ``rule``: one rule name (-> float32 [K, C, H, W]) or a sequence (-> dict rule -> array).
    ``decisions``: where rectifier masks and pooling switches come from ("onnxruntime" or
    "torch")."""
    return onnx_oracle(onnx_path, tensor_name).project(images, seeds, seed_image, rule,
                                                       decisions)


def onnx_activations(onnx_path, images, tensor_name: str) -> np.ndarray:
    """The layer's output computed by the onnx2torch conversion (for cross-checks)."""
    return onnx_oracle(onnx_path, tensor_name).activations(images)


# --------------------------------------------------------------------------------------------
# seeds


def unit_seeds(acts: np.ndarray, channels: Sequence[int], image_index: Sequence[int] | int = 0):
    """Single-unit seeds: for each (image, channel) the strongest position of that channel in
    that image's activation, with the activation's value there (rest zero). ``acts`` is the
    layer's output for the images, [N, C, ...] (or [N, F] for FC layers: the unit itself)."""
    if isinstance(image_index, int):
        image_index = [image_index] * len(channels)
    seeds = np.zeros((len(channels),) + acts.shape[1:], dtype=np.float32)
    for k, (n, c) in enumerate(zip(image_index, channels)):
        a = acts[n, c]
        if np.ndim(a) == 0:
            seeds[k, c] = a
            continue
        pos = np.unravel_index(int(np.argmax(a)), a.shape)
        seeds[(k, c) + pos] = a[pos]
    return seeds, np.asarray(image_index, dtype=np.int64)


def map_seeds(acts: np.ndarray, channels: Sequence[int], image_index: Sequence[int] | int = 0):
    """Whole-feature-map seeds: channel c of image n's activation, every other channel zero."""
    if isinstance(image_index, int):
        image_index = [image_index] * len(channels)
    seeds = np.zeros((len(channels),) + acts.shape[1:], dtype=np.float32)
    for k, (n, c) in enumerate(zip(image_index, channels)):
        seeds[k, c] = acts[n, c]
    return seeds, np.asarray(image_index, dtype=np.int64)
