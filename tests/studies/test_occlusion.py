"""Occlusion sensitivity (zfprobe.studies.occlusion, `zfprobe occlude`).

The maps are checked against a brute-force reference that builds every occluded image and runs
the ONNX file with onnxruntime directly (the layer exposed as an extra graph output), on the real
digit-recognizer MNIST net and on a ZFNet-shaped 224x224 network, with both the incremental and
the plain path, for square sizes and strides that do and do not divide the image.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zfprobe  # noqa: E402
from zfprobe.errors import OptionError, ZfprobeError  # noqa: E402
from zfprobe.studies.occlusion.render import save_result  # noqa: E402
from zfprobe.studies.occlusion import (NoClassOutputError, build_engine, class_output, local_chain,  # noqa: E402
                               occlude, occlusion_maps, positions, run_engine)

DATA = os.path.join(os.path.dirname(zfprobe.__file__), "data")
MNIST_ONNX = os.path.join(DATA, "mnist_cnn.onnx")
DIGIT_PNG = os.path.join(DATA, "digit.png")


# --------------------------------------------------------------------------------------------
# helpers


def brute_force(onnx_path, x, layer_tensor, size, stride, fill):
    """Every occluded image through onnxruntime: (layer totals [nr, nc, C], softmax [nr, nc, K])."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(layer_tensor, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _, c, h, w = x.shape
    rows, cols = positions(h, size, stride), positions(w, size, stride)
    images = np.repeat(x, len(rows) * len(cols), axis=0)
    for k, (r, q) in enumerate((r, q) for r in rows for q in cols):
        images[k, :, r:r + size, q:q + size] = np.asarray(fill, np.float32).reshape(-1, 1, 1)
    name = sess.get_inputs()[0].name
    logits, acts = [], []
    for s in range(0, len(images), 64):
        out = sess.run([model.graph.output[0].name, layer_tensor], {name: images[s:s + 64]})
        logits.append(out[0])
        acts.append(out[1])
    logits, acts = np.concatenate(logits), np.concatenate(acts)
    totals = acts.reshape(acts.shape[0], acts.shape[1], -1).sum(2) if acts.ndim > 2 else acts
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return (totals.reshape(len(rows), len(cols), -1), probs.reshape(len(rows), len(cols), -1), rows, cols)


def assert_maps_equal(ours, ref):
    totals, probs = ours[0], ours[1]
    scale = max(1.0, float(np.abs(ref[0]).max()))
    assert np.abs(totals - ref[0]).max() <= 1e-5 * scale
    assert np.abs(probs - ref[1]).max() <= 1e-5
    assert ours[2] == ref[2] and ours[3] == ref[3]


@pytest.fixture(scope="module")
def digit_net(tmp_path_factory):
    """The real digit-recognizer-py MNIST net, its ONNX export and 2 real MNIST digits."""
    torch = pytest.importorskip("torch")
    import nets

    try:
        from assets import mnist_5k

        module = nets.digit_recognizer()
        digits, labels = mnist_5k()
    except Exception as exc:  # noqa: BLE001 - the registry may be unreachable
        pytest.skip(f"digit-recognizer assets unavailable: {exc}")
    path = tmp_path_factory.mktemp("occ_digit") / "digit.onnx"
    names = nets.export_onnx(module, torch.zeros(1, 1, 28, 28), path)
    picked = [int(np.flatnonzero(labels == d)[0]) for d in (3, 7)]
    pixels = digits[picked].astype(np.float32)
    x = ((pixels / 255 - nets.MNIST_MEAN) / nets.MNIST_STD)[:, None].astype(np.float32)
    return path, names, x, labels[picked]


@pytest.fixture(scope="module")
def zfnet224(tmp_path_factory):
    """ZFNet's topology at 224x224 (conv 7x7/2, overlapping 3x3/2 pools, LRN, 5x5/2, 3x3 x3)
    with 1/8 of the channels and small FC layers, random He weights."""
    torch = pytest.importorskip("torch")
    import nets

    module = nets._init_(nets.ZFNet(width=0.125, fc=64, num_classes=10, in_size=224), 5)
    path = tmp_path_factory.mktemp("occ_zfnet") / "zfnet224.onnx"
    names = nets.export_onnx(module, torch.zeros(1, 3, 224, 224), path)
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return path, names, x


# --------------------------------------------------------------------------------------------
# exactness against brute force


