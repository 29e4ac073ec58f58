"""Smooth nonlinearities and elementwise math: reversed by their local derivative under every
rule (docs/methods.md, "Policy for other nonlinearities").

Each reversal multiplies the arriving signal by f'(x), written as canonical ops on the forward
value ``x`` (or the forward output ``y`` where that is cheaper: exp, sqrt, reciprocal, ELU). The
fused forms of exporters' decompositions (:mod:`zfprobe.engine.fusion`) land here too: ``Gelu``
(both approximations), ``Mish`` and ``Swish`` (SiLU is Swish with alpha 1).
"""
from __future__ import annotations

import math

import numpy as np

from zfprobe.engine.op_table import check, inverse
from zfprobe.ops.registry import DECOMPOSITIONS
from zfprobe.engine.program import Decomposition
from zfprobe.engine.rules import DECONVNET, GRADIENT

SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875
GELU_TANH_C = math.sqrt(2.0 / math.pi)
GELU_TANH_K = 0.044715


def _x(ctx, node):
    return ctx.saved(node.inputs[0])


def _y(ctx, node):
    return ctx.saved(node.outputs[0])


def _c(ctx, value, hint="c"):
    return ctx.b.const(float(value), hint)


def _times(ctx, g, d):
    return ctx.mul(g, d)


def _sigmoid_of(ctx, x, alpha=1.0):
    return ctx.b.op("Sigmoid", x if alpha == 1.0 else ctx.mul(x, _c(ctx, alpha, "alpha")))


@inverse("Exp")
def _exp(ctx, node, gy):
    return [_times(ctx, gy[0], _y(ctx, node))]


@inverse("Log")
def _log(ctx, node, gy):
    return [ctx.b.op("Div", gy[0], _x(ctx, node))]


@inverse("Sqrt")
def _sqrt(ctx, node, gy):
    """d sqrt(x) = 0.5 / sqrt(x)."""
    return [ctx.b.op("Div", ctx.mul(gy[0], _c(ctx, 0.5, "half")), _y(ctx, node))]


@inverse("Reciprocal")
def _reciprocal(ctx, node, gy):
    y = _y(ctx, node)
    return [ctx.b.op("Neg", ctx.mul(gy[0], ctx.mul(y, y)))]


@inverse("Erf")
def _erf(ctx, node, gy):
    x = _x(ctx, node)
    e = ctx.b.op("Exp", ctx.b.op("Neg", ctx.mul(x, x)))
    return [ctx.mul(gy[0], ctx.mul(e, _c(ctx, 2.0 / math.sqrt(math.pi), "two_over_sqrt_pi")))]


@inverse("Abs")
def _abs(ctx, node, gy):
    return [ctx.mul(gy[0], ctx.b.op("Sign", _x(ctx, node)))]


@inverse("Softplus")
def _softplus(ctx, node, gy):
    return [ctx.mul(gy[0], _sigmoid_of(ctx, _x(ctx, node)))]


@inverse("Softsign")
def _softsign(ctx, node, gy):
    x = _x(ctx, node)
    d = ctx.b.op("Add", ctx.b.op("Abs", x), _c(ctx, 1.0, "one"))
    return [ctx.b.op("Div", gy[0], ctx.mul(d, d))]


@inverse("Elu", "Celu")
def _elu(ctx, node, gy):
    """1 for x > 0, else alpha * exp(x) = y + alpha (ELU); exp(x / alpha) = y / alpha + 1 (CELU)."""
    alpha = float(node.attrs.get("alpha", 1.0))
    x, y = _x(ctx, node), _y(ctx, node)
    if node.op_type == "Elu":
        neg = ctx.b.op("Add", y, _c(ctx, alpha, "alpha"))
    else:
        neg = ctx.b.op("Add", ctx.mul(y, _c(ctx, 1.0 / alpha, "inv_alpha")), _c(ctx, 1.0, "one"))
    d = ctx.b.op("Where", ctx.b.op("Greater", x, _c(ctx, 0.0, "zero")), _c(ctx, 1.0, "one"), neg)
    return [ctx.mul(gy[0], d)]


@inverse("Selu")
def _selu(ctx, node, gy):
    alpha = float(node.attrs.get("alpha", SELU_ALPHA))
    gamma = float(node.attrs.get("gamma", SELU_GAMMA))
    x = _x(ctx, node)
    neg = ctx.mul(ctx.b.op("Exp", x), _c(ctx, alpha * gamma, "alpha_gamma"))
    d = ctx.b.op("Where", ctx.b.op("Greater", x, _c(ctx, 0.0, "zero")), _c(ctx, gamma, "gamma"), neg)
    return [ctx.mul(gy[0], d)]


