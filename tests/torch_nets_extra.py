"""Extra torch networks for the torch adapter's tests, and an autograd oracle that sees EVERY
rectifier however it is written.

tests/nets.py writes rectifiers only as ``nn.ReLU`` / ``F.relu`` / ``nn.ReLU6`` / ``F.relu6``,
because tests/oracle.py patches ``torch.nn.functional``. Real code also writes ``torch.relu``,
``x.relu()``, ``x.relu_()``, ``torch.relu_``, ``F.relu(x, inplace=True)``, ``x.clamp(min=0)``,
``F.hardtanh(x, 0, 6)`` and reuses one ``nn.ReLU`` module several times -- exactly the forms
Captum's module hooks miss. The nets here use all of them.

:func:`rule_projection` is the reference: torch autograd, with every rectifier call replaced,
through a ``torch.overrides.TorchFunctionMode`` (which sees functions, methods and in-place
variants alike, and the functional calls inside ``nn.ReLU``/``nn.ReLU6``/``nn.Hardtanh``), by a
rule-aware ``autograd.Function``:

=====================  ==========================  ========================  ===========================
rectifier              gradient                    deconvnet                 guided
=====================  ==========================  ========================  ===========================
relu                   g * 1[x > 0]                relu(g)                   relu(g) * 1[x > 0]
clip(0, m) / relu6     g * 1[0 < x < m]            relu(g) * 1[x < m]        relu(g) * 1[0 < x < m]
leaky_relu(a)          g * (x > 0 ? 1 : a)         leaky_a(g)                leaky_a(g) * (x > 0 ? 1 : a)
=====================  ==========================  ========================  ===========================

In-place calls are replayed as ``x.copy_(rule(x))`` so the autograd graph stays exact. It is
independent of zfprobe (no zfprobe import) and counts the calls it replaced.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("deconvnet", "gradient", "guided")


# --------------------------------------------------------------------------------------------
# rule-aware rectifiers (masks are computed in forward, so in-place replays are safe)


class _Rect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, alpha, rule):
        # lo: 0.0 or None (leaky); hi: upper clip or None; alpha: leaky slope or None
        if alpha is not None:
            pos = x > 0
            ctx.save_for_backward(pos)
            ctx.kind, ctx.alpha, ctx.rule = "leaky", alpha, rule
            return torch.where(pos, x, x * alpha)
        inside_hi = (x < hi) if hi is not None else torch.ones_like(x, dtype=torch.bool)
        pos = x > lo
        ctx.save_for_backward(pos, inside_hi)
        ctx.kind, ctx.rule, ctx.clip = "clip", rule, hi is not None
        return x.clamp(lo, hi) if hi is not None else x.clamp_min(lo)

    @staticmethod
    def backward(ctx, g):
        rule = ctx.rule
        if ctx.kind == "leaky":
            (pos,) = ctx.saved_tensors
            a = ctx.alpha
            slope = torch.where(pos, torch.ones_like(g), torch.full_like(g, a))
            if rule == "gradient":
                return g * slope, None, None, None, None
            lg = torch.where(g > 0, g, g * a)
            return (lg if rule == "deconvnet" else lg * slope), None, None, None, None
        pos, below = ctx.saved_tensors
        zero = torch.zeros((), dtype=g.dtype)
        if rule == "gradient":
            return torch.where(pos & below, g, zero), None, None, None, None
        r = g.clamp_min(0)
        if rule == "deconvnet":
            return torch.where(below, r, zero), None, None, None, None
        return torch.where(pos & below, r, zero), None, None, None, None


def _arg(args, kwargs, i, name, default):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


class RuleMode(TorchFunctionMode):
    """Within this mode every rectifier call follows ``rule`` on the way back."""

    def __init__(self, rule: str):
        super().__init__()
        if rule not in RULES:
            raise ValueError(rule)
        self.rule = rule
        self.calls = 0
        T = torch.Tensor
        self.relu_fns = {F.relu, torch.relu, T.relu}
        self.relu_inplace = {F.relu_, torch.relu_, T.relu_}
        self.hardtanh = {F.hardtanh, F.hardtanh_}
        self.relu6 = {F.relu6}
        self.clamp = {torch.clamp, T.clamp, torch.clip, T.clip, torch.clamp_min, T.clamp_min}
        self.clamp_inplace = {T.clamp_, T.clip_, T.clamp_min_, torch.clamp_, torch.clamp_min_}
        self.leaky = {F.leaky_relu, F.leaky_relu_}

    def _apply(self, x, lo, hi, alpha, inplace):
        self.calls += 1
        y = _Rect.apply(x, lo, hi, alpha, self.rule)
        if inplace:
            x.copy_(y)
            return x
        return y

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.relu_fns:
            return self._apply(args[0], 0.0, None, None, bool(_arg(args, kwargs, 1, "inplace", False)))
        if func in self.relu_inplace:
            return self._apply(args[0], 0.0, None, None, True)
        if func in self.relu6:
            return self._apply(args[0], 0.0, 6.0, None, bool(_arg(args, kwargs, 1, "inplace", False)))
        if func in self.hardtanh:
            lo, hi = float(_arg(args, kwargs, 1, "min_val", -1.0)), float(_arg(args, kwargs, 2, "max_val", 1.0))
            if lo == 0.0:
                inplace = func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
                return self._apply(args[0], 0.0, hi, None, inplace)
        if func in self.clamp or func in self.clamp_inplace:
            lo = _arg(args, kwargs, 1, "min", None)
            hi = None if func in (torch.clamp_min, torch.Tensor.clamp_min, torch.Tensor.clamp_min_, torch.clamp_min_) \
                else _arg(args, kwargs, 2, "max", None)
            if lo is not None and not isinstance(lo, torch.Tensor) and float(lo) == 0.0 \
                    and not isinstance(hi, torch.Tensor):
                return self._apply(args[0], 0.0, None if hi is None else float(hi), None, func in self.clamp_inplace)
        if func in self.leaky:
            alpha = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            inplace = func is F.leaky_relu_ or bool(_arg(args, kwargs, 2, "inplace", False))
            return self._apply(args[0], None, None, alpha, inplace)
        return func(*args, **kwargs)


class _Stop(Exception):
    def __init__(self, value):
        super().__init__("captured")
        self.value = value


def layer_fn(module: nn.Module, path: str):
    """``x -> output of submodule path`` (the forward pass stops there)."""
    target = module.get_submodule(path)

    def run(x):
        def hook(mod, inputs, output):
            raise _Stop(output)

        handle = target.register_forward_hook(hook)
        try:
            module(x)
        except _Stop as stop:
            return stop.value
        finally:
            handle.remove()
        raise RuntimeError(f"{path} was never called")

    return run


def rule_projection(module: nn.Module, images, layer, seeds, seed_image=None, rule: str = "deconvnet",
                    min_rectifiers: int = 1) -> np.ndarray:
    """``J^T seed`` with the rule at every rectifier (see the module docstring).

    ``layer``: a submodule path, or a callable ``x -> layer tensor``. Each seed back-propagates
    through its own copy of its image. Runs in eval mode and restores the flags after."""
    images = np.asarray(images, np.float32)
    seeds = np.asarray(seeds, np.float32)
    seed_image = np.zeros(len(seeds), np.int64) if seed_image is None else np.asarray(seed_image, np.int64)
    fn = layer_fn(module, layer) if isinstance(layer, str) else layer
    flags = [(m, m.training) for m in module.modules()]
    for m, _ in flags:
        m.training = False
    try:
        x = torch.from_numpy(images[seed_image].copy()).requires_grad_(True)
        mode = RuleMode(rule)
        with mode:
            out = fn(x)
        (grad,) = torch.autograd.grad(out, x, grad_outputs=torch.from_numpy(seeds.copy()))
    finally:
        for m, flag in flags:
            m.training = flag
    if mode.calls < min_rectifiers:
        raise AssertionError(f"only {mode.calls} rectifier calls were replaced (expected >= {min_rectifiers})")
    return grad.detach().numpy()


# --------------------------------------------------------------------------------------------
# networks


def _init_(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
    return module.eval()


class RectifierZoo(nn.Module):
    """Every way to write a rectifier, and the plumbing around them. 32x32x3 input.

    stem: conv -> BN -> ``self.relu`` (one ``nn.ReLU(inplace=True)`` used THREE times)
    ``F.max_pool2d`` (functional, overlapping 3x3 s2 p1) -> 16x16
    branch a: grouped conv (groups=2) -> ``x.relu_()`` (method, in place)
    branch b: depthwise conv -> ``torch.relu`` ; ``torch.relu_``
    residual: a + b -> ``F.relu(inplace=True)`` -> ``nn.Hardtanh(0, 6)`` (a ReLU6)
    cat([h, h.relu() ... ]) -> 1x1 conv -> ``x.clamp(min=0)`` -> ``F.relu6`` -> ``self.relu`` again
    ``nn.MaxPool2d(2)`` -> 8x8 -> conv -> ``F.leaky_relu(0.1)`` -> ``self.relu`` (3rd use)
    ``nn.AdaptiveAvgPool2d(2)`` (not global) -> ``view`` -> FC -> ``F.relu`` -> FC
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.act6 = nn.Hardtanh(0.0, 6.0)
        self.mix = nn.Conv2d(32, 24, 1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(24, 24, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(24 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        a = self.conv_a(x)
        a.relu_()
        b = torch.relu(self.conv_b(x))
        b = torch.relu_(b * 1.5)
        h = F.relu(a + b, inplace=True)
        h = self.act6(h)
        h = torch.cat([h, (h - 1.0).relu()], 1)
        h = self.mix(h).clamp(min=0)
        h = self.relu(F.relu6(h * 2.0))
        h = self.pool(h)
        h = F.leaky_relu(self.conv3(h), 0.1)
        h = self.relu(h)
        h = self.gap(h)
        h = h.view(h.size(0), -1)
        return self.fc2(F.relu(self.fc1(h)))


def rectifier_zoo(seed: int = 11) -> nn.Module:
    return _init_(RectifierZoo(), seed)


class GlobalMaxNet(nn.Module):
    """Global max pooling written as ``F.adaptive_max_pool2d(x, 1)``, ``torch.flatten``, and
    ``reshape``; rectifiers as ``F.relu(x, inplace=True)`` after BatchNorm. 24x24x3 input."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.features(x), inplace=True)
        x = F.relu(self.conv2(x), inplace=True).reshape(x.shape[0], 12, 12, 12)
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        return self.fc(x)


def global_max_net(seed: int = 12) -> nn.Module:
    return _init_(GlobalMaxNet(), seed)


class ComputedWeightNet(nn.Module):
    """Weights computed in the forward from parameters: a conv whose weight is ``weight * gain``
    (per output channel, equalized-learning-rate style) and a product ``h @ self.w.t()``. The
    torch backend must recompute them from the live parameters. 16x16x3 input."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.3)
        self.gain = nn.Parameter(torch.rand(8, 1, 1, 1, generator=torch.Generator().manual_seed(1)) + 0.5)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(6, 8 * 8 * 8, generator=torch.Generator().manual_seed(2)) * 0.05)

    def forward(self, x):
        h = F.relu(F.conv2d(x, self.weight * self.gain, padding=1))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return torch.flatten(h, 1) @ self.w.t()


def computed_weight_net() -> nn.Module:
    return _init_(ComputedWeightNet(), 13)  # (re-initializes conv2 only)


class BranchyNet(nn.Module):
    """A forward that branches on tensor values: the torch front-end must refuse it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.conv(x))


class Gate(nn.Module):
    def forward(self, x):
        if x.mean() > 0:
            return F.relu(x)
        return x


class OddOpNet(nn.Module):
    """Uses an op with no ONNX form (``torch.special.i0``) inside ``body.1``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), I0())

    def forward(self, x):
        return self.body(x)


class I0(nn.Module):
    def forward(self, x):
        return torch.special.i0(x)


class SinNet(nn.Module):
    """``torch.sin`` (an op zfprobe runs forward but cannot reverse) inside ``head``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = SinAct()
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.conv2(self.head(self.conv(x)))


class SinAct(nn.Module):
    def forward(self, x):
        return torch.sin(x)


EXTRA_NETS = {
    "rectifier_zoo": (rectifier_zoo, (3, 32, 32)),
    "global_max_net": (global_max_net, (3, 24, 24)),
}
