"""``ConvTranspose`` in the forward network (U-Net decoders, detector heads).

A transposed convolution is the adjoint of a convolution with the same weight tensor, strides,
dilations, pads and groups, so its own adjoint is that convolution: ConvTranspose's weight
``[C_in, C_out / g, k...]`` is exactly Conv's ``[M, C / g, k...]`` with M = C_in. The output
padding only adds positions at the end, which the convolution's floor division drops again.
Canonical node: explicit ``pads`` and ``output_padding`` (``auto_pad`` and ``output_shape``
resolved from the static shapes), ``kernel_shape``, ``strides``, ``dilations``, ``group``.
"""
from __future__ import annotations

from zfprobe.engine.op_table import check, inverse
from zfprobe.ops.geometry import (NOTSET, SAME_MODES, SAME_UPPER, VALID, AxisWindow, axis_windows,
                                  conv_transpose_length, split_pad)
from zfprobe.ops.registry import ONNX_NORMALIZERS


@ONNX_NORMALIZERS.register("ConvTranspose")
def normalize(ctx, node):
    a = node.attrs
    w = ctx.const(node.inputs[1])
    w_shape = w.shape if w is not None else ctx.shape(node.inputs[1])
    kernel = [int(k) for k in a.get("kernel_shape", w_shape[2:])]
    nd = len(kernel)
    strides = [int(s) for s in a.get("strides", [1] * nd)]
    dilations = [int(d) for d in a.get("dilations", [1] * nd)]
    out_pad = [int(p) for p in a.get("output_padding", [0] * nd)]
    pads = [int(p) for p in a.get("pads", [0] * (2 * nd))]
    n_in, n_out = ctx.shape(node.inputs[0])[2:], ctx.shape(node.outputs[0])[2:]
    auto_pad = a.get("auto_pad", NOTSET)
    if a.get("output_shape") is not None or auto_pad in SAME_MODES:
        begins, ends = [], []
        for i in range(nd):
            full = conv_transpose_length(n_in[i], AxisWindow(kernel[i], strides[i], dilations[i]), out_pad[i])
            # ONNX: SAME_UPPER puts the odd pad at the end; otherwise (SAME_LOWER, output_shape) at the start.
            b, e = split_pad(full - n_out[i], upper=auto_pad == SAME_UPPER)
            begins.append(b)
            ends.append(e)
        pads = begins + ends
    elif auto_pad == VALID:
        pads = [0] * (2 * nd)
    # Whatever the attributes said, the static output length decides the output padding.
    for i in range(nd):
        win = AxisWindow(kernel[i], strides[i], dilations[i], pads[i], pads[i + nd])
        out_pad[i] = n_out[i] - conv_transpose_length(n_in[i], win)
    node.attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
                  "output_padding": out_pad, "group": int(a.get("group", 1))}
    return node


@inverse("ConvTranspose")
def _conv_transpose(ctx, node, gy):
    a = node.attrs
    return [ctx.b.op("Conv", gy[0], node.inputs[1], hint="convT_adjoint", kernel_shape=list(a["kernel_shape"]),
                     strides=list(a["strides"]), dilations=list(a["dilations"]), pads=list(a["pads"]),
                     group=int(a["group"]))] + [None] * (len(node.inputs) - 1)


@check("ConvTranspose")
def _conv_transpose_check(graph, node):
    if not graph.is_constant(node.inputs[1]):
        return "its weights are computed at run time, not constants"
    a = node.attrs
    if "pads" not in a or "output_padding" not in a:
        return "it is not in zfprobe's canonical form (load the model through zfprobe)"
    nd = len(a["kernel_shape"])
    in_shape = graph.shape(node.inputs[0])
    for i, w in enumerate(axis_windows(a, nd)):
        if w.pad_begin < 0 or w.pad_end < 0:
            return "it has negative pads"
        if w.out_length(graph.shape(node.outputs[0])[2 + i]) != in_shape[2 + i]:
            return "its output padding is larger than its stride"
    return None
