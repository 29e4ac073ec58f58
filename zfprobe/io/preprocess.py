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

from zfprobe.errors import OptionError
from zfprobe.io.images import fit_image, read_image, to_display

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
    origin: str = field(default="shape", repr=False)  # "shape": defaults from the input shape; "sidecar": <model>.json

    def with_preset(self, name: str) -> "Preprocessing":
        if name not in PRESETS:
            raise OptionError(f"unknown preprocessing preset '{name}'; choose one of {', '.join(PRESETS)}")
        return replace(self, **PRESETS[name])

    def validate(self) -> "Preprocessing":
        """Refuse settings that silently give NaN or garbage (std 0, NaN mean, odd names)."""
        import math

        def numbers(key, value, nonzero=False):
            vals = value if isinstance(value, (tuple, list)) else (value,)
            if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                raise OptionError(f"preprocessing {key} must be a number or a list of numbers, not {value!r}")
            if not all(math.isfinite(v) for v in vals):
                raise OptionError(f"preprocessing {key} must be finite, not {value!r}")
            if nonzero and any(v == 0 for v in vals):
                raise OptionError(f"preprocessing {key} must not be 0 (the input is divided by it)")
            if isinstance(value, (tuple, list)) and len(vals) not in (1, self.channels):
                raise OptionError(f"{len(vals)} {key} values given for a {self.channels}-channel input")

        numbers("scale", self.scale, nonzero=True)
        numbers("mean", self.mean)
        numbers("std", self.std, nonzero=True)
        if not isinstance(self.channel_order, str) or self.channel_order.upper() not in ("RGB", "BGR"):
            raise OptionError(f"preprocessing channel_order must be RGB or BGR, not {self.channel_order!r}")
        if self.resize not in ("crop", "stretch"):
            raise OptionError(f"preprocessing resize must be crop or stretch, not {self.resize!r}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("labels", None)
        d.pop("origin", None)
        return d

    def per_channel(self, values: tuple[float, ...]) -> np.ndarray:
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
        x = (x * self.scale - self.per_channel(self.mean)) / self.per_channel(self.std)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None], dtype=np.float32)

    def to_display(self, tensor: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_tensor` for one image: model input -> uint8 RGB [H, W, 3]."""
        x = tensor.transpose(1, 2, 0) if self.layout == "NCHW" else tensor
        x = (x * self.per_channel(self.std) + self.per_channel(self.mean)) / self.scale
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
        prep.origin = "sidecar"
        where = f" in '{os.path.splitext(model_path)[0]}.json'"
        if "preset" in sidecar:
            if not isinstance(sidecar["preset"], str) or sidecar["preset"] not in PRESETS:
                raise OptionError(f"unknown preprocessing preset {sidecar['preset']!r}{where}; choose one of {', '.join(PRESETS)}")
            prep = prep.with_preset(sidecar["preset"])
        for key in ("scale", "mean", "std", "channel_order", "resize"):
            if key in sidecar:
                value = sidecar[key]
                setattr(prep, key, tuple(value) if isinstance(value, list) else value)
        labels = sidecar.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise OptionError(f"'labels'{where} must be a list of class names")
        prep.labels = labels
        try:
            prep.validate()
        except OptionError as exc:
            raise OptionError(f"{exc}{where}") from None
    return prep


# Input sizes of common ImageNet classifiers (torchvision, timm, Keras applications, ONNX zoo).
IMAGENET_SIZES = frozenset({224, 227, 229, 240, 256, 260, 288, 299, 300, 320, 331, 380})


def suggested_preset(prep: Preprocessing) -> str | None:
    """The preset an ImageNet-shaped model most likely wants when nothing says so (no sidecar):
    ``imagenet`` (mean/std, torchvision / timm / most ONNX exports) for a channels-first 3-channel
    square input of a common ImageNet size, ``tf`` ([-1, 1], Keras applications) for channels-last;
    None for any other input (the defaults, 1/255, stay)."""
    h, w = prep.size
    if prep.origin != "shape" or prep.channels != 3 or h != w or h not in IMAGENET_SIZES:
        return None
    return "imagenet" if prep.layout == "NCHW" else "tf"


def _sidecar(model_path: str | None) -> dict | None:
    if not model_path:
        return None
    path = os.path.splitext(model_path)[0] + ".json"
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise OptionError(f"cannot read the preprocessing file '{path}': {exc}") from None
    if not isinstance(data, dict):
        raise OptionError(f"the preprocessing file '{path}' must hold a JSON object (e.g. {{\"preset\": \"imagenet\"}}), "
                          f"not a {type(data).__name__}")
    return data


def read_pixels(path: str, prep: Preprocessing) -> np.ndarray:
    """An image file as [H, W, C] pixels at the model's size (C = 1 or 3, RGB): uint8 for 8-bit
    files, float32 0..255 for 16-bit and float files (see :mod:`zfprobe.io.images`)."""
    return read_image(path, prep.channels, prep.size, prep.resize)


_fit = fit_image  # older name, kept for callers


def load_image(path: str, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(display RGB uint8 [H, W, 3], model input float32 [1, ...])."""
    pixels = read_pixels(path, prep)
    return to_display(pixels), prep.to_tensor(pixels)