@inverse("Gelu")
def _gelu(ctx, node, gy):
    """erf form: Phi(x) + x phi(x); tanh form: the derivative of
    0.5 x (1 + tanh(c (x + k x^3)))."""
    x = _x(ctx, node)
    b = ctx.b
    if node.attrs.get("approximate", "none") == "tanh":
        x2 = ctx.mul(x, x)
        u = ctx.mul(b.op("Add", x, ctx.mul(ctx.mul(x2, x), _c(ctx, GELU_TANH_K, "k"))), _c(ctx, GELU_TANH_C, "c"))
        t = b.op("Tanh", u)
        du = ctx.mul(b.op("Add", ctx.mul(x2, _c(ctx, 3.0 * GELU_TANH_K, "3k")), _c(ctx, 1.0, "one")), _c(ctx, GELU_TANH_C, "c"))
        sech2 = b.op("Sub", _c(ctx, 1.0, "one"), ctx.mul(t, t))
        d = b.op("Add", ctx.mul(b.op("Add", t, _c(ctx, 1.0, "one")), _c(ctx, 0.5, "half")),
                 ctx.mul(ctx.mul(x, _c(ctx, 0.5, "half")), ctx.mul(sech2, du)))
    else:
        cdf = ctx.mul(b.op("Add", b.op("Erf", ctx.mul(x, _c(ctx, 1.0 / math.sqrt(2.0), "inv_sqrt2"))), _c(ctx, 1.0, "one")),
                      _c(ctx, 0.5, "half"))
        pdf = ctx.mul(b.op("Exp", ctx.mul(ctx.mul(x, x), _c(ctx, -0.5, "mhalf"))), _c(ctx, 1.0 / math.sqrt(2.0 * math.pi), "inv_sqrt_2pi"))
        d = b.op("Add", cdf, ctx.mul(x, pdf))
    return [ctx.mul(gy[0], d)]


@DECOMPOSITIONS.register("Gelu")
def decompose_gelu(node):
    """0.5 x (1 + erf(x / sqrt 2)), or 0.5 x (1 + tanh(c (x + k x^3))) (opset 20 has Gelu)."""
    d, x = Decomposition(node), node.inputs[0]
    if node.attrs.get("approximate", "none") == "tanh":
        x3 = d.op("Mul", d.op("Mul", x, x), x)
        inner = d.op("Add", x, d.op("Mul", x3, d.const(GELU_TANH_K)))
        t1 = d.op("Add", d.op("Tanh", d.op("Mul", inner, d.const(GELU_TANH_C))), d.const(1.0))
    else:
        t1 = d.op("Add", d.op("Erf", d.op("Mul", x, d.const(1.0 / math.sqrt(2.0)))), d.const(1.0))
    d.op("Mul", d.op("Mul", x, d.const(0.5)), t1, last=True)
    return d.result()


@inverse("Mish")
def _mish(ctx, node, gy):
    """x tanh(softplus(x)): tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)."""
    x = _x(ctx, node)
    b = ctx.b
    t = b.op("Tanh", b.op("Softplus", x))
    sech2 = b.op("Sub", _c(ctx, 1.0, "one"), ctx.mul(t, t))
    d = b.op("Add", t, ctx.mul(ctx.mul(x, sech2), b.op("Sigmoid", x)))
    return [ctx.mul(gy[0], d)]


@DECOMPOSITIONS.register("Mish")
def decompose_mish(node):
    """x tanh(softplus(x)) (opset 18 has Mish)."""
    d, x = Decomposition(node), node.inputs[0]
    d.op("Mul", x, d.op("Tanh", d.op("Softplus", x)), last=True)
    return d.result()


@inverse("Swish")
def _swish(ctx, node, gy):
    """x sigmoid(a x): s + a x s (1 - s)."""
    alpha = float(node.attrs.get("alpha", 1.0))
    x = _x(ctx, node)
    b = ctx.b
    s = _sigmoid_of(ctx, x, alpha)
    ax = ctx.mul(x, _c(ctx, alpha, "alpha")) if alpha != 1.0 else x
    d = b.op("Add", s, ctx.mul(ax, ctx.mul(s, b.op("Sub", _c(ctx, 1.0, "one"), s))))
    return [ctx.mul(gy[0], d)]


