"""Every linear op's reversal is its exact adjoint: the dot-product test against onnxruntime.

For a single-op ONNX model f (affine), onnxruntime computes the forward A v = f(v) - f(0) and
zfprobe's reversed network computes A^T y. The adjoint identity <A v, y> = <v, A^T y> must hold
for random v, y. The oracle here is onnxruntime's forward op, independent of zfprobe's reversal
code. Each case also checks that A^T y is not trivially zero. Tolerance: relative 1e-5 in float32.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import zfprobe

RNG = np.random.RandomState(0)


def _model(nodes, in_shape, inits, opset=17, out="y"):
    graph = helper.make_graph(nodes, "single_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 13 else 8
    return model


def _w(*shape):
    return RNG.randn(*shape).astype(np.float32)


def dot_test(tmp_path, model, in_shape, name):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f = lambda v: sess.run(None, {"x": v})[0]  # noqa: E731
    v = RNG.randn(*in_shape).astype(np.float32)
    zero = np.zeros(in_shape, np.float32)
    av = f(v) - f(zero)
    y = RNG.randn(*av.shape).astype(np.float32)
    probe = zfprobe.load(path)
    at_y = probe.project(zero, "y", y, rule="gradient")[0]
    lhs, rhs = float((av.astype(np.float64) * y).sum()), float((v.astype(np.float64) * at_y).sum())
    assert np.abs(at_y).max() > 0
    scale = np.abs(av).sum() * np.abs(y).max() + 1e-12
    assert abs(lhs - rhs) <= 1e-5 * scale, (name, lhs, rhs)


CONV_CASES = {
    "plain": dict(w=(6, 3, 3, 3), attrs=dict(pads=[1, 1, 1, 1])),
    "stride2_asym": dict(w=(4, 3, 5, 5), attrs=dict(strides=[2, 2], pads=[1, 2, 2, 0])),
    "stride3_unused_tail": dict(w=(4, 3, 3, 3), attrs=dict(strides=[3, 3])),
    "dilated": dict(w=(4, 3, 3, 3), attrs=dict(dilations=[2, 3], pads=[2, 3, 2, 3])),
    "grouped": dict(w=(6, 1, 3, 3), attrs=dict(group=3, pads=[1, 1, 1, 1])),
    "depthwise_stride": dict(w=(3, 1, 3, 3), attrs=dict(group=3, strides=[2, 2], pads=[1, 1, 1, 1])),
    "same_upper": dict(w=(4, 3, 4, 4), attrs=dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": dict(w=(4, 3, 3, 3), attrs=dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "valid_rect": dict(w=(4, 3, 2, 5), attrs=dict(auto_pad="VALID", strides=[1, 2])),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_adjoint(tmp_path, case):
    spec = CONV_CASES[case]
    shape = (1, 3, 13, 14)
    model = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **spec["attrs"])], shape,
                   {"w": _w(*spec["w"]), "b": _w(spec["w"][0])})
    dot_test(tmp_path, model, shape, case)


POOL_CASES = {
    "avg_2x2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "avg_3x3_s2_pad_excl": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avg_3x3_s2_pad_incl": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    "avg_ceil": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avg_ceil_pad": dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1),
    "avg_same": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_average_pool_adjoint(tmp_path, case):
    shape = (1, 2, 11, 12)
    dot_test(tmp_path, _model([helper.make_node("AveragePool", ["x"], ["y"], **POOL_CASES[case])], shape, {}), shape, case)


def test_global_average_pool_and_reduce_mean(tmp_path):
    shape = (1, 3, 5, 7)
    dot_test(tmp_path, _model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], shape, {}), shape, "gap")
    dot_test(tmp_path, _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], shape, {}), shape, "rmean")


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_adjoint(tmp_path, trans_b):
    w = _w(10, 6) if not trans_b else _w(6, 10)
    model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.7, beta=1.3, transB=trans_b)], (1, 10),
                   {"w": w, "b": _w(6)})
    dot_test(tmp_path, model, (1, 10), f"gemm{trans_b}")


def test_matmul_adjoint(tmp_path):
    dot_test(tmp_path, _model([helper.make_node("MatMul", ["x", "w"], ["y"])], (1, 4, 10), {"w": _w(10, 3)}), (1, 4, 10), "mm")


def test_batchnorm_adjoint(tmp_path):
    c = 4
    inits = {"s": _w(c), "bb": _w(c), "m": _w(c), "v": np.abs(_w(c)) + 0.5}
    model = _model([helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"], epsilon=1e-3)], (1, c, 5, 5), inits)
    dot_test(tmp_path, model, (1, c, 5, 5), "bn")


def test_shape_ops_adjoint(tmp_path):
    shape = (1, 2, 3, 4)
    inits = {"shape": np.array([1, 4, 6], np.int64), "perm_in": np.array([0], np.int64)}
    cases = {
        "flatten": [helper.make_node("Flatten", ["x"], ["y"], axis=1)],
        "reshape": [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "transpose": [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])],
        "squeeze_unsqueeze": [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]), helper.make_node("Squeeze", ["u", "ax"], ["t"]),
                              helper.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 1, 3])],
    }
    for name, nodes in cases.items():
        dot_test(tmp_path, _model(nodes, shape, dict(inits, ax=np.array([2], np.int64))), shape, name)


def test_concat_split_slice_pad_adjoint(tmp_path):
    shape = (1, 4, 6, 6)
    inits = {"w": _w(3, 4, 3, 3), "starts": np.array([1, 0], np.int64), "ends": np.array([5, 4], np.int64),
             "axes": np.array([2, 3], np.int64), "pads": np.array([0, 0, 1, 2, 0, 0, 0, 1], np.int64),
             "split": np.array([1, 10], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["x", "c", "x"], ["cat"], axis=1),           # x used twice: fan-out
        helper.make_node("Slice", ["cat", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("Pad", ["sl", "pads"], ["pd"], mode="constant"),
        helper.make_node("Split", ["pd", "split"], ["s1", "s2"], axis=1),
        helper.make_node("Add", ["s2", "s1"], ["y"]),                           # broadcast over channels
    ]
    dot_test(tmp_path, _model(nodes, shape, inits), shape, "concat_slice_pad_split")


def test_broadcast_arithmetic_adjoint(tmp_path):
    shape = (1, 3, 4, 5)
    inits = {"k": _w(1, 3, 1, 1), "d": np.abs(_w(1, 1, 4, 5)) + 1, "w": _w(1, 3, 1, 1)}
    nodes = [helper.make_node("Mul", ["x", "k"], ["a"]), helper.make_node("Div", ["a", "d"], ["b"]),
             helper.make_node("ReduceSum", ["x", "ax"], ["r"], keepdims=1),
             helper.make_node("Sub", ["b", "r"], ["s"]), helper.make_node("Sum", ["s", "x", "w"], ["y"])]
    dot_test(tmp_path, _model(nodes, shape, dict(inits, ax=np.array([1], np.int64))), shape, "arith")


def test_opset9_forms_are_normalized(tmp_path):
    """Opset 9 passes slice bounds, pads and unsqueeze axes as attributes; the importer folds both forms."""
    shape = (1, 2, 6, 6)
    nodes = [helper.make_node("Slice", ["x"], ["s"], starts=[1], ends=[5], axes=[3]),
             helper.make_node("Pad", ["s"], ["p"], pads=[0, 0, 2, 0, 0, 0, 1, 1], mode="constant", value=0.0),
             helper.make_node("Unsqueeze", ["p"], ["u"], axes=[2]),
             helper.make_node("Flatten", ["u"], ["y"], axis=1)]
    dot_test(tmp_path, _model(nodes, shape, {}, opset=9), shape, "opset9")


def test_max_pool_reversal_is_the_local_adjoint(tmp_path):
    """Max pooling is linear around a tie-free input: S v = (f(x + e v) - f(x)) / e; zfprobe's
    unpooling (gradient rule) must be S^T, including overlapping windows, padding and ceil mode."""
    shape = (1, 2, 11, 11)
    for attrs in (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                  dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
                  dict(kernel_shape=[2, 2], strides=[2, 2])):
        path = tmp_path / "mp.onnx"
        onnx.save(_model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], shape, {}), str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = RNG.permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # distinct values: no ties
        v = np.clip(RNG.randn(*shape), -3, 3).astype(np.float32)
        eps = 0.1  # |eps * v| < 0.5 < the gap between values: no switch changes
        sv = (sess.run(None, {"x": x + eps * v})[0] - sess.run(None, {"x": x})[0]) / eps
        y = RNG.randn(*sv.shape).astype(np.float32)
        st_y = zfprobe.load(path).project(x, "y", y, rule="gradient")[0]
        np.testing.assert_allclose((sv * y).sum(), (v * st_y).sum(), rtol=1e-3)
        assert np.abs(st_y).max() > 0
