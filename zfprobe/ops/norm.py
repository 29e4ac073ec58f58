"""Data-dependent normalizations: LayerNormalization (incl. ConvNeXt's channels-last form),
InstanceNormalization, GroupNormalization. Reversed by their local derivative (the Jacobian
of the whole normalization, transposed), under every rule.

With x_hat = (x - mean) / sqrt(var + eps) over the normalized axes and h = g * scale, the
vector-Jacobian product is ``(h - mean(h) - x_hat * mean(h * x_hat)) / sqrt(var + eps)``.
The statistics are recomputed in the program from the saved forward input.
(BatchNormalization at inference is affine and lives in :mod:`zfprobe.engine.inverses`.)
"""
from __future__ import annotations

import numpy as np

from zfprobe.engine.op_table import check, inverse
from zfprobe.ops.registry import DECOMPOSITIONS
from zfprobe.engine.program import Decomposition
from zfprobe.ops.spatial import CHANNELS_LAST_RULES


def normalized_vjp(ctx, x: str, h: str, axes: list[int], eps: float) -> str:
    """(h - mean(h) - x_hat mean(h x_hat)) / sqrt(var + eps), means over ``axes``."""
    b = ctx.b

    def mean(t):
        return b.op("ReduceMean", t, axes=list(axes), keepdims=1, hint="norm_mean")

    centred = b.op("Sub", x, mean(x))
    var = mean(ctx.mul(centred, centred))
    rstd = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.const(float(eps), "eps"))))
    x_hat = ctx.mul(centred, rstd)
    inner = b.op("Sub", b.op("Sub", h, mean(h)), ctx.mul(x_hat, mean(ctx.mul(h, x_hat))))
    return ctx.mul(inner, rstd)


def _scaled(ctx, g: str, scale: str | None, shape: list[int] | None = None) -> str:
    if not scale:
        return g
    s = scale if shape is None else ctx.b.op("Reshape", scale, shape=shape, hint="scale")
    return ctx.mul(g, s)


@inverse("LayerNormalization")
def _layernorm(ctx, node, gy):
    rank = len(ctx.shape(node.inputs[0]))
    axis = int(node.attrs.get("axis", -1)) % rank
    scale = node.inputs[1] if len(node.inputs) > 1 else ""
    h = _scaled(ctx, gy[0], scale)
    gx = normalized_vjp(ctx, ctx.saved(node.inputs[0]), h, list(range(axis, rank)), node.attrs.get("epsilon", 1e-5))
    return [gx] + [None] * (len(node.inputs) - 1)


@check("LayerNormalization")
def _layernorm_check(graph, node):
    rank = len(graph.shape(node.inputs[0]))
    if int(node.attrs.get("axis", -1)) % rank == 0:
        return "it normalizes over the batch axis"
    if any(t and not graph.is_constant(t) for t in node.inputs[1:]):
        return "its scale or bias is computed at run time"
    return None


@inverse("InstanceNormalization")
def _instancenorm(ctx, node, gy):
    rank = len(ctx.shape(node.inputs[0]))
    h = _scaled(ctx, gy[0], node.inputs[1], [-1] + [1] * (rank - 2))
    gx = normalized_vjp(ctx, ctx.saved(node.inputs[0]), h, list(range(2, rank)), node.attrs.get("epsilon", 1e-5))
    return [gx, None, None]


@inverse("GroupNormalization")
def _groupnorm(ctx, node, gy):
    """Canonical GroupNormalization has a per-channel scale and bias (ONNX opset 21)."""
    shape = ctx.shape(node.inputs[0])
    rank, groups = len(shape), int(node.attrs["num_groups"])
    h = _scaled(ctx, gy[0], node.inputs[1], [-1] + [1] * (rank - 2))
    grouped = [-1, groups, int(np.prod(shape[1:])) // groups]
    x = ctx.b.op("Reshape", ctx.saved(node.inputs[0]), shape=grouped)
    h = ctx.b.op("Reshape", h, shape=grouped)
    gx = normalized_vjp(ctx, x, h, [2], node.attrs.get("epsilon", 1e-5))
    return [ctx.b.op("Reshape", gx, shape=[-1, *shape[1:]]), None, None]


@DECOMPOSITIONS.register("GroupNormalization")
def decompose_groupnorm(node):
    """Per-channel scale and bias (opset 21 semantics) through an opset-17 InstanceNormalization
    of the [N, groups, -1] view."""
    (x, scale, bias), groups = node.inputs[:3], int(node.attrs["num_groups"])
    d = Decomposition(node)
    grouped = d.op("Reshape", x, shape=[0, groups, -1])
    norm = d.op("InstanceNormalization", grouped, d.const(np.ones(groups)), d.const(np.zeros(groups)),
                epsilon=float(node.attrs.get("epsilon", 1e-5)))
    back = d.op("Reshape", norm, d.op("Shape", x))
    scaled = d.op("Mul", back, d.op("Reshape", scale, shape=[-1, 1, 1]))
    d.op("Add", scaled, d.op("Reshape", bias, shape=[-1, 1, 1]), last=True)
    return d.result()


@check("InstanceNormalization", "GroupNormalization")
def _instance_check(graph, node):
    if any(t and not graph.is_constant(t) for t in node.inputs[1:]):
        return "its scale or bias is computed at run time"
    return None


@CHANNELS_LAST_RULES.register("LayerNormalization")
def _layernorm_channels_last(graph, node):
    """ConvNeXt's LayerNorm over C of an [N, H, W, C] map is pointwise in space; over more axes
    (or on NCHW, where it includes W) it is global and the fast paths use the full program."""
    return int(node.attrs.get("axis", -1)) % 4 == 3
