"""Image files are read faithfully (one test per mode) and safely (pixel limit, no EPS).

Oracles are numpy formulas on the arrays the files were written from, not zfprobe's output:
16-bit -> x * 255 / 65535, float in [0, 1] -> x * 255, palette -> palette lookup, CMYK ->
255 (1 - C/255)(1 - K/255), alpha dropped.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfprobe.errors import ImageError
from zfprobe.io.images import DEFAULT_MAX_PIXELS, image_extensions, max_pixels, read_image, safe_formats
from zfprobe.io.preprocess import Preprocessing, load_image

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
RNG = np.random.default_rng(10)


def _smooth(h, w, hi):
    y, x = np.mgrid[0:h, 0:w]
    return (hi * (0.5 + 0.5 * np.sin(x / 3.0) * np.cos(y / 4.0))).round()


def test_16_bit_grey_png_keeps_its_levels(tmp_path):
    a = _smooth(28, 28, 65535).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")
    got = read_image(str(path), 1, (28, 28), "crop")
    np.testing.assert_allclose(got[..., 0], a.astype(np.float64) * 255 / 65535, atol=1e-3)
    assert len(np.unique(np.round(got))) > 100  # Pillow's convert("L") gives 2 levels here
    # through the model's preprocessing: x = (p * scale - mean) / std with the exact pixels
    prep = Preprocessing(size=(28, 28), channels=1, scale=1 / 255, mean=(0.1307,), std=(0.3081,))
    display, x = load_image(str(path), prep)
    np.testing.assert_allclose(x[0, 0], (a / 65535 - 0.1307) / 0.3081, atol=1e-5)
    assert display.dtype == np.uint8 and display.shape == (28, 28, 3)


def test_16_bit_resized_matches_the_8_bit_version(tmp_path):
    a = _smooth(64, 80, 65535).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    Image.fromarray((a >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    deep = read_image(str(tmp_path / "g16.png"), 3, (28, 28), "crop")
    eight = read_image(str(tmp_path / "g8.png"), 3, (28, 28), "crop")
    assert deep.shape == eight.shape == (28, 28, 3)
    assert np.abs(deep - eight.astype(np.float32)).max() <= 2.0


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_tiff(tmp_path, scale):
    a = (_smooth(20, 24, 1.0) * scale).astype(np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "F"
    got = read_image(str(path), 1, (20, 24), "crop")
    expected = a * 255 if scale == 1.0 else a
    np.testing.assert_allclose(got[..., 0], expected, atol=1e-3)
    assert got.max() > 200  # not black


def test_palette_png(tmp_path):
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    im = Image.frombytes("P", (16, 16), index.tobytes())
    im.putpalette(palette.reshape(-1).tolist())
    im.save(tmp_path / "p.png")
    got = read_image(str(tmp_path / "p.png"), 3, (16, 16), "crop")
    np.testing.assert_array_equal(got, palette[index])


def test_cmyk_tiff(tmp_path):
    cmyk = RNG.integers(0, 256, (12, 14, 4), dtype=np.uint8)
    Image.frombytes("CMYK", (14, 12), cmyk.tobytes()).save(tmp_path / "c.tif")
    got = read_image(str(tmp_path / "c.tif"), 3, (12, 14), "crop").astype(np.float64)
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    expected = np.stack([255 * (1 - c / 255) * (1 - k / 255), 255 * (1 - m / 255) * (1 - k / 255),
                         255 * (1 - y / 255) * (1 - k / 255)], axis=-1)
    assert np.abs(got - expected).max() <= 1.0


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_dropped(tmp_path, mode):
    n = len(mode)
    a = RNG.integers(0, 256, (10, 9, n), dtype=np.uint8)
    Image.frombytes(mode, (9, 10), a.tobytes()).save(tmp_path / "a.png")
    got = read_image(str(tmp_path / "a.png"), 3, (10, 9), "crop")
    expected = np.repeat(a[..., :1], 3, axis=2) if mode == "LA" else a[..., :3]
    np.testing.assert_array_equal(got, expected)


def test_pixel_limit(tmp_path, monkeypatch):
    assert max_pixels() == DEFAULT_MAX_PIXELS == 50_000_000
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setenv("ZFPROBE_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match=r"1,600 pixels, over the limit of 1,000 pixels \(set ZFPROBE_MAX_PIXELS"):
        read_image(str(tmp_path / "big.png"), 1, (28, 28), "crop")
    monkeypatch.setenv("ZFPROBE_MAX_PIXELS", "2000")
    assert read_image(str(tmp_path / "big.png"), 1, (28, 28), "crop").shape == (28, 28, 1)


def test_eps_is_never_opened(tmp_path):
    assert "EPS" not in safe_formats() and ".eps" not in image_extensions() and ".png" in image_extensions()
    path = tmp_path / "x.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    with pytest.raises(ImageError):
        read_image(str(path), 1, (8, 8), "crop")


def test_mining_skips_oversized_and_undecodable_files(tmp_path):
    from clirun import judge, run
    from test_bad_input import _png_header_only

    data = tmp_path / "data"
    shutil.copytree(DATA / "samples", data)
    (data / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    (data / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "figure.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    out = tmp_path / "out"
    r = run("mine", DATA / "mnist_cnn.onnx", data, "-l", "conv2", "-k", "2", "-c", "0", "-q", "-o", out)
    assert judge(r, expect_error=False) is None, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["skipped"] == 2 and manifest["summary"]["images_used"] == 20
    assert manifest["dataset"]["ignored_files"] == 1  # the .eps file is not an image to zfprobe
    assert any("over the limit" in s["reason"] for s in manifest["skipped"])
