"""LayerNorm chains: the ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div form of old opsets
and tf2onnx, and the moments form (mean and variance folded into scale and shift), into one
``LayerNormalization`` (with Transposes when it normalizes over channels of an NCHW tensor)."""
from __future__ import annotations


import numpy as np

from zfprobe.engine.graph import Node
from zfprobe.engine.fusion.matcher import Fuser


def fuse_layernorm(f: Fuser) -> None:
    for last in list(f.g.nodes):
        if last.name in f.removed or last.op_type not in ("Div", "Mul") or len(last.inputs) != 2:
            continue
        for d, s in ((last.inputs[0], last.inputs[1]), (last.inputs[1], last.inputs[0])):
            chain = [last]
            if last.op_type == "Mul":
                rec = f.producer(s)
                if rec is None or rec.op_type != "Reciprocal":
                    continue
                chain.append(rec)
                s = rec.inputs[0]
            sqrt = f.producer(s)
            if sqrt is None or sqrt.op_type != "Sqrt":
                continue
            chain.append(sqrt)
            m = f.binary_with_scalar(sqrt.inputs[0], "Add", chain)
            if not m:
                continue
            var_t, eps = m
            var = f.producer(var_t)
            sub = f.producer(d)
            if var is None or var.op_type != "ReduceMean" or sub is None or sub.op_type != "Sub":
                continue
            chain += [var, sub]
            sq = f.producer(var.inputs[0])
            if sq is None or not ((sq.op_type == "Pow" and sq.inputs[0] == d and f.scalar(sq.inputs[1]) == 2.0)
                                  or (sq.op_type == "Mul" and sq.inputs == [d, d])):
                continue
            chain.append(sq)
            x, mean_t = sub.inputs
            mean = f.producer(mean_t)
            if mean is None or mean.op_type != "ReduceMean" or mean.inputs[0] != x:
                continue
            chain.append(mean)
            rank = len(f.g.shape(x))
            axes = sorted(int(a) % rank for a in mean.attrs["axes"])
            if (sorted(int(a) % rank for a in var.attrs["axes"]) != axes or axes != list(range(axes[0], rank))
                    or axes[0] == 0 or not mean.attrs.get("keepdims", 1) or not var.attrs.get("keepdims", 1)):
                continue
            if not f.private(chain, last.outputs[0]):
                continue
            norm_shape = tuple(f.g.shape(x)[axes[0]:])
            scale, bias = f"{last.name}/ln_scale", f"{last.name}/ln_bias"
            f.new_constants[scale] = np.ones(norm_shape, np.float32)
            f.new_constants[bias] = np.zeros(norm_shape, np.float32)
            f.replace(chain, Node(last.name, "LayerNormalization", [x, scale, bias], list(last.outputs),
                                     {"axis": axes[0], "epsilon": eps}, last.source))
            break


def fuse_moments_layernorm(f: Fuser) -> None:
    """TensorFlow's LayerNormalization via tf.nn.moments, as tf2onnx writes it:
    ``x * m + (beta - mean * m)`` (or ``+ (-mean) * m`` without beta) with
    ``m = gamma / sqrt(variance + eps)``, ``variance = mean((x - mean)^2)``, both means over
    the same axes. Over a trailing range of axes it is LayerNormalization; over the channels
    of an NCHW map (tf2onnx moves Keras' channels-last LayerNorm there) it is ConvNeXt's
    form: Transpose to channels-last, LayerNormalization over C, Transpose back."""
    for last in list(f.g.nodes):
        if last.name in f.removed or last.op_type != "Add" or len(last.inputs) != 2:
            continue
        found = None
        for scaled_t, shift_t in ((last.inputs[0], last.inputs[1]), (last.inputs[1], last.inputs[0])):
            for x, m_t in f.commuted(scaled_t, "Mul"):
                found = match_moments(f, last, x, m_t, shift_t, scaled_t)
                if found:
                    break
            if found:
                break
        if found:
            chain, x, axes, eps, gamma, beta = found
            emit_layernorm(f, last, chain, x, axes, eps, gamma, beta)


