"""Rebuild the figures of docs/invariance.md and docs/correspondence.md with the zfprobe CLI.

    python scripts/make_study_figures.py [--efficientnet PATH.onnx] [--work DIR]

* invariance on EfficientNet-Lite0 (real ImageNet weights, the ONNX export that
  tests/efficientnet_lite0.py writes into the asset cache) on five of foolbox's labelled ImageNet
  photos, layers ``/Clip`` (the stem, after ReLU6) and ``/Flatten`` (the 1280 pooled features);
* invariance on the bundled MNIST net and its 20 sample digits, layers conv1 and relu3;
* correspondence on fer's mini-Xception (Keras) over the 100 aligned lfw faces of scikit-image
  (scripts/lfw_faces.py), 20 random squares.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
IMG = os.path.join(ROOT, "docs", "img")


def zfprobe(*args) -> None:
    subprocess.run([sys.executable, "-m", "zfprobe.cli.main", *map(str, args), "--no-progress"], check=True)


def main() -> None:
    from assets import cache_dir, fer_hdf5, foolbox_samples
    from lfw_faces import write_faces

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efficientnet", default=str(cache_dir() / "efficientnet_lite0_zfprobe_v1.onnx"))
    ap.add_argument("--work", default=os.path.join(ROOT, "out", "study_figures"))
    args = ap.parse_args()
    os.makedirs(IMG, exist_ok=True)

    photos = foolbox_samples("imagenet")[:5]
    out = os.path.join(args.work, "inv_efficientnet")
    labels = [a for _, label in photos for a in ("--label", label)]
    zfprobe("invariance", args.efficientnet, *[p for p, _ in photos], *labels, "-l", "/Clip", "-l", "/Flatten", "-o", out)
    shutil.copy(os.path.join(out, "invariance.png"), os.path.join(IMG, "invariance_efficientnet.png"))
    shutil.copy(os.path.join(out, "examples.png"), os.path.join(IMG, "invariance_examples.png"))

    out = os.path.join(args.work, "inv_mnist")
    zfprobe("invariance", os.path.join(ROOT, "zfprobe", "data", "mnist_cnn.onnx"),
            os.path.join(ROOT, "zfprobe", "data", "samples"), "-l", "conv1", "-l", "relu3", "-o", out)
    shutil.copy(os.path.join(out, "invariance.png"), os.path.join(IMG, "invariance_mnist.png"))

    faces, parts = write_faces(os.path.join(args.work, "lfw_faces"), 100)
    out = os.path.join(args.work, "corr_fer")
    zfprobe("correspondence", fer_hdf5(), os.path.dirname(parts), "--parts", parts, "--preset", "tf",
            *[a for l in ("activation_2", "activation_4", "activation_5", "activation_6", "add_4", "conv2d_7")
              for a in ("-l", l)], "--random", "20", "-o", out)
    shutil.copy(os.path.join(out, "parts.png"), os.path.join(IMG, "correspondence_parts.png"))
    shutil.copy(os.path.join(out, "delta.png"), os.path.join(IMG, "correspondence_delta.png"))
    print(open(os.path.join(out, "table.md")).read())


if __name__ == "__main__":
    main()
