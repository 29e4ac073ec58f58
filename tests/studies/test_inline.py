"""Results shown inline in Jupyter (``_repr_png_`` / ``_repr_html_``): the pictures are valid PNGs
with the same pixels as the files ``save()`` writes, the tables hold the result's numbers, and
showing a result writes no file."""
from __future__ import annotations

import base64
import glob
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

import zfprobe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = os.path.join(ROOT, "zfprobe", "data", "mnist_cnn.onnx")
SAMPLES = sorted(glob.glob(os.path.join(ROOT, "zfprobe", "data", "samples", "*.png")))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def probe():
    return zfprobe.load(MNIST, device="cpu")


@pytest.fixture
def quiet_cwd(tmp_path, monkeypatch):
    """An empty working directory; the test fails if showing a result writes anything into it."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    yield here
    assert os.listdir(here) == []


def pixels(png: bytes) -> np.ndarray:
    assert png[:8] == PNG_MAGIC
    im = Image.open(io.BytesIO(png))
    im.load()
    assert im.format == "PNG"
    return np.asarray(im.convert("RGB"))


def file_pixels(path) -> np.ndarray:
    return pixels(open(path, "rb").read())


def html_images(html: str) -> dict[str, np.ndarray]:
    """alt -> pixels of every inline <img> of ``html`` (each a data: URI, never a file)."""
    found = re.findall(r'<img alt="([^"]*)" [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"/>', html)
    assert len(found) == html.count("<img"), "every picture is inline"
    return {alt or str(i): pixels(base64.b64decode(data)) for i, (alt, data) in enumerate(found)}


def test_visualize_shows_the_contact_sheet_it_saves(probe, quiet_cwd, tmp_path):
    result = probe.visualize(SAMPLES[0], "conv2", top=4)
    shown = pixels(result._repr_png_())
    result.save(str(tmp_path / "out"))
    np.testing.assert_array_equal(shown, file_pixels(tmp_path / "out" / "contact_sheet.png"))
    # what it shows is the projections: each tile of the sheet (image | projection pairs) differs
    assert shown.shape[0] > 160 and shown.shape[1] >= 4 * 160 and len(np.unique(shown)) > 50


def test_occlusion_shows_the_maps_and_projection_it_saves(probe, quiet_cwd, tmp_path):
    result = probe.occlude(SAMPLES[1], "conv3", size=8, stride=4)
    shown = html_images(result._repr_html_())
    assert list(shown) == ["occlusion_activation.png", "occlusion_probability.png", "occlusion_label.png",
                           "projection.png"]
    result.save(str(tmp_path / "occ"))
    for name, image in shown.items():
        np.testing.assert_array_equal(image, file_pixels(tmp_path / "occ" / name), err_msg=name)
    assert f"map {result.channel}" in result._repr_html_()


def test_mining_shows_its_summary_and_the_layer_sheet_it_saves(probe, quiet_cwd, tmp_path):
    from zfprobe.io.datasets import open_dataset
    from zfprobe.studies.mining.compute import mine
    from zfprobe.studies.mining.render import render_layer, save_mining

    ds = open_dataset(os.path.join(ROOT, "zfprobe", "data", "samples"), probe.preprocessing, probe.input_shape)
    result = mine(probe, ds, ["conv2", "conv3"], k=4)
    html = result._repr_html_()
    top = result.layers["conv3"].values[:, 0]
    best = int(np.argmax(top))
    assert "<td>conv3</td>" in html and f"c{best} ({top[best]:.3g})" in html
    assert f"top-4 of {len(SAMPLES)} images" in html
    pics = render_layer(probe, result, "conv2", channels=list(range(8)))
    shown = pixels(pics._repr_png_())
    save_mining(str(tmp_path / "mine"), probe, result, {"conv2": pics}, "deconvnet", "identity")
    np.testing.assert_array_equal(shown, file_pixels(tmp_path / "mine" / "conv2" / "sheet_001.png"))


def test_invariance_shows_the_figures_it_saves(probe, quiet_cwd, tmp_path):
    result = probe.invariance(SAMPLES[:2], ["conv1", "conv3"], transforms=["rotate"], ranges={"rotate": "0:90:45"})
    shown = html_images(result._repr_html_())
    result.save(str(tmp_path / "inv"))
    assert list(shown) == ["invariance.png", "examples.png"]
    for name, image in shown.items():
        np.testing.assert_array_equal(image, file_pixels(tmp_path / "inv" / name), err_msg=name)


def test_correspondence_shows_its_table_and_figures(probe, quiet_cwd, tmp_path):
    parts = {os.path.basename(p): {"a": [8, 8, 14, 14]} for p in SAMPLES[:3]}
    result = probe.correspondence(SAMPLES[:3], parts, ["relu1", "relu3"], random=2)
    html = result._repr_html_()
    shown = html_images(html)
    result.save(str(tmp_path / "corr"))
    for name, image in shown.items():
        np.testing.assert_array_equal(image, file_pixels(tmp_path / "corr" / name), err_msg=name)
    assert sorted(shown) == ["delta.png", "parts.png"] and "<table>" in html
    assert f">{result.delta['a']['relu3']:.4f}<" in html


def test_sanity_shows_verdicts_curves_and_strips(probe, quiet_cwd, tmp_path):
    from zfprobe.studies.sanity.compute import run_sanity
    from zfprobe.studies.sanity.render import save

    x = np.concatenate([probe.load_input(p)[1] for p in SAMPLES[:2]])
    result = run_sanity(probe, x, "conv2", rules="guided", units="top:2", modes="cascade", progress=False)
    html = result._repr_html_()
    shown = html_images(html)
    save(result, str(tmp_path / "sanity"), probe)
    assert list(shown) == ["curves.png", "strip_cascade.png"]
    for name, image in shown.items():
        np.testing.assert_array_equal(image, file_pixels(tmp_path / "sanity" / name), err_msg=name)
    assert result.verdicts()["guided"] in html


def test_filters_show_the_sheets_they_save(probe, quiet_cwd, tmp_path):
    from zfprobe.studies.filters.compute import diagnose
    from zfprobe.studies.filters.render import save_diagnosis

    d = diagnose(probe, "conv1", progress=False)
    shown = html_images(d._repr_html_())
    save_diagnosis(str(tmp_path / "filters"), [("mnist", probe, d)])
    assert list(shown) == ["filters.png", "spectra.png"]
    # the saved sheets are titled with the model's label; the tiles below the title are the same
    for name, image in shown.items():
        saved = file_pixels(tmp_path / "filters" / name)
        assert image.shape == saved.shape
        np.testing.assert_array_equal(image[22:], saved[22:], err_msg=name)


def test_transfer_and_ablation_show_their_numbers():
    from zfprobe.studies.ablation.compute import AblationResult, Edit, Importance, Metrics
    from zfprobe.studies.transfer.compute import Score, TransferResult

    scores = [Score("softmax", "conv3", 15, s, acc, 150, 50) for s, acc in enumerate((0.70, 0.80))]
    scores += [Score("scratch", "scratch", 15, s, acc, 150, 50) for s, acc in enumerate((0.40, 0.50))]
    html = TransferResult(scores, ["conv3"], [15], 2, 0)._repr_html_()
    assert "75.0 ± 5.0" in html and "45.0 ± 5.0" in html  # mean ± std over the two splits, in %
    assert len(html_images(html)) == 1

    result = AblationResult([Edit("layer", "conv2")], Metrics(0.9, 0.99, 0.3, 100), Metrics(0.25, 0.6, 2.1, 100),
                            ["layer conv2 (zero)"])
    html = result._repr_html_()
    assert "<td>90.0</td>" in html and "<td>25.0</td>" in html and "<td>2.100</td>" in html
    assert list(html_images(html)) == ["ablation.png"]
    imp = Importance("conv2", "zero", np.array([0.1, 0.0, 0.3]), np.array([0.2, 0.0, 0.5]),
                     Metrics(0.9, 0.99, 0.3, 100), False)
    assert pixels(imp._repr_png_()).shape[2] == 3
