"""``zfprobe.torch``: one-line hooks for PyTorch training loops.

- ``EvolutionRecorder(model, probe_images, layers=..., channels=..., epochs=[...], out=...)``
  with ``.step(epoch)``: records the paper's Fig. 4 (see zfprobe.studies.evolution.compute);
  ``tensorboard_dir=...`` also writes each record as TensorBoard image and scalar summaries.
- ``renormalize_filters(model, radius=0.1)``: the paper's RMS filter renormalization, to call
  after ``optimizer.step()``.

torch is imported only when one of these is first used (``import zfprobe`` never imports it).
"""
from __future__ import annotations

__all__ = ["EvolutionRecorder", "renormalize_filters"]


def __getattr__(name: str):
    if name in __all__:
        from zfprobe.adapters.training import torch_training

        return getattr(torch_training, name)
    raise AttributeError(f"module 'zfprobe.torch' has no attribute '{name}'")
