"""Class names and top-5 predictions for classifier outputs.

A 1,000-way output is taken to be ImageNet-1k: zfprobe bundles the 1,000 class names
(zfprobe/data/imagenet_classes.txt, from torchvision 0.28's ``_IMAGENET_CATEGORIES``, BSD-3-Clause;
see zfprobe/data/IMAGENET_CLASSES.md). Names given by the user or the model's sidecar
(``labels``) take precedence.
"""
from __future__ import annotations

import functools
import os

import numpy as np

IMAGENET_CLASSES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                                "imagenet_classes.txt")
TOP_K = 5


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, in class-index order."""
    with open(IMAGENET_CLASSES, encoding="utf-8") as f:
        names = tuple(line.rstrip("\n") for line in f if line.strip())
    assert len(names) == 1000, IMAGENET_CLASSES
    return names


def class_names_for(n_classes: int, given: list[str] | None = None) -> list[str] | None:
    """The names to show for an ``n_classes``-way output: ``given`` when there are any, else the
    ImageNet names for a 1,000-way output, else None (indices only)."""
    if given is not None:
        return list(given)
    if n_classes == 1000:
        return list(imagenet_classes())
    return None


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """``scores`` [C] as probabilities: kept when they already are (in [0, 1], summing to 1),
    else the softmax of the logits."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size and s.min() >= 0 and abs(s.sum() - 1.0) < 1e-3:
        return s
    e = np.exp(s - s.max())
    return e / e.sum()


def top_predictions(scores: np.ndarray, names: list[str] | None = None, k: int = TOP_K) -> list[dict]:
    """The ``k`` most probable classes of one image: [{class, name, probability}], best first
    (ties: lower index)."""
    p = as_probabilities(scores)
    if names is None:
        names = class_names_for(p.size)
    order = np.lexsort((np.arange(p.size), -p))[:k]
    return [{"class": int(c), "name": names[c] if names is not None and c < len(names) else None,
             "probability": float(p[c])} for c in order]


def describe_predictions(preds: list[dict]) -> str:
    """One line: ``285 Egyptian cat 0.62, 281 tabby 0.21, ...``."""
    def label(p: dict) -> str:  # a name that only repeats the number (MNIST's '7') is left out
        name = p["name"]
        return f"{p['class']} {name}" if name and name != str(p["class"]) else str(p["class"])

    return ", ".join(f"{label(p)} {p['probability']:.2f}" for p in preds)
