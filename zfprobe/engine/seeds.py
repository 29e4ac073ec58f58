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


# Border units: a unit whose receptive field lies mostly in the zero padding is lifted by the
# padding's edge, not by the image; by default the strongest unit is chosen among the units with
# at least this share of their receptive field inside the image (``--position any``: anywhere).
INSIDE_FRACTION = 0.5
POSITION_RULES = ("inside", "any")


def _inside_1d(lo: int, hi: int, n: int) -> float:
    """Share of the window [lo, hi] (capped at n pixels about its centre) that lies in [0, n)."""
    size = min(hi - lo + 1, n)
    centre = (lo + hi) / 2.0
    a, b = centre - (size - 1) / 2.0, centre + (size - 1) / 2.0
    return max(0.0, min(b, n - 1) - max(a, 0.0) + 1) / size


def inside_fractions(rf, spatial: tuple[int, ...]) -> np.ndarray | None:
    """Per position of a layer's map (``spatial`` = (H, W)), the share of the unit's nominal
    receptive field that lies inside the image. A field larger than the image is first capped at
    the image's size about its centre (where the unit looks), so deep layers still tell a centred
    unit (1.0) from one at the border (about 0.3 in a corner). None where the layer has no 2-D map
    or its units see the whole image."""
    if len(spatial) != 2 or rf is None or rf.is_global:
        return None
    (hh, ww), (h_img, w_img) = spatial, rf.image_size
    fy = np.array([_inside_1d(*rf.nominal_box((y, 0))[0], h_img) for y in range(hh)])
    fx = np.array([_inside_1d(*rf.nominal_box((0, x))[1], w_img) for x in range(ww)])
    return np.outer(fy, fx)


def allowed_positions(rf, spatial: tuple[int, ...], rule: str = "inside") -> np.ndarray | None:
    """Boolean map of the positions the strongest-unit choice may pick (None: any position)."""
    if rule not in POSITION_RULES:
        raise OptionError(f"unknown position rule '{rule}'; choose one of {', '.join(POSITION_RULES)}")
    if rule == "any":
        return None
    frac = inside_fractions(rf, spatial)
    if frac is None:
        return None
    mask = frac >= INSIDE_FRACTION - 1e-12
    return mask if mask.any() else None


def strongest_unit(acts: np.ndarray, channel: int, image_index: int = 0, allowed: np.ndarray | None = None) -> Seed:
    """The position with the largest activation in ``channel`` (first in raster order on ties),
    among the ``allowed`` positions (a boolean map; None: all)."""
    _check_channel(acts, channel)
    plane = acts[image_index, channel]
    if allowed is not None:
        plane = np.where(allowed, plane, -np.inf)
    flat = int(np.argmax(plane))
    pos = tuple(int(i) for i in np.unravel_index(flat, plane.shape)) if plane.ndim else ()
    return Seed(channel, pos, float(acts[image_index, channel].reshape(-1)[flat]), image_index, "unit")


def unit(acts: np.ndarray, channel: int, position: tuple[int, ...], image_index: int = 0) -> Seed:
    _check_channel(acts, channel)
    plane = acts[image_index, channel]
    if len(position) != plane.ndim or any(not 0 <= p < s for p, s in zip(position, plane.shape)):
        raise ChannelError(f"position {tuple(position)} is outside the {plane.shape} feature map")
    return Seed(channel, tuple(int(p) for p in position), float(plane[tuple(position)]), image_index, "unit")


def feature_map(acts: np.ndarray, channel: int, image_index: int = 0) -> Seed:
    _check_channel(acts, channel)
    return Seed(channel, None, float(acts[image_index, channel].max()), image_index, "map")


def top_channels(acts: np.ndarray, n: int, image_index: int = 0, allowed: np.ndarray | None = None) -> list[int]:
    """The ``n`` channels with the largest single activation (at an ``allowed`` position),
    strongest first (ties: lower index)."""
    if n <= 0:
        raise OptionError("--top must be at least 1")
    planes = acts[image_index]
    if allowed is not None:
        planes = np.where(allowed, planes, -np.inf)
    per_channel = planes.reshape(acts.shape[1], -1).max(axis=1)
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
    allowed: np.ndarray | None = None  # positions the strongest-unit choice may pick (None: any)

    def resolve(self, acts: np.ndarray, image_index: int = 0) -> list[Seed]:
        if self.mode not in ("unit", "map"):
            raise OptionError(f"unknown seed mode '{self.mode}'; choose unit or map")
        allowed = self.allowed if self.mode == "unit" and self.position is None else None
        channels = list(self.channels)
        if self.top is not None:
            channels += [c for c in top_channels(acts, self.top, image_index, allowed) if c not in channels]
        if not channels:
            channels = top_channels(acts, min(9, acts.shape[1]), image_index, allowed)
        seeds = []
        for c in channels:
            if self.mode == "map":
                seeds.append(feature_map(acts, c, image_index))
            elif self.position is not None:
                seeds.append(unit(acts, c, self.position, image_index))
            else:
                seeds.append(strongest_unit(acts, c, image_index, allowed))
        return seeds
