"""zfprobe.ops.geometry against brute force: onnxruntime's MaxPool run on indicator inputs.

A 1-D MaxPool over a batch of one-hot rows (row i is 1 at position i, 0 elsewhere; padding is
-inf) outputs 1 at o exactly when output o's window reads input i. That relation, computed by
onnxruntime for every stride / dilation / pad / ceil-mode combination, is the oracle for the
window's output length, input span and the outputs reading a range; two pools in a row give the
oracle for composition.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from zfprobe.ops.geometry import AxisWindow, conv_transpose_length

OPTS = ort.SessionOptions()
OPTS.log_severity_level = 3


def _reads(windows: list[AxisWindow], n: int) -> np.ndarray:
    """reads[i, o]: output o of the chain of ``windows`` depends on input i (brute force)."""
    nodes, prev = [], "x"
    for k, w in enumerate(windows):
        out = f"y{k}"
        nodes.append(helper.make_node("MaxPool", [prev], [out], kernel_shape=[w.kernel], strides=[w.stride],
                                      dilations=[w.dilation], pads=[w.pad_begin, w.pad_end], ceil_mode=int(w.ceil_mode)))
        prev = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 1, n])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), OPTS, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.eye(n, dtype=np.float32)[:, None, :]})[0][:, 0, :] > 0


def _cases():
    for k, s, d, pb, pe, ceil in itertools.product([1, 2, 3], [1, 2, 3], [1, 2], [0, 1, 2], [0, 1, 2], [False, True]):
        if pb < k and pe < k:  # onnxruntime: pads smaller than the kernel
            yield AxisWindow(k, s, d, pb, pe, ceil)


CASES = list(_cases())


@pytest.mark.parametrize("n", [7, 10])
def test_window_against_indicator_pooling(n):
    checked = 0
    for w in CASES:
        reads = _reads([w], n)
        n_out = reads.shape[1]
        assert w.out_length(n) == n_out, (w, n)
        for o in range(n_out):
            rows = np.flatnonzero(reads[:, o])
            assert rows.size, (w, o)
            lo, hi = w.input_span(o, o + 1, n)
            assert (lo, hi - 1) == (rows.min(), rows.max()), (w, o)
        for i_lo in range(n):
            for i_hi in range(i_lo + 1, min(n, i_lo + 3) + 1):
                cols = np.flatnonzero(reads[i_lo:i_hi].any(axis=0))
                lo, hi = w.outputs_reading(i_lo, i_hi, n_out)
                if w.dilation == 1:
                    expect = (cols.min(), cols.max() + 1) if cols.size else (0, 0)
                    assert (lo, hi) == expect, (w, i_lo, i_hi)
                else:
                    assert all(lo <= c < hi for c in cols), (w, i_lo, i_hi)
        checked += 1
    assert checked > 100


def test_composition_against_two_pools():
    n = 23
    rng = np.random.RandomState(0)
    plain = [w for w in CASES if not w.ceil_mode]
    for _ in range(60):
        inner, outer = plain[rng.randint(len(plain))], plain[rng.randint(len(plain))]
        reads = _reads([inner, outer], n)
        both = inner.then(outer)
        for o in range(reads.shape[1]):
            rows = np.flatnonzero(reads[:, o])
            lo, hi = both.input_span(o, o + 1, n)
            assert all(lo <= r < hi for r in rows), (inner, outer, o)
            inside = 0 <= outer.first_tap(o) and outer.first_tap(o) + outer.span <= inner.out_length(n)
            if inner.dilation == outer.dilation == 1 and rows.size and inside:
                assert (lo, hi - 1) == (rows.min(), rows.max()), (inner, outer, o)


def test_transposed_pads_give_back_the_input_length():
    for w in CASES:
        for n in (5, 8, 11):
            n_out = w.out_length(n)
            if n_out <= 0:
                continue
            pb, pe, op = w.transposed_pads(n, n_out)
            back = AxisWindow(w.kernel, w.stride, w.dilation, pb, pe)
            assert conv_transpose_length(n_out, back, op) == n, (w, n)
            assert op >= 0
