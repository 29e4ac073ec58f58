"""Upsampling: ONNX ``Resize`` (opset 10 on) and ``Upsample`` (opsets 7-9).

Resize is linear in its data input and separable: along each axis the output is a fixed matrix
times the input (nearest: one 1 per row; linear: two weights; cubic: four). :func:`axis_matrix`
builds that matrix from the ONNX specification (coordinate transform, nearest rounding, cubic
coefficient, exclude_outside), so the reversal is exact (``A^T`` per axis) and the torch and
TensorFlow backends run the forward op with the same matrices, bit-compatible in meaning with
onnxruntime's kernel. Canonical node: ``Resize(X)`` with attributes ``mode``,
``coordinate_transformation_mode``, ``nearest_mode``, ``cubic_coeff_a``, ``exclude_outside``,
``scales`` (one float per axis: the scale the coordinate transform uses) and ``out_size``
(static, batch 1).
"""
from __future__ import annotations

import numpy as np

from zfprobe.engine.op_table import check, inverse
from zfprobe.ops.axismap import apply_transposed
from zfprobe.ops.registry import ONNX_NORMALIZERS
from zfprobe.ops.spatial import AXIS_MATRICES

_TRANSFORMS = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_half_pixel_for_nn"}


def source_coordinates(mode: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """The input coordinate each output index maps to, per the ONNX coordinate transform, in
    float32 arithmetic as onnxruntime does it (so the nearest index agrees on exact ties)."""
    f = np.float32
    x = np.arange(n_out, dtype=f)
    scale, half, n_in_f, n_out_f = f(scale), f(0.5), f(n_in), f(n_out)
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "half_pixel_symmetric":
        adjustment = n_out_f / (scale * n_in_f)
        center = n_in_f / f(2)
        return center * (f(1) - adjustment) + (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if n_out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * f(n_in - 1) / f(n_out - 1) if n_out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / scale
    raise ValueError(mode)


def _nearest(src: np.ndarray, rounding: str) -> np.ndarray:
    fl = np.floor(src)
    frac = src - fl
    if rounding == "floor":
        idx = fl
    elif rounding == "ceil":
        idx = np.ceil(src)
    elif rounding == "round_prefer_ceil":
        idx = np.where(frac >= 0.5, fl + 1, fl)
    else:  # round_prefer_floor (the default)
        idx = np.where(frac > 0.5, fl + 1, fl)
    return idx.astype(np.int64)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights for the taps at offsets -1, 0, 1, 2 (t in [0, 1))."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def axis_matrix(attrs: dict, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """The (n_out x n_in) matrix of one axis of a canonical Resize."""
    mode = attrs.get("mode", "nearest")
    src = source_coordinates(attrs.get("coordinate_transformation_mode", "half_pixel"), n_in, n_out, scale)
    a = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        idx = np.clip(_nearest(src, attrs.get("nearest_mode", "round_prefer_floor")), 0, n_in - 1)
        a[rows, idx] = 1.0
    elif mode == "linear":
        x = np.clip(src.astype(np.float64), 0, n_in - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        w = x - lo
        np.add.at(a, (rows, lo), 1 - w)
        np.add.at(a, (rows, hi), w)
    elif mode == "cubic":
        src = src.astype(np.float64)
        fl = np.floor(src)
        w = _cubic_weights(src - fl, float(attrs.get("cubic_coeff_a", -0.75)))
        taps = fl.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
        if attrs.get("exclude_outside", 0):
            w = np.where((taps < 0) | (taps >= n_in), 0.0, w)
            w = w / w.sum(axis=1, keepdims=True)
        for j in range(4):
            np.add.at(a, (rows, np.clip(taps[:, j], 0, n_in - 1)), w[:, j])
    else:
        raise ValueError(mode)
    return a.astype(np.float32)


def resize_matrices(attrs: dict, in_shape, out_shape) -> dict[int, np.ndarray]:
    """Per-axis matrices of a canonical Resize (axes it leaves as they are are omitted)."""
    scales = attrs["scales"]
    mats = {}
    for ax in range(1, len(in_shape)):
        n_in, n_out, s = int(in_shape[ax]), int(out_shape[ax]), float(scales[ax])
        if n_in == n_out and s == 1.0:
            continue
        mats[ax] = axis_matrix(attrs, n_in, n_out, s)
    return mats


# ------------------------------------------------------------------ ONNX normalization -----
@ONNX_NORMALIZERS.register("Resize", "Upsample")
def normalize(ctx, node):
    in_shape, out_shape = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    rank = len(in_shape)
    a = node.attrs
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    scales = None
    if node.op_type == "Upsample" and "scales" in a:  # Upsample-7
        scales = [float(s) for s in a["scales"]]
    else:
        idx = 1 if legacy else 2
        c = ctx.const(node.inputs[idx]) if len(node.inputs) > idx else None
        if c is not None and c.size:
            scales = [float(s) for s in c.reshape(-1)]
    axes = [int(x) % rank for x in a.get("axes", range(rank))]
    full = [float(out_shape[i]) / float(in_shape[i]) for i in range(rank)]
    if scales is not None:
        for ax, s in zip(axes, scales):
            full[ax] = s
    mode = a.get("mode", "nearest")
    canon = {
        "mode": {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode),
        "coordinate_transformation_mode": "asymmetric" if legacy else a.get("coordinate_transformation_mode", "half_pixel"),
        # Upsample / Resize-10 nearest picks floor(x / scale), the index numpy.repeat gives.
        "nearest_mode": "floor" if legacy else a.get("nearest_mode", "round_prefer_floor"),
        "cubic_coeff_a": float(a.get("cubic_coeff_a", -0.75)),
        "exclude_outside": int(a.get("exclude_outside", 0)),
        "scales": full,
        "out_size": [int(s) for s in out_shape],
    }
    if a.get("antialias", 0):
        canon["antialias"] = 1
    if not legacy and a.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        canon["coordinate_transformation_mode"] = "tf_crop_and_resize"
    node.op_type = "Resize"
    node.inputs = node.inputs[:1]
    node.attrs = canon
    return node


# ------------------------------------------------------------------ reversal ---------------
@inverse("Resize")
def _resize(ctx, node, gy):
    in_shape, out_shape = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    g = gy[0]
    for ax, a in sorted(resize_matrices(node.attrs, in_shape, out_shape).items(), reverse=True):
        g = apply_transposed(ctx, g, ax, a, len(in_shape), hint="resize_T")
    return [g]


@check("Resize")
def _resize_check(graph, node):
    a = node.attrs
    if "scales" not in a:
        return "it is not in zfprobe's canonical form (load the model through zfprobe)"
    if a.get("antialias"):
        return "it resizes with antialiasing (opset 18), which zfprobe does not reverse yet"
    if a.get("coordinate_transformation_mode") not in _TRANSFORMS:
        return f"its coordinate transform '{a.get('coordinate_transformation_mode')}' needs a region of interest"
    if a.get("mode") not in ("nearest", "linear", "cubic"):
        return f"its mode '{a.get('mode')}' is not one ONNX defines"
    in_shape, out_shape = graph.shape(node.inputs[0]), graph.shape(node.outputs[0])
    if in_shape[0] != out_shape[0] or a["scales"][0] != 1.0:
        return "it resizes the batch axis"
    return None


@AXIS_MATRICES.register("Resize")
def _resize_matrices(graph, node):
    return resize_matrices(node.attrs, graph.shape(node.inputs[0]), graph.shape(node.outputs[0]))
