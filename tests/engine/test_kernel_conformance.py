"""Kernel conformance: every op a non-ONNX backend implements (torch, TensorFlow) computes what
onnxruntime computes for the same single-op model.

Parametrized over each backend's own op table (``OPS``), like onnx2torch's
``tests/node_converters/*_test.py`` (one small model per converter, compared with onnxruntime):
an op added to a backend without a case here fails ``test_every_backend_op_has_a_case``.

The reference: the canonical node is written as ONNX by zfprobe's exporter (which only moves
static attributes to inputs) and run by onnxruntime; zfprobe's ``Unpool`` against onnxruntime's
MaxPool indices scattered by numpy. Ops that are not in ONNX opset 17 (``Gelu``,
``Mish``, ``GroupNormalization``, zfprobe's fused ``Swish``) are built by hand as the real ONNX op
at the opset that defines it (20, 18, 21) and run by onnxruntime; ``Swish`` (opset 24) against
numpy. Tolerance: |backend - reference| <= 1e-5 * max(1, |reference|) elementwise (float32).
"""
from __future__ import annotations

import numpy as np
import pytest

from zfprobe.engine.graph import Graph, Node

RNG = np.random.default_rng(0)
F32 = np.float32


def _x(*shape, positive=False, seed=0):
    v = np.random.default_rng(seed).standard_normal(shape).astype(F32)
    return np.abs(v) + F32(0.5) if positive else v


X = _x(2, 3, 5, 5)
POS = _x(2, 3, 5, 5, positive=True)
CONV = dict(kernel_shape=[3, 3], strides=[2, 1], dilations=[1, 2], pads=[1, 0, 0, 2], group=1)


def case(inputs, attrs=None, consts=None, n_out=1, out_dtype=F32):
    """inputs: arrays fed at run time; consts: (position, array) weights."""
    return dict(inputs=list(inputs), attrs=dict(attrs or {}), consts=list(consts or []), n_out=n_out,
                out_dtype=np.dtype(out_dtype))


def _unary(x=X, **attrs):
    return case([x], attrs)


POOL3 = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], ceil_mode=0)


