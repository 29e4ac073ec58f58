"""Ablation (paper Table 3) against independent computations.

* an edited graph (channels zeroed or set to their mean, a layer replaced by identity or zeroed,
  a residual branch skipped) gives what the same edit made in torch gives (forward hooks or a
  patched forward on the real digit-recognizer weights and the residual test net), on the
  onnxruntime backend and on the live torch backend;
* zeroing every channel of a layer gives the bias-only answer, computed with numpy;
* top-1 / top-5 / loss equal numpy on plain onnxruntime outputs; per-channel importance equals
  brute force in torch.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

torch = pytest.importorskip("torch")

import nets  # noqa: E402
import zfprobe  # noqa: E402
from zfprobe.studies.ablation.compute import Edit, apply_edits, channel_importance, evaluate, Scorer  # noqa: E402
from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from zfprobe.engine.deconv import build_forward  # noqa: E402
from zfprobe.io.labelled import Labelled  # noqa: E402
from zfprobe.io.datasets import ArrayDataset  # noqa: E402
from zfprobe.probe import Probe  # noqa: E402

from study_data import CLI_MODEL, digits_arrays  # noqa: E402
from test_cli import assert_clean_error, run_cli  # noqa: E402


def _mnist(n: int = 64):
    from assets import mnist_5k

    images, labels = mnist_5k()
    x = ((images[:n].astype(np.float32) / 255.0 - nets.MNIST_MEAN) / nets.MNIST_STD)[:, None]
    return np.ascontiguousarray(x, np.float32), labels[:n].astype(np.int64)


@pytest.fixture(scope="module")
def digit_net():
    module = nets.digit_recognizer()
    probe = zfprobe.attach(module, torch.zeros(1, 1, 28, 28))
    ort_probe = Probe(probe.graph, OnnxRuntimeBackend("cpu"), preprocessing=probe.preprocessing)
    return module, probe, ort_probe


def _run(probe, graph, x):
    out = graph.outputs[0]
    return probe.backend.run(build_forward(graph, [out]), {probe.input_name: x}, [out])[0]


def _hooked(module, target: str, fn, x):
    sub = dict(module.named_modules())[target]
    handle = sub.register_forward_hook(lambda m, i, o: fn(o.clone()))
    try:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    finally:
        handle.remove()


def test_channel_and_layer_edits_equal_torch(digit_net):
    module, probe, ort_probe = digit_net
    x, _ = _mnist(16)
    # dataset mean of conv_layers.3's output, in torch
    with torch.no_grad():
        acts = []
        h = dict(module.named_modules())["conv_layers.3"].register_forward_hook(lambda m, i, o: acts.append(o))
        module(torch.from_numpy(x))
        h.remove()
    mean = acts[0].mean(0).numpy()
    tensor = probe.resolve("conv_layers.3")

    def zero(o):
        o[:, :16] = 0
        return o

    def to_mean(o):
        o[:, 3:9] = torch.from_numpy(mean[3:9])
        return o

    cases = [
        ([Edit("channels", "conv_layers.3", tuple(range(16)), "zero")], "conv_layers.3", zero, None),
        ([Edit("channels", "conv_layers.3", tuple(range(3, 9)), "mean")], "conv_layers.3", to_mean, {tensor: mean}),
        ([Edit("layer", "conv_layers.3", (), "zero")], "conv_layers.3", lambda o: o * 0, None),
    ]
    for edits, target, fn, means in cases:
        expect = _hooked(module, target, fn, x)
        for p in (ort_probe, probe):  # onnxruntime via the ONNX export, and the live torch backend
            edited, applied = apply_edits(p.graph, edits, p.resolve, means)
            got = _run(p, edited, x)
            np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4, err_msg=f"{applied} on {p.backend.name}")
    # identity: remove the ReLU after conv_layers.3 (shapes agree)
    edited, applied = apply_edits(ort_probe.graph, [Edit("layer", "conv_layers.4", (), "identity")], ort_probe.resolve)
    assert applied == ["layer conv_layers.4 replaced by identity"]
    patched = nets.digit_recognizer()
    patched.conv_layers[4] = torch.nn.Identity()
    with torch.no_grad():
        expect = patched(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(ort_probe, edited, x), expect, rtol=1e-4, atol=1e-4)
    # identity impossible (conv changes the channel count): zeroed, and said so
    _, applied = apply_edits(ort_probe.graph, [Edit("layer", "conv_layers.3", (), "identity")], ort_probe.resolve)
    assert "zeroed (identity impossible: shapes differ)" in applied[0]
    # the model itself is untouched
    np.testing.assert_allclose(_run(ort_probe, ort_probe.graph, x), module(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-4)


def test_branch_skip_equals_torch():
    import torch.nn.functional as F

    module = nets.resnet_bn()
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    probe = zfprobe.attach(module, torch.zeros(1, 3, 64, 64))
    ort_probe = Probe(probe.graph, OnnxRuntimeBackend("cpu"))
    block = module.layer1[1]
    block.forward = lambda inp: F.relu(inp)  # the residual branch skipped: only the identity path is left
    with torch.no_grad():
        expect = module(torch.from_numpy(x)).numpy()
    for p in (ort_probe, probe):
        edited, applied = apply_edits(p.graph, [Edit("branch", "layer1.1.bn2")], p.resolve)
        np.testing.assert_allclose(_run(p, edited, x), expect, rtol=1e-4, atol=1e-4, err_msg=p.backend.name)
    assert "skipped" in applied[0]


def test_zeroing_all_channels_gives_bias_only_answer():
    probe = zfprobe.load(CLI_MODEL)
    x = np.random.default_rng(1).random((5, 1, 28, 28)).astype(np.float32)
    model = onnx.load(str(CLI_MODEL))
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    fc = next(n for n in model.graph.node if n.name == "fc")
    conv3 = next(n for n in model.graph.node if n.name == "conv3")
    fc_w, fc_b = w[fc.input[1]], w[fc.input[2]]
    # every channel of relu3 zero: the logits are the fc bias
    edited, _ = apply_edits(probe.graph, [Edit("channels", "relu3", tuple(range(64)), "zero")], probe.resolve)
    np.testing.assert_allclose(_run(probe, edited, x), np.broadcast_to(fc_b, (5, 10)), rtol=0, atol=1e-6)
    # every channel of pool2 zero: conv3 outputs its bias everywhere, then relu, flatten, fc
    edited, _ = apply_edits(probe.graph, [Edit("channels", "pool2", tuple(range(32)), "zero")], probe.resolve)
    h = probe.graph.shape("relu3")[2:]
    feat = np.repeat(np.maximum(w[conv3.input[2]], 0), int(np.prod(h)))  # [C*H*W], channel-major flatten
    expect = feat @ (fc_w.T if fc.attribute and any(a.name == "transB" and a.i for a in fc.attribute) else fc_w) + fc_b
    np.testing.assert_allclose(_run(probe, edited, x), np.broadcast_to(expect, (5, 10)), rtol=1e-5, atol=1e-5)


def _numpy_metrics(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    order = np.argsort(-logits, axis=1)
    top1 = np.mean(order[:, 0] == labels)
    top5 = np.mean([labels[i] in order[i, :5] for i in range(len(labels))])
    return top1, top5, -logp[np.arange(len(labels)), labels].mean()


def test_metrics_and_importance_equal_independent_computation(digit_net):
    module, probe, ort_probe = digit_net
    x, y = _mnist(96)
    labelled = Labelled(ArrayDataset(None, probe.preprocessing, probe.input_shape, array=x), y,
                        {i: str(i) for i in range(10)}, True)
    m = evaluate(ort_probe, ort_probe.graph, labelled, batch_size=40)
    sess = ort.InferenceSession(str(_export(module)), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    top1, top5, loss = _numpy_metrics(logits.astype(np.float64), y)
    assert m.n == 96 and m.top1 == pytest.approx(top1, abs=1e-12) and m.top5 == pytest.approx(top5, abs=1e-12)
    assert m.loss == pytest.approx(loss, rel=1e-5)
    # importance of every channel of conv_layers.6 (128): the shortcut reruns only the tail
    imp = channel_importance(ort_probe, labelled, "conv_layers.6", "zero", batch_size=48)
    assert imp.shortcut
    conv = module.conv_layers[6]
    brute_top1, brute_loss = [], []
    # brute force on the 8 most important channels and 8 others (every channel: 13 s of torch here)
    chosen = list(imp.ranking()[:8]) + list(np.random.default_rng(0).choice(imp.ranking()[8:], 8, replace=False))
    for c in chosen:
        def zero(o, c=c):
            o[:, c] = 0
            return o
        out = _hooked(module, "conv_layers.6", zero, x).astype(np.float64)
        t1, _, ls = _numpy_metrics(out, y)
        brute_top1.append(top1 - t1)
        brute_loss.append(ls - loss)
    np.testing.assert_allclose(imp.drop_top1[chosen], brute_top1, atol=1e-12)
    np.testing.assert_allclose(imp.drop_loss[chosen], brute_loss, rtol=1e-3, atol=1e-5)
    assert imp.drop_loss.max() > 0  # removing some channel costs loss
    assert conv.weight.shape[0] == 128


def _export(module):
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="zf-abl-"), "digit.onnx")
    nets.export_onnx(module, torch.zeros(1, 1, 28, 28), path)
    return path


def test_scorer_ties_and_probabilities():
    s = Scorer(probabilities=True, k=2)
    s.add(np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]), np.array([0, 1]))
    m = s.metrics()
    assert m.top1 == 0.5 and m.top5 == 1.0
    assert m.loss == pytest.approx(-(np.log(0.5) + np.log(0.2)) / 2)


def test_ablate_cli_bad_inputs_write_nothing(tmp_path):
    images, labels = digits_arrays(60)
    data = tmp_path / "d.npz"
    np.savez(data, images=images, labels=labels)
    out = tmp_path / "out"
    r = run_cli("ablate", CLI_MODEL, data, "--layer", "fc", "-q", "-o", out)
    assert_clean_error(r, "is the model's output")
    np.save(tmp_path / "x.npy", images)
    r = run_cli("ablate", CLI_MODEL, tmp_path / "x.npy", "--layer", "conv2", "-q", "-o", out)
    assert_clean_error(r, "carries no labels")
    r = run_cli("ablate", CLI_MODEL, data, "--branch", "conv2", "-q", "-o", out)
    assert_clean_error(r, "residual Add")
    assert not out.exists()
    r = run_cli("ablate", CLI_MODEL, data, "--channels", "conv2:0-7", "--mode", "mean", "--importance", "relu2",
                "-q", "-o", out)
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(out))
    assert names == ["ablation.png", "importance.csv", "importance.png", "manifest.json", "metrics.csv", "summary.md",
                     "table.md"]
    import json

    man = json.loads((out / "manifest.json").read_text())
    assert man["command"] == "ablate" and man["model"]["sha256"] and len(man["importance"]["ranking"]) == 32


def test_efficientnet_branch_and_channel_edits_equal_torch():
    """The real ImageNet EfficientNet-Lite0: skip a residual branch (block 14) and set channels of
    block 10's output to their mean, on onnxruntime and on the live torch backend."""
    import efficientnet_lite0 as eff
    from conftest import natural_images

    module = eff.efficientnet_lite0()

    x = natural_images(3, 224, 224)
    probe = zfprobe.attach(module, torch.zeros(1, 3, 224, 224))
    ort_probe = Probe(probe.graph, OnnxRuntimeBackend("cpu"))
    with torch.no_grad():
        acts = []
        h = module._blocks[10].register_forward_hook(lambda m, i, o: acts.append(o))
        module(torch.from_numpy(x))
        h.remove()
    mean = acts[0].mean(0).numpy()

    def to_mean(o):
        o[:, 5:40] = torch.from_numpy(mean[5:40])
        return o

    block = module._blocks[14]
    skip_forward = block.forward
    block.forward = lambda inp: inp  # branch skipped: the block passes its input on
    try:
        expect = _hooked(module, "_blocks.10", to_mean, x)
    finally:
        block.forward = skip_forward
    edits = [Edit("branch", "_blocks.14._bn2"), Edit("channels", "_blocks.10", tuple(range(5, 40)), "mean")]
    for p in (ort_probe, probe):
        edited, applied = apply_edits(p.graph, edits, p.resolve, {p.resolve("_blocks.10"): mean})
        np.testing.assert_allclose(_run(p, edited, x), expect, rtol=1e-3, atol=2e-3, err_msg=p.backend.name)
    with torch.no_grad():
        intact = module(torch.from_numpy(x)).numpy()
    assert np.abs(intact - expect).max() > 0.1  # the edit is large against the tolerance


