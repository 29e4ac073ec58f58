"""Image loading and preprocessing: file -> (display image, model input tensor).

The model input is ``(pixels * scale - mean) / std`` per channel, in the model's channel order
(RGB or BGR) and layout (NCHW or NHWC). Presets cover the common conventions; defaults come
from the model's input shape and, if present, a ``<model>.json`` sidecar next to the model.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from zfprobe.errors import ImageError, OptionError

PRESETS = {
    # torchvision / timm ImageNet models
    "imagenet": dict(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="RGB"),
    # Caffe / Caffe2 model-zoo models: BGR, 0-255, mean subtracted
    "caffe": dict(scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="BGR"),
    # inputs in [0, 1]
    "unit": dict(scale=1 / 255, mean=(0.0,), std=(1.0,), channel_order="RGB"),
    # raw 0-255 inputs
    "raw": dict(scale=1.0, mean=(0.0,), std=(1.0,), channel_order="RGB"),
    # inputs in [-1, 1] (Inception, MobileNet in Keras)
    "tf": dict(scale=1 / 127.5, mean=(1.0,), std=(1.0,), channel_order="RGB"),
}


@dataclass
class Preprocessing:
    size: tuple[int, int]
    channels: int = 3
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resize: str = "crop"  # crop: shorter side to size then centre crop; stretch: to size exactly
    labels: list[str] | None = field(default=None, repr=False)

    def with_preset(self, name: str) -> "Preprocessing":
        if name not in PRESETS:
            raise OptionError(f"unknown preprocessing preset '{name}'; choose one of {', '.join(PRESETS)}")
        return replace(self, **PRESETS[name])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("labels", None)
        return d

    def _per_channel(self, values: tuple[float, ...]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        if v.size == 1:
            return np.repeat(v, self.channels)
        if v.size != self.channels:
            raise OptionError(f"{v.size} mean/std values given for a {self.channels}-channel input")
        return v

    def to_tensor(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels``: uint8 [H, W, C] (C = 1 or 3, RGB) -> float32 model input [1, ...]."""
        x = pixels.astype(np.float32)
        if self.channels == 3 and self.channel_order.upper() == "BGR":
            x = x[..., ::-1]
        x = (x * self.scale - self._per_channel(self.mean)) / self._per_channel(self.std)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None], dtype=np.float32)

    def to_display(self, tensor: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_tensor` for one image: model input -> uint8 RGB [H, W, 3]."""
        x = tensor.transpose(1, 2, 0) if self.layout == "NCHW" else tensor
        x = (x * self._per_channel(self.std) + self._per_channel(self.mean)) / self.scale
        if self.channels == 3 and self.channel_order.upper() == "BGR":
            x = x[..., ::-1]
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
        return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def default_preprocessing(input_shape: tuple[int, ...], model_path: str | None = None) -> Preprocessing:
    """Defaults from the model input (NCHW if dim 1 is 1 or 3, else NHWC) and the sidecar json."""
    if len(input_shape) != 4:
        raise OptionError(f"the model input has shape {input_shape}; zfprobe visualizes image inputs [N, C, H, W] or [N, H, W, C]")
    if input_shape[1] in (1, 3):
        layout, c, h, w = "NCHW", input_shape[1], input_shape[2], input_shape[3]
    else:
        layout, h, w, c = "NHWC", input_shape[1], input_shape[2], input_shape[3]
    prep = Preprocessing(size=(h, w), channels=c, layout=layout)
    sidecar = _sidecar(model_path)
    if sidecar:
        if "preset" in sidecar:
            prep = prep.with_preset(sidecar["preset"])
        for key in ("scale", "mean", "std", "channel_order", "resize"):
            if key in sidecar:
                value = sidecar[key]
                setattr(prep, key, tuple(value) if isinstance(value, list) else value)
        prep.labels = sidecar.get("labels")
    return prep


def _sidecar(model_path: str | None) -> dict | None:
    if not model_path:
        return None
    path = os.path.splitext(model_path)[0] + ".json"
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise OptionError(f"cannot read the preprocessing file '{path}': {exc}") from None


def read_pixels(path: str, prep: Preprocessing) -> np.ndarray:
    """Read an image file as uint8 [H, W, C] at the model's size (C = 1 or 3, RGB)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ImageError(f"image '{path}' does not exist")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("L" if prep.channels == 1 else "RGB")
            im = _fit(im, prep.size, prep.resize)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image '{path}': {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _fit(im, size: tuple[int, int], mode: str):
    from PIL import Image

    h, w = size
    if mode == "stretch" or im.size == (w, h):
        return im.resize((w, h), Image.BILINEAR)
    scale = max(w / im.width, h / im.height)
    new = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
    im = im.resize(new, Image.BILINEAR)
    left, top = (new[0] - w) // 2, (new[1] - h) // 2
    return im.crop((left, top, left + w, top + h))


def load_image(path: str, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(display RGB uint8 [H, W, 3], model input float32 [1, ...])."""
    pixels = read_pixels(path, prep)
    display = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    return display, prep.to_tensor(pixels)
