"""Turning signed projections into pictures.

The mapping (documented in docs/methods.md): a projection p is divided by a scale s and shown as
``128 + 127 * clip(p / s, -1, 1)``: zero is mid grey, positive contributions brighter, negative
darker, the sign preserved and colour channels scaled together. ``s`` is the largest |p| of the
projection by default, or its ``percentile``-th |p| value to enhance contrast (the paper says
only that contrast was enhanced).
"""
from __future__ import annotations

import numpy as np


def projection_to_hwc(projection: np.ndarray, layout: str = "NCHW", channel_order: str = "RGB") -> np.ndarray:
    """One projection in model layout -> float [H, W, C] in RGB order."""
    x = projection.transpose(1, 2, 0) if layout == "NCHW" else projection
    if x.shape[2] == 3 and channel_order.upper() == "BGR":
        x = x[..., ::-1]
    return x


def signed_to_uint8(x: np.ndarray, percentile: float | None = None) -> np.ndarray:
    """Map signed values around grey (see module docstring); returns uint8 with 3 channels."""
    mag = np.abs(x)
    scale = float(np.percentile(mag, percentile)) if percentile else float(mag.max())
    if scale <= 0 or not np.isfinite(scale):
        out = np.full(x.shape, 128, dtype=np.uint8)
    else:
        out = np.round(128 + 127 * np.clip(x / scale, -1.0, 1.0)).astype(np.uint8)
    if out.ndim == 3 and out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(tiles: list[np.ndarray], captions: list[str], columns: int | None = None,
                  tile_size: int = 160, title: str | None = None) -> np.ndarray:
    """A grid of captioned RGB tiles (uint8 [H, W, 3]) -> one uint8 image."""
    from PIL import Image, ImageDraw

    n = len(tiles)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    caption_h, title_h, pad = 16, (22 if title else 0), 4
    sheet = Image.new("RGB", (columns * (tile_size + pad) + pad, title_h + rows * (tile_size + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 3), title, fill="black", font=_font(14))
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * (tile_size + pad), title_h + pad + r * (tile_size + caption_h + pad)
        im = Image.fromarray(tile).resize((tile_size, tile_size), Image.NEAREST if tile.shape[0] < tile_size else Image.BILINEAR)
        sheet.paste(im, (x0, y0))
        draw.text((x0, y0 + tile_size + 1), caption[:28], fill="black", font=_font(11))
    return np.asarray(sheet)
