"""Geometric transforms of an image, in pixel space, for the invariance study (PAPER.md section 4).

Each transform keeps the image size: pixels that come from outside the original are filled with
one stated colour, pixels that leave the frame are cropped. Resampling is Pillow's (bilinear), on
the image as the model sees it (already resized to the model's input size), before
normalization.

``translate-x`` / ``translate-y``
    shift by the amount in pixels (positive: right / down); whole-pixel shifts move pixels
    exactly.
``scale``
    zoom about the image centre by the factor (1 = unchanged, 1.8 = 80% larger); the centre crop
    keeps the input size.
``rotate``
    rotate about the image centre by the amount in degrees, counter-clockwise.

Amounts come from a range ``A:B:STEP`` (both ends included when B lies on the grid) or a list
``a,b,c``. The paper's defaults: translation -60..+60 px (here scaled to the input size: 60 px
of 224, exactly the paper's at 224), scale 1..1.8, rotation 0..350 degrees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zfprobe.errors import OptionError

KINDS = ("translate-x", "translate-y", "scale", "rotate")
ALIASES = {"translate": ("translate-y", "translate-x")}
UNITS = {"translate-x": "px", "translate-y": "px", "scale": "x", "rotate": "deg"}
IDENTITY = {"translate-x": 0.0, "translate-y": 0.0, "scale": 1.0, "rotate": 0.0}
FILLS = ("mean", "grey", "black", "white")


@dataclass(frozen=True)
class Transform:
    kind: str
    amounts: tuple[float, ...]

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    def describe(self) -> str:
        a = self.amounts
        return f"{self.kind} {a[0]:g}..{a[-1]:g} {self.unit} ({len(a)} amounts)"


def expand_kinds(names) -> list[str]:
    """User transform names (``translate`` means both directions) -> kinds, in order, once each."""
    kinds: list[str] = []
    for name in names:
        key = str(name).lower()
        for kind in ALIASES.get(key, (key,)):
            if kind not in KINDS:
                raise OptionError(f"unknown transform '{name}'; choose translate, translate-x, translate-y, scale or rotate")
            if kind not in kinds:
                kinds.append(kind)
    if not kinds:
        raise OptionError("give at least one transform (--transform)")
    return kinds


def default_amounts(kind: str, size: tuple[int, int]) -> tuple[float, ...]:
    """The paper's range for ``kind``; translations scaled to the image side (exact at 224 px)."""
    if kind in ("translate-x", "translate-y"):
        side = size[1] if kind == "translate-x" else size[0]
        step = max(1, round(10 * side / 224))
        return tuple(float(step * k) for k in range(-6, 7))
    if kind == "scale":
        return tuple(round(1.0 + 0.1 * k, 10) for k in range(9))
    return tuple(float(10 * k) for k in range(36))


def parse_range(spec: str, kind: str | None = None) -> tuple[float, ...]:
    """``A:B:STEP`` (B included when on the grid) or ``a,b,c`` -> the amounts; refuses empty ranges."""
    text = str(spec).strip()
    what = f" for {kind}" if kind else ""
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step == 0 or not all(map(math.isfinite, parts)):
                raise OptionError(f"the range '{spec}'{what} is empty: STEP must be a non-zero number")
            n = math.floor((stop - start) / step + 1e-9) + 1
            if n < 1:
                raise OptionError(f"the range '{spec}'{what} is empty: no amount from {start:g} towards {stop:g} "
                                  f"in steps of {step:g}")
            if n > 10000:
                raise OptionError(f"the range '{spec}'{what} has {n} amounts; use a larger STEP")
            amounts = tuple(round(start + step * i, 10) for i in range(n))
        else:
            amounts = tuple(float(p) for p in text.split(",") if p.strip())
            if not amounts:
                raise OptionError(f"the range '{spec}'{what} is empty")
    except ValueError:
        raise OptionError(f"cannot read the range '{spec}'; write A:B:STEP (e.g. -60:60:10) or a list a,b,c") from None
    if not all(math.isfinite(a) for a in amounts):
        raise OptionError(f"the range '{spec}'{what} has a value that is not a finite number")
    if kind == "scale" and min(amounts) <= 0:
        raise OptionError(f"scale factors must be positive; the range '{spec}' has {min(amounts):g}")
    return amounts


def fill_pixel(fill, prep) -> tuple[int, ...]:
    """The fill colour of uncovered pixels as pixel values (0..255, one per image channel).

    ``mean``: the preprocessing's mean (model value 0, e.g. ImageNet's 124,116,104; black for
    inputs without a mean); ``grey``: 128; ``black``: 0; ``white``: 255; a number: that value.
    """
    channels = prep.channels
    if isinstance(fill, str) and fill.lower() in FILLS:
        fill = fill.lower()
        if fill == "mean":
            mean = np.broadcast_to(np.asarray(prep.mean, np.float64).reshape(-1), (channels,)) / float(prep.scale)
            if channels == 3 and prep.channel_order.upper() == "BGR":
                mean = mean[::-1]  # the model order -> the pixel (RGB) order
            return tuple(int(np.clip(round(float(m)), 0, 255)) for m in mean)
        value = {"grey": 128, "black": 0, "white": 255}[fill]
    else:
        try:
            value = float(fill)
        except (TypeError, ValueError):
            raise OptionError(f"unknown fill '{fill}'; choose mean, grey, black, white or a pixel value 0..255") from None
        if not 0 <= value <= 255:
            raise OptionError(f"the fill pixel value must be in 0..255, not {value:g}")
    return (int(round(value)),) * channels


def apply(pixels: np.ndarray, kind: str, amount: float, fill: tuple[int, ...]) -> np.ndarray:
    """``pixels`` [H, W, C] (C = 1 or 3; uint8, or float32 in 0..255 for 16-bit and float files,
    as :func:`zfprobe.io.images.read_image` gives them) transformed by ``kind`` / ``amount``;
    same shape and type. Float pixels are transformed channel by channel in Pillow's float mode
    "F", so a 16-bit image keeps its levels."""
    from PIL import Image

    h, w, c = pixels.shape
    if pixels.dtype != np.uint8:
        planes = [_transform(Image.fromarray(np.ascontiguousarray(pixels[..., i], np.float32), mode="F"), kind, amount,
                             float(fill[min(i, len(fill) - 1)])) for i in range(c)]
        return np.stack([np.asarray(p, np.float32) for p in planes], axis=2)
    im = Image.fromarray(pixels[..., 0] if c == 1 else pixels, mode="L" if c == 1 else "RGB")
    out = _transform(im, kind, amount, fill[0] if c == 1 else tuple(fill))
    arr = np.asarray(out, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _transform(im, kind: str, amount: float, colour):
    from PIL import Image

    w, h = im.size
    # Pillow's affine data maps each output pixel centre to the input position it samples.
    if kind == "translate-x":
        return im.transform((w, h), Image.AFFINE, (1, 0, -amount, 0, 1, 0), resample=Image.BILINEAR, fillcolor=colour)
    if kind == "translate-y":
        return im.transform((w, h), Image.AFFINE, (1, 0, 0, 0, 1, -amount), resample=Image.BILINEAR, fillcolor=colour)
    if kind == "scale":
        cx, cy, inv = w / 2, h / 2, 1.0 / amount
        return im.transform((w, h), Image.AFFINE, (inv, 0, cx - cx * inv, 0, inv, cy - cy * inv),
                            resample=Image.BILINEAR, fillcolor=colour)
    if kind == "rotate":
        return im.rotate(amount, resample=Image.BILINEAR, fillcolor=colour)
    raise OptionError(f"unknown transform '{kind}'")
