"""Display-only treatments of projections (the arrays and .npy files stay exact), and the
legibility measure used to choose among them (docs/legibility.md).

A layer whose units lie ``s`` pixels apart (its cumulative stride) cannot represent input detail
finer than that grid as *its own*: a reversal through strided transposed convolutions paints a
periodic pattern at the stride (the checkerboard of the deconvnet on nets without switches). What
is left after a low-pass at the stride is what a reader can read as structure at the unit's scale.
"""
from __future__ import annotations

import numpy as np

MIN_LEVELS = 16  # a grey level difference a reader sees on a screen (the existing legibility rule)


def _sigmas(stride, ndim: int) -> tuple[float, ...]:
    s = (stride, stride) if np.isscalar(stride) else tuple(stride)
    return tuple(max(0.0, float(v) / 2.0) for v in s) + (0.0,) * (ndim - 2)


def lowpass(x: np.ndarray, stride) -> np.ndarray:
    """``x`` [H, W(, C)] blurred by a Gaussian of sigma = stride / 2 per axis (a period-s pattern
    keeps exp(-pi^2 / 2) = 0.7% of its amplitude); stride <= 1 leaves it unchanged."""
    from scipy.ndimage import gaussian_filter

    sig = _sigmas(stride, x.ndim)
    if max(sig[:2]) <= 0.5:
        return np.asarray(x, dtype=np.float64)
    return gaussian_filter(np.asarray(x, dtype=np.float64), sig, mode="constant")


def lowpass_energy(p: np.ndarray, stride) -> float:
    """Share of the projection's energy that survives a low-pass at the layer's stride: near 0 for
    a checkerboard at the stride, near 1 for structure larger than the grid (NaN for p = 0)."""
    total = float(np.sum(np.asarray(p, dtype=np.float64) ** 2))
    return float(np.sum(lowpass(p, stride) ** 2) / total) if total > 0 else float("nan")


def structure_fraction(tile: np.ndarray, stride) -> float:
    """The legibility measure of a displayed uint8 tile [H, W, 3]: the share of its pixels that
    still differ from mid grey by >= 16 levels (in any colour channel) after a low-pass at the
    layer's stride, i.e. the visible structure at the scale the unit works at. A flat grey tile
    scores 0, and so does a checkerboard at the stride, however contrasted."""
    smooth = lowpass(tile.astype(np.float64), stride)
    return float(np.mean(np.abs(smooth - 128.0).max(axis=-1) >= MIN_LEVELS))


def edge_alignment(p: np.ndarray, image: np.ndarray) -> float:
    """The legibility measure: how well the projection's strong pixels lie on the image's edges.
    Pearson correlation, over the crop, between |p| (summed over colour channels) and the image's
    gradient magnitude (Sobel on grey levels), both smoothed by a 1-pixel Gaussian. A projection
    that reads as a picture of the image (the paper's Fig. 2 traces the patches' edges) scores
    high; a fixed template or a checkerboard that ignores the image scores near 0, and so does a
    flat tile (0 by definition). Contrast and colour mapping do not change it."""
    from scipy.ndimage import gaussian_filter, sobel

    grey = np.asarray(image, dtype=np.float64)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    edges = gaussian_filter(np.hypot(sobel(grey, 0), sobel(grey, 1)), 1.0)
    mag = np.abs(np.asarray(p, dtype=np.float64))
    mag = gaussian_filter(mag.sum(axis=-1) if mag.ndim == 3 else mag, 1.0)
    if mag.std() == 0 or edges.std() == 0:
        return 0.0
    return float(np.corrcoef(mag.ravel(), edges.ravel())[0, 1])


