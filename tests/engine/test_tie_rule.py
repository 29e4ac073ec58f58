"""Max-pool switches on exact ties: one rule, "the first maximum in raster order of the window"
(docs/methods.md), in every backend, in the full and the windowed reversal, and in the oracle.

The network works on small integers (integer image, weights in {-1, 0, 1}, zero biases), so
every value is exact in float32 and float64 alike: no rounding, no boundary flip, and many
exact ties -- zeros after the ReLU (which the deconvnet rule does not mask) and, in the second
pool, the equal values a stride-2 pool copies into neighbouring outputs (53,017 such windows
on inception_v1's path in issue 17). Any difference in tie-breaking or in how unpooling adds
the values of overlapping windows that share a switch is then a wrong projection, not noise:
zfprobe must equal the float64 oracle (tests/oracle.py, whose switches come from its own
window unfolding, not from a pooling kernel) to 1e-6. The test also shows that the opposite
rule (last maximum) changes the projections, so it cannot pass whatever the rule.
"""
from __future__ import annotations

import numpy as np
import pytest

import oracle
import zfprobe
from zfprobe.probe import Probe

RULES = oracle.RULES


def _tie_net(path, variant: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = rng.integers(-1, 2, (6, 2, 3, 3)).astype(np.float32)
    w2 = rng.integers(-1, 2, (4, 6, 1, 1)).astype(np.float32)
    pool2 = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    if variant == "ceil_asym":      # Caffe-style ceil_mode and uneven pads: the padded paths
        pool2 = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("MaxPool", ["p1"], ["p2"], **pool2),
        helper.make_node("Conv", ["p2", "w2"], ["c2" if variant == "global_max" else "out"],
                         kernel_shape=[1, 1]),
    ]
    if variant == "global_max":     # GlobalMaxPool: ArgMax, first maximum of the plane
        nodes += [helper.make_node("Relu", ["c2"], ["r2"]),
                  helper.make_node("GlobalMaxPool", ["r2"], ["out"])]
    graph = helper.make_graph(
        nodes, "ties", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 23, 23])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * 4)],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _backends(path):
    probe = zfprobe.load(str(path))
    out = {"onnxruntime": probe}
    from zfprobe.adapters.backends.torch_backend import TorchBackend

    out["torch"] = Probe(probe.graph, TorchBackend(device="cpu"))
    try:
        from zfprobe.adapters.backends.tf_backend import TensorFlowBackend
    except ImportError:      # TensorFlow is optional
        return out
    out["tensorflow"] = Probe(probe.graph, TensorFlowBackend("cpu"))
    return out


@pytest.fixture(scope="module", params=["overlap_s1", "ceil_asym", "global_max"])
def case(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("ties") / f"ties_{request.param}.onnx"
    _tie_net(path, request.param)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 4, (2, 2, 23, 23)).astype(np.float32)
    orc = oracle.onnx_oracle(path, "out")
    acts = orc.activations(images, "float64")
    # seeds: two units (windowed path) and one whole map (full path), integer valued
    seeds = np.zeros((3,) + acts.shape[1:], np.float32)
    strength = acts.reshape(acts.shape[0], acts.shape[1], -1).max(-1)
    for k, img in enumerate((1, 0)):          # the strongest and second strongest channels
        c = int(np.argsort(-strength[img], kind="stable")[k])
        y, x = np.unravel_index(int(np.argmax(acts[img, c])), acts.shape[2:])
        seeds[k, c, y, x] = acts[img, c, y, x]
    seeds[2, int(np.argmax(strength[0]))] = acts[0, int(np.argmax(strength[0]))]
    seed_image = np.array([1, 0, 0])
    want = orc.project(images, seeds, seed_image, rule=RULES, precision="float64")
    return dict(path=path, images=images, seeds=seeds, seed_image=seed_image, want=want,
                orc=orc, probes=_backends(path))


def test_ties_are_exercised(case):
    """Many exact ties with a non-zero maximum, and the last-maximum rule moves projections."""
    values = case["orc"].forward_values(case["images"], "float64")[0]
    p1 = values["p1"]
    win = np.lib.stride_tricks.sliding_window_view(np.pad(p1, ((0, 0), (0, 0), (1, 1), (1, 1)),
                                                          constant_values=-np.inf), (3, 3), (2, 3))
    top = win.max(axis=(-2, -1), keepdims=True)
    tied = ((win == top).sum(axis=(-2, -1)) > 1) & (top[..., 0, 0] > 0)
    assert tied.sum() >= 50, tied.sum()
    oracle._TIE["last"] = True
    try:
        other = case["orc"].project(case["images"], case["seeds"], case["seed_image"],
                                    rule="deconvnet", precision="float64")
    finally:
        oracle._TIE["last"] = False
    want = case["want"]["deconvnet"]
    assert np.abs(other - want).max() > 0.1 * np.abs(want).max()


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "tensorflow"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("windowed", [True, False], ids=["windowed", "full"])
def test_ties_broken_identically(case, backend, rule, windowed):
    if backend not in case["probes"]:
        pytest.skip("TensorFlow is not installed")
    probe = case["probes"][backend]
    want = case["want"][rule]
    k = 2 if windowed else 3        # the unit seeds take the windowed path; with the map, not
    got = probe.project(case["images"], "out", case["seeds"][:k], case["seed_image"][:k],
                        rule=rule, windowed=windowed)
    for j in range(k):
        scale = np.abs(want[j]).max()
        assert scale > 0
        err = np.abs(got[j] - want[j]).max() / scale
        assert err <= 1e-6, f"{backend} {rule} seed {j}: relative error {err:.2e}"
