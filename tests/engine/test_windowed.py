"""The receptive-field-windowed reversal equals the full reversal (and so the oracle).

Unit seeds at random positions, corners included, several images, every rule; the windowed
program must actually be used (not silently fall back) on these conv networks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zfprobe
from tests.nets import densenet_small, export_onnx, mobilenet_small, resnet_bn, zfnet_small

NETS = {"zfnet_small": (zfnet_small, 64), "resnet_bn": (resnet_bn, 32), "densenet_small": (densenet_small, 32),
        "mobilenet_small": (mobilenet_small, 32)}


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    out = {"mnist": zfprobe.load("zfprobe/data/mnist_cnn.onnx")}
    d = tmp_path_factory.mktemp("windowed")
    for name, (fn, size) in NETS.items():
        path = d / f"{name}.onnx"
        export_onnx(fn(), torch.zeros(1, 3, size, size), path)
        out[name] = zfprobe.load(path)
    return out


def _unit_seeds(acts, rng, k=8):
    seeds = np.zeros((k,) + acts.shape[1:], np.float32)
    h, w = acts.shape[2:]
    corners = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0)]
    for i in range(k):
        y, x = corners[i] if i < 4 else (rng.randint(h), rng.randint(w))
        seeds[i, rng.randint(acts.shape[1]), y, x] = rng.uniform(0.5, 2.0)
    return seeds


@pytest.mark.parametrize("net", ["mnist", *NETS])
@pytest.mark.parametrize("rule", ["deconvnet", "gradient", "guided"])
def test_windowed_equals_full(probes, net, rule):
    probe = probes[net]
    rng = np.random.RandomState(3)
    layers = [l for l in probe.layers() if l.invertible and len(l.shape) == 4 and min(l.shape[2:]) > 1]
    x = rng.rand(2, *probe.input_shape[1:]).astype(np.float32)
    for info in layers[:: max(1, len(layers) // 3)]:
        acts = probe.activations(x, info.name)
        seeds = _unit_seeds(acts, rng)
        seed_image = np.array([0, 1] * 4, np.int64)
        assert probe.windowed_program(info.name, rule, "identity", single_image=False) is not None, info.name
        for images, which in ((x, seed_image), (x[:1], np.zeros(8, np.int64))):
            full = probe.project(images, info.name, seeds, which, rule=rule, windowed=False)
            win = probe.project(images, info.name, seeds, which, rule=rule)
            assert np.abs(full).max() > 0
            np.testing.assert_allclose(win, full, rtol=0, atol=1e-5 * np.abs(full).max(), err_msg=f"{net} {info.name}")


def test_feature_map_seeds_use_the_full_program(probes):
    probe = probes["mnist"]
    x = np.random.RandomState(0).rand(1, 1, 28, 28).astype(np.float32)
    acts = probe.activations(x, "relu2")
    seeds = np.zeros_like(acts[:1].repeat(2, 0))
    seeds[0, 3] = acts[0, 3]
    seeds[1, 5] = acts[0, 5]
    from zfprobe.probe import unit_positions

    assert unit_positions(seeds) is None
    np.testing.assert_allclose(probe.project(x, "relu2", seeds), probe.project(x, "relu2", seeds, windowed=False))


def test_unit_seeds_on_a_path_without_windows_use_the_full_program(tmp_path):
    """A spatial Transpose is invertible but not windowable: unit seeds must fall back, not fail."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.RandomState(0).randn(4, 1, 3, 3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("Transpose", ["c"], ["t"], perm=[0, 1, 3, 2]),
                               helper.make_node("Relu", ["t"], ["y"], name="relu")], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "t.onnx"))
    probe = zfprobe.load(tmp_path / "t.onnx")
    x = np.random.RandomState(1).rand(1, 1, 9, 7).astype(np.float32)
    seeds = np.zeros((2, 4, 7, 9), np.float32)
    seeds[0, 1, 2, 3] = 1.0
    seeds[1, 3, 6, 8] = 2.0
    assert probe.windowed_program("relu", "deconvnet", "identity", True) is None
    got = probe.project(x, "relu", seeds)
    np.testing.assert_allclose(got, probe.project(x, "relu", seeds, windowed=False))
    assert np.abs(got).max() > 0