def test_positions_cover_the_image_and_stay_inside():
    assert positions(28, 7, 3) == [0, 3, 6, 9, 12, 15, 18, 21]
    assert positions(28, 5, 4) == [0, 4, 8, 12, 16, 20, 23]  # last one flush with the border
    assert positions(10, 10, 3) == [0]
    assert positions(224, 32, 8)[-1] == 192 and len(positions(224, 32, 8)) == 25


@pytest.mark.parametrize("layer", ["conv_layers.0", "conv_layers.5"])
@pytest.mark.parametrize("size,stride", [(7, 3), (5, 4), (9, 5), (28, 2)])
def test_digit_recognizer_matches_brute_force(digit_net, layer, size, stride):
    path, names, x, _ = digit_net
    probe = zfprobe.load(path)
    tensor = names[layer]
    fill = (128 / 255 - 0.1307) / 0.3081  # grey in pixel space, normalized like the image
    ref = brute_force(path, x[:1], tensor, size, stride, fill)
    for method in ("incremental", "plain"):
        ours = occlusion_maps(probe, x[:1], tensor, size, stride, fill, method=method)
        assert_maps_equal(ours, ref)
        if size < 28:
            assert ours[4] == method


@pytest.mark.parametrize("layer", ["norm1", "relu5"])
@pytest.mark.parametrize("size,stride", [(32, 24), (48, 40), (61, 50)])
def test_zfnet224_matches_brute_force(zfnet224, layer, size, stride):
    path, names, x = zfnet224
    probe = zfprobe.load(path)
    fill = np.array([0.3, -0.2, 0.1], np.float32)
    ref = brute_force(path, x, names[layer], size, stride, fill)
    for method in ("incremental", "plain"):
        ours = occlusion_maps(probe, x, names[layer], size, stride, fill, method=method)
        assert_maps_equal(ours, ref)
    assert ours[4] == "plain"


def test_zfnet224_incremental_reaches_deep_layers(zfnet224):
    path, names, x = zfnet224
    probe = zfprobe.load(path)
    chain = [op.node.op_type for op in local_chain(probe.graph)]
    assert chain[:8] == ["Conv", "Relu", "MaxPool", "LRN", "Conv", "Relu", "MaxPool", "LRN"]
    res = occlude(probe, x, names["relu5"], size=32, stride=8, fill="zero", project=False)
    assert res.method == "incremental" and len(res.incremental_layers) >= 4
    # the whole chain (through pool5) run incrementally, the layer inside it
    rows = cols = positions(224, 40, 46)
    ref = brute_force(path, x, names["conv4"], 40, 46, 0.0)
    engine = build_engine(probe, names["conv4"], class_output(probe.graph), 40, rows, cols, depth=len(chain))
    assert engine.end == len(chain) == 15
    totals, probs, _, _ = run_engine(engine, x, np.zeros(3, np.float32), 40, rows, cols)
    assert_maps_equal((totals, probs, rows, cols), ref)


# --------------------------------------------------------------------------------------------
# known answers on real digits


def test_probability_falls_on_the_stroke_not_on_the_background():
    """The bundled MNIST net and its 7: a black square (the background colour) over empty
    background leaves the image, hence p(7), unchanged; over the stroke p(7) falls."""
    from zfprobe.io.preprocess import read_pixels

    probe = zfprobe.load(MNIST_ONNX)
    size = 10
    res = occlude(probe, DIGIT_PNG, "relu2", size=size, stride=2, fill="mean", project=False)
    assert res.label == 7 and res.label_source.startswith("top-1") and res.base_probability > 0.99
    ink = read_pixels(DIGIT_PNG, probe.preprocessing)[..., 0].astype(float)
    covered = np.array([[ink[r:r + size, c:c + size].sum() for c in res.cols] for r in res.rows])
    background, stroke = covered == 0, covered >= 0.5 * covered.max()
    assert background.sum() >= 5 and stroke.sum() >= 5
    np.testing.assert_allclose(res.probability[background], res.base_probability, atol=1e-6)
    assert res.probability[stroke].min() < res.base_probability - 0.05
    assert res.probability[stroke].mean() < res.probability[background].mean()
    # the activation map: the strongest map's total changes only where the square hides ink
    np.testing.assert_allclose(res.activation[background], res.base_activation, rtol=1e-5)
    assert np.abs(res.activation[stroke] - res.base_activation).max() > 0.05 * abs(res.base_activation)


