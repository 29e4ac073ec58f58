"""ONNX semantics that kernels without them must reproduce, computed once for every backend.

torch and TensorFlow pool and convolve with symmetric (or 'SAME') padding, another ceil mode,
other average-pool divisors and other max-pool index layouts than ONNX. Their backends turn the
numbers here into framework calls; the numbers themselves (plain ints and numpy) are stated
once. The index helpers use only ``+ - * // %``, so they apply to numpy arrays, torch tensors
and TensorFlow tensors alike. ``tests/engine/test_onnx_semantics.py`` checks each against onnxruntime.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from zfprobe.ops.geometry import AxisWindow

# ONNX TensorProto data types, by code, as numpy dtype names (bfloat16 has no numpy dtype; the
# frameworks know the name). The one table the importer, exporter and backends read.
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 16: "bfloat16"}
_ONNX_CODES = {name: code for code, name in ONNX_DTYPES.items()}


class UnknownDtypeError(ValueError):
    """An ONNX data type code (or numpy dtype) outside :data:`ONNX_DTYPES`."""


def dtype_name(code: int) -> str:
    """The numpy / torch / TensorFlow name of ONNX data type ``code``."""
    try:
        return ONNX_DTYPES[int(code)]
    except KeyError:
        raise UnknownDtypeError(f"ONNX data type {code} is not supported") from None


def numpy_dtype(code: int, default=None) -> np.dtype:
    """The numpy dtype of ONNX data type ``code`` (``default`` for codes numpy has no dtype for)."""
    name = ONNX_DTYPES.get(int(code))
    if name is None or name == "bfloat16":
        if default is None:
            raise UnknownDtypeError(f"ONNX data type {code} has no numpy dtype")
        return np.dtype(default)
    return np.dtype(name)


def onnx_code(dtype) -> int:
    """The ONNX data type code of a numpy dtype."""
    try:
        return _ONNX_CODES[np.dtype(dtype).name]
    except KeyError:
        raise UnknownDtypeError(f"numpy dtype {np.dtype(dtype)} has no ONNX data type here") from None


# ------------------------------------------------------------------ pads --------------------
# ONNX Pad's modes; the copying ones are also numpy.pad's names for the same rules (reflect
# excludes the edge, edge repeats it, wrap is circular).
CONSTANT_PAD = "constant"
COPY_PAD_MODES = ("reflect", "edge", "wrap")


def pad_pairs(pads: Sequence[int], nd: int) -> list[tuple[int, int]]:
    """ONNX pads ``[b_0.., e_0..]`` over ``nd`` axes -> ``[(b_0, e_0), ...]``."""
    return [(int(pads[i]), int(pads[i + nd])) for i in range(nd)]


def is_symmetric(pads: Sequence[int]) -> bool:
    """Every axis padded alike at both ends (what torch's ``padding=`` argument can express)."""
    nd = len(pads) // 2
    return all(b == e for b, e in pad_pairs(pads, nd))


# ------------------------------------------------------------------ average pooling ---------
def pool_divisors(n_in: Sequence[int], windows: Sequence[AxisWindow], include_pad: bool) -> np.ndarray:
    """The divisor of every ONNX AveragePool output, shape ``[out_0, out_1, ...]`` (float32).

    ``count_include_pad=0`` counts the taps on inputs; ``=1`` also those on the explicit pads,
    but never the overhang of a ceil-mode window past the end pad (onnxruntime and torch agree).
    """
    counts = np.ones((), np.float32)
    for n, w in zip(n_in, windows):
        starts = np.arange(w.out_length(int(n))) * w.stride - w.pad_begin
        taps = starts[:, None] + np.arange(w.kernel)[None, :] * w.dilation
        lo, hi = (-w.pad_begin, n + w.pad_end) if include_pad else (0, n)
        axis = ((taps >= lo) & (taps < hi)).sum(axis=1).astype(np.float32)
        counts = np.multiply.outer(counts, axis)
    return counts.astype(np.float32)


# ------------------------------------------------------------------ max-pool switches -------
def switch_index(plane, row, col, height: int, width: int):
    """ONNX MaxPool's ``Indices`` (onnxruntime, storage_order 0): the argmax flattened over the
    whole ``N x C x H x W`` input, ``plane = n * C + c``, ``(row, col)`` on the unpadded input
    (or row 0 and ``col`` the row-major index within the plane)."""
    return (plane * height + row) * width + col


def unpadded(flat_padded, padded_width: int, pad_top: int, pad_left: int):
    """A row-major index into a plane padded by (pad_top, pad_left) -> ``(row, col)`` on the
    unpadded plane (a max-pool's argmax never lies in its -inf padding)."""
    return flat_padded // padded_width - pad_top, flat_padded % padded_width - pad_left


def switch_in_image(switch, per_image: int):
    """A switch numbered over the whole batch -> its position inside its own image (``C*H*W``)."""
    return switch % per_image
