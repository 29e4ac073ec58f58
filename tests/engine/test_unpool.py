"""The explicit Unpool op (zfprobe/ops/maxpool.py) and MaxPool's reversal through it.

- Its default decomposition (what onnxruntime and ``export-deconv`` run) against numpy's
  scatter of onnxruntime's MaxPool indices, with switches per seed and shared by every seed.
- Whole reversals through max pools (overlapping windows, asymmetric pads, ceil mode; the
  padding TensorFlow's fast kernel handles and the one it does not) on the onnxruntime, torch
  and TensorFlow backends, against the torch-autograd oracle (tests/oracle.py: max pooling's
  gradient routes to the arg-max, overlapping windows add), for N = 2 images (per-seed switches)
  and N = 1 (one set of switches for every seed), under all three rules.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import oracle
from test_kernel_conformance import numpy_unpool, ort_maxpool_indices
from zfprobe.engine.graph import Graph, Node

RNG = np.random.default_rng(3)


def _unpool_program(k_switch: int):
    node = Node("u", "Unpool", ["g", "s"], ["y"], {"shape": [3, 7, 6]})
    shapes = {"g": (1, 3, 4, 3), "s": (1, 3, 4, 3), "y": (1, 3, 7, 6)}
    dtypes = {"g": np.dtype(np.float32), "s": np.dtype(np.int64), "y": np.dtype(np.float32)}
    return Graph([node], ["g", "s"], ["y"], {}, shapes, dtypes)


@pytest.mark.parametrize("k_switch", [4, 1])
def test_default_decomposition_against_numpy(k_switch):
    import onnxruntime as ort

    from zfprobe.adapters.backends.onnx_export import to_onnx

    x = RNG.standard_normal((k_switch, 3, 7, 6)).astype(np.float32)
    switches = ort_maxpool_indices(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 0], ceil_mode=1)
    g = RNG.standard_normal((4, *switches.shape[1:])).astype(np.float32)
    model = to_onnx(_unpool_program(k_switch))
    assert "Unpool" not in {n.op_type for n in model.graph.node}
    assert "ScatterElements" in {n.op_type for n in model.graph.node}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"g": g, "s": switches})[0]
    want = numpy_unpool(g, switches, (3, 7, 6))
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


POOLS = {
    "tf_same": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),        # TF 'SAME' on 9 x 9
    "valid_overlap": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0]),   # TF 'VALID'
    "asym_ceil": dict(kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1),  # no TF padding
}


def _net(tmp_path, pool: dict) -> str:
    w1 = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((5, 4, 2, 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], **pool),
             helper.make_node("Conv", ["p1", "w2"], ["out"], kernel_shape=[2, 2])]
    graph = helper.make_graph(
        nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9, 9])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * 4)],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = str(tmp_path / "pool.onnx")
    onnx.save(model, path)
    return path


def _backend(name: str):
    if name == "onnxruntime":
        from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend("cpu")
    if name == "torch":
        pytest.importorskip("torch")
        from zfprobe.adapters.backends.torch_backend import TorchBackend

        return TorchBackend(device="cpu")
    pytest.importorskip("tensorflow")
    from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

    return TensorFlowBackend("cpu")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "tensorflow"])
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_reversal_through_max_pool_against_autograd(tmp_path, backend, pool):
    import zfprobe
    from zfprobe.engine.deconv import build_deconvnet
    from zfprobe.probe import Probe

    path = _net(tmp_path, POOLS[pool])
    graph = zfprobe.load(path).graph
    program = build_deconvnet(graph, "out")
    assert [n.op_type for n in program.nodes].count("Unpool") == 1
    assert "ScatterElements" not in {n.op_type for n in program.nodes}
    probe = Probe(graph, _backend(backend))
    orc = oracle.onnx_oracle(path, "out")
    for n_images, seed_image in ((2, np.array([1, 0, 1])), (1, np.zeros(3, np.int64))):
        images = RNG.standard_normal((n_images, 2, 9, 9)).astype(np.float32)
        seeds = RNG.standard_normal((3, *graph.shape("out")[1:])).astype(np.float32)  # dense: full program
        for rule in oracle.RULES:
            want = orc.project(images, seeds, seed_image, rule=rule)
            got = probe.project(images, "out", seeds, seed_image, rule=rule)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err <= 1e-5, (backend, pool, n_images, rule, err)


@pytest.mark.parametrize("pool,fast", [("tf_same", True), ("valid_overlap", True), ("asym_ceil", False)])
def test_tensorflow_unpools_with_its_own_argmax_where_its_padding_allows(tmp_path, monkeypatch, pool, fast):
    """TensorFlow's kernel for Unpool: MaxPoolGradWithArgmax on the pool's own argmax when the
    pool's pads are TensorFlow's ('SAME' / 'VALID'), else the segment sum (both exact above)."""
    tf = pytest.importorskip("tensorflow")
    import zfprobe
    from zfprobe.probe import Probe

    calls = []
    original = tf.raw_ops.MaxPoolGradWithArgmax
    monkeypatch.setattr(tf.raw_ops, "MaxPoolGradWithArgmax", lambda **kw: calls.append(1) or original(**kw))
    graph = zfprobe.load(_net(tmp_path, POOLS[pool])).graph
    seeds = RNG.standard_normal((2, *graph.shape("out")[1:])).astype(np.float32)
    Probe(graph, _backend("tensorflow")).project(RNG.standard_normal((1, 2, 9, 9)).astype(np.float32), "out", seeds)
    assert bool(calls) == fast
