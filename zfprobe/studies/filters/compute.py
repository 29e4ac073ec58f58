"""First-layer filter diagnostics (paper, Sec. 4.1 and Fig. 6): what a conv layer's filters look
like in frequency, which of them are dead, and how much of their energy the layer's stride aliases.

Zeiler & Fergus found, by looking at AlexNet's first layer, a mix of very high and very low
frequency filters with little in between, "dead" filters, and aliasing from the stride of 4;
their fix (7x7 filters, stride 2) came from these pictures. This module computes the same
diagnosis as numbers: per filter the RMS, the 2-D amplitude spectrum, the dominant frequency
and its orientation, and the fraction of energy above the Nyquist frequency of the stride.
Everything here is numpy on the weights in ``probe.graph.constants`` (ONNX layout
``[out, in/groups, kh, kw]`` for every front-end); the pictures live in ``filters_render``.

Conventions (also in docs/filters.md):

- Frequencies are in cycles per input pixel, from ``numpy.fft.fftfreq`` of a zero-padded
  ``size x size`` DFT (``size`` = ``fft_size(kernel)``); the Nyquist frequency of stride ``s`` is
  ``1 / (2 s)``. A frequency (fy, fx) aliases when ``|fx| > 1/(2 sx)`` or ``|fy| > 1/(2 sy)``
  (the sampling grid of a strided conv is separable).
- A filter's power spectrum sums ``|DFT|^2`` over its input channels; the amplitude spectrum is
  its square root. Energy fractions come from the power spectrum (Parseval: the bins sum to
  ``size^2 * sum(w^2)``).
- Orientation is that of the dominant wave vector, in degrees in [0, 180): 0 = the filter varies
  along x (vertical stripes), 90 = along y (horizontal stripes), counter-clockwise on screen.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zfprobe.errors import ZfprobeError

# Ops a conv's output may pass through before the layer a user names (bias, BN, the rectifier).
POINTWISE_OPS = {"Relu", "Clip", "LeakyRelu", "PRelu", "BatchNormalization", "Add", "Sub", "Mul", "Div",
                 "Identity", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus"}
RECTIFIERS = {"Relu", "Clip", "LeakyRelu", "PRelu"}


class FilterError(ZfprobeError):
    """A model or layer whose filters cannot be diagnosed (no convolution, not a convolution)."""


@dataclass
class FilterBank:
    """The weights of one conv layer, as the paper's Fig. 6 shows them."""

    layer: str                     # the name the user gave (or the conv node's name)
    node: str                      # the Conv node
    output: str                    # the Conv node's output tensor
    weights: np.ndarray            # float64 [out, in/groups, kh, kw]
    stride: tuple[int, int]
    groups: int = 1
    first: bool = False            # the first conv of the network (input-facing)
    bias: np.ndarray | None = None

    @property
    def count(self) -> int:
        return int(self.weights.shape[0])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weights.shape[2]), int(self.weights.shape[3])


@dataclass
class FilterMeasures:
    """Per-filter numbers (arrays of length ``bank.count``) and the spectra they come from."""

    rms: np.ndarray
    norm: np.ndarray
    dominant_frequency: np.ndarray     # cycles / pixel
    orientation_deg: np.ndarray        # [0, 180)
    alias_fraction: np.ndarray         # share of the filter's energy above the stride's Nyquist
    alias_energy: np.ndarray           # that energy (power-spectrum units)
    total_energy: np.ndarray
    amplitude: np.ndarray              # [out, size, size], fftshifted (DC in the centre)
    frequencies: np.ndarray            # [size] fftshifted cycles / pixel, both axes
    nyquist: tuple[float, float]       # (y, x)

    @property
    def bank_alias_fraction(self) -> float:
        total = float(self.total_energy.sum())
        return float(self.alias_energy.sum() / total) if total > 0 else 0.0


@dataclass
class DeadThresholds:
    """When a filter counts as dead; all are options of ``zfprobe filters`` and go in the manifest."""

    norm: float = 0.05            # L2 norm below this fraction of the bank's median norm
    inactive_rate: float = 0.0    # with data: active on at most this fraction of positions
    saturated_rate: float = 1.0   # with data: at its ceiling (or, without one, active) on at least this fraction

    def to_dict(self) -> dict:
        return {"norm_relative_to_median": self.norm, "inactive_rate_at_most": self.inactive_rate,
                "saturated_rate_at_least": self.saturated_rate}


@dataclass
class ActivationStats:
    """How each filter's rectified output behaved over a dataset (counted over images x positions)."""

    tensor: str                   # the tensor counted (the rectifier after the conv, else the conv)
    ceiling: float | None         # the rectifier's upper bound (ReLU6: 6), None if unbounded
    positions: int                # images x positions counted per channel
    images: int
    active_rate: np.ndarray       # share of positions with output > 0
    saturated_rate: np.ndarray    # share at the ceiling (no ceiling: same as active_rate)
    max: np.ndarray


