"""The aliasing check of a deeper layer (paper, Sec. 4.1: "aliasing artifacts caused by the large
stride 4 used in the 1st layer convolutions", seen in layer-2 projections, Fig. 6 (d) vs (e)).

The units of a layer sit on a grid of period ``P`` input pixels, the product of the strides
below it (AlexNet's layer 2: conv1 stride 4 x pool stride 2 = 8), and a unit's projection is a
sum of lower-layer filters placed on that grid: when the filters do not blend, the grid shows. In the frequency domain a period-``P`` grid puts energy on the lines ``fx = k/P`` and
``fy = k/P`` (k = 1..P-1). The check projects the strongest unit of each feature map over a
dataset, averages the projections' normalized power spectra (each projection's spectrum divided
by its total energy, so no unit dominates), and compares the mean power on those lines with the
mean power on the lines half-way between them (``(k +- 1/2) / P``):

- ``grid_contrast`` = mean power on the stride lines / mean power half-way between. About 1 (or
  less: spectra fall with frequency) means no grid; a visible grid gives several times more.
- ``grid_energy_fraction`` = the share of the averaged energy on the stride lines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfprobe.engine.rules import DECONVNET
from zfprobe.studies.filters.compute import FilterError, conv_nodes


@dataclass
class AliasingCheck:
    layer: str
    period: int
    channels: list[int]
    images: list[int]               # dataset index of the strongest unit, per channel
    positions: list[tuple[int, int]]
    values: list[float]
    spectrum: np.ndarray            # averaged normalized power [H, W], fftshifted
    grid_contrast: float
    grid_energy_fraction: float
    projections: np.ndarray         # [C, *input]

    def to_dict(self) -> dict:
        return {"layer": self.layer, "period_px": self.period, "grid_contrast": self.grid_contrast,
                "grid_energy_fraction": self.grid_energy_fraction, "units": len(self.channels)}


def default_period(probe, layer: str) -> int:
    """The stride of ``layer``'s receptive field (the product of the strides below it): the grid
    its projections are tiled on. AlexNet's and this check's layer 2: conv1 stride 4 x pool 2 = 8."""
    from zfprobe.engine.receptive_field import receptive_field

    if not conv_nodes(probe.graph):
        raise FilterError("this model has no convolution layer; the aliasing check needs one")
    layout = probe.preprocessing.layout if probe.preprocessing else None
    stride = receptive_field(probe.graph, probe.resolve(layer), layout).stride
    return int(max(stride)) if stride else 1


def stride_lines(shape: tuple[int, int], period: int) -> tuple[np.ndarray, np.ndarray]:
    """(on, between): masks over an fftshifted [H, W] spectrum of the stride-frequency lines
    (``k / period``, k = 1..period-1) and of the lines half-way between them (``(k +- 1/2) /
    period``): the baseline. A grid's replicas are as wide as the projection's envelope
    spectrum, so the baseline sits as far from them as the grid allows; its two sides average
    out the spectrum's decay with frequency."""
    on = np.zeros(shape, bool)
    between = np.zeros(shape, bool)
    for axis, n in enumerate(shape):
        centre = n // 2
        half = max(1, int(round(n / (2 * period))))
        for k in range(1, period):
            for sign in (1, -1):
                b = int(round(k * n / period))
                index = [slice(None), slice(None)]
                index[axis] = (centre + sign * b) % n
                on[tuple(index)] = True
                for d in (-half, half):
                    index[axis] = (centre + sign * (b + d)) % n
                    between[tuple(index)] = True
    between &= ~on
    return on, between


def grid_measures(spectrum: np.ndarray, period: int) -> tuple[float, float]:
    on, beside = stride_lines(spectrum.shape, period)
    total = float(spectrum.sum())
    if period < 2 or not on.any() or total <= 0:
        return 1.0, 0.0
    contrast = float(spectrum[on].mean() / max(spectrum[beside].mean(), 1e-30))
    return contrast, float(spectrum[on].sum() / total)


