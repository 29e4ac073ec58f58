"""Keras training glue for zfprobe.keras: the evolution callback and the RMS weight constraint."""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from zfprobe.engine.rules import DECONVNET
from zfprobe.studies.evolution.compute import Recorder
from zfprobe.studies.evolution.render import summaries


class EvolutionCallback(keras.callbacks.Callback):
    """Record Fig. 4 during ``model.fit(..., callbacks=[zfprobe.keras.EvolutionCallback(...)])``.

    Epochs are counted from 1 (Keras' ``on_epoch_end(0)`` is epoch 1, after one pass over the
    data), so ``epochs=[1, 2, 5]`` matches the paper's numbering; a resumed ``fit`` with
    ``initial_epoch`` continues the same store. ``probe_images``: preprocessed inputs in the
    model's layout ([N, H, W, C]). ``layers``: Keras layer names. The model is converted once,
    at the start of training; every record reads the live weights.

    ``tensorboard_dir`` (opt-in): also write each record there as TensorBoard summaries
    (``tf.summary``) at step = epoch: every map's projection as an image and its strongest
    activation as a scalar (docs/evolution.md).
    """

    def __init__(self, probe_images, layers: Sequence[str] | str, channels=None,
                 epochs: Sequence[int] | None = (1, 2, 5, 10, 20, 30, 40, 64), out: str = "evolution",
                 rule: str = DECONVNET, batch_size: int = 64, tensorboard_dir: str | None = None):
        super().__init__()
        self.probe_images = np.asarray(probe_images, np.float32)
        self.layers, self.channels, self.epochs_chosen = layers, channels, epochs
        self.out, self.rule, self.batch_size = out, rule, batch_size
        self.tensorboard_dir = tensorboard_dir
        self.recorder: Recorder | None = None
        self.board = None

    def _ensure(self) -> Recorder:
        if self.recorder is None:
            import zfprobe

            probe = zfprobe.attach(self.model)
            info = {"source": probe.source, "framework": "keras", "model": self.model.name}
            self.recorder = Recorder(probe, self.probe_images, self.out, self.layers, self.channels,
                                     self.epochs_chosen, self.rule, self.batch_size, info)
        return self.recorder

    def on_train_begin(self, logs=None):
        self._ensure()  # a bad layer or probe set fails before the first epoch, not after it
        if self.tensorboard_dir is not None and self.board is None:
            import tensorflow as tf

            self.board = tf.summary.create_file_writer(str(self.tensorboard_dir))

    def on_epoch_end(self, epoch, logs=None):
        recorder = self._ensure()
        step = int(epoch) + 1
        if recorder.step(step) and self.board is not None:
            import tensorflow as tf

            images, scalars = summaries(recorder.store.meta, recorder.last)
            with self.board.as_default():
                for tag, image in images:
                    tf.summary.image(tag, image[None], step=step)
                for tag, value in scalars:
                    tf.summary.scalar(tag, value, step=step)
            self.board.flush()

    @property
    def timings(self) -> list[float]:
        return [] if self.recorder is None else self.recorder.timings


@keras.saving.register_keras_serializable(package="zfprobe")
class RMSNorm(keras.constraints.Constraint):
    """The paper's filter renormalization as a Keras weight constraint: each filter (the last
    axis of a Conv kernel, [kh, kw, in, out]) whose RMS exceeds ``radius`` is rescaled to it.
    Use ``Conv2D(..., kernel_constraint=zfprobe.keras.RMSNorm(0.1))``; Keras applies it after
    every optimizer step."""

    def __init__(self, radius: float = 0.1):
        self.radius = float(radius)

    def __call__(self, w):
        ops = keras.ops
        axes = tuple(range(len(w.shape) - 1))
        rms = ops.sqrt(ops.mean(ops.square(w), axis=axes, keepdims=True))
        scale = ops.where(rms > self.radius, self.radius / ops.maximum(rms, 1e-30), ops.ones_like(rms))
        return w * ops.cast(scale, w.dtype)

    def get_config(self):
        return {"radius": self.radius}
