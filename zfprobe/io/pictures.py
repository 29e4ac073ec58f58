"""Turning signed projections into pictures.

The mapping (documented in docs/methods.md and docs/legibility.md): a projection p is divided by a
scale s and shown as ``128 + 127 * clip(p / s, -1, 1)``: zero is mid grey, positive contributions
brighter, negative darker, the sign preserved and colour channels scaled together.

``s`` is robust by default: the ``DEFAULT_PERCENTILE``-th percentile of |p| over the pixels where
p is non-zero, so the few strongest pixels saturate instead of taking the whole range and leaving
the rest of the tile uniform grey (captum's ``visualize_image_attr`` likewise clips the top 2 % by
default). Counting only non-zero pixels keeps the scale independent of how much of the frame lies
outside the unit's receptive field. ``percentile=None`` gives the plain max-|p| scaling.
"""
from __future__ import annotations

import numpy as np


def projection_to_hwc(projection: np.ndarray, layout: str = "NCHW", channel_order: str = "RGB") -> np.ndarray:
    """One projection in model layout -> float [H, W, C] in RGB order."""
    x = projection.transpose(1, 2, 0) if layout == "NCHW" else projection
    if x.shape[2] == 3 and channel_order.upper() == "BGR":
        x = x[..., ::-1]
    return x


DEFAULT_PERCENTILE = 99.0


def display_scale(x: np.ndarray, percentile: float | None = DEFAULT_PERCENTILE) -> float:
    """The scale s of the grey mapping: a percentile of the non-zero |p| (None or 100: max |p|)."""
    mag = np.abs(np.asarray(x, dtype=np.float64))
    mag = mag[np.isfinite(mag)]
    if mag.size == 0:
        return 0.0
    if percentile is None or percentile >= 100:
        return float(mag.max())
    nonzero = mag[mag > 0]
    return float(np.percentile(nonzero, percentile)) if nonzero.size else 0.0


def describe_mapping(percentile: float | None) -> str:
    """One line for legends and manifests: how a projection became grey levels."""
    if percentile is None or percentile >= 100:
        how = "s = max |p| of each projection"
    else:
        how = f"s = {percentile:g}th percentile of the non-zero |p| of each projection (stronger pixels saturate)"
    return f"grey = 128 + 127 * clip(p / s, -1, 1) per pixel and colour channel; {how}"


def signed_to_uint8(x: np.ndarray, percentile: float | None = None) -> np.ndarray:
    """Map signed values around grey (see module docstring); returns uint8 with 3 channels.
    ``percentile=None`` scales by max |p|; callers pass ``DEFAULT_PERCENTILE`` for the default."""
    scale = display_scale(x, percentile)
    if scale <= 0 or not np.isfinite(scale):
        out = np.full(x.shape, 128, dtype=np.uint8)
    else:
        out = np.round(128 + 127 * np.clip(x / scale, -1.0, 1.0)).astype(np.uint8)
    if out.ndim == 3 and out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def load_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(tiles: list[np.ndarray], captions: list[str], columns: int | None = None,
                  tile_size: int = 160, title: str | None = None, smooth: bool = False) -> np.ndarray:
    """A grid of captioned RGB tiles (uint8 [H, W, 3]) -> one uint8 image. Small tiles are
    enlarged by nearest neighbour (every pixel visible) or, with ``smooth``, bilinearly."""
    from PIL import Image, ImageDraw

    n = len(tiles)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    caption_h, title_h, pad = 16, (22 if title else 0), 4
    sheet = Image.new("RGB", (columns * (tile_size + pad) + pad, title_h + rows * (tile_size + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 3), title, fill="black", font=load_font(14))
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * (tile_size + pad), title_h + pad + r * (tile_size + caption_h + pad)
        im = Image.fromarray(tile).resize((tile_size, tile_size), Image.NEAREST if tile.shape[0] < tile_size and not smooth else Image.BILINEAR)
        sheet.paste(im, (x0, y0))
        draw.text((x0, y0 + tile_size + 1), caption[:28], fill="black", font=load_font(11))
    return np.asarray(sheet)


def legend(width: int, percentile: float | None, height: int = 46) -> np.ndarray:
    """A colour legend strip: the grey ramp from -s to +s with its labels and the mapping rule."""
    from PIL import Image, ImageDraw

    width = max(width, 600)
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    ramp_w, x0 = min(200, width - 20), 8
    ramp = np.round(np.linspace(1, 255, ramp_w)).astype(np.uint8)
    im.paste(Image.fromarray(np.repeat(np.repeat(ramp[None, :, None], 12, 0), 3, 2)), (x0, 4))
    draw.rectangle((x0 - 1, 3, x0 + ramp_w, 16), outline="black")
    font = load_font(10)
    draw.text((x0, 18), "-s", fill="black", font=font)
    draw.text((x0 + ramp_w // 2 - 3, 18), "0", fill="black", font=font)
    draw.text((x0 + ramp_w - 12, 18), "+s", fill="black", font=font)
    scale = "max |p|" if percentile is None or percentile >= 100 else f"{percentile:g}th pct of non-zero |p|"
    draw.text((x0 + ramp_w + 10, 4), f"projection p: grey = 0, brighter = positive, darker = negative", fill="black", font=font)
    draw.text((x0 + ramp_w + 10, 18), f"s = {scale} (per tile; beyond s saturates)", fill="black", font=font)
    return np.asarray(im)


def with_legend(sheet: np.ndarray, percentile: float | None) -> np.ndarray:
    """``sheet`` with the colour legend added below it."""
    bar = legend(sheet.shape[1], percentile, height=34)
    if bar.shape[1] > sheet.shape[1]:
        pad = np.full((sheet.shape[0], bar.shape[1] - sheet.shape[1], 3), 255, np.uint8)
        sheet = np.concatenate([sheet, pad], axis=1)
    return np.concatenate([sheet, bar], axis=0)


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures render without a display."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def new_figure(width: float, height: float, dpi: int = 120):
    """A matplotlib Figure outside pyplot's registry (nothing to close, safe in threads)."""
    pyplot()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def figure_png(fig, tight: bool = True) -> bytes:
    """A matplotlib figure as PNG bytes (``tight``: trimmed to its content); the figure is closed."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **({"bbox_inches": "tight"} if tight else {}))
    pyplot().close(fig)
    return buf.getvalue()