def test_keras_channel_edit_on_tensorflow_backend_equals_keras():
    """A live Keras model (TensorFlow backend, NHWC): channels of pool1 zeroed in the graph equal
    the same Keras layers re-applied with a mask multiplied in."""
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    L = keras.layers
    keras.utils.set_random_seed(0)
    c1, p1 = L.Conv2D(8, 3, activation="relu", name="conv1"), L.MaxPooling2D(2, name="pool1")
    c2, gap, fc = L.Conv2D(16, 3, activation="relu", name="conv2"), L.GlobalAveragePooling2D(name="gap"), L.Dense(5, name="fc")
    inp = keras.Input((32, 32, 3))
    model = keras.Model(inp, fc(gap(c2(p1(c1(inp))))))
    mask = np.ones((1, 1, 1, 8), np.float32)
    mask[..., [0, 1, 2, 5]] = 0
    inp2 = keras.Input((32, 32, 3))
    masked = keras.Model(inp2, fc(gap(c2(L.Multiply()([p1(c1(inp2)), keras.ops.convert_to_tensor(mask)])))))
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    probe = zfprobe.attach(model)
    assert probe.backend.name == "tensorflow"
    edited, _ = apply_edits(probe.graph, [Edit("channels", "pool1", (0, 1, 2, 5), "zero")], probe.resolve)
    want = np.asarray(masked(x))
    np.testing.assert_allclose(_run(probe, edited, x), want, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(model(x)) - want).max() > 1e-3


