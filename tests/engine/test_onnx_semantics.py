"""The ONNX semantics the torch and TensorFlow backends share (zfprobe/ops/onnx_semantics.py and
the SAME / ceil-mode / transposed-conv parts of zfprobe/ops/geometry.py), each checked by brute
force against onnxruntime running the real ONNX op:

- AveragePool divisors: onnxruntime's AveragePool of one-hot images is 1 / divisor wherever the
  window reads the hot pixel (both count_include_pad modes, ceil mode, asymmetric pads);
- SAME_UPPER / SAME_LOWER pads: a Conv with ``auto_pad`` equals the same Conv with our pads;
- the ceil-mode overhang: a ceil-mode MaxPool / AveragePool equals the floor-mode one with the
  overhang added to its end pads;
- switch numbering: numpy's own argmax over each -inf-padded window, renumbered with
  ``unpadded`` and ``switch_index``, equals onnxruntime's MaxPool Indices;
- the ConvTranspose crop: onnxruntime's ConvTranspose with pads and output_padding equals its
  unpadded output cropped / extended by ``transposed_crop``;
- the dtype table agrees with onnx's own mapping.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from zfprobe.ops.geometry import SAME_LOWER, SAME_UPPER, AxisWindow, axis_windows, explicit_pads, same_window
from zfprobe.ops.onnx_semantics import (ONNX_DTYPES, numpy_dtype, onnx_code, pool_divisors, switch_index,
                                        unpadded)

OPTS = ort.SessionOptions()
OPTS.log_severity_level = 3
RNG = np.random.default_rng(0)


def _run(op: str, x: np.ndarray, consts: dict | None = None, n_out: int = 1, opset: int = 17, **attrs):
    consts = consts or {}
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, ["x", *consts], outs, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info(o, TensorProto.INT64 if i else TensorProto.FLOAT, None)
                               for i, o in enumerate(outs)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), OPTS, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})
    return got if n_out > 1 else got[0]


POOLS = [dict(kernel_shape=[k0, k1], strides=[s0, s1], pads=list(p), ceil_mode=c)
         for (k0, k1), (s0, s1), p, c in itertools.product(
             [(3, 2), (2, 2)], [(2, 1), (2, 3)], [(0, 0, 0, 0), (1, 0, 0, 1), (1, 1, 1, 0)], [0, 1])]


@pytest.mark.parametrize("include", [0, 1])
def test_pool_divisors_against_onnxruntime_average_pool(include):
    h, w = 7, 6
    hot = np.eye(h * w, dtype=np.float32).reshape(h * w, 1, h, w)  # image i: one-hot at pixel i
    for attrs in POOLS:
        y = _run("AveragePool", hot, count_include_pad=include, **attrs)[:, 0]  # [pixel, oh, ow]
        want = 1.0 / y.max(axis=0)
        got = pool_divisors((h, w), axis_windows(attrs, 2), bool(include))
        assert got.shape == want.shape and np.allclose(got, want, rtol=1e-6), (attrs, got, want)


@pytest.mark.parametrize("mode", [SAME_UPPER, SAME_LOWER])
def test_same_pads_against_onnxruntime_auto_pad(mode):
    checked = 0
    for n, k, s, d in itertools.product([7, 8, 9], [1, 2, 3, 4], [1, 2, 3], [1]):  # (onnxruntime: no dilated SAME)
        x = RNG.standard_normal((1, 1, n, n + 1)).astype(np.float32)
        wt = RNG.standard_normal((1, 1, k, k)).astype(np.float32)
        common = dict(kernel_shape=[k, k], strides=[s, s], dilations=[d, d])
        want = _run("Conv", x, {"w": wt}, auto_pad=mode, **common)
        pads = explicit_pads(mode, None, (n, n + 1), [k, k], [s, s], [d, d])
        got = _run("Conv", x, {"w": wt}, pads=pads, **common)
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-6), (mode, n, k, s, d, pads)
        assert same_window(n, k, s, d, mode == SAME_UPPER).out_length(n) == want.shape[2]
        checked += 1
    assert checked == 36


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_ceil_overhang_turns_ceil_mode_into_floor_mode(op):
    n_h, n_w = 8, 9
    x = RNG.standard_normal((2, 3, n_h, n_w)).astype(np.float32)
    for attrs in POOLS:
        if not attrs["ceil_mode"]:
            continue
        extra = {"count_include_pad": 0} if op == "AveragePool" else {}
        want = _run(op, x, **attrs, **extra)
        wins = axis_windows(attrs, 2)
        pads = list(attrs["pads"])
        pads[2] += wins[0].ceil_overhang(n_h)
        pads[3] += wins[1].ceil_overhang(n_w)
        got = _run(op, x, **dict(attrs, pads=pads, ceil_mode=0), **extra)
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-6), attrs


def test_switch_numbering_against_onnxruntime_indices():
    x = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
    n, c, h, w = x.shape
    for attrs in POOLS:
        _, want = _run("MaxPool", x, n_out=2, opset=12, **attrs)
        wh, ww = axis_windows(attrs, 2)
        pt, pl = wh.pad_begin, ww.pad_begin
        pb, pr = wh.pad_end + wh.ceil_overhang(h), ww.pad_end + ww.ceil_overhang(w)
        xp = np.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)], constant_values=-np.inf)
        wp = xp.shape[3]
        got = np.zeros(want.shape, np.int64)
        for oy, ox in np.ndindex(*want.shape[2:]):  # numpy's own argmax over each padded window
            ys, xs = oy * wh.stride, ox * ww.stride
            win = xp[:, :, ys:ys + wh.kernel, xs:xs + ww.kernel].reshape(n, c, -1)
            a = win.argmax(axis=2)
            flat_padded = (ys + a // ww.kernel) * wp + xs + a % ww.kernel
            row, col = unpadded(flat_padded, wp, pt, pl)
            got[:, :, oy, ox] = switch_index(np.arange(n * c).reshape(n, c), row, col, h, w)
        assert np.array_equal(got, want), attrs


def test_transposed_crop_against_onnxruntime_conv_transpose():
    x = RNG.standard_normal((1, 2, 4, 5)).astype(np.float32)
    wt = RNG.standard_normal((2, 3, 3, 2)).astype(np.float32)
    for s, d, pads, op in itertools.product([1, 2, 3], [1, 2], [(0, 0, 0, 0), (1, 0, 2, 1), (0, 2, 1, 0)],
                                            [(0, 0), (1, 0), (0, 1)]):
        if max(op) >= s:  # onnxruntime: output_padding below the stride
            continue
        common = dict(kernel_shape=[3, 2], strides=[s, s], dilations=[d, d])
        want = _run("ConvTranspose", x, {"w": wt}, pads=list(pads), output_padding=list(op), **common)
        full = _run("ConvTranspose", x, {"w": wt}, **common)
        wins = axis_windows(dict(common, pads=list(pads)), 2)
        got = full
        for axis, (win, o) in enumerate(zip(wins, op)):
            before, after = win.transposed_crop(o)
            widths = [(0, 0)] * 4
            widths[2 + axis] = (max(0, before), max(0, after))
            got = np.pad(got, widths)
            lo, hi = max(0, -before), got.shape[2 + axis] - max(0, -after)
            got = np.take(got, np.arange(lo, hi), axis=2 + axis)
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-5), (s, d, pads, op)


def test_dtype_table_agrees_with_onnx():
    for code, name in ONNX_DTYPES.items():
        if name == "bfloat16":
            assert onnx.helper.tensor_dtype_to_string(code) == "TensorProto.BFLOAT16"
        else:
            assert numpy_dtype(code) == onnx.helper.tensor_dtype_to_np_dtype(code)
            assert onnx_code(numpy_dtype(code)) == code
    assert numpy_dtype(12, np.float32) == np.float32  # uint32: not in the table, the fallback


def test_same_window_matches_tensorflow_same_output():
    # TensorFlow's 'same' is ONNX's SAME_UPPER: ceil(n / stride) outputs, the odd pad at the end
    w = same_window(8, 3, 2)
    assert (w.pad_begin, w.pad_end, w.out_length(8)) == (0, 1, 4)
    assert AxisWindow(3, 2, 1, 0, 1).out_length(8) == 4


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_backend_pools_follow_onnx_on_every_pad_and_ceil_case(backend):
    """The torch and TensorFlow pools built on these helpers, over the same grid (asymmetric
    pads, ceil mode, both divisor modes, switches), against onnxruntime."""
    from zfprobe.engine.graph import Graph, Node

    if backend == "torch":
        pytest.importorskip("torch")
        from zfprobe.adapters.backends.torch_backend import TorchBackend

        runner = TorchBackend(device="cpu")
    else:
        pytest.importorskip("tensorflow")
        from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

        runner = TensorFlowBackend("cpu")
    x = RNG.standard_normal((2, 3, 8, 7)).astype(np.float32)
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    for attrs in POOLS:
        for op, extra in (("MaxPool", {"dilations": [1, 1]}), ("AveragePool", {"count_include_pad": 0}),
                          ("AveragePool", {"count_include_pad": 1})):
            n_out = 2 if op == "MaxPool" else 1
            outs = ["y0", "y1"][:n_out]
            node = Node("n", op, ["x"], outs, dict(attrs, **extra))
            graph = Graph([node], ["x"], outs, {}, {"x": x.shape, "y0": (), "y1": ()},
                          {"x": f32, "y0": f32, "y1": i64})
            got = runner.run(graph, {"x": x}, outs)
            want = _run(op, x, n_out=n_out, opset=12, **{k: v for k, v in dict(attrs, **extra).items()
                                                        if k != "dilations"})
            want = want if n_out > 1 else [want]
            assert np.allclose(np.asarray(got[0]), want[0], atol=1e-5), (backend, op, attrs, extra)
            if n_out > 1:
                assert np.array_equal(np.asarray(got[1]).astype(np.int64), want[1]), (backend, attrs)