def periodic_share(p: np.ndarray, stride) -> float:
    """Share of the projection's energy in a pattern that repeats at the layer's stride ``s`` (the
    checkerboard of a strided reversal): the mean over the crop of each of the s x s phases,
    tiled, minus the overall mean. 0 for structure that does not repeat at the stride, 1 for a pure
    checkerboard (NaN for p = 0). Unlike a low-pass at the stride it keeps fine detail that is not
    periodic (text strokes)."""
    a = np.asarray(p, dtype=np.float64)
    a = a.sum(axis=-1) if a.ndim == 3 else a
    sy, sx = (stride, stride) if np.isscalar(stride) else tuple(stride)[:2]
    sy, sx = int(max(1, sy)), int(max(1, sx))
    h, w = (a.shape[0] // sy) * sy, (a.shape[1] // sx) * sx
    if h == 0 or w == 0 or (sy == 1 and sx == 1):
        return 0.0
    a = a[:h, :w] - a[:h, :w].mean()
    total = float(np.sum(a ** 2))
    if total == 0:
        return float("nan")
    phases = a.reshape(h // sy, sy, w // sx, sx).mean(axis=(0, 2))
    return float(np.sum(np.tile(phases, (h // sy, w // sx)) ** 2) / total)


def image_specificity(p: np.ndarray, own: np.ndarray, others: list[np.ndarray]) -> float:
    """The legibility measure (docs/legibility.md): edge alignment of the projection with its own
    image minus its mean edge alignment with other images at the same place. A picture that is
    the same for every image (the deconvnet without switches) aligns as well with any image's
    edges as with its own and scores about 0, however clean it looks; one that traces its own
    image scores up to 1."""
    base = edge_alignment(p, own)
    rest = [edge_alignment(p, o) for o in others]
    return base - float(np.mean(rest)) if rest else base


def legibility(p: np.ndarray, own: np.ndarray, others: list[np.ndarray], stride, alike: float = 0.0) -> float:
    """The legibility measure of a displayed projection crop (docs/legibility.md): how much more it
    traces its own image's edges than other images' at the same place (:func:`image_specificity`),
    discounted by the share of its energy in the checkerboard at the layer's stride
    (:func:`periodic_share`) and by ``alike``, its mean correlation with the projections of the
    other units of the same image (a picture every unit shares says nothing about the unit).
    About 0 for a picture that is the same for every image or every unit, for a flat tile and
    for a pure checkerboard; up to 1 for a picture of its own image's edges."""
    share = periodic_share(p, stride)
    share = 1.0 if not np.isfinite(share) else share
    return image_specificity(p, own, others) * (1.0 - share) * (1.0 - min(1.0, max(0.0, alike)))


def dealias(p: np.ndarray, stride) -> np.ndarray:
    """The projection [H, W, C] low-passed at the stride, for display only."""
    return lowpass(p, stride)


DEFAULT_DEALIAS_PX = 2.0  # docs/legibility.md: a Gaussian of sigma 1 px; at the layer's stride it leaves blobs


def shown(p: np.ndarray, dealias_px: float | None = DEFAULT_DEALIAS_PX) -> np.ndarray:
    """A projection [H, W, C] as displayed: low-passed at ``dealias_px`` (<= 1 or None: as is).
    The caller's array is never changed (display only)."""
    return dealias(p, dealias_px) if dealias_px and dealias_px > 1 else np.asarray(p)


def displayed_tile(p: np.ndarray, percentile, dealias_px: float | None = DEFAULT_DEALIAS_PX) -> np.ndarray:
    """The uint8 tile of a projection crop [H, W, C]: de-aliased, then the signed grey mapping
    (zfprobe.io.pictures). An exactly-zero projection stays one flat grey (and is labelled so)."""
    from zfprobe.io.pictures import signed_to_uint8

    return signed_to_uint8(shown(p, dealias_px), percentile)


def within_image(crop: np.ndarray, image_hw) -> np.ndarray:
    """The central part of a receptive-field crop, at most the image's shorter side on each axis
    (display only). A deep unit's nominal field can be several times the image (787 px on a 224-px
    input); shown whole, the image is a small patch in a grey square. The crop is centred on the
    unit, so the part kept is the unit's field capped about its centre, as the border rule caps it
    (zfprobe.engine.seeds.inside_fractions); capped at the shorter side, a square field stays
    square (a 160x448 detector input shows 160x160 about the unit, not a squeezed strip)."""
    h, w = crop.shape[:2]
    side = min(int(image_hw[0]), int(image_hw[1]))
    ch, cw = min(h, side), min(w, side)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return crop[y0: y0 + ch, x0: x0 + cw]


def masked_from_tile(patch: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """The masked patch from a displayed projection tile (uint8, grey = 0): the patch weighted by
    the tile's normalized distance from grey. Where only the drawn tiles are at hand (the mining
    sheets draw from uint8 tiles); the tile is already de-aliased, so no smoothing is added."""
    signed = tile.astype(np.float64) - 128.0
    return masked_patch(patch, signed, stride=1, percentile=100.0)


def masked_patch(patch: np.ndarray, p: np.ndarray, stride=1, percentile: float = 99.0) -> np.ndarray:
    """The image patch weighted by the normalized |projection| (the paper's Fig. 2 pairs patches
    with projections): the pixels the unit responds to keep their colour, the rest fade to grey.
    ``p`` [H, W, C] is the projection on the same crop; its magnitude is smoothed at the stride."""
    mag = np.abs(np.asarray(p, dtype=np.float64)).max(axis=-1)
    mag = lowpass(mag, stride)
    nz = mag[mag > 0]
    scale = float(np.percentile(nz, percentile)) if nz.size else 0.0
    w = np.clip(mag / scale, 0.0, 1.0)[..., None] if scale > 0 else np.zeros(mag.shape + (1,))
    out = 128.0 + (patch.astype(np.float64) - 128.0) * w
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def upsample(tile: np.ndarray, size: int, smooth: bool = True) -> np.ndarray:
    """A small tile enlarged to ``size`` px on its longer side: bilinear (``smooth``) or nearest."""
    from PIL import Image

    h, w = tile.shape[:2]
    if max(h, w) >= size:
        return tile
    scale = size / max(h, w)
    im = Image.fromarray(tile).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                      Image.BILINEAR if smooth else Image.NEAREST)
    return np.asarray(im)
