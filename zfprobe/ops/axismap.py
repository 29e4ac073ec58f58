"""Ops that act along each axis as a fixed matrix: ``y = A x`` along axis ``a`` (Resize, strided
Slice, Gather with constant indices, Tile, reflect / edge Pad). Their reversal is the transpose of
the same matrices, applied axis by axis with MatMul, which every backend already runs; the
forward kernels of the backends can use the same matrices when the framework lacks the op."""
from __future__ import annotations

import numpy as np


def index_matrix(index: np.ndarray, n_in: int) -> np.ndarray:
    """The 0/1 matrix ``A`` (len(index) x n_in) of ``y = x[index]``; repeated indices add up in ``A^T``."""
    a = np.zeros((len(index), n_in), np.float32)
    a[np.arange(len(index)), np.asarray(index, np.int64)] = 1.0
    return a


def apply_transposed(ctx, g: str, axis: int, matrix: np.ndarray, rank: int, hint: str = "axismap") -> str:
    """``A^T g`` along ``axis`` of the rank-``rank`` signal ``g`` (in a reversal being built)."""
    b = ctx.b
    if axis == rank - 1:
        return b.op("MatMul", g, b.const(matrix.reshape((1,) * (rank - 2) + matrix.shape), hint), hint=hint)
    if axis == rank - 2:
        at = np.ascontiguousarray(matrix.T)
        return b.op("MatMul", b.const(at.reshape((1,) * (rank - 2) + at.shape), hint), g, hint=hint)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    t = b.op("Transpose", g, perm=perm, hint=hint)
    t = b.op("MatMul", t, b.const(matrix.reshape((1,) * (rank - 2) + matrix.shape), hint), hint=hint)
    return b.op("Transpose", t, perm=perm, hint=hint)


def apply_forward(xp_matmul, x, matrices: dict[int, np.ndarray], rank: int, to_tensor, swap_last):
    """``A x`` along every axis in ``matrices``, for a backend's forward kernel: ``xp_matmul`` is the
    framework's matmul, ``to_tensor`` makes a constant, ``swap_last(x, axis)`` swaps an axis with
    the last one."""
    for axis, a in sorted(matrices.items()):
        if axis == rank - 1:
            x = xp_matmul(x, to_tensor(np.ascontiguousarray(a.T).reshape((1,) * (rank - 2) + a.T.shape)))
        elif axis == rank - 2:
            x = xp_matmul(to_tensor(a.reshape((1,) * (rank - 2) + a.shape)), x)
        else:
            x = swap_last(x, axis)
            x = xp_matmul(x, to_tensor(np.ascontiguousarray(a.T).reshape((1,) * (rank - 2) + a.T.shape)))
            x = swap_last(x, axis)
    return x
