"""Seeds: what to send down the deconvnet.

A seed keeps some activations of one image at the probed layer and zeroes the rest (paper,
section 1): one unit (channel, position), or a whole feature map. Because every rule is
positively homogeneous the seed's scale only rescales the projection; zfprobe keeps the real
activation values so projections of different units are comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zfprobe.errors import ChannelError, OptionError


@dataclass(frozen=True)
class Seed:
    """One projection to make. ``position`` is None for a whole feature map."""

    channel: int
    position: tuple[int, ...] | None
    value: float
    image_index: int = 0
    kind: str = "unit"  # "unit" or "map"

    def to_dict(self) -> dict:
        return {"channel": self.channel, "position": list(self.position) if self.position is not None else None,
                "value": self.value, "image_index": self.image_index, "kind": self.kind}


def channel_count(acts: np.ndarray) -> int:
    return acts.shape[1]


def _check_channel(acts: np.ndarray, channel: int) -> None:
    n = channel_count(acts)
    if not 0 <= channel < n:
        raise ChannelError(f"channel {channel} is out of range: this layer has {n} channels (0..{n - 1})")


def strongest_unit(acts: np.ndarray, channel: int, image_index: int = 0) -> Seed:
    """The position with the largest activation in ``channel`` (first in raster order on ties)."""
    _check_channel(acts, channel)
    plane = acts[image_index, channel]
    flat = int(np.argmax(plane))
    pos = tuple(int(i) for i in np.unravel_index(flat, plane.shape)) if plane.ndim else ()
    return Seed(channel, pos, float(plane.reshape(-1)[flat]), image_index, "unit")


def unit(acts: np.ndarray, channel: int, position: tuple[int, ...], image_index: int = 0) -> Seed:
    _check_channel(acts, channel)
    plane = acts[image_index, channel]
    if len(position) != plane.ndim or any(not 0 <= p < s for p, s in zip(position, plane.shape)):
        raise ChannelError(f"position {tuple(position)} is outside the {plane.shape} feature map")
    return Seed(channel, tuple(int(p) for p in position), float(plane[tuple(position)]), image_index, "unit")


def feature_map(acts: np.ndarray, channel: int, image_index: int = 0) -> Seed:
    _check_channel(acts, channel)
    return Seed(channel, None, float(acts[image_index, channel].max()), image_index, "map")


def top_channels(acts: np.ndarray, n: int, image_index: int = 0) -> list[int]:
    """The ``n`` channels with the largest single activation, strongest first (ties: lower index)."""
    if n <= 0:
        raise OptionError("--top must be at least 1")
    per_channel = acts[image_index].reshape(acts.shape[1], -1).max(axis=1)
    order = np.lexsort((np.arange(len(per_channel)), -per_channel))
    return [int(c) for c in order[: min(n, len(per_channel))]]


def seed_tensor(acts: np.ndarray, seeds: list[Seed]) -> tuple[np.ndarray, np.ndarray]:
    """The dense seed batch [K, *layer] and the image index of each row."""
    out = np.zeros((len(seeds),) + acts.shape[1:], dtype=np.float32)
    for k, s in enumerate(seeds):
        if s.kind == "map":
            out[k, s.channel] = acts[s.image_index, s.channel]
        else:
            out[(k, s.channel) + tuple(s.position)] = acts[(s.image_index, s.channel) + tuple(s.position)]
    return out, np.array([s.image_index for s in seeds], dtype=np.int64)


@dataclass
class SeedRequest:
    """What the user asked for: explicit channels and/or the top-N, as units or maps."""

    channels: list[int] = field(default_factory=list)
    top: int | None = None
    mode: str = "unit"  # unit | map
    position: tuple[int, ...] | None = None

    def resolve(self, acts: np.ndarray, image_index: int = 0) -> list[Seed]:
        if self.mode not in ("unit", "map"):
            raise OptionError(f"unknown seed mode '{self.mode}'; choose unit or map")
        channels = list(self.channels)
        if self.top is not None:
            channels += [c for c in top_channels(acts, self.top, image_index) if c not in channels]
        if not channels:
            channels = top_channels(acts, min(9, acts.shape[1]), image_index)
        seeds = []
        for c in channels:
            if self.mode == "map":
                seeds.append(feature_map(acts, c, image_index))
            elif self.position is not None:
                seeds.append(unit(acts, c, self.position, image_index))
            else:
                seeds.append(strongest_unit(acts, c, image_index))
        return seeds