def test_digit_recognizer_known_answer(digit_net):
    """The real digit-recognizer net on real MNIST digits, black square: background positions
    keep the label's probability, covering the stroke lowers it."""
    path, names, x, labels = digit_net
    probe = zfprobe.load(path)
    black = (0 - 0.1307) / 0.3081
    for i in range(2):
        totals, probs, rows, cols, _ = occlusion_maps(probe, x[i:i + 1], None, 10, 2, black)
        p = probs[:, :, labels[i]]
        ink = x[i, 0] > black + 1e-3
        covered = np.array([[ink[r:r + 10, c:c + 10].sum() for c in cols] for r in rows])
        logits = probe.activations(x[i:i + 1], probe.graph.outputs[0])[0]
        base = np.exp(logits - logits.max())[labels[i]] / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(p[covered == 0], base, atol=1e-6)
        assert p[covered >= 0.5 * covered.max()].min() < base - 0.1


# --------------------------------------------------------------------------------------------
# API results, files, CLI


def test_occlude_result_and_files(tmp_path):
    probe = zfprobe.load(MNIST_ONNX)
    res = occlude(probe, DIGIT_PNG, "relu2", size=8, stride=4, label=7)
    assert res.activation.shape == res.probability.shape == res.label_map.shape == (6, 6)
    assert res.label_source == "given" and res.class_names[7] == "7"
    assert res.projection is not None and res.projection.shape == (1, 28, 28)
    assert res.class_source.startswith("softmax of the logits")
    files = save_result(res, str(tmp_path / "out"), probe)
    names = sorted(os.path.basename(f) for f in files)
    assert names == sorted(["input.png", "occlusion.npz", "occlusion_activation.png", "occlusion_probability.png",
                            "occlusion_label.png", "projection.png", "manifest.json"])
    with np.load(tmp_path / "out" / "occlusion.npz") as z:
        np.testing.assert_array_equal(z["probability"], res.probability)
        np.testing.assert_array_equal(z["rows"], [0, 4, 8, 12, 16, 20])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["label"] == 7 and manifest["label_name"] == "7" and manifest["square"]["size"] == 8
    assert "flush" in manifest["square"]["positions"] and "softmax" in manifest["probabilities"]


def test_softmax_output_is_used_as_is(tmp_path):
    """A model that ends in Softmax: its output is the probability (no second softmax)."""
    torch = pytest.importorskip("torch")
    import nets

    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.Flatten(), torch.nn.Linear(4 * 7 * 7, 5), torch.nn.Softmax(dim=1))
    nets._init_(module, 0)
    path = tmp_path / "softmax.onnx"
    names = nets.export_onnx(module, torch.zeros(1, 1, 14, 14), path)
    probe = zfprobe.load(path)
    cls = class_output(probe.graph)
    assert cls is not None and not cls.softmax
    x = np.random.default_rng(0).standard_normal((1, 1, 14, 14)).astype(np.float32)
    totals, probs, rows, cols, _ = occlusion_maps(probe, x, names["1"], 4, 3, 0.0)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.repeat(x, len(rows) * len(cols), 0)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        images[k, :, r:r + 4, c:c + 4] = 0
    ref = sess.run(None, {"input": images})[0].reshape(len(rows), len(cols), -1)
    assert np.abs(probs - ref).max() <= 1e-6


def test_cli_occlude(tmp_path):
    from click.testing import CliRunner

    from zfprobe.cli.main import cli

    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["occlude", MNIST_ONNX, "--image", DIGIT_PNG, "--layer", "relu2", "--size", "7",
                                      "--stride", "5", "--labels", str(labels), "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label_name"] == "seven" and manifest["square"]["rows"] == [0, 5, 10, 15, 20, 21]
    assert (out / "occlusion_label.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("args,message", [
    (dict(size=29, stride=2), "larger than the image"),
    (dict(size=5, stride=0), "stride must be at least 1"),
    (dict(size=5, stride=2, label=10), "label 10 is out of range"),
    (dict(size=5, stride=2, label=-1), "label -1 is out of range"),
    (dict(size=0, stride=2), "positive whole number"),
    (dict(size=5, stride=2, fill="purple"), "unknown fill"),
    (dict(size=5, stride=2, channel=32), "channel 32 is out of range"),
])
def test_bad_inputs(args, message):
    probe = zfprobe.load(MNIST_ONNX)
    with pytest.raises(OptionError, match=message):
        occlude(probe, DIGIT_PNG, "relu2", **args)


