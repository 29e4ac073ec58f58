"""How alike two projections are: the measures of Adebayo et al., "Sanity checks for saliency
maps" (NeurIPS 2018), computed with scipy and scikit-image.

Each projection (model layout, [C, H, W] or [H, W, C]) is first reduced to one signed map
[H, W] by summing its colour channels. On that map:

- ``spearman_abs``: Spearman rank correlation of |map| (Adebayo's main measure);
- ``spearman_signed``: Spearman rank correlation of the signed map;
- ``ssim``: structural similarity of |map| / max|map| (both in [0, 1], data range 1);
- ``hog``: Pearson correlation of the HOG descriptors of |map| / max|map|.

Degenerate maps have no rank order: two all-constant maps count as identical (1.0), one
constant map against a varying one as unrelated (0.0). Every measure is unchanged when a
projection is scaled by a positive factor, so the seed's magnitude does not matter.
"""
from __future__ import annotations

import numpy as np

METRICS = ("spearman_abs", "spearman_signed", "ssim", "hog")


def to_map(projection: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """One signed [H, W] map from a projection in model layout (channels summed)."""
    p = np.asarray(projection, dtype=np.float64)
    if p.ndim == 2:
        return p
    return p.sum(axis=0) if layout == "NCHW" else p.sum(axis=-1)


def _normalized_magnitude(m: np.ndarray) -> np.ndarray:
    a = np.abs(m)
    top = a.max()
    return a / top if top > 0 else a


def _degenerate(a: np.ndarray, b: np.ndarray) -> float | None:
    """1.0 or 0.0 when a rank correlation is undefined (a constant map), else None."""
    ca, cb = np.ptp(a) == 0, np.ptp(b) == 0
    if ca and cb:
        return 1.0
    if ca or cb:
        return 0.0
    return None


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    fixed = _degenerate(a, b)
    return fixed if fixed is not None else float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps already scaled to [0, 1]."""
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def hog_features(m: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    cell = max(2, min(m.shape) // 8)
    return hog(m, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2), feature_vector=True)


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the HOG descriptors of two maps scaled to [0, 1] (NaN for maps
    under 4 pixels a side, too small for one HOG block)."""
    if min(a.shape) < 4:
        return float("nan")
    fa, fb = hog_features(a), hog_features(b)
    fixed = _degenerate(fa, fb)
    return fixed if fixed is not None else float(np.corrcoef(fa, fb)[0, 1])


def compare(p: np.ndarray, q: np.ndarray, layout: str = "NCHW",
            box: tuple[tuple[int, int], ...] | None = None) -> dict[str, float]:
    """Every measure between two projections of the same shape, inside ``box`` (inclusive
    ``((y0, y1), (x0, x1))``, e.g. a unit's receptive field) when given."""
    mp, mq = to_map(p, layout), to_map(q, layout)
    if box is not None:
        crop = tuple(slice(lo, hi + 1) for lo, hi in box)
        mp, mq = mp[crop], mq[crop]
    np_, nq = _normalized_magnitude(mp), _normalized_magnitude(mq)
    return {
        "spearman_abs": spearman(np.abs(mp), np.abs(mq)),
        "spearman_signed": spearman(mp, mq),
        "ssim": ssim(np_, nq),
        "hog": hog_similarity(np_, nq),
    }


def mean_pairwise(projections: np.ndarray, layout: str = "NCHW",
                  box: tuple[tuple[int, int], ...] | None = None) -> dict[str, float]:
    """Mean of each measure over all pairs of distinct projections (the unit-selectivity check of
    Mahendran & Vedaldi 2016: high values mean the picture hardly depends on the unit)."""
    k = len(projections)
    if k < 2:
        return {m: float("nan") for m in METRICS}
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    for i in range(k):
        for j in range(i + 1, k):
            for name, value in compare(projections[i], projections[j], layout, box).items():
                values[name].append(value)
    return {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in values.items()}