def ort_maxpool_indices(x: np.ndarray, **attrs) -> np.ndarray:
    """onnxruntime's MaxPool ``Indices`` of ``x`` (numbered over the whole N x C x H x W batch)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["i"], {"x": x})[0]


def numpy_unpool(signal: np.ndarray, switches: np.ndarray, shape) -> np.ndarray:
    """The oracle of zfprobe's Unpool: np.add.at of each row's signal at its switches mod C*H*W."""
    per_image = int(np.prod(shape))
    k = signal.shape[0]
    idx = np.broadcast_to(switches.reshape(switches.shape[0], -1) % per_image, (k, signal[0].size))
    out = np.zeros((k, per_image), np.float64)
    for row in range(k):
        np.add.at(out[row], idx[row], signal[row].reshape(-1).astype(np.float64))
    return out.reshape(k, *shape).astype(F32)


CASES = {
    # nonlinearities
    "Relu": _unary(), "Sigmoid": _unary(), "Tanh": _unary(), "Neg": _unary(), "Abs": _unary(),
    "Exp": _unary(), "Log": _unary(POS), "Sqrt": _unary(POS), "Reciprocal": _unary(POS), "Erf": _unary(),
    "Floor": _unary(X * 3), "Ceil": _unary(X * 3), "Round": _unary(X * 3), "Sign": _unary(),
    "Sin": _unary(), "Cos": _unary(), "Softsign": _unary(), "Softplus": _unary(), "Mish": _unary(),
    "Elu": _unary(alpha=0.7), "Celu": _unary(alpha=1.3), "Selu": _unary(), "ThresholdedRelu": _unary(alpha=0.3),
    "Gelu": _unary(approximate="none"), "Swish": _unary(alpha=1.0), "HardSigmoid": _unary(alpha=0.25, beta=0.4),
    "HardSwish": _unary(X * 4), "LeakyRelu": _unary(alpha=0.1), "Shrink": _unary(bias=0.2, lambd=0.4),
    "Clip": _unary(min=-0.5, max=0.8), "Identity": _unary(), "Dropout": _unary(),
    "Softmax": _unary(axis=1), "LogSoftmax": _unary(axis=3),
    "PRelu": case([X], consts=[(1, _x(3, 1, 1, seed=1))]),
    "Not": case([X > 0], out_dtype=np.bool_),
    # arithmetic and comparisons
    "Add": case([X, _x(3, 1, 5, seed=2)]), "Sub": case([X, _x(3, 1, 5, seed=2)]),
    "Mul": case([X, _x(3, 1, 5, seed=2)]), "Div": case([X, POS[0]]), "Pow": case([POS, _x(1, 3, 1, 1, seed=3)]),
    "Mod": case([np.arange(-6, 6, dtype=np.int64).reshape(3, 4), np.array([4], np.int64)], out_dtype=np.int64),
    "Sum": case([X, X[:1], X[0, 0]]), "Max": case([X, X[:1] * 0.5]), "Min": case([X, X[:1] * 0.5]),
    "Mean": case([X, X[:1] * 0.5]),
    "Greater": case([X, X[:1]], out_dtype=np.bool_), "Less": case([X, X[:1]], out_dtype=np.bool_),
    "GreaterOrEqual": case([X, X[:1]], out_dtype=np.bool_), "LessOrEqual": case([X, X[:1]], out_dtype=np.bool_),
    "Equal": case([np.round(X), np.round(X[:1])], out_dtype=np.bool_),
    "And": case([X > 0, X[:1] > 0.3], out_dtype=np.bool_), "Or": case([X > 0, X[:1] > 0.3], out_dtype=np.bool_),
    "Xor": case([X > 0, X[:1] > 0.3], out_dtype=np.bool_),
    "Where": case([X > 0, X, X[:1] * 2]),
    "Cast": case([X * 3], {"to": 7}, out_dtype=np.int64),
    # windows
    "Conv": case([X], CONV, consts=[(1, _x(4, 3, 3, 3, seed=4)), (2, _x(4, seed=5))]),
    "ConvTranspose": case([X], dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[1, 1], pads=[1, 0, 0, 1],
                                    output_padding=[1, 0], group=3), consts=[(1, _x(3, 2, 3, 3, seed=6))]),
    "MaxPool": case([X], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], ceil_mode=0),
                    n_out=2),
    "AveragePool": case([X], dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], ceil_mode=0,
                                  count_include_pad=0)),
    "GlobalAveragePool": _unary(), "GlobalMaxPool": _unary(),
    "LRN": _unary(size=3, alpha=0.3, beta=0.75, bias=1.5),
    # normalization
    "BatchNormalization": case([X], {"epsilon": 1e-3}, consts=[(1, _x(3, seed=7)), (2, _x(3, seed=8)),
                                                               (3, _x(3, seed=9)), (4, _x(3, positive=True, seed=10))]),
    "InstanceNormalization": case([X], {"epsilon": 1e-4}, consts=[(1, _x(3, seed=11)), (2, _x(3, seed=12))]),
    "LayerNormalization": case([X], {"axis": 2, "epsilon": 1e-4}, consts=[(1, _x(5, 5, seed=13)), (2, _x(5, 5, seed=14))]),
    "GroupNormalization": case([_x(2, 4, 3, 3)], {"num_groups": 2, "epsilon": 1e-4},
                               consts=[(1, _x(4, seed=15)), (2, _x(4, seed=16))]),
    # dense
    "Gemm": case([_x(2, 6)], dict(alpha=0.5, beta=2.0, transA=0, transB=1), consts=[(1, _x(4, 6, seed=17)), (2, _x(4, seed=18))]),
    "MatMul": case([_x(2, 3, 6)], consts=[(1, _x(6, 4, seed=19))]),
    # reductions
    "ReduceSum": _unary(axes=[1, 3], keepdims=1), "ReduceMean": _unary(axes=[2], keepdims=0),
    "ReduceMax": _unary(axes=[1, 2], keepdims=1), "ReduceMin": _unary(axes=[3], keepdims=1),
    "ArgMax": case([X], dict(axis=2, keepdims=1, select_last_index=0), out_dtype=np.int64),
    "ArgMin": case([X], dict(axis=1, keepdims=0, select_last_index=0), out_dtype=np.int64),
    # layout
    "Reshape": _unary(shape=[-1, 15, 5]), "Flatten": _unary(axis=2), "Squeeze": case([X[:, :1]], {"axes": [1]}),
    "Unsqueeze": _unary(axes=[2]), "Transpose": _unary(perm=[0, 2, 3, 1]),
    "Concat": case([X, X[:, :2]], {"axis": 1}),
    "Split": case([X], {"axis": 3, "split": [2, 3]}, n_out=2),
    "Slice": _unary(starts=[1, 0], ends=[3, 4], axes=[1, 3], steps=[1, 1]),
    "Pad": _unary(pads=[0, 0, 1, 2, 0, 1, 0, 0], mode="constant", value=0.5),
    "Expand": case([X[:, :, :1]], {"shape": [1, 3, 4, 5]}),
    "Shape": case([X], {"start": 1}, out_dtype=np.int64),
    "ConstantOfShape": case([np.array([2, 3], np.int64)], {"value": 0.25}),
    "Gather": case([X], {"axis": 2}, consts=[(1, np.array([[4, 0], [1, 1]], np.int64))]),
    "Tile": _unary(repeats=[1, 2, 1, 3]),
    "SpaceToDepth": case([_x(2, 3, 4, 6, seed=21)], {"blocksize": 2}),
    "DepthToSpace": case([_x(2, 8, 3, 2, seed=22)], {"blocksize": 2, "mode": "CRD"}),
    "Resize": _unary(mode="linear", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
                     cubic_coeff_a=-0.75, exclude_outside=0, scales=[1.0, 1.0, 2.0, 1.5], out_size=[1, 3, 10, 7]),
    # zfprobe's own op: K = 2 seeds on the switches (overlapping windows) of a batch of 2 images
    "Unpool": case([_x(2, 3, 3, 3, seed=23), ort_maxpool_indices(X, **POOL3)], {"shape": [3, 5, 5]}),
    "ScatterElements": case([np.zeros((2, 6), F32), np.array([[0, 5, 5], [2, 2, 1]], np.int64), _x(2, 3, seed=20)],
                            {"axis": 1, "reduction": "add"}),
}
# Ops a backend table holds that are not computations on tensors.
EXEMPT = {"Constant": "a value holder; its attribute is the answer"}
# Ops checked against numpy: Swish (ONNX opset 24) and zfprobe's Unpool (no ONNX op; onnxruntime
# runs its default decomposition, checked against the same numpy oracle in tests/engine/test_unpool.py).
NUMPY_ORACLE = {"Swish", "Unpool"}
# ONNX ops outside opset 17: built as the real op at the opset that defines it.
NEWER = {"Gelu": 20, "Mish": 18, "GroupNormalization": 21}


def _numpy_reference(op, node, inputs):
    x = inputs[0].astype(np.float64)
    if op == "Unpool":
        return [numpy_unpool(inputs[0], inputs[1], node.attrs["shape"])]
    if op == "Swish":
        a = float(node.attrs.get("alpha", 1.0))
        return [(x / (1.0 + np.exp(-a * x))).astype(F32)]
    raise KeyError(op)


def _program(op: str, c: dict) -> tuple[Graph, dict, list[str]]:
    inputs, feeds, consts, shapes, dtypes = [], {}, {}, {}, {}
    n_in = len(c["inputs"]) + len(c["consts"])
    fed = iter(c["inputs"])
    const_at = dict(c["consts"])
    for i in range(n_in):
        if i in const_at:
            name = f"w{i}"
            consts[name] = np.asarray(const_at[i])
        else:
            name = f"x{i}"
            value = np.asarray(next(fed))
            feeds[name] = value
            shapes[name] = value.shape
            dtypes[name] = value.dtype
        inputs.append(name)
    outputs = [f"y{i}" for i in range(c["n_out"])]
    for o in outputs:
        shapes[o] = ()
        dtypes[o] = np.dtype(np.int64) if (op == "MaxPool" and o == "y1") else c["out_dtype"]
    node = Node("n", op, inputs, outputs, dict(c["attrs"]))
    graph = Graph([node], [i for i in inputs if i in feeds], outputs, consts, shapes, dtypes)
    return graph, feeds, outputs


def _ort_reference(program: Graph, feeds: dict, outputs: list[str]):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from zfprobe.adapters.backends.onnx_export import to_onnx

    node = program.nodes[0]
    if node.op_type == "Resize":  # the real ONNX Resize (zfprobe's exporter writes it as matmuls)
        a = node.attrs
        scales = numpy_helper.from_array(np.asarray(a["scales"], F32), "scales")
        ins = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape) for k, v in feeds.items()]
        outs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs]
        n = helper.make_node("Resize", [node.inputs[0], "", "scales"], node.outputs, mode=a["mode"],
                             coordinate_transformation_mode=a["coordinate_transformation_mode"],
                             nearest_mode=a["nearest_mode"])
        model = helper.make_model(helper.make_graph([n], "g", ins, outs, [scales]),
                                  opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
    elif node.op_type in NEWER:
        inits = [numpy_helper.from_array(v, k) for k, v in program.constants.items()]
        ins = [helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
               for k, v in feeds.items()]
        outs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs]
        n = helper.make_node(node.op_type, node.inputs, node.outputs, **node.attrs)
        model = helper.make_model(helper.make_graph([n], "g", ins, outs, inits),
                                  opset_imports=[helper.make_opsetid("", NEWER[node.op_type])])
        model.ir_version = 10
    else:
        model = to_onnx(program)
        for o in model.graph.output:
            o.type.tensor_type.ClearField("shape")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def _backend(name: str):
    if name == "torch":
        pytest.importorskip("torch")
        from zfprobe.adapters.backends import torch_backend

        return torch_backend.OPS, torch_backend.TorchBackend(device="cpu")
    pytest.importorskip("tensorflow")
    from zfprobe.adapters.backends import tf_backend

    return tf_backend.OPS, _tf_backend_instance()


_TF = {}


def _tf_backend_instance():
    if "b" not in _TF:
        from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

        _TF["b"] = TensorFlowBackend("cpu")
    return _TF["b"]


def _ops_of(backend: str) -> list[str]:
    try:
        if backend == "torch":
            from zfprobe.adapters.backends.torch_backend import OPS
        else:
            import tensorflow  # noqa: F401

            from zfprobe.adapters.backends.tf_backend import OPS
    except ImportError:
        return []
    return sorted(OPS)


PARAMS = [(b, op) for b in ("torch", "tensorflow") for op in _ops_of(b) if op not in EXEMPT]


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_every_backend_op_has_a_case(backend):
    ops, _ = _backend(backend)
    missing = sorted(set(ops) - set(CASES) - set(EXEMPT))
    assert not missing, f"{backend} implements ops without a conformance case: {missing}"


@pytest.mark.parametrize("backend,op", PARAMS)
def test_kernel_matches_onnxruntime(backend, op):
    _, runner = _backend(backend)
    program, feeds, outputs = _program(op, CASES[op])
    if op in NUMPY_ORACLE:
        want = _numpy_reference(op, program.nodes[0], list(feeds.values()))
    else:
        want = _ort_reference(program, feeds, outputs)
    got = runner.run(program, feeds, outputs)
    for o, g, w in zip(outputs, got, want):
        g, w = np.asarray(g), np.asarray(w)
        if op == "MaxPool" and o == "y1":  # switches: the same positions, numbered over N x C x H x W
            assert np.array_equal(g.astype(np.int64), w.astype(np.int64)), f"{backend} {op} switches differ"
            continue
        assert g.shape == w.shape, f"{backend} {op} {o}: shape {g.shape} != {w.shape}"
        if w.dtype.kind in "biu":
            assert np.array_equal(g.astype(w.dtype), w), f"{backend} {op} {o}: values differ"
        else:
            tol = 1e-5 * np.maximum(1.0, np.abs(w))
            err = np.abs(g.astype(np.float64) - w)
            assert (err <= tol).all(), f"{backend} {op} {o}: max error {err.max():.3e}"


def _decomposed_cases() -> list:
    import zfprobe.engine.inverses  # noqa: F401  (registers every op family's decompositions)
    from zfprobe.ops.registry import DECOMPOSITIONS

    cases = [(op, CASES[op]) for op in sorted(DECOMPOSITIONS)]
    return cases + [("Gelu", _unary(approximate="tanh")), ("Swish", _unary(alpha=1.7))]


@pytest.mark.parametrize("op,c", _decomposed_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_default_decomposition_matches_the_op(op, c):
    """What onnxruntime and export-deconv run for an op outside opset 17 (its default
    decomposition, written by the exporter) against the real ONNX op at its own opset, or numpy."""
    import onnxruntime as ort

    from zfprobe.adapters.backends.onnx_export import to_onnx

    program, feeds, outputs = _program(op, c)
    if op in NUMPY_ORACLE:
        want = _numpy_reference(op, program.nodes[0], list(feeds.values()))
    else:
        want = _ort_reference(program, feeds, outputs)
    model = to_onnx(program)
    assert op not in {n.op_type for n in model.graph.node}
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(outputs, feeds)
    for g, w in zip(got, want):
        err = np.abs(g.astype(np.float64) - w)
        assert (err <= 1e-5 * np.maximum(1.0, np.abs(w))).all(), f"{op}: max error {err.max():.3e}"
