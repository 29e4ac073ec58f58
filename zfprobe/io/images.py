"""Image files -> pixel arrays, faithfully and safely.

* **Faithful.** 8-bit files (L, RGB, palette, CMYK, LA, RGBA, ...) go through Pillow's own
  conversion to L or RGB (CMYK: R = 255 (1 - C/255)(1 - K/255), palette: its colours, alpha
  dropped). Deeper files keep their range instead of being clipped to 0..255 as Pillow's
  ``convert("L")`` does: 16-bit integer pixels (``I;16*``, and ``I`` from 16-bit PNGs) are scaled
  by 255/65535; float pixels (``F``, e.g. float TIFF) in [0, 1] are scaled by 255, other float
  images are taken as 0..255 and clipped. Deep images come back as float32 (0..255, not rounded)
  so the model sees their full precision; 8-bit images as uint8.
* **Bounded.** An image over :func:`max_pixels` pixels (``ZFPROBE_MAX_PIXELS``, default
  50,000,000) is refused from its header, before anything is decoded.
* **No shelling out.** Only Pillow formats that decode in-process are opened; EPS / PostScript
  (which Pillow hands to Ghostscript) are refused.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from zfprobe.errors import ImageError

DEFAULT_MAX_PIXELS = 50_000_000
UNSAFE_FORMATS = {"EPS"}  # decoded by running Ghostscript
_DEEP_INT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def max_pixels() -> int:
    """The pixel limit: ``ZFPROBE_MAX_PIXELS`` (an integer) or 50 megapixels."""
    value = os.environ.get("ZFPROBE_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise ImageError(f"ZFPROBE_MAX_PIXELS='{value}' is not a number of pixels") from None
    if limit < 1:
        raise ImageError(f"ZFPROBE_MAX_PIXELS='{value}' must be at least 1")
    return limit


def safe_formats() -> list[str]:
    from PIL import Image

    Image.init()
    return [f for f in Image.OPEN if f not in UNSAFE_FORMATS]


def image_extensions() -> set[str]:
    """File extensions of the formats :func:`read_image` opens."""
    from PIL import Image

    formats = set(safe_formats())
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in formats}


def read_image(path: str, channels: int, size: tuple[int, int], resize: str) -> np.ndarray:
    """[H, W, C] pixels (C = ``channels``, 1 or 3, RGB) of the file fitted to ``size`` (H, W):
    uint8 for 8-bit files, float32 in 0..255 for deeper ones (see the module doc)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise ImageError(f"image '{path}' {what}")
    limit = max_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # Pillow's own guard, at twice this, stops bombs it meets first
    too_big = f"over the limit of {limit:,} pixels (set ZFPROBE_MAX_PIXELS to allow more)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=safe_formats())
        with im:
            w, h = im.size
            if w * h > limit:
                raise ImageError(f"image '{path}' has {w} x {h} = {w * h:,} pixels, {too_big}")
            if w * h == 0:
                raise ImageError(f"image '{path}' has no pixels ({w} x {h})")
            im = ImageOps.exif_transpose(im)
            if im.mode in _DEEP_INT or im.mode == "F":
                arr = _deep_pixels(im, size, resize)
                return np.repeat(arr, 3, axis=2) if channels == 3 else arr
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(fit_image(im, size, resize), dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image '{path}' is {too_big}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"cannot read image '{path}': {msg}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _deep_pixels(im, size: tuple[int, int], resize: str) -> np.ndarray:
    """A 16-bit or float grey image as float32 [H, W, 1] in 0..255, fitted to ``size``."""
    from PIL import Image

    raw = np.asarray(im)
    if im.mode == "F":
        x = raw.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError("the float image holds NaN or infinite pixels")
        x = x * 255.0 if x.size and x.min() >= 0 and x.max() <= 1.0 else np.clip(x, 0, 255)
    else:
        x = np.clip(raw.astype(np.float64), 0, 65535).astype(np.float32) * np.float32(255.0 / 65535.0)
    fitted = fit_image(Image.fromarray(np.ascontiguousarray(x, np.float32)), size, resize)
    return np.clip(np.asarray(fitted, np.float32), 0, 255)[..., None]


def fit_image(im, size: tuple[int, int], mode: str):
    """``im`` at ``size`` (H, W): ``stretch`` resizes; ``crop`` scales the shorter side, centre-crops."""
    from PIL import Image

    h, w = size
    if mode == "stretch" or im.size == (w, h):
        return im.resize((w, h), Image.BILINEAR)
    scale = max(w / im.width, h / im.height)
    new = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
    im = im.resize(new, Image.BILINEAR)
    left, top = (new[0] - w) // 2, (new[1] - h) // 2
    return im.crop((left, top, left + w, top + h))


def to_display(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] for showing pixels from :func:`read_image`."""
    x = pixels if pixels.dtype == np.uint8 else np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x