def test_cli_bad_inputs_exit_2(tmp_path):
    from click.testing import CliRunner

    from zfprobe.cli.main import cli

    for extra, message in ((["--size", "40"], "larger than the image"), (["--stride", "0"], "stride must be"),
                           (["--label", "10"], "out of range")):
        out = tmp_path / "o"
        result = CliRunner().invoke(cli, ["occlude", MNIST_ONNX, "-i", DIGIT_PNG, "-l", "relu2", "--no-progress",
                                          "-o", str(out)] + extra)
        assert result.exit_code == 2 and message in result.output and not out.exists()


@pytest.fixture(scope="module")
def featuremap_model(tmp_path_factory):
    """A model with no class output: its output is a feature map."""
    torch = pytest.importorskip("torch")
    import nets

    module = nets._init_(torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                                             torch.nn.Conv2d(6, 4, 3, padding=1)), 0)
    path = tmp_path_factory.mktemp("occ_nocls") / "features.onnx"
    names = nets.export_onnx(module, torch.zeros(1, 1, 28, 28), path)
    return path, names


def test_no_class_output(featuremap_model, tmp_path):
    path, names = featuremap_model
    probe = zfprobe.load(path)
    assert class_output(probe.graph) is None
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    for kwargs in (dict(probability=True), dict(label=3)):
        with pytest.raises(NoClassOutputError, match="no class output") as info:
            occlude(probe, x, names["1"], size=6, stride=4, fill="zero", **kwargs)
        assert isinstance(info.value, ZfprobeError) and "\n" not in str(info.value)
    res = occlude(probe, x, names["1"], size=6, stride=4, fill="zero")
    assert res.probability is None and res.label_map is None and res.activation.shape == (7, 7)
    ref = brute_force_activation(path, x, names["1"], 6, 4)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(res.activation - ref[:, :, res.channel]).max() <= 1e-5 * scale
    files = save_result(res, str(tmp_path / "o"), probe)
    assert not any("probability" in f or "label" in f for f in files)
    # the layer inside the windowed part, nothing after it to run
    rows = positions(28, 6, 4)
    for depth in (1, 2):
        engine = build_engine(probe, names["1"], None, 6, rows, rows, "incremental", depth=depth)
        assert engine.end == depth and (engine.suffix is None) == (depth == 2)
        totals, probs, base, _ = run_engine(engine, x, np.zeros(1, np.float32), 6, rows, rows)
        assert probs is None and np.abs(totals - ref).max() <= 1e-5 * scale


def brute_force_activation(path, x, tensor, size, stride):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows, cols = positions(x.shape[2], size, stride), positions(x.shape[3], size, stride)
    images = np.repeat(x, len(rows) * len(cols), 0)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        images[k, :, r:r + size, c:c + size] = 0
    acts = sess.run([tensor], {"input": images})[0]
    return acts.sum((2, 3)).reshape(len(rows), len(cols), -1)


