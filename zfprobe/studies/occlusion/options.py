"""Occlusion options: square positions, the fill value, the class output that is read.

These are what a user chooses or what the model dictates, checked once (bad values raise
:class:`~zfprobe.errors.OptionError`); the plan and the engine take them as given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfprobe.errors import OptionError, ZfprobeError
from zfprobe.engine.graph import Graph

METHODS = ("auto", "incremental", "plain")
FILLS = ("grey", "zero", "mean")
GREY_PIXEL = 128.0

PROBABILITY_NOTE = ("probabilities: the model's Softmax output when it has one, else softmax of its first output "
                    "(taken as logits), flattened per image")
POSITION_NOTE = ("square top-left corners on a grid 0, stride, 2*stride, ... while the square fits, plus one "
                 "position flush with the bottom/right border when the stride does not divide (image - size)")


class NoClassOutputError(ZfprobeError):
    """The model has no class output, so probability and label maps cannot be made."""


def positions(n: int, size: int, stride: int) -> list[int]:
    """Top-left corners along one axis of length ``n`` (see the module docstring)."""
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def check_geometry(height: int, width: int, size: int, stride: int) -> None:
    if int(size) != size or size < 1:
        raise OptionError(f"the square size must be a positive whole number of pixels, not {size}")
    if int(stride) != stride or stride < 1:
        raise OptionError(f"the stride must be at least 1 pixel, not {stride}")
    if size > min(height, width):
        raise OptionError(f"the occluding square ({size}x{size} px) is larger than the image ({height}x{width} px); "
                          f"use --size {min(height, width)} or less")


def fill_values(fill, prep, channels: int) -> tuple[np.ndarray, str]:
    """The per-channel model-space value of the square, and a description.

    ``grey``: pixel value 128 (of 0..255), normalized like the image; ``mean``: the dataset mean
    (model value 0 when the preprocessing subtracts a mean); ``zero``: 0 in model space; a number:
    that pixel value (0..255), normalized like the image.
    """
    if isinstance(fill, str) and fill not in FILLS:
        try:
            fill = float(fill)
        except ValueError:
            raise OptionError(f"unknown fill '{fill}'; choose grey, zero, mean or a pixel value 0..255") from None
    if not isinstance(fill, str) and not (np.isfinite(fill) and 0 <= float(fill) <= 255):
        raise OptionError(f"fill {fill} is not a pixel value 0..255; choose grey, zero, mean or a pixel value 0..255")
    if fill == "zero":
        return np.zeros(channels, np.float32), "zero (0 in model space)"
    if prep is None:
        raise OptionError(f"fill '{fill}' is in pixel space and needs the model's preprocessing; use fill='zero'")
    mean = prep.per_channel(prep.mean)
    std = prep.per_channel(prep.std)
    if fill == "mean":
        return np.zeros(channels, np.float32), f"mean (the dataset mean {tuple(float(m) for m in mean)}: 0 in model space)"
    pixel = GREY_PIXEL if fill == "grey" else float(fill)
    value = (pixel * prep.scale - mean) / std  # mean / std are in the model's channel order already
    label = "grey (pixel 128)" if fill == "grey" else f"pixel {pixel:g}"
    return value.astype(np.float32), label


@dataclass(frozen=True)
class ClassOutput:
    tensor: str          # the tensor read
    classes: int
    softmax: bool        # True when zfprobe applies softmax (the tensor holds logits)

    @property
    def source(self) -> str:
        return f"softmax of the logits '{self.tensor}'" if self.softmax else f"the model's Softmax output '{self.tensor}'"


def class_output(graph: Graph) -> ClassOutput | None:
    """The model's class output: a Softmax output if there is one, else the first output."""

    def classes(t: str) -> int:
        shape = graph.shapes.get(t)
        if not shape or len(shape) < 2:
            return 0
        k = int(np.prod(shape[1:]))
        return k if k >= 2 and all(d == 1 for d in sorted(shape[1:])[:-1]) else 0

    for t in graph.outputs:
        node = graph.producer(t)
        if node is not None and node.op_type == "Softmax" and classes(t):
            return ClassOutput(t, classes(t), False)
    if not graph.outputs:  # a graph that declares no outputs has no class output
        return None
    t = graph.outputs[0]
    return ClassOutput(t, classes(t), True) if classes(t) else None