@dataclass
class Diagnosis:
    bank: FilterBank
    measures: FilterMeasures
    thresholds: DeadThresholds
    dead_norm: np.ndarray                      # bool [out]
    stats: ActivationStats | None = None
    dead_inactive: np.ndarray | None = None
    dead_saturated: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    channel_order: str = "RGB"                 # of the model's input: how 3-channel filters show

    def _repr_html_(self) -> str:
        """Jupyter: the filter and spectrum sheets and the findings that ``save_diagnosis``
        writes, drawn in memory."""
        from zfprobe.io.inline import block, img_tag, markdown_html
        from zfprobe.studies.filters.render import findings, sheets

        filters, spectra = sheets(self)
        return block(f"filters: {self.bank.layer} ({self.bank.count} filters)",
                     img_tag(filters, "filters.png"), img_tag(spectra, "spectra.png"),
                     markdown_html("\n".join(findings("this model", self))))

    @property
    def dead(self) -> np.ndarray:
        out = self.dead_norm.copy()
        for flags in (self.dead_inactive, self.dead_saturated):
            if flags is not None:
                out |= flags
        return out

    def reasons(self, i: int) -> list[str]:
        why = []
        if self.dead_norm[i]:
            why.append("near-zero norm")
        if self.dead_inactive is not None and self.dead_inactive[i]:
            why.append("never active")
        if self.dead_saturated is not None and self.dead_saturated[i]:
            why.append("always saturated")
        return why


# ------------------------------------------------------------------ finding the layer -------
def conv_nodes(graph) -> list:
    return [n for n in graph.nodes if n.op_type == "Conv" and len(n.inputs) > 1 and n.inputs[1] in graph.constants]


def filter_bank(probe, layer: str | None = None) -> FilterBank:
    """The filters of ``layer`` (a conv, or a bias / BN / rectifier right after one), else of the
    first conv layer. Raises :class:`FilterError` for a model without convolutions or a layer
    that is not one."""
    graph = probe.graph
    convs = conv_nodes(graph)
    if not convs:
        raise FilterError("this model has no convolution layer (with constant weights); zfprobe filters needs one")
    if layer is None:
        node, name = convs[0], None
    else:
        tensor = probe.resolve(layer)
        node = graph.producer(tensor)
        while node is not None and node.op_type in POINTWISE_OPS:
            ins = graph.variable_inputs(node)
            if len(ins) != 1:
                break
            node = graph.producer(ins[0])
        if node is None or node.op_type != "Conv" or node not in convs:
            what = "the model input" if node is None else f"a {node.op_type}"
            names = ", ".join(n.name for n in convs[:12]) + (", ..." if len(convs) > 12 else "")
            raise FilterError(f"layer '{layer}' is {what}, not a convolution; conv layers: {names}")
        name = layer
    weights = np.asarray(graph.constants[node.inputs[1]], np.float64)
    if weights.ndim != 4:
        raise FilterError(f"layer '{name or node.name}' is a {weights.ndim - 2}-D convolution; only 2-D filters are diagnosed")
    strides = tuple(int(s) for s in (node.attrs.get("strides") or (1, 1)))
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] in graph.constants:
        bias = np.asarray(graph.constants[node.inputs[2]], np.float64)
    return FilterBank(name or node.name, node.name, node.outputs[0], weights, (strides[0], strides[1]),
                      int(node.attrs.get("group", 1) or 1), node is convs[0], bias)


# ------------------------------------------------------------------ spectra -----------------
def fft_size(kernel: tuple[int, int], minimum: int = 32) -> int:
    """Zero-padded DFT size: at least 4 bins per kernel pixel (smooth spectra), a power of two."""
    need = max(minimum, 4 * max(kernel))
    return 1 << int(np.ceil(np.log2(need)))


def power_spectra(weights: np.ndarray, size: int) -> np.ndarray:
    """``sum_c |DFT_size(w[o, c])|^2`` per filter, fftshifted: [out, size, size]."""
    spec = np.fft.fft2(np.asarray(weights, np.float64), s=(size, size), axes=(-2, -1))
    power = (spec.real ** 2 + spec.imag ** 2).sum(axis=1)
    return np.fft.fftshift(power, axes=(-2, -1))


def alias_mask(size: int, stride: tuple[int, int]) -> np.ndarray:
    """Bins (fftshifted) above the Nyquist frequency of ``stride`` along either axis."""
    f = np.fft.fftshift(np.fft.fftfreq(size))
    fy, fx = np.meshgrid(f, f, indexing="ij")
    eps = 1e-12
    return (np.abs(fx) > 0.5 / stride[1] + eps) | (np.abs(fy) > 0.5 / stride[0] + eps)