def test_cli_no_class_output(featuremap_model, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from zfprobe.cli.main import cli

    path, names = featuremap_model
    img = tmp_path / "d.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(img)
    runner = CliRunner()
    ok = runner.invoke(cli, ["occlude", str(path), "-i", str(img), "-l", names["1"], "--size", "6", "--stride", "4",
                             "--no-progress", "-o", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "no class output" in ok.output and (tmp_path / "a" / "occlusion_activation.png").exists()
    bad = runner.invoke(cli, ["occlude", str(path), "-i", str(img), "-l", names["1"], "--size", "6", "--label", "1",
                              "--no-progress", "-o", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "no class output" in bad.output and not (tmp_path / "b").exists()


def test_channels_last_input_matches(tmp_path):
    """The same net behind an NHWC input (a Transpose first): the plain path, same maps."""
    import onnx

    model = onnx.load(MNIST_ONNX)
    old = model.graph.input[0]
    old_name = old.name
    for node in model.graph.node:
        node.input[:] = ["nchw" if i == old_name else i for i in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", [old_name], ["nchw"], perm=[0, 3, 1, 2]))
    del model.graph.input[:]
    model.graph.input.append(onnx.helper.make_tensor_value_info(old_name, onnx.TensorProto.FLOAT, [1, 28, 28, 1]))
    path = tmp_path / "nhwc.onnx"
    onnx.save(model, str(path))
    nhwc = zfprobe.load(path)
    assert nhwc.preprocessing.layout == "NHWC"
    nhwc.preprocessing.labels = None
    a = occlude(nhwc, DIGIT_PNG, "relu2", size=7, stride=3, project=False)
    b = occlude(zfprobe.load(MNIST_ONNX), DIGIT_PNG, "relu2", size=7, stride=3, project=False)
    assert a.method == "plain" and b.method == "incremental"
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
    np.testing.assert_allclose(a.activation, b.activation, rtol=1e-5)
    np.testing.assert_array_equal(a.label_map, b.label_map)


def test_incremental_through_many_local_ops(tmp_path):
    """Dilated / grouped / strided convs, BatchNorm, ceil-mode max-pooling, padded average
    pooling (padding counted), LeakyReLU, then a residual block (where the chain must stop)."""
    torch = pytest.importorskip("torch")
    import nets
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
                                   nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
                                   nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                                   nn.AvgPool2d(3, 1, padding=1, count_include_pad=True))
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 6))

        def forward(self, x):
            y = self.a(x)
            return self.head(torch.relu(y + self.b(y)))

    module = nets._init_(Net(), 2)
    path = tmp_path / "local.onnx"
    names = nets.export_onnx(module, torch.zeros(1, 3, 30, 30), path)
    probe = zfprobe.load(path)
    ops = [op.node.op_type for op in local_chain(probe.graph)]
    assert "MaxPool" in ops and "AveragePool" in ops and "Add" not in ops
    x = np.random.default_rng(4).standard_normal((1, 3, 30, 30)).astype(np.float32)
    fill = np.array([0.5, -1.0, 2.0], np.float32)
    cls = class_output(probe.graph)
    for layer, (size, stride) in (("a.3", (9, 7)), ("a.6", (5, 3))):
        ref = brute_force(path, x, names[layer], size, stride, fill)
        rows, cols = positions(30, size, stride), positions(30, size, stride)
        for depth in range(1, len(ops) + 1):  # every cut of the chain, the layer inside or after it
            engine = build_engine(probe, names[layer], cls, size, rows, cols, "incremental", depth=depth)
            assert engine.end == depth
            totals, probs, _, _ = run_engine(engine, x, fill, size, rows, cols)
            assert_maps_equal((totals, probs, rows, cols), ref)


def test_fill_values_follow_the_preprocessing():
    from zfprobe.studies.occlusion import fill_values
    from zfprobe.io.preprocess import Preprocessing

    prep = Preprocessing(size=(8, 8)).with_preset("caffe")  # BGR, 0..255, mean subtracted
    grey, _ = fill_values("grey", prep, 3)
    np.testing.assert_allclose(grey, 128 - np.array([103.939, 116.779, 123.68]), rtol=1e-6)
    pixels = np.full((8, 8, 3), 128, np.uint8)
    np.testing.assert_allclose(prep.to_tensor(pixels)[0, :, 0, 0], grey, rtol=1e-6)
    np.testing.assert_array_equal(fill_values("mean", prep, 3)[0], 0)
    np.testing.assert_array_equal(fill_values("zero", None, 3)[0], 0)
    imagenet = Preprocessing(size=(8, 8)).with_preset("imagenet")
    np.testing.assert_allclose(fill_values("0", imagenet, 3)[0], -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]), rtol=1e-6)


def test_other_backend_gives_the_same_maps():
    """The engine only runs programs: the torch backend (when present) gives the same maps."""
    try:
        from zfprobe.adapters.backends.torch_backend import TorchBackend
    except ImportError as exc:
        pytest.skip(f"no torch backend: {exc}")
    from zfprobe.io.preprocess import load_image

    probe = zfprobe.load(MNIST_ONNX)
    _, x = load_image(DIGIT_PNG, probe.preprocessing)
    ref = occlusion_maps(probe, x, "relu2", 7, 3, 0.3, method="plain")
    other = zfprobe.load(MNIST_ONNX)
    other.backend = TorchBackend()
    for method in ("incremental", "plain"):
        ours = occlusion_maps(other, x, "relu2", 7, 3, 0.3, method=method)
        assert ours[4] == method
        assert_maps_equal(ours, ref)