def test_retrained_head_equals_sklearn_on_plain_onnxruntime():
    from zfprobe.studies.ablation.compute import retrain_head

    from test_transfer import sklearn_accuracy

    images, labels = digits_arrays(200)
    probe = zfprobe.load(CLI_MODEL)
    data = Labelled(ArrayDataset(None, probe.preprocessing, probe.input_shape, array=images), labels,
                    {i: str(i) for i in range(10)}, True)
    edited, _ = apply_edits(probe.graph, [Edit("channels", "relu3", tuple(range(0, 64, 2)), "zero")], probe.resolve)
    got = retrain_head(probe, data, edited, seed=2)
    # oracle: flatten features from onnxruntime on the model file (odd channels kept for the
    # ablated net), the documented stratified half split, scikit-learn
    model = onnx.load(str(CLI_MODEL))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info("relu3"))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (images.astype(np.float32) * np.float32(1 / 255.0))[:, None]
    acts = np.concatenate([sess.run(["relu3"], {"image": x[i:i + 1]})[0] for i in range(len(x))])
    ablated = acts.copy()
    ablated[:, 0::2] = 0
    rng = np.random.default_rng(2)
    train = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: int(round(0.5 * np.sum(labels == c)))]
                                    for c in np.unique(labels)]))
    test = np.setdiff1d(np.arange(len(labels)), train)
    assert got["train"] == len(train) and got["test"] == len(test)
    for name, feats in (("intact", acts), ("ablated", ablated)):
        want = sklearn_accuracy(feats.reshape(len(feats), -1), labels, train, test, 2)
        assert abs(got[name] - want) <= 1.0 / len(test) + 1e-12, (name, got[name], want)  # at most one image apart
