"""Runs zfprobe programs with TensorFlow (on GPU when TensorFlow has one), with live Keras weights.

An interpreter of the canonical op set: every op the deconvnet emits (see
:mod:`zfprobe.engine.inverses`) plus the forward ops the front-ends emit, in a table ``OPS`` keyed by op
type. One program becomes one ``tf.function`` (traced once per program and output list, with a
free batch axis), so repeated projections pay Python only once.

Layout. The graph's semantics are channels-first (ONNX); TensorFlow's CPU convolutions and
poolings are channels-last only. Values in the interpreter carry a layout tag: a 4-D value may be
held channels-last (``_V.nhwc``) and is transposed to channels-first only when an op that cares
about axes (Reshape, Slice, ScatterElements, ...) reads it. Convolutions, pooling, BatchNorm and
every elementwise op work on the channels-last tensor directly, so a chain of them costs no
transposes at all, and the graph's input Transpose (NHWC image -> NCHW) is free.

Live weights. A constant named in ``program.parameter_refs`` with a ``KerasWeight`` handle is read
from ``layer.weights[index]`` inside the function (a captured variable: the current value at every
run); convolutions take a Keras HWIO / depthwise kernel as it is, without a transpose.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from zfprobe.engine.graph import Graph, Node
from zfprobe.ops.geometry import AxisWindow, axis_windows, conv_transpose_length, same_window
from zfprobe.ops.onnx_semantics import (dtype_name, pad_pairs, pool_divisors, switch_in_image, switch_index,
                                        unpadded)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


class _V:
    """A value: a tf tensor, held channels-first (``nhwc=False``) or channels-last (4-D only)."""

    __slots__ = ("t", "nhwc", "info")

    def __init__(self, t, nhwc: bool = False, info: dict | None = None):
        self.t = t
        self.nhwc = nhwc
        self.info = info  # provenance: a MaxPool's own argmax rides along with its switches (see _unpool)


_TO_LAST = [0, 2, 3, 1]
_TO_FIRST = [0, 3, 1, 2]


class _Run:
    """Evaluation of one program inside a tf.function trace."""

    def __init__(self, tf, program: Graph, weight_fn):
        self.tf = tf
        self.program = program
        self.env: dict[str, _V] = {}
        self._weight_fn = weight_fn

    # -- values ------------------------------------------------------------------------------
    def first(self, v: _V):
        return self.tf.transpose(v.t, _TO_FIRST) if v.nhwc else v.t

    def last(self, v: _V):
        if v.nhwc:
            return v.t
        return self.tf.transpose(v.t, _TO_LAST)

    def get(self, name: str) -> _V:
        v = self.env.get(name)
        if v is None:
            v = self._weight_fn(name, None)
            self.env[name] = v
        return v

    def kernel(self, name: str, depthwise: bool, group: int = 1):
        """A conv weight as TensorFlow wants it: HWIO, or (kh, kw, C, M) for a depthwise conv."""
        native = self._weight_fn(name, "depthwise" if depthwise else "hwio")
        if native is not None:
            return native
        w = self.first(self.get(name))  # OIHW (O = out channels, I = in / group)
        tf = self.tf
        if not depthwise:
            return tf.transpose(w, [2, 3, 1, 0])
        o, _, kh, kw = w.shape
        return tf.transpose(tf.reshape(w, [group, o // group, kh, kw]), [2, 3, 0, 1])

    def is_depthwise(self, name: str, group: int, cin: int | None) -> bool:
        """Group == input channels and one input channel per group."""
        if group == 1:
            return False
        shape = self.program.shape(name) if name in self.program.constants else None
        i_per_group = shape[1] if shape is not None else None
        return i_per_group == 1 and (cin is None or group == cin)


def _aligned_last(tf, run: _Run, v: _V):
    """A value made channels-last for an elementwise op with a channels-last 4-D operand."""
    if v.nhwc:
        return v.t
    t = v.t
    rank = t.shape.rank
    if rank == 4:
        return tf.transpose(t, _TO_LAST)
    if rank is None or rank == 0:
        return t
    # numpy broadcasting: pad on the left to rank 4, then move channels last
    t = tf.reshape(t, [1] * (4 - rank) + list(t.shape)) if rank < 4 else t
    return tf.transpose(t, _TO_LAST)


def _elementwise(fn: Callable):
    def op(run: _Run, node: Node, ins: list[_V]):
        tf = run.tf
        if any(v.nhwc for v in ins):
            return [_V(fn(tf, node, *[_aligned_last(tf, run, v) for v in ins]), True)]
        return [_V(fn(tf, node, *[v.t for v in ins]), False)]

    return op


def _unary(fn: Callable):
    def op(run: _Run, node: Node, ins: list[_V]):
        return [_V(fn(run.tf, node, ins[0].t), ins[0].nhwc)]

    return op


OPS: dict[str, Callable[[_Run, Node, list[_V]], list[_V]]] = {}

OPS["Relu"] = _unary(lambda tf, n, x: tf.nn.relu(x))
OPS["Sigmoid"] = _unary(lambda tf, n, x: tf.sigmoid(x))
OPS["Tanh"] = _unary(lambda tf, n, x: tf.tanh(x))
OPS["Neg"] = _unary(lambda tf, n, x: -x)
OPS["Sqrt"] = _unary(lambda tf, n, x: tf.sqrt(x))
OPS["Identity"] = _unary(lambda tf, n, x: x)
OPS["Dropout"] = _unary(lambda tf, n, x: x)
OPS["LeakyRelu"] = _unary(lambda tf, n, x: tf.nn.leaky_relu(x, alpha=float(n.attrs.get("alpha", 0.01))))
OPS["Cast"] = _unary(lambda tf, n, x: tf.cast(x, dtype_name(n.attrs["to"])))
OPS["HardSigmoid"] = _unary(lambda tf, n, x: tf.clip_by_value(x * float(n.attrs.get("alpha", 0.2)) + float(n.attrs.get("beta", 0.5)), 0.0, 1.0))
OPS["HardSwish"] = _unary(lambda tf, n, x: x * tf.clip_by_value(x / 6.0 + 0.5, 0.0, 1.0))


def _clip(tf, n, x):
    lo, hi = n.attrs.get("min", -np.inf), n.attrs.get("max", np.inf)
    if lo is not None and np.isfinite(lo):
        x = tf.maximum(x, tf.cast(lo, x.dtype))
    if hi is not None and np.isfinite(hi):
        x = tf.minimum(x, tf.cast(hi, x.dtype))
    return x


OPS["Clip"] = _unary(_clip)

OPS["Add"] = _elementwise(lambda tf, n, a, b: a + b)
OPS["Sub"] = _elementwise(lambda tf, n, a, b: a - b)
OPS["Mul"] = _elementwise(lambda tf, n, a, b: a * b)
# ONNX divides integers with truncation (true division only for floating point).
OPS["Div"] = _elementwise(lambda tf, n, a, b: a / b if a.dtype.is_floating else tf.truncatediv(a, tf.cast(b, a.dtype)))
OPS["Pow"] = _elementwise(lambda tf, n, a, b: tf.pow(a, tf.cast(b, a.dtype)))
OPS["Greater"] = _elementwise(lambda tf, n, a, b: tf.greater(a, b))
OPS["Less"] = _elementwise(lambda tf, n, a, b: tf.less(a, b))
OPS["And"] = _elementwise(lambda tf, n, a, b: tf.logical_and(a, b))
OPS["Where"] = _elementwise(lambda tf, n, c, a, b: tf.where(c, a, b))
OPS["Mod"] = _elementwise(lambda tf, n, a, b: tf.math.floormod(a, tf.cast(b, a.dtype)))
OPS["PRelu"] = _elementwise(lambda tf, n, x, s: tf.where(x > 0, x, x * s))


def _sum(tf, n, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


OPS["Sum"] = _elementwise(_sum)


# -- convolution -----------------------------------------------------------------------------
def _conv(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    a = node.attrs
    x = run.last(ins[0])
    group = int(a.get("group", 1))
    cin = x.shape[-1]
    kh, kw = a["kernel_shape"]
    pt, pl, pb, pr = a["pads"]
    strides = [1, *a["strides"], 1]
    dil = list(a["dilations"])
    if group == 1:
        k = run.kernel(node.inputs[1], False)
        y = tf.nn.conv2d(x, k, strides, [[0, 0], [pt, pb], [pl, pr], [0, 0]], dilations=[1, *dil, 1])
    elif run.is_depthwise(node.inputs[1], group, cin):
        k = run.kernel(node.inputs[1], True, group)
        if pt or pb or pl or pr:
            x = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
        if strides[1] == strides[2]:
            y = tf.nn.depthwise_conv2d(x, k, strides, "VALID", dilations=dil)
        else:  # TF's CPU depthwise conv wants equal strides (PaddleOCR uses 2 x 1): stride 1, then subsample
            y = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "VALID", dilations=dil)[:, ::strides[1], ::strides[2], :]
    else:  # general grouped convolution: one conv per group
        if pt or pb or pl or pr:
            x = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
        k = run.kernel(node.inputs[1], False)  # HWIO with I = cin / group
        xs = tf.split(x, group, axis=3)
        ks = tf.split(k, group, axis=3)
        y = tf.concat([tf.nn.conv2d(xi, ki, strides, "VALID", dilations=[1, *dil, 1]) for xi, ki in zip(xs, ks)], 3)
    if len(node.inputs) > 2 and node.inputs[2]:
        y = y + tf.reshape(run.first(run.get(node.inputs[2])), [-1])
    return [_V(y, True)]


def _dilate(tf, k, dh: int, dw: int):
    """An HWIO kernel with (dh - 1, dw - 1) zeros between its taps."""
    kh, kw, i, o = k.shape
    z = tf.pad(tf.reshape(k, [kh, 1, kw, 1, i, o]), [[0, 0], [0, dh - 1], [0, 0], [0, dw - 1], [0, 0], [0, 0]])
    return tf.reshape(z, [kh * dh, kw * dw, i, o])[:(kh - 1) * dh + 1, :(kw - 1) * dw + 1]


def _conv_transpose(run: _Run, node: Node, ins: list[_V]):
    """ONNX ConvTranspose (the adjoint of the forward Conv with the same weight): a full 'VALID'
    transposed convolution, then the pads cropped off."""
    tf = run.tf
    a = node.attrs
    g = run.last(ins[0])
    group = int(a.get("group", 1))
    kh, kw = a["kernel_shape"]
    sh, sw = a["strides"]
    dh, dw = a.get("dilations", [1, 1])
    pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
    out_pad = list(a.get("output_padding", [0, 0]))
    windows = axis_windows(dict(a, pads=[pt, pl, pb, pr]), 2)
    n = tf.shape(g)[0]
    h, w = g.shape[1], g.shape[2]
    # the full (unpadded) transposed output; the pads crop it, the output padding extends it
    full_h = conv_transpose_length(h, AxisWindow(kh, sh, dh))
    full_w = conv_transpose_length(w, AxisWindow(kw, sw, dw))
    depthwise = run.is_depthwise(node.inputs[1], group, None)
    if dh > 1 or dw > 1:  # TensorFlow's CPU transposed conv has no dilation: spread the kernel instead
        k = _dilate(tf, run.kernel(node.inputs[1], False), dh, dw)
        kh, kw, dh, dw, depthwise = (kh - 1) * dh + 1, (kw - 1) * dw + 1, 1, 1, False
    else:
        k = run.kernel(node.inputs[1], depthwise, group)
    out_h, out_w = (conv_transpose_length(n_in, win, op) for n_in, win, op in zip((h, w), windows, out_pad))
    if group == 1 and min(pt, pb, pl, pr) >= 0:
        # TensorFlow's input gradient of a conv with these explicit pads: no full output, no crop
        c_out = k.shape[2]
        y = tf.nn.conv2d_transpose(g, k, tf.stack([n, out_h, out_w, c_out]), [1, sh, sw, 1],
                                   [[0, 0], [pt, pb], [pl, pr], [0, 0]], dilations=[1, dh, dw, 1])
        if len(node.inputs) > 2 and node.inputs[2]:
            y = y + tf.reshape(run.first(run.get(node.inputs[2])), [-1])
        return [_V(y, True)]
    if group == 1:
        c_out = k.shape[2]
        y = tf.nn.conv2d_transpose(g, k, tf.stack([n, full_h, full_w, c_out]), [1, sh, sw, 1], "VALID",
                                   dilations=[1, dh, dw, 1])
    elif depthwise and dh == 1 and dw == 1 and sh == sw:  # (unequal strides: per group, below)
        c_out = group
        y = tf.nn.depthwise_conv2d_backprop_input(tf.stack([n, full_h, full_w, c_out]), k, g, [1, sh, sw, 1], "VALID")
    else:
        k1 = run.kernel(node.inputs[1], False) if depthwise else k  # HWIO, I = forward in / group
        gs = tf.split(g, group, axis=3)
        ks = tf.split(k1, group, axis=3)
        c_g = k1.shape[2]
        y = tf.concat([tf.nn.conv2d_transpose(gi, ki, tf.stack([n, full_h, full_w, c_g]), [1, sh, sw, 1], "VALID",
                                              dilations=[1, dh, dw, 1]) for gi, ki in zip(gs, ks)], 3)
    (bt, at), (bl, al) = (win.transposed_crop(op) for win, op in zip(windows, out_pad))
    if bt or at or bl or al:  # extend (> 0) with zeros, then crop (< 0)
        y = tf.pad(y, [[0, 0], [max(0, bt), max(0, at)], [max(0, bl), max(0, al)], [0, 0]])
        y = y[:, max(0, -bt):max(0, -bt) + out_h, max(0, -bl):max(0, -bl) + out_w, :]
    if len(node.inputs) > 2 and node.inputs[2]:
        y = y + tf.reshape(run.first(run.get(node.inputs[2])), [-1])
    return [_V(y, True)]


OPS["Conv"] = _conv
OPS["ConvTranspose"] = _conv_transpose


# -- pooling ---------------------------------------------------------------------------------
def _pool_pads(node: Node, h: int, w: int):
    """Kernel, strides and ONNX's pads, a ceil-mode window's overhang added to the end pads
    (TensorFlow pools in floor mode only)."""
    (wh, ww) = axis_windows(node.attrs, 2)
    return (wh.kernel, ww.kernel, wh.stride, ww.stride, wh.pad_begin, ww.pad_begin,
            wh.pad_end + wh.ceil_overhang(h), ww.pad_end + ww.ceil_overhang(w))


def _tf_padding(h, w, kh, kw, sh, sw, pt, pl, pb, pr) -> str | None:
    """'VALID' or 'SAME' when the explicit pads are exactly TensorFlow's, else None."""
    if not (pt or pl or pb or pr):
        return "VALID"
    same = [same_window(h, kh, sh), same_window(w, kw, sw)]
    return "SAME" if [(pt, pb), (pl, pr)] == [(win.pad_begin, win.pad_end) for win in same] else None