def mean_power_spectrum(projections: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """Average over projections of each one's power spectrum (summed over colour channels) divided
    by its total energy; fftshifted [H, W]."""
    p = np.asarray(projections, np.float64)
    axes = (-2, -1) if layout == "NCHW" else (-3, -2)
    power = np.abs(np.fft.fft2(p, axes=axes)) ** 2
    power = power.sum(axis=1 if layout == "NCHW" else -1)
    totals = power.reshape(len(power), -1).sum(axis=1)
    keep = totals > 0
    if not keep.any():
        return np.zeros(power.shape[1:])
    mean = (power[keep] / totals[keep, None, None]).mean(axis=0)
    return np.fft.fftshift(mean)


def aliasing_check(probe, dataset, layer: str, period: int | None = None, channels: list[int] | None = None,
                   batch_size: int = 32, limit: int | None = None, progress: bool = True,
                   rule: str = DECONVNET) -> AliasingCheck:
    """Project the strongest unit of each channel of ``layer`` over ``dataset`` and measure the
    grid of period ``period`` (default: the stride of the layer's receptive field) in their
    averaged spectrum."""
    from tqdm import tqdm

    from zfprobe.io.datasets import DatasetError

    period = period or default_period(probe, layer)
    tensor = probe.resolve(layer)
    shape = probe.graph.shape(tensor)
    if len(shape) != 4:
        raise FilterError(f"layer '{layer}' is not a feature map [N, C, H, W]; the aliasing check needs one")
    probe.deconv_program(layer, rule)  # a layer the deconvnet cannot pass fails before any work
    chans = list(range(shape[1])) if channels is None else list(channels)
    best = np.full(len(chans), -np.inf)
    where = np.zeros((len(chans), 3), np.int64)  # dataset index, y, x
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise DatasetError("the dataset is empty; give at least one image")
    seen = 0
    with tqdm(total=n, desc=f"strongest units of {layer}", unit="img", disable=not progress) as bar:
        for batch in dataset.batches(batch_size):
            keep = batch.indices < n
            if not keep.any():
                break
            a = probe.activations(batch.tensors[keep], tensor)[:, chans]
            flat = a.transpose(1, 0, 2, 3).reshape(len(chans), -1)
            arg = np.argmax(flat, axis=1)
            val = flat[np.arange(len(chans)), arg]
            better = val > best
            i, y, x = np.unravel_index(arg, (a.shape[0], a.shape[2], a.shape[3]))
            best[better] = val[better]
            where[better] = np.stack([batch.indices[keep][i], y, x], axis=1)[better]
            seen += int(keep.sum())
            bar.update(int(keep.sum()) + len(batch.skipped))
    if seen == 0:
        raise DatasetError("no image of the dataset could be read")
    live = [j for j in range(len(chans)) if best[j] > 0]
    if not live:
        raise FilterError(f"no unit of layer '{layer}' is ever active on this dataset; nothing to project")
    images = sorted({int(where[j, 0]) for j in live})
    slot = {idx: k for k, idx in enumerate(images)}
    inputs = np.concatenate([dataset.load(idx)[1] for idx in images])
    seeds = np.zeros((len(live),) + tuple(shape[1:]), np.float32)
    for r, j in enumerate(live):
        seeds[r, chans[j], where[j, 1], where[j, 2]] = best[j]
    seed_image = np.array([slot[int(where[j, 0])] for j in live], np.int64)
    projections = probe.project(inputs, layer, seeds, seed_image, rule=rule)
    layout = probe.preprocessing.layout if probe.preprocessing else "NCHW"
    spectrum = mean_power_spectrum(projections, layout)
    contrast, fraction = grid_measures(spectrum, period)
    return AliasingCheck(layer, period, [chans[j] for j in live], [int(where[j, 0]) for j in live],
                         [(int(where[j, 1]), int(where[j, 2])) for j in live], [float(best[j]) for j in live],
                         spectrum, contrast, fraction, projections)