def match_moments(f: Fuser, last, x, m_t, shift_t, scaled_t):
    if f.g.is_constant(x):
        return None
    chain = [last, f.producer(scaled_t)]
    # m = rstd * gamma, or rstd alone
    gamma, rstd_t = None, m_t
    m_node = f.producer(m_t)
    if m_node is not None and m_node.op_type == "Mul":
        for a, b in f.commuted(m_t, "Mul"):
            if f.const_array(b) is not None and not f.g.is_constant(a):
                gamma, rstd_t = f.const_array(b), a
                chain.append(m_node)
                break
    rec = f.producer(rstd_t)
    if rec is None or rec.op_type != "Reciprocal":
        return None
    sqrt = f.producer(rec.inputs[0])
    if sqrt is None or sqrt.op_type != "Sqrt":
        return None
    chain += [rec, sqrt]
    m = f.binary_with_scalar(sqrt.inputs[0], "Add", chain)
    if not m:
        return None
    var_t, eps = m
    var = f.producer(var_t)
    if var is None or var.op_type != "ReduceMean":
        return None
    chain.append(var)
    sq = f.producer(var.inputs[0])
    if sq is None or sq.op_type not in ("Mul", "Pow"):
        return None
    d = sq.inputs[0]
    if not ((sq.op_type == "Mul" and sq.inputs == [d, d]) or (sq.op_type == "Pow" and f.scalar(sq.inputs[1]) == 2.0)):
        return None
    chain.append(sq)
    sub = f.producer(d)
    if sub is None or sub.op_type != "Sub" or sub.inputs[0] != x:
        return None
    chain.append(sub)
    mean_t = f.through_reshapes(sub.inputs[1], chain)  # tf2onnx may reshape it in place
    mean = f.producer(mean_t)
    if mean is None or mean.op_type != "ReduceMean" or mean.inputs[0] != x:
        return None
    chain.append(mean)

    def is_mean(t: str) -> bool:
        extra: list[Node] = []
        if f.through_reshapes(t, extra) != mean_t or f.g.shapes.get(t) != f.g.shapes.get(mean_t):
            return False
        chain.extend(extra)
        return True

    def neg_mean_times_m(t: str) -> bool:
        for a, b in f.commuted(t, "Mul"):
            neg = f.producer(a)
            if b == m_t and neg is not None and neg.op_type == "Neg" and is_mean(neg.inputs[0]):
                chain.extend([f.producer(t), neg])
                return True
        return False

    # the shift: (-mean) * m, (-mean) * m + beta, or beta - mean * m
    beta = None
    shift = f.producer(shift_t)
    if shift is None:
        return None
    if shift.op_type == "Mul":
        if not neg_mean_times_m(shift_t):
            return None
    elif shift.op_type == "Add":
        for a, b in f.commuted(shift_t, "Add"):
            if f.const_array(b) is not None and neg_mean_times_m(a):
                beta = f.const_array(b)
                chain.append(shift)
                break
        else:
            return None
    elif shift.op_type == "Sub" and f.const_array(shift.inputs[0]) is not None:
        prod = f.producer(shift.inputs[1])
        pair = f.commuted(shift.inputs[1], "Mul")
        if prod is None or not any(b == m_t and is_mean(a) for a, b in pair):
            return None
        beta = f.const_array(shift.inputs[0])
        chain += [shift, prod]
    else:
        return None
    chain = list({n.name: n for n in chain}.values())
    rank = len(f.g.shape(x))
    axes = sorted(int(a) % rank for a in mean.attrs.get("axes", []))
    if not axes or sorted(int(a) % rank for a in var.attrs.get("axes", [])) != axes:
        return None
    if not mean.attrs.get("keepdims", 1) or not var.attrs.get("keepdims", 1):
        return None
    if not f.private(chain, last.outputs[0]):
        return None
    return chain, x, axes, eps, gamma, beta


def emit_layernorm(f: Fuser, last, chain, x, axes, eps, gamma, beta) -> None:
    shape = tuple(f.g.shape(x))
    rank = len(shape)
    trailing = axes == list(range(axes[0], rank)) and axes[0] > 0
    channels = axes == [1] and rank >= 3
    if not (trailing or channels):
        return
    norm_shape = tuple(shape[a] for a in axes)

    def per_axis(v, fill):
        if v is None:
            return np.full(norm_shape, fill, np.float32)
        full = np.broadcast_to(v, np.broadcast_shapes(v.shape, (1,) * (rank - v.ndim) + v.shape))
        if full.ndim != rank or any(full.shape[i] not in (1, shape[i]) for i in range(rank)) or \
                any(full.shape[i] != 1 for i in range(rank) if i not in axes):
            return None
        return np.ascontiguousarray(np.broadcast_to(full, tuple(shape[i] if i in axes else 1 for i in range(rank)))
                                    .reshape(norm_shape), np.float32)

    scale, bias = per_axis(gamma, 1.0), per_axis(beta, 0.0)
    if scale is None or bias is None:
        return
    names = f"{last.name}/ln_scale", f"{last.name}/ln_bias"
    f.new_constants[names[0]], f.new_constants[names[1]] = scale, bias
    attrs = {"axis": axes[0] if trailing else -1, "epsilon": eps}
    if trailing:
        f.replace(chain, Node(last.name, "LayerNormalization", [x, *names], list(last.outputs), attrs, last.source))
        return
    to_last = list(range(rank))
    to_last = [0] + to_last[2:] + [1]
    back = [0, rank - 1] + list(range(1, rank - 1))
    t_in, t_ln = f"{last.name}/channels_last", f"{last.name}/layernorm"
    nhwc = (shape[0], *shape[2:], shape[1])
    f.new_shapes[t_in] = f.new_shapes[t_ln] = nhwc
    before = (Node(f"{last.name}/ToChannelsLast", "Transpose", [x], [t_in], {"perm": to_last}, last.source),
              Node(f"{last.name}/LayerNorm", "LayerNormalization", [t_in, *names], [t_ln], attrs, last.source))
    f.replace(chain, Node(last.name, "Transpose", [t_ln], list(last.outputs), {"perm": back}, last.source), before)
