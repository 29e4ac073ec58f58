"""Image file arguments of the study commands: folders expanded, every file checked up front.

The studies read their images one batch at a time; checking that each file exists and has a
readable header before the first batch means a typo fails at once, with one line, instead of
after minutes of work (and before any progress bar is drawn).
"""
from __future__ import annotations

import os
from typing import Sequence

from zfprobe.errors import ImageError, OptionError


def expand_images(paths: Sequence[str]) -> list[str]:
    """Files as given, folders as their image files (sorted by name)."""
    from zfprobe.io.datasets import image_extensions

    out = []
    exts = image_extensions()
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if os.path.splitext(f)[1].lower() in exts)
            if not found:
                raise OptionError(f"the folder '{p}' has no image files")
            out += found
        else:
            out.append(p)
    return out


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file as read (after its EXIF orientation); ImageError if the
    file is missing or not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ImageError(f"image '{path}' does not exist")
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image '{path}': {exc}") from None
