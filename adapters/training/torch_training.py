"""PyTorch training-loop glue for zfprobe.torch: the evolution recorder and RMS renormalization."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from zfprobe.engine.rules import DECONVNET
from zfprobe.errors import ZfprobeError
from zfprobe.studies.evolution.compute import Recorder
from zfprobe.studies.evolution.render import summaries


def _as_array(images) -> np.ndarray:
    import torch

    if isinstance(images, torch.Tensor):
        return images.detach().to("cpu", torch.float32).numpy()
    return np.asarray(images, np.float32)


class EvolutionRecorder:
    """Record Fig. 4 during training: add ``recorder.step(epoch)`` at the end of each epoch.

    ``probe_images``: a fixed batch of preprocessed inputs [N, C, H, W] (tensor or array) over
    which the strongest activation of each feature map is taken. ``layers``: module paths (or
    any zfprobe layer name). ``channels``: a list for every layer, a dict layer -> list, or None
    (the first 8 maps). ``epochs``: the epochs to record (None: every call). ``out``: the store
    folder (see zfprobe.studies.evolution.compute). The model is traced once, here; every record reads the live
    parameters, so nothing is rebuilt per epoch.

    ``tensorboard_dir`` (opt-in): also write each record there as TensorBoard summaries
    (torch.utils.tensorboard, which needs the ``tensorboard`` package) at step = epoch: every
    map's projection as an image and its strongest activation as a scalar (docs/evolution.md).
    """

    def __init__(self, model, probe_images, layers: Sequence[str] | str, channels=None,
                 epochs: Sequence[int] | None = (1, 2, 5, 10, 20, 30, 40, 64), out: str = "evolution",
                 rule: str = DECONVNET, batch_size: int = 64, device=None, tensorboard_dir: str | None = None):
        import zfprobe

        images = _as_array(probe_images)
        self.model = model
        self.probe = zfprobe.attach(model, images[:1], device=device)
        info = {"source": self.probe.source, "framework": "torch", "module": type(model).__qualname__}
        self._recorder = Recorder(self.probe, images, out, layers, channels, epochs, rule, batch_size, info)
        self.board = _summary_writer(tensorboard_dir) if tensorboard_dir is not None else None

    @property
    def store(self):
        return self._recorder.store

    @property
    def timings(self) -> list[float]:
        """Seconds each recorded epoch took."""
        return self._recorder.timings

    def step(self, epoch: int) -> bool:
        """Record ``epoch`` if chosen and not yet stored (a resumed run skips what it has); with
        ``tensorboard_dir``, write the new record's summaries too (flushed at once)."""
        added = self._recorder.step(epoch)
        if added and self.board is not None:
            self.write_summaries(self._recorder.last)
        return added

    def write_summaries(self, record) -> None:
        """Write one EpochRecord to ``tensorboard_dir`` at step = its epoch, and flush."""
        images, scalars = summaries(self.store.meta, record)
        for tag, image in images:
            self.board.add_image(tag, image, record.epoch, dataformats="HWC")
        for tag, value in scalars:
            self.board.add_scalar(tag, value, record.epoch)
        self.board.flush()

    def close(self) -> None:
        """Close the TensorBoard writer (if any); the store needs no closing."""
        if self.board is not None:
            self.board.close()

    def record(self, epoch: int):
        """The record of the current weights, computed but not stored (an EpochRecord)."""
        return self._recorder.record(epoch)


def _summary_writer(log_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ZfprobeError("tensorboard_dir needs the tensorboard package: pip install 'zfprobe[tensorboard]'") from None
    return SummaryWriter(log_dir=os.fspath(log_dir))


def renormalize_filters(model, radius: float = 0.1, modules=None) -> int:
    """The paper's renormalization, for after ``optimizer.step()``: every filter (output channel)
    of every ``nn.Conv1d/2d/3d`` (or of ``modules``) whose RMS exceeds ``radius`` is rescaled to
    RMS ``radius``, in place. Returns how many filters were rescaled."""
    import torch
    import torch.nn as nn

    convs = modules if modules is not None else [m for m in model.modules()
                                                   if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    changed = 0
    with torch.no_grad():
        for m in convs:
            w = m.weight
            # ConvTranspose keeps output channels on axis 1; plain convs on axis 0
            axis = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
            flat = w.transpose(0, axis).reshape(w.shape[axis], -1)
            rms = flat.double().pow(2).mean(dim=1).sqrt()
            over = rms > radius
            if bool(over.any()):
                scale = torch.where(over, radius / rms.clamp_min(1e-30), torch.ones_like(rms)).to(w.dtype)
                shape = [1] * w.dim()
                shape[axis] = -1
                w.mul_(scale.view(shape))
                changed += int(over.sum())
    return changed