@DECOMPOSITIONS.register("Swish")
def decompose_swish(node):
    """x sigmoid(alpha x) (zfprobe's fused SiLU; ONNX opset 24 has Swish)."""
    d, x = Decomposition(node), node.inputs[0]
    alpha = float(node.attrs.get("alpha", 1.0))
    ax = d.op("Mul", x, d.const(alpha)) if alpha != 1.0 else x
    d.op("Mul", x, d.op("Sigmoid", ax), last=True)
    return d.result()


@inverse("Pow")
def _pow(ctx, node, gy):
    """x ** p for a constant p: p x^(p-1) (an exporter's x^2 and ^beta, e.g. LRN, LayerNorm)."""
    p = ctx.graph.constants[node.inputs[1]]
    x = _x(ctx, node)
    d = ctx.mul(ctx.b.op("Pow", x, ctx.b.const(p - 1.0, "p_minus_1")), ctx.b.const(p, "p"))
    g = ctx.unbroadcast(ctx.mul(gy[0], d), ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0]))
    return [g, None]


@check("Pow")
def _pow_check(graph, node):
    if graph.is_constant(node.inputs[0]) or not graph.is_constant(node.inputs[1]):
        return "only powers with a constant exponent are supported"
    return None


@inverse("Div")
def _div(ctx, node, gy):
    """a / b: the numerator gets g / b; a variable denominator gets -g a / b^2 = -g y / b."""
    out_shape = ctx.shape(node.outputs[0])
    a, bt = node.inputs
    const_a, const_b = ctx.graph.is_constant(a), ctx.graph.is_constant(bt)
    den = bt if const_b else ctx.saved(bt)
    result = [None, None]
    if not const_a:
        result[0] = ctx.unbroadcast(ctx.b.op("Div", gy[0], den), ctx.shape(a), out_shape)
    if not const_b:
        gb = ctx.b.op("Neg", ctx.b.op("Div", ctx.mul(gy[0], ctx.saved(node.outputs[0])), den))
        result[1] = ctx.unbroadcast(gb, ctx.shape(bt), out_shape)
    return result


@check("Div")
def _div_check(graph, node):
    if np.dtype(graph.dtypes.get(node.outputs[0], np.float32)).kind != "f":
        return "it divides integers"
    return None


# ------------------------------------------------------------------ leaky rectifiers ----------
# LeakyReLU(a) and PReLU (a per channel) are piecewise linear with a switch at 0, like ReLU, so
# they follow the rule (docs/methods.md, "rectifiers"): the deconvnet rule applies the leaky
# function to the signal (positive signal kept, negative signal scaled by a: the same
# rectification ReLU's deconvnet applies, with ReLU the case a = 0), the gradient rule
# multiplies by the local slope (1 where x > 0, a elsewhere), guided does both. Reversing them
# by their derivative alone, as the smooth nonlinearities are, would make a LeakyReLU(0) net
# disagree with the identical ReLU net under the deconvnet and guided rules.
def _leaky_slope(ctx, x: str, negative: str) -> str:
    pos = ctx.b.op("Greater", ctx.saved(x), ctx.b.const(0.0, "zero"))
    return ctx.b.op("Where", pos, ctx.b.const(1.0, "one"), negative)


@inverse("LeakyRelu")
def _leaky(ctx, node, gy):
    alpha = float(node.attrs.get("alpha", 0.01))
    g, rule = gy[0], ctx.options.rule
    if rule == GRADIENT:
        return [ctx.mul(g, _leaky_slope(ctx, node.inputs[0], ctx.b.const(alpha, "alpha")))]
    leaky = ctx.b.op("LeakyRelu", g, alpha=alpha, hint="rectify")
    if rule == DECONVNET:
        return [leaky]
    return [ctx.mul(leaky, _leaky_slope(ctx, node.inputs[0], ctx.b.const(alpha, "alpha")))]


@inverse("PRelu")
def _prelu(ctx, node, gy):
    x, slope_t, g, rule = node.inputs[0], node.inputs[1], gy[0], ctx.options.rule
    if rule == GRADIENT:
        return [ctx.mul(g, _leaky_slope(ctx, x, slope_t)), None]
    leaky = ctx.b.op("PRelu", g, slope_t, hint="rectify")
    if rule == DECONVNET:
        return [leaky, None]
    return [ctx.mul(leaky, _leaky_slope(ctx, x, slope_t)), None]


@check("PRelu")
def _prelu_check(graph, node):
    if not graph.is_constant(node.inputs[1]):
        return "its slope is not a constant"
    return None