def _maxpool(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    x = run.last(ins[0])
    if any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
        raise NotImplementedError("MaxPool with dilations in the TensorFlow backend")
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    kh, kw, sh, sw, pt, pl, pb, pr = _pool_pads(node, h, w)
    if pt or pl or pb or pr:
        x = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]], constant_values=-np.inf)
    want_switches = len(node.outputs) > 1 and node.outputs[1]
    if not want_switches:
        return [_V(tf.nn.max_pool2d(x, [kh, kw], [sh, sw], "VALID"), True)]
    y, idx = tf.nn.max_pool_with_argmax(x, [1, kh, kw, 1], [1, sh, sw, 1], "VALID", include_batch_in_index=False,
                                        output_dtype=tf.int64)
    # TensorFlow: (y_p * W_p + x_p) * C + c over the padded NHWC image; ONNX: over N x C x H x W
    ch = idx % c
    yy, xx = unpadded(idx // c, w + pl + pr, pt, pl)
    n = tf.shape(idx, out_type=tf.int64)[0]
    flat = switch_index(tf.reshape(tf.range(n, dtype=tf.int64) * c, [-1, 1, 1, 1]) + ch, yy, xx, h, w)
    # the same switches as a per-image channels-last index of the unpadded input, for Unpool's kernel
    info = None
    tf_padding = _tf_padding(h, w, kh, kw, sh, sw, pt, pl, pb, pr)
    if tf_padding is not None:
        info = {"kind": "switch", "argmax": (yy * w + xx) * c + ch, "input": (h, w, c), "ksize": [1, kh, kw, 1],
                "strides": [1, sh, sw, 1], "padding": tf_padding}
    return [_V(y, True), _V(flat, True, info)]


def _avgpool(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    x = run.last(ins[0])
    h, w = x.shape[1], x.shape[2]
    kh, kw, sh, sw, pt, pl, pb, pr = _pool_pads(node, h, w)
    include = bool(node.attrs.get("count_include_pad", 0))
    if not (pt or pl or pb or pr):
        return [_V(tf.nn.avg_pool2d(x, [kh, kw], [sh, sw], "VALID"), True)]
    xp = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    s = tf.nn.avg_pool2d(xp, [kh, kw], [sh, sw], "VALID") * float(kh * kw)
    counts = pool_divisors((h, w), axis_windows(node.attrs, 2), include)
    return [_V(s / tf.constant(counts[None, :, :, None]), True)]


def _global(reduce_name: str):
    def op(run: _Run, node: Node, ins: list[_V]):
        tf = run.tf
        x = run.last(ins[0])
        fn = tf.reduce_mean if reduce_name == "mean" else tf.reduce_max
        return [_V(fn(x, axis=[1, 2], keepdims=True), True)]

    return op


OPS["MaxPool"] = _maxpool
OPS["AveragePool"] = _avgpool
OPS["GlobalAveragePool"] = _global("mean")
OPS["GlobalMaxPool"] = _global("max")


def _batchnorm(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    x = ins[0]
    scale, bias, mean, var = (run.first(v) for v in ins[1:5])
    eps = float(node.attrs.get("epsilon", 1e-5))
    mul = scale * tf.math.rsqrt(var + eps)
    add = bias - mean * mul
    if x.nhwc or x.t.shape.rank == 2:
        return [_V(x.t * mul + add, x.nhwc)]
    rank = x.t.shape.rank
    shape = [-1] + [1] * (rank - 2)
    return [_V(x.t * tf.reshape(mul, shape) + tf.reshape(add, shape), False)]


OPS["BatchNormalization"] = _batchnorm


def _lrn(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    a = node.attrs
    size = int(a["size"])
    alpha, beta, bias = float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
    x = run.last(ins[0])
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = tf.pad(tf.square(x), [[0, 0], [0, 0], [0, 0], [lo, hi]])
    c = x.shape[-1]
    window = tf.add_n([sq[..., i:i + c] for i in range(size)])
    return [_V(x / tf.pow(bias + alpha / size * window, beta), True)]


OPS["LRN"] = _lrn


# -- dense -----------------------------------------------------------------------------------
def _gemm(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    a = node.attrs
    A, B = run.first(ins[0]), run.first(ins[1])
    y = tf.linalg.matmul(A, B, transpose_a=bool(a.get("transA", 0)), transpose_b=bool(a.get("transB", 0)))
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if len(ins) > 2 and beta != 0.0:
        y = y + beta * run.first(ins[2])
    return [_V(y)]


OPS["Gemm"] = _gemm
OPS["MatMul"] = lambda run, node, ins: [_V(run.tf.linalg.matmul(run.first(ins[0]), run.first(ins[1])))]


# -- shapes ----------------------------------------------------------------------------------
def _canonical(fn: Callable):
    def op(run: _Run, node: Node, ins: list[_V]):
        return [_V(t) for t in fn(run.tf, node, *[run.first(v) for v in ins])]

    return op


def _reshape(tf, n, x):
    shape = list(n.attrs["shape"])
    return [tf.reshape(x, shape)]


def _flatten(tf, n, x):
    axis = int(n.attrs.get("axis", 1))
    rest = int(np.prod(x.shape[axis:]))
    if axis == 1:
        return [tf.reshape(x, [-1, rest])]
    return [tf.reshape(x, [-1 if axis > 0 else 1, rest])]


def _transpose(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    perm = list(node.attrs["perm"])
    v = ins[0]
    if v.nhwc:
        composed = [_TO_FIRST[p] for p in perm]
        if composed == [0, 1, 2, 3]:
            return [_V(v.t)]
        return [_V(tf.transpose(v.t, composed))]
    if perm == _TO_FIRST and v.t.shape.rank == 4:
        return [_V(v.t, True)]  # an NHWC tensor seen channels-first: hold it as it is
    return [_V(tf.transpose(v.t, perm))]


def _concat(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    axis = int(node.attrs["axis"])
    if all(v.nhwc for v in ins) and axis in (1, -3):
        return [_V(tf.concat([v.t for v in ins], 3), True)]
    ts = [run.first(v) for v in ins]
    if ts and ts[0].dtype != tf.float32:
        ts = [tf.cast(t, ts[0].dtype) for t in ts]
    return [_V(tf.concat(ts, axis))]


def _slice(tf, n, x):
    a = n.attrs
    idx = [slice(None)] * x.shape.rank
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], a.get("steps", [1] * len(a["axes"]))):
        idx[int(ax)] = slice(int(s), int(e), int(st))
    return [x[tuple(idx)]]


def _pad(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    a = node.attrs
    pads = list(a["pads"])
    v = ins[0]
    rank = len(pads) // 2
    mode = a.get("mode", "constant").upper()
    if mode in ("EDGE", "WRAP"):
        return [_V(_pad_by_index(tf, run.first(v), pads, mode.lower()))]
    pairs = [list(pair) for pair in pad_pairs(pads, rank)]
    value = float(a.get("value", 0.0) or 0.0)
    if v.nhwc:
        pairs = [pairs[p] for p in _TO_LAST]
    if any(p < 0 for pair in pairs for p in pair):
        t = v.t
        crop = tuple(slice(max(0, -b), (t.shape[i] - max(0, -e)) if e < 0 else None) for i, (b, e) in enumerate(pairs))
        t = t[crop]
        pairs = [[max(0, b), max(0, e)] for b, e in pairs]
        return [_V(tf.pad(t, pairs, mode=mode, constant_values=value), v.nhwc)]
    return [_V(tf.pad(v.t, pairs, mode=mode, constant_values=value), v.nhwc)]


def _pad_by_index(tf, x, pads, mode: str):
    """Edge / wrap padding (TensorFlow has neither) as a gather along each padded axis."""
    from zfprobe.ops.layout import pad_index

    rank = len(pads) // 2
    for ax in range(rank):
        if pads[ax] or pads[ax + rank]:
            x = tf.gather(x, pad_index(int(x.shape[ax]), pads[ax], pads[ax + rank], mode), axis=ax)
    return x


def _resize(tf, n, x):
    """ONNX Resize through its per-axis matrices (zfprobe.ops.resize), the same numbers as the
    other backends; one matmul per resized axis."""
    from zfprobe.ops.axismap import apply_forward
    from zfprobe.ops.resize import resize_matrices

    rank = x.shape.rank
    in_shape = [1] + list(x.shape[1:])
    mats = resize_matrices(n.attrs, in_shape, n.attrs["out_size"])

    def swap_last(t, axis):
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        return tf.transpose(t, perm)

    return [apply_forward(tf.linalg.matmul, x, mats, rank, lambda a: tf.constant(a, x.dtype), swap_last)]


def _tile(tf, n, x, *unused):
    return [tf.tile(x, [int(r) for r in n.attrs["repeats"]])]


def _depth_to_space(tf, n, x):
    from zfprobe.ops.layout import depth_to_space_steps, space_to_depth_steps

    shape = [-1] + list(x.shape[1:])
    if n.op_type == "DepthToSpace":
        mid, perm, out = depth_to_space_steps(shape, int(n.attrs["blocksize"]), n.attrs.get("mode", "DCR"))
    else:
        mid, perm, out = space_to_depth_steps(shape, int(n.attrs["blocksize"]))
    mid[0] = out[0] = -1
    return [tf.reshape(tf.transpose(tf.reshape(x, mid), perm), out)]


def _gather(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    axis = int(node.attrs.get("axis", 0))
    idx = run.first(ins[1])
    if axis == 0:
        info = ins[0].info
        if info is not None and info.get("kind") == "switch":
            info = dict(info, argmax=tf.gather(info["argmax"], idx, axis=0))
        else:
            info = None
        return [_V(tf.gather(ins[0].t, idx, axis=0), ins[0].nhwc, info)]
    x = run.first(ins[0])
    if idx.dtype.is_integer:  # ONNX allows negative indices, TensorFlow does not
        idx = tf.where(idx < 0, idx + tf.cast(tf.shape(x)[axis], idx.dtype), idx)
    return [_V(tf.gather(x, idx, axis=axis))]


def _shape(tf, n, x):
    s = tf.shape(x, out_type=tf.int64)
    start, end = n.attrs.get("start", 0), n.attrs.get("end")
    return [s[start:end]]


def _constant_of_shape(tf, n, shape):
    value = n.attrs.get("value", 0.0)
    value = float(np.asarray(value).reshape(-1)[0]) if value is not None else 0.0
    return [tf.fill(tf.cast(shape, tf.int64), tf.constant(value, tf.float32))]


def _expand(tf, n, x, shape=None):
    target = tf.cast(shape, tf.int64) if shape is not None else tf.constant(list(n.attrs["shape"]), tf.int64)
    out = tf.broadcast_to(x, tf.broadcast_dynamic_shape(tf.shape(x, out_type=tf.int64), target))
    if shape is None and x.shape.rank is not None:
        # keep the static sizes a constant target gives (e.g. the spatial size GlobalAveragePool's
        # adjoint spreads to): a ConvTranspose after it needs them while tracing
        static = [int(v) for v in n.attrs["shape"]]
        rank = max(len(static), x.shape.rank)
        xs = [1] * (rank - x.shape.rank) + x.shape.as_list()
        ts = [1] * (rank - len(static)) + static
        out.set_shape([None if a is None else (b if a == 1 else a) for a, b in zip(xs, ts)])
    return [out]


def _scatter_elements(tf, n, data, idx, upd):
    """ScatterElements with reduction 'add' or 'none' (unique indices) along ``axis``."""
    axis = int(n.attrs.get("axis", 0)) % data.shape.rank
    rank = data.shape.rank
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    d, i_, u = (tf.transpose(t, perm) if axis != rank - 1 else t for t in (data, idx, upd))
    size = tf.shape(d, out_type=tf.int64)[-1]
    d2 = tf.reshape(d, tf.stack([-1, size]))
    rows = tf.shape(d2, out_type=tf.int64)[0]
    i2 = tf.reshape(tf.cast(i_, tf.int64), tf.stack([rows, -1]))
    u2 = tf.reshape(u, tf.stack([rows, -1]))
    i2 = tf.where(i2 < 0, i2 + size, i2)
    seg = i2 + tf.range(rows, dtype=tf.int64)[:, None] * size
    summed = tf.math.unsorted_segment_sum(tf.reshape(u2, [-1]), tf.reshape(seg, [-1]), rows * size)
    summed = tf.reshape(summed, tf.shape(d2))
    if n.attrs.get("reduction", "none") in ("add",):
        out = d2 + summed
    else:
        hit = tf.math.unsorted_segment_sum(tf.ones_like(tf.reshape(u2, [-1])), tf.reshape(seg, [-1]), rows * size)
        out = tf.where(tf.reshape(hit, tf.shape(d2)) > 0, summed, d2)
    out = tf.reshape(out, tf.shape(d))
    return [tf.transpose(out, inv) if axis != rank - 1 else out]


def _argmax(tf, n, x):
    axis = int(n.attrs.get("axis", 0))
    if n.attrs.get("select_last_index", 0):
        rev = tf.reverse(x, [axis])
        i = x.shape[axis] - 1 - tf.argmax(rev, axis=axis, output_type=tf.int64)
    else:
        i = tf.argmax(x, axis=axis, output_type=tf.int64)
    return [tf.expand_dims(i, axis) if n.attrs.get("keepdims", 1) else i]


def _softmax(tf, n, x):
    return [tf.nn.softmax(x, axis=int(n.attrs.get("axis", -1)))]


def _reduce(kind: str):
    def fn(tf, n, x):
        axes = list(n.attrs.get("axes", range(x.shape.rank)))
        keep = bool(n.attrs.get("keepdims", 1))
        f = {"sum": tf.reduce_sum, "mean": tf.reduce_mean, "max": tf.reduce_max}[kind]
        return [f(x, axis=axes, keepdims=keep)]

    return fn


def _split(tf, n, x):
    return list(tf.split(x, list(n.attrs["split"]), axis=int(n.attrs["axis"])))


def _squeeze(tf, n, x):
    return [tf.squeeze(x, axis=list(n.attrs["axes"]))]


def _unsqueeze(tf, n, x):
    for a in sorted(n.attrs["axes"]):
        x = tf.expand_dims(x, a)
    return [x]


def _expand_op(run: _Run, node: Node, ins: list[_V]):
    x = run.first(ins[0])
    target = run.first(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    return [_V(t) for t in _expand(run.tf, node, x, target)]


def _unpool(run: _Run, node: Node, ins: list[_V]):
    """zfprobe's Unpool (:mod:`zfprobe.ops.maxpool`). Switches that come straight from this
    backend's MaxPool (gathered per seed) carry TensorFlow's own argmax: then one
    MaxPoolGradWithArgmax puts every value back channels-last (values sharing a switch add up).
    Other switches: a segment sum over the flat ONNX index."""
    tf = run.tf
    g_v, s_v = ins
    c, h, w = (int(d) for d in node.attrs["shape"])
    info = s_v.info
    if info is not None and info.get("kind") == "switch":
        g = run.last(g_v)  # [K, Ho, Wo, C]
        k = tf.shape(g)[0]
        argmax = info["argmax"]
        argmax = tf.broadcast_to(argmax, tf.concat([[k], tf.shape(argmax)[1:]], 0))
        out = tf.raw_ops.MaxPoolGradWithArgmax(input=tf.zeros(tf.stack([k, h, w, c]), g.dtype), grad=g,
                                               argmax=argmax, ksize=info["ksize"], strides=info["strides"],
                                               padding=info["padding"], include_batch_in_index=False)
        return [_V(out, True)]
    per_image = c * h * w
    g = run.first(g_v)
    k = tf.shape(g, out_type=tf.int64)[0]
    upd = tf.reshape(g, tf.stack([k, -1]))
    sw = run.first(s_v)
    idx = switch_in_image(tf.reshape(tf.cast(sw, tf.int64), tf.stack([tf.shape(sw, out_type=tf.int64)[0], -1])),
                          per_image)
    idx = tf.broadcast_to(idx, tf.shape(upd, out_type=tf.int64)) + tf.range(k)[:, None] * per_image
    out = tf.math.unsorted_segment_sum(tf.reshape(upd, [-1]), tf.reshape(idx, [-1]), k * per_image)
    return [_V(tf.reshape(out, [-1, c, h, w]))]


OPS["Reshape"] = _canonical(_reshape)
OPS["Flatten"] = _canonical(_flatten)
OPS["Transpose"] = _transpose
OPS["Concat"] = _concat
OPS["Slice"] = _canonical(_slice)
OPS["Pad"] = _pad
OPS["Gather"] = _gather
OPS["Resize"] = _canonical(_resize)
OPS["Tile"] = _canonical(_tile)
OPS["DepthToSpace"] = _canonical(_depth_to_space)
OPS["SpaceToDepth"] = _canonical(_depth_to_space)
def _shape_op(run: _Run, node: Node, ins: list[_V]):
    tf = run.tf
    v = ins[0]
    s = tf.shape(v.t, out_type=tf.int64)
    if v.nhwc:
        s = tf.gather(s, _TO_FIRST)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return [_V(s[start:end])]


OPS["Shape"] = _shape_op
OPS["ConstantOfShape"] = _canonical(_constant_of_shape)
OPS["Expand"] = _expand_op
OPS["ScatterElements"] = _canonical(_scatter_elements)
OPS["Unpool"] = _unpool
OPS["ArgMax"] = _canonical(_argmax)
OPS["Softmax"] = _canonical(_softmax)
OPS["ReduceSum"] = _canonical(_reduce("sum"))
OPS["ReduceMean"] = _canonical(_reduce("mean"))
OPS["ReduceMax"] = _canonical(_reduce("max"))
OPS["Split"] = _canonical(_split)
OPS["Squeeze"] = _canonical(_squeeze)
OPS["Unsqueeze"] = _canonical(_unsqueeze)


# -- the backend -----------------------------------------------------------------------------
def choose_device(device: str = "auto") -> str:
    """``auto``: TensorFlow's first GPU when it has one, else the CPU; ``cpu`` / ``cuda`` force one."""
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        return "/CPU:0"
    if device in ("cuda", "gpu"):
        if not gpus:
            from zfprobe.errors import OptionError

            raise OptionError("device 'cuda' asked for, but TensorFlow sees no GPU here (install tensorflow[and-cuda] "
                              "on a machine with an NVIDIA GPU)")
        return "/GPU:0"
    if device not in ("auto", None):
        from zfprobe.errors import OptionError

        raise OptionError(f"unknown device '{device}'; choose auto, cpu or cuda")
    return "/GPU:0" if gpus else "/CPU:0"


class TensorFlowBackend:
    """Executes programs with TensorFlow; one traced ``tf.function`` per (program, outputs)."""

    name = "tensorflow"

    def __init__(self, device: str = "auto"):
        self._tf = _tf()
        self.tf_device = choose_device(device)
        self._functions: dict[tuple, tuple[Graph, Any, list[str]]] = {}
        self._consts: dict[tuple[int, str], Any] = {}

    @property
    def device(self) -> str:
        return "cuda" if "GPU" in self.tf_device else "cpu"

    def supports(self, program: Graph) -> list[str]:
        """Op types of ``program`` this backend cannot run (empty when it runs them all)."""
        return sorted({n.op_type for n in program.nodes} - set(OPS))

    # -- weights -----------------------------------------------------------------------------
    def _weight_fn(self, program: Graph):
        tf = self._tf
        refs = program.parameter_refs or {}

        def weight(name: str, form: str | None):
            ref = refs.get(name)
            live = ref is not None and hasattr(ref, "variable") and hasattr(ref, "transform")
            if form is not None:  # a native conv kernel, only for live Keras weights
                if not live:
                    return None
                if form == "hwio" and ref.transform == "conv":
                    return ref.variable()
                if form == "depthwise" and ref.transform == "depthwise":
                    return ref.variable()
                return None
            if live:
                v = ref.variable()
                if ref.transform == "identity":
                    return _V(tf.convert_to_tensor(v))
                if ref.transform == "conv":
                    return _V(tf.transpose(v, [3, 2, 0, 1]))
                if ref.transform == "depthwise":
                    kh, kw, c, m = v.shape
                    return _V(tf.reshape(tf.transpose(v, [2, 3, 0, 1]), [c * m, 1, kh, kw]))
            if name not in program.constants:
                raise KeyError(f"tensor '{name}' is neither computed nor a constant of the program")
            key = (id(program), name)
            if key not in self._consts:
                value = program.constants[name]
                with tf.device(self.tf_device):
                    self._consts[key] = tf.constant(value)
            return _V(self._consts[key])

        return weight

    # -- running -----------------------------------------------------------------------------
    def function(self, program: Graph, outputs: Sequence[str]):
        key = (id(program), tuple(outputs))
        cached = self._functions.get(key)
        if cached is not None and cached[0] is program:
            return cached[1], cached[2]
        tf = self._tf
        missing = self.supports(program)
        if missing:
            from zfprobe.errors import ZfprobeError

            raise ZfprobeError(f"the TensorFlow backend cannot run op type(s) {', '.join(missing)}")
        inputs = list(program.inputs)
        weight = self._weight_fn(program)
        wanted = list(outputs)
        needed = {n.name for n in program.ancestors(wanted)}
        nodes = [n for n in program.nodes if n.name in needed]

        def evaluate(*feeds):
            run = _Run(tf, program, weight)
            for name, t in zip(inputs, feeds):
                run.env[name] = _V(t)
            for node in nodes:
                ins = [run.get(i) if i else None for i in node.inputs]
                outs = OPS[node.op_type](run, node, ins)
                for name, v in zip(node.outputs, outs):
                    if name:
                        run.env[name] = v
            return [run.first(run.env[o]) for o in wanted]

        sig = []
        for name in inputs:
            shape = program.shapes.get(name)
            dtype = np.dtype(program.dtypes.get(name, np.float32))
            sig.append(tf.TensorSpec([None] + list(shape[1:]) if shape else None, tf.as_dtype(dtype)))
        with tf.device(self.tf_device):
            # traced once, here, for any batch size (a concrete function: no retracing warnings)
            fn = tf.function(evaluate, input_signature=sig, autograph=False).get_concrete_function()
        self._functions[key] = (program, fn, inputs)
        return fn, inputs

    def run(self, program: Graph, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        outputs = list(outputs or program.outputs)
        fn, inputs = self.function(program, outputs)
        tf = self._tf
        with tf.device(self.tf_device):
            args = []
            for name in inputs:
                if name not in feeds:
                    raise KeyError(f"the program needs the input '{name}'")
                dtype = np.dtype(program.dtypes.get(name, np.float32))
                args.append(tf.convert_to_tensor(np.asarray(feeds[name], dtype=dtype)))
            result = fn(*args)
        return [r.numpy() for r in result]


# -- smooth nonlinearities and data-dependent normalizations (zfprobe/ops/activation.py, norm.py)
_SELU = (1.67326319217681884765625, 1.05070102214813232421875)


def _gelu(tf, n, x):
    return tf.nn.gelu(x, approximate=n.attrs.get("approximate", "none") == "tanh")


def _celu(tf, n, x):
    alpha = float(n.attrs.get("alpha", 1.0))
    return tf.maximum(x, 0.0) + tf.minimum(0.0, alpha * (tf.exp(x / alpha) - 1.0))


for _op, _fn in {
    "Gelu": _gelu,
    "Mish": lambda tf, n, x: x * tf.tanh(tf.nn.softplus(x)),
    "Swish": lambda tf, n, x: x * tf.sigmoid(float(n.attrs.get("alpha", 1.0)) * x),
    "Softplus": lambda tf, n, x: tf.nn.softplus(x),
    "Softsign": lambda tf, n, x: tf.nn.softsign(x),
    "Elu": lambda tf, n, x: tf.where(x > 0, x, float(n.attrs.get("alpha", 1.0)) * (tf.exp(x) - 1.0)),
    "Celu": _celu,
    "Selu": lambda tf, n, x: float(n.attrs.get("gamma", _SELU[1])) * tf.where(
        x > 0, x, float(n.attrs.get("alpha", _SELU[0])) * (tf.exp(x) - 1.0)),
    "Exp": lambda tf, n, x: tf.exp(x),
    "Log": lambda tf, n, x: tf.math.log(x),
    "Erf": lambda tf, n, x: tf.math.erf(x),
    "Reciprocal": lambda tf, n, x: tf.math.reciprocal(x),
    "Abs": lambda tf, n, x: tf.abs(x),
    "Sign": lambda tf, n, x: tf.sign(x),
}.items():
    OPS[_op] = _unary(_fn)


def _normalize(tf, x, axes, eps):
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + eps)


def _layernorm(tf, n, x, scale=None, bias=None):
    rank = x.shape.rank
    axis = int(n.attrs.get("axis", -1)) % rank
    y = _normalize(tf, x, list(range(axis, rank)), float(n.attrs.get("epsilon", 1e-5)))
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return [y]


def _per_channel(tf, t, rank):
    return tf.reshape(t, [-1] + [1] * (rank - 2))


def _instancenorm(tf, n, x, scale, bias):
    rank = x.shape.rank
    y = _normalize(tf, x, list(range(2, rank)), float(n.attrs.get("epsilon", 1e-5)))
    return [y * _per_channel(tf, scale, rank) + _per_channel(tf, bias, rank)]


def _groupnorm(tf, n, x, scale, bias):
    rank, groups = x.shape.rank, int(n.attrs["num_groups"])
    shape = tf.shape(x)
    grouped = tf.reshape(x, tf.stack([shape[0], groups, -1]))
    y = tf.reshape(_normalize(tf, grouped, [2], float(n.attrs.get("epsilon", 1e-5))), shape)
    return [y * _per_channel(tf, scale, rank) + _per_channel(tf, bias, rank)]


OPS["LayerNormalization"] = _canonical(_layernorm)
OPS["InstanceNormalization"] = _canonical(_instancenorm)
OPS["GroupNormalization"] = _canonical(_groupnorm)
