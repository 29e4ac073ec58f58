"""What a command uses when the user leaves something out: sample images, layers, output folder.

So that ``zfprobe visualize model.onnx`` works alone: bundled public-domain photos for colour
inputs (zfprobe/data/photos, see SOURCES.md there), the bundled digit (and the 20 MNIST samples
as a dataset) for 1-channel 28x28 inputs, a photo resized by the preprocessing otherwise; the
deepest spatial layer the deconvnet passes (or a few spread over depth); a folder named after
the command and the model.
"""
from __future__ import annotations

import os
import re

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")  # zfprobe/data
PHOTOS = os.path.join(DATA, "photos")
DIGITS = os.path.join(DATA, "samples")
# Activation-like outputs and residual sums make the most readable layers; other ops are used only
# when none exist. Clip (ReLU6) is left out: its strongest units sit at the saturation value, where
# the local derivative is 0, so their projections are blank.
_PREFERRED_OPS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "HardSwish", "MaxPool", "LRN", "Add"}


def _is_digit_input(prep) -> bool:
    return prep is not None and prep.channels == 1 and tuple(prep.size) == (28, 28)


def sample_images(prep) -> list[str]:
    """Bundled images that suit the model input, best first."""
    if _is_digit_input(prep):
        return [os.path.join(DATA, "digit.png")]
    return sorted(os.path.join(PHOTOS, f) for f in os.listdir(PHOTOS) if f.endswith(".jpg"))


def sample_dataset(prep) -> str:
    """A bundled folder to mine when no dataset is given (a tiny default dataset)."""
    return DIGITS if _is_digit_input(prep) else PHOTOS


def spatial_layers(probe) -> list:
    """Layers with a spatial map (C x H x W, H or W > 1) that the deconvnet can pass, in order."""
    layout = probe.preprocessing.layout if probe.preprocessing else "NCHW"
    out = []
    for info in probe.layers():
        shape = info.shape
        if not info.invertible or len(shape) != 4:
            continue
        hw = shape[2:] if layout == "NCHW" else shape[1:3]
        if max(hw) > 1:
            out.append(info)
    preferred = [i for i in out if i.op_type in _PREFERRED_OPS]
    return preferred or out


def deepest_layer(probe) -> str | None:
    layers = spatial_layers(probe)
    return layers[-1].name if layers else None


def spread_layers(probe, n: int = 3) -> list[str]:
    """``n`` layers spread over depth (about 1/n, 2/n, ..., the deepest)."""
    layers = spatial_layers(probe)
    if not layers:
        return []
    picks = []
    for i in range(1, n + 1):
        idx = max(0, round(len(layers) * i / n) - 1)
        if layers[idx].name not in picks:
            picks.append(layers[idx].name)
    return picks


def output_folder(command: str, model: str, *parts: str) -> str:
    """``zfprobe-<command>-<model stem>[-<parts>]`` in the current directory."""
    stem = os.path.splitext(os.path.basename(model))[0] or "model"
    name = "-".join(["zfprobe", command, stem, *parts])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