def measure(bank: FilterBank, size: int | None = None) -> FilterMeasures:
    w = bank.weights
    size = size or fft_size(bank.kernel)
    power = power_spectra(w, size)
    f = np.fft.fftshift(np.fft.fftfreq(size))
    fy, fx = np.meshgrid(f, f, indexing="ij")
    flat = power.reshape(len(w), -1)
    peak = np.argmax(flat, axis=1)
    py, px = fy.ravel()[peak], fx.ravel()[peak]
    dominant = np.hypot(py, px)
    orientation = np.degrees(np.arctan2(-py, px)) % 180.0
    orientation[dominant == 0] = 0.0
    mask = alias_mask(size, bank.stride)
    total = flat.sum(axis=1)
    alias = power[:, mask].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(total > 0, alias / np.where(total > 0, total, 1), 0.0)
    norm = np.sqrt((w ** 2).reshape(len(w), -1).sum(axis=1))
    rms = np.sqrt((w ** 2).reshape(len(w), -1).mean(axis=1))
    return FilterMeasures(rms, norm, dominant, orientation, fraction, alias, total, np.sqrt(power), f,
                          (0.5 / bank.stride[0], 0.5 / bank.stride[1]))


# ------------------------------------------------------------------ dead filters ------------
def activation_tensor(graph, conv_output: str) -> tuple[str, float | None]:
    """The rectifier's output right after a conv (through bias / BN), and its upper bound; the
    conv output itself when no rectifier follows."""
    tensor = conv_output
    while True:
        users = graph.consumers(tensor)
        if len(users) != 1 or users[0].op_type not in POINTWISE_OPS:
            return conv_output, None
        node = users[0]
        tensor = node.outputs[0]
        if node.op_type in RECTIFIERS:
            ceiling = node.attrs.get("max") if node.op_type == "Clip" else None
            if node.op_type == "Clip" and ceiling is None and len(node.inputs) > 2 and node.inputs[2] in graph.constants:
                ceiling = float(np.asarray(graph.constants[node.inputs[2]]))
            return tensor, (float(ceiling) if ceiling is not None and np.isfinite(ceiling) else None)


def activation_stats(probe, dataset, bank: FilterBank, batch_size: int = 32, limit: int | None = None,
                     progress: bool = True) -> ActivationStats:
    """Stream ``dataset`` once and count, per filter, how often its rectified output is active or
    at its ceiling. Memory stays at one batch of activations."""
    from tqdm import tqdm

    from zfprobe.io.datasets import DatasetError

    tensor, ceiling = activation_tensor(probe.graph, bank.output)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise DatasetError("the dataset is empty; give at least one image")
    c = probe.graph.shape(tensor)[1]
    active = np.zeros(c, np.int64)
    saturated = np.zeros(c, np.int64)
    peak = np.full(c, -np.inf)
    positions = images = 0
    with tqdm(total=n, desc=f"activations of {bank.layer}", unit="img", disable=not progress, file=None) as bar:
        for batch in dataset.batches(batch_size):
            keep = batch.indices < n
            if not keep.any():
                break
            x = batch.tensors[keep]
            a = np.asarray(probe.activations(x, tensor), np.float64)
            a = np.moveaxis(a, 1, 0).reshape(c, -1)
            active += (a > 0).sum(axis=1)
            saturated += ((a >= ceiling) if ceiling is not None else (a > 0)).sum(axis=1)
            peak = np.maximum(peak, a.max(axis=1))
            positions += a.shape[1]
            images += len(x)
            bar.update(int(keep.sum()) + len(batch.skipped))
    if images == 0:
        raise DatasetError("no image of the dataset could be read")
    return ActivationStats(tensor, ceiling, positions, images, active / positions, saturated / positions, peak)


def diagnose(probe, layer: str | None = None, dataset=None, thresholds: DeadThresholds | None = None,
             batch_size: int = 32, limit: int | None = None, progress: bool = True,
             fft: int | None = None) -> Diagnosis:
    """The whole Fig. 6 diagnosis of one conv layer (with ``dataset``, also the data-based deaths)."""
    thresholds = thresholds or DeadThresholds()
    bank = filter_bank(probe, layer)
    m = measure(bank, fft)
    median = float(np.median(m.norm))
    dead_norm = m.norm <= thresholds.norm * median if median > 0 else np.ones(bank.count, bool)
    d = Diagnosis(bank, m, thresholds, dead_norm,
                  channel_order=probe.preprocessing.channel_order if probe.preprocessing else "RGB")
    if dataset is not None:
        s = activation_stats(probe, dataset, bank, batch_size, limit, progress)
        d.stats = s
        d.dead_inactive = s.active_rate <= thresholds.inactive_rate
        d.dead_saturated = s.saturated_rate >= thresholds.saturated_rate
    return d


# ------------------------------------------------------------------ renormalization ---------
def renormalize(weights: np.ndarray, radius: float = 0.1, out_axis: int = 0) -> np.ndarray:
    """The paper's filter renormalization: every filter (a slice along ``out_axis``) whose RMS
    exceeds ``radius`` is rescaled to RMS ``radius``; the others are returned unchanged."""
    w = np.asarray(weights)
    moved = np.moveaxis(w, out_axis, 0)
    rms = np.sqrt(np.mean(moved.reshape(len(moved), -1).astype(np.float64) ** 2, axis=1))
    scale = np.where(rms > radius, radius / np.where(rms > 0, rms, 1), 1.0)
    shape = [1] * w.ndim
    shape[out_axis] = -1
    return (w * scale.reshape(shape)).astype(w.dtype)
