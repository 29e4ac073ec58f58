"""Labelled data for the transfer / probe / ablation tests: scikit-learn's ``load_digits``
(8x8, 0..16) upscaled to 20x20 and padded to 28x28, white on black, as MNIST is; the bundled
MNIST CNN plays the "ImageNet model" and these digits the "Caltech" (paper Tables 4-7)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

CLI_MODEL = Path(__file__).resolve().parent.parent / "zfprobe" / "data" / "mnist_cnn.onnx"


@functools.lru_cache(maxsize=None)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    up = [np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR)) for im in d.images]
    return np.pad(np.stack(up), ((0, 0), (4, 4), (4, 4))), d.target.astype(np.int64)


def digits_arrays(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 28, 28], int64 [n]): the first ``n`` digits (about n/10 per class)."""
    images, labels = _all_digits()
    return images[:n].copy(), labels[:n].copy()
