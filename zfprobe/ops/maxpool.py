"""MaxPool's reversal: unpooling through the switches, as one explicit op.

The deconvnet keeps each max pool's switches (ONNX MaxPool's ``Indices`` output, the argmax
numbered over the whole ``N x C x H x W`` forward batch, see
:func:`zfprobe.ops.onnx_semantics.switch_index`) and sends each value back to its switch; values
of overlapping windows that share a switch add up, which makes unpooling the exact adjoint of max
pooling (and the gradient).

Canonical node ``Unpool(signal [K, C, Ho, Wo], switches [K or 1, C, Ho, Wo] int64) -> [K, C, H, W]``
with attribute ``shape = [C, H, W]`` (one pooled image): ``out[k].flat[switches[k] % (C*H*W)] +=
signal[k]``, switches of batch 1 serving every row. No ONNX op means this (``MaxUnpool``
assigns instead of adding and numbers over its own batch), so the op has a default decomposition
(Mod, ScatterElements with reduction 'add', ...) that onnxruntime and ``export-deconv`` run;
the torch and TensorFlow backends run it with their own kernels.
"""
from __future__ import annotations

import numpy as np

from zfprobe.engine.graph import Node
from zfprobe.engine.op_table import check, inverse
from zfprobe.ops.registry import DECOMPOSITIONS
from zfprobe.engine.program import Decomposition

UNPOOL = "Unpool"


@inverse("MaxPool")
def _maxpool(ctx, node, gy):
    in_shape = ctx.shape(node.inputs[0])
    # per seed: the switches of the seed's image (one image: the same switches for every seed)
    switches = ctx.saved(ctx.switches(node.outputs[0]))
    return [ctx.b.op(UNPOOL, gy[0], switches, hint="unpool", shape=list(in_shape[1:]))]


@check("MaxPool")
def _maxpool_check(graph, node):
    if len(graph.shape(node.inputs[0])) != 4:
        return "only 2-D max pooling is supported; probe a layer below it"
    return None


@DECOMPOSITIONS.register(UNPOOL)
def decompose_unpool(node: Node) -> tuple[list[Node], dict[str, np.ndarray]]:
    """Unpool in standard ops: a scatter-add of the flattened signal into zeros, one row per seed."""
    signal, switches = node.inputs
    shape = [int(s) for s in node.attrs["shape"]]
    per_image = int(np.prod(shape))
    d = Decomposition(node)
    upd = d.op("Flatten", signal, axis=1)
    index = d.op("Flatten", d.op("Mod", switches, d.const(per_image, np.int64)), axis=1)
    index = d.op("Expand", index, d.op("Shape", upd))  # switches of one image serve every seed
    rows = d.op("Concat", d.op("Shape", upd, start=0, end=1), d.const([per_image], np.int64), axis=0)
    flat = d.op("ScatterElements", d.op("ConstantOfShape", rows, value=0.0), index, upd, axis=1, reduction="add")
    d.op("Reshape", flat, last=True, shape=[-1, *shape])
    return d.result()
