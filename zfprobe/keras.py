"""``zfprobe.keras``: one-line hooks for Keras training.

- ``EvolutionCallback(probe_images, layers=..., channels=..., epochs=[...], out=...)``: a
  ``model.fit`` callback that records the paper's Fig. 4 (see zfprobe.studies.evolution.compute);
  ``tensorboard_dir=...`` also writes each record as TensorBoard image and scalar summaries.
- ``RMSNorm(radius=0.1)``: the paper's RMS filter renormalization as a kernel constraint.

Keras / TensorFlow are imported only when one of these is first used.
"""
from __future__ import annotations

__all__ = ["EvolutionCallback", "RMSNorm"]


def __getattr__(name: str):
    if name in __all__:
        from zfprobe.adapters.training import keras_training

        return getattr(keras_training, name)
    raise AttributeError(f"module 'zfprobe.keras' has no attribute '{name}'")
