"""Feature evolution during training (paper, Sec. 4 and Fig. 4): the recorder core and its store.

At each chosen epoch, for each chosen feature map, the recorder finds the strongest activation
over a fixed probe set (image, position, value) and projects that one unit to pixel space with
the deconvnet, using the weights of that moment (the Probe of a live torch / Keras model reads
live parameters, so one Probe serves the whole run). The framework glue is thin and lives in
``zfprobe.torch`` / ``zfprobe.keras``; everything here is framework-free.

The store (format ``zfprobe-evolution``, version 1; docs/evolution.md) is a folder that is only
ever appended to:

- ``meta.json`` -- written once, atomically, when the store is created: the format and version,
  the layers with their channels and shapes, the input shape and layout, the SHA-256 of the
  probe images, the planned epochs, the rule. A later run (a resumed training) must agree on
  layers, channels, input shape and probe images, else it is refused: a store never mixes two
  experiments.
- ``epoch_NNNNNN.npz`` -- one per recorded epoch, written to a temporary file, fsynced, then
  renamed into place (``os.replace`` is atomic), so a crash leaves either the whole record or
  none. An epoch already in the store is never rewritten (a resumed run that repeats an epoch
  keeps the first record). Arrays, per layer index ``i``: ``L{i}_value`` [C] float32,
  ``L{i}_image`` [C] int64 (index into the probe set), ``L{i}_position`` [C, 2] int64 (y, x),
  ``L{i}_projection`` [C, *input] float32; and ``epoch``, ``unix_time``. Compressed
  (``np.savez_compressed``): projections are zero outside the unit's receptive field.

Readers accept version 1 and refuse a newer major version with a clear message.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zfprobe.engine.rules import DECONVNET
from zfprobe.errors import ZfprobeError
from zfprobe.io.outputs import fsync_dir

FORMAT = "zfprobe-evolution"
VERSION = 1
META = "meta.json"
EPOCH_FILE = re.compile(r"^epoch_(\d{6,})\.npz$")
DEFAULT_CHANNELS = 8   # feature maps per layer when none are chosen (Fig. 4 shows a handful)


class EvolutionStoreError(ZfprobeError):
    """A store that cannot be read, or does not match the run that wants to extend it."""


@dataclass
class EpochRecord:
    epoch: int
    unix_time: float
    values: list[np.ndarray]        # per layer [C]
    images: list[np.ndarray]        # per layer [C]
    positions: list[np.ndarray]     # per layer [C, 2]
    projections: list[np.ndarray]   # per layer [C, *input]


def images_sha256(images: np.ndarray) -> str:
    a = np.ascontiguousarray(images, np.float32)
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _write_durably(path: str, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, rename into place."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the store from other users
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


class EvolutionStore:
    """An append-only folder of per-epoch records (see the module docstring)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        meta_path = os.path.join(self.path, META)
        if not os.path.isfile(meta_path):
            raise EvolutionStoreError(f"'{self.path}' is not an evolution store (no {META}); record one with "
                                      "zfprobe.torch.EvolutionRecorder or zfprobe.keras.EvolutionCallback")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except (OSError, ValueError) as exc:
            raise EvolutionStoreError(f"cannot read {meta_path}: {exc}") from None
        if self.meta.get("format") != FORMAT:
            raise EvolutionStoreError(f"{meta_path} is not a {FORMAT} store")
        if int(self.meta.get("version", 0)) > VERSION:
            raise EvolutionStoreError(f"{meta_path} has format version {self.meta.get('version')}; this zfprobe reads "
                                      f"version {VERSION}: upgrade zfprobe")

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def open_or_create(cls, path: str, meta: dict) -> "EvolutionStore":
        """Open the store at ``path`` if it exists and matches ``meta``; else create it."""
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):  # leftovers of an interrupted write: never part of the store
            if name.startswith(".tmp-") and name.endswith(".part"):
                try:
                    os.unlink(os.path.join(path, name))
                except OSError:
                    pass
        meta_path = os.path.join(path, META)
        full = dict(meta, format=FORMAT, version=VERSION)
        if not os.path.exists(meta_path):
            _write_durably(meta_path, lambda f: f.write((json.dumps(full, indent=2) + "\n").encode()))
            return cls(path)
        store = cls(path)
        for key in ("layers", "input_shape", "probe_images_sha256", "rule"):
            if store.meta.get(key) != full.get(key):
                raise EvolutionStoreError(f"the store in '{path}' was recorded with a different {key.replace('_', ' ')}; "
                                          "record into a new folder (a store never mixes two experiments)")
        return store

    # -- contents --------------------------------------------------------------------------
    @property
    def layers(self) -> list[dict]:
        return self.meta["layers"]

    def epochs(self) -> list[int]:
        found = []
        for name in os.listdir(self.path):
            m = EPOCH_FILE.match(name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def epoch_path(self, epoch: int) -> str:
        return os.path.join(self.path, f"epoch_{int(epoch):06d}.npz")

    def has(self, epoch: int) -> bool:
        return os.path.exists(self.epoch_path(epoch))

    def append(self, record: EpochRecord) -> bool:
        """Add one epoch; False (and nothing written) if that epoch is already stored."""
        path = self.epoch_path(record.epoch)
        if os.path.exists(path):
            return False
        arrays = {"epoch": np.int64(record.epoch), "unix_time": np.float64(record.unix_time)}
        for i in range(len(self.layers)):
            arrays[f"L{i}_value"] = np.asarray(record.values[i], np.float32)
            arrays[f"L{i}_image"] = np.asarray(record.images[i], np.int64)
            arrays[f"L{i}_position"] = np.asarray(record.positions[i], np.int64)
            arrays[f"L{i}_projection"] = np.asarray(record.projections[i], np.float32)
        _write_durably(path, lambda f: np.savez_compressed(f, **arrays))
        return True

    def read(self, epoch: int, projections: bool = True) -> EpochRecord:
        path = self.epoch_path(epoch)
        try:
            with np.load(path, allow_pickle=False) as z:
                n = len(self.layers)
                return EpochRecord(int(z["epoch"]), float(z["unix_time"]),
                                   [z[f"L{i}_value"] for i in range(n)], [z[f"L{i}_image"] for i in range(n)],
                                   [z[f"L{i}_position"] for i in range(n)],
                                   [z[f"L{i}_projection"] if projections else None for i in range(n)])
        except (OSError, KeyError, ValueError) as exc:
            raise EvolutionStoreError(f"cannot read {path}: {exc}") from None


# ------------------------------------------------------------------ the recorder core -------
def parse_epochs(epochs) -> set[int] | None:
    if epochs is None:
        return None
    out = {int(e) for e in epochs}
    if any(e < 0 for e in out):
        raise ValueError("epochs must be >= 0")
    return out


class Recorder:
    """Framework-free core of EvolutionRecorder / EvolutionCallback: records the strongest unit of
    each chosen feature map and its projection at the chosen epochs into an EvolutionStore."""

    def __init__(self, probe, probe_images: np.ndarray, out: str, layers: Sequence[str],
                 channels: Sequence[int] | dict | None = None, epochs: Sequence[int] | None = None,
                 rule: str = DECONVNET, batch_size: int = 64, model_info: dict | None = None):
        from zfprobe.errors import ChannelError

        self.probe = probe
        self.images = np.ascontiguousarray(probe_images, np.float32)
        if self.images.ndim != len(probe.input_shape) or tuple(self.images.shape[1:]) != tuple(probe.input_shape[1:]):
            raise ZfprobeError(f"probe images of shape {list(self.images.shape)} do not fit the model input "
                               f"[N, {', '.join(map(str, probe.input_shape[1:]))}]")
        if len(self.images) == 0:
            raise ZfprobeError("the probe set is empty; give at least one image")
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise ZfprobeError("give at least one layer to record")
        self.layers = list(layers)
        self.tensors = [probe.resolve(layer) for layer in self.layers]
        self.rule = rule
        self.batch_size = max(1, int(batch_size))
        self.epochs = parse_epochs(epochs)
        self.channels: list[list[int]] = []
        for layer, tensor in zip(self.layers, self.tensors):
            shape = probe.graph.shape(tensor)
            if len(shape) != 4:
                raise ZfprobeError(f"layer '{layer}' is not a feature map [N, C, H, W] (shape {list(shape)})")
            chosen = channels.get(layer) if isinstance(channels, dict) else channels
            chosen = list(range(min(DEFAULT_CHANNELS, shape[1]))) if chosen is None else [int(c) for c in chosen]
            bad = [c for c in chosen if not 0 <= c < shape[1]]
            if bad or not chosen:
                raise ChannelError(f"layer '{layer}' has channels 0..{shape[1] - 1}; got {chosen}")
            self.channels.append(chosen)
            probe.deconv_program(layer, rule)  # a layer the deconvnet cannot pass fails now, not mid-training
        layout = probe.preprocessing.layout if probe.preprocessing else "NCHW"
        order = probe.preprocessing.channel_order if probe.preprocessing else "RGB"
        meta = {"layers": [{"name": l, "tensor": t, "channels": c, "shape": list(probe.graph.shape(t))}
                           for l, t, c in zip(self.layers, self.tensors, self.channels)],
                "input_shape": list(self.images.shape[1:]), "layout": layout, "channel_order": order,
                "probe_images": int(len(self.images)), "probe_images_sha256": images_sha256(self.images),
                "epochs_planned": None if self.epochs is None else sorted(self.epochs), "rule": rule,
                "model": model_info or {"source": probe.source}, "created_unix_time": time.time()}
        self.store = EvolutionStore.open_or_create(out, meta)
        self.timings: list[float] = []
        self.last: EpochRecord | None = None   # the record the last successful step() stored

    def wants(self, epoch: int) -> bool:
        return (self.epochs is None or int(epoch) in self.epochs) and not self.store.has(epoch)

    def strongest(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per layer: (value [C], image [C], position [C, 2]) of each chosen map's strongest unit."""
        best = [None] * len(self.layers)
        for start in range(0, len(self.images), self.batch_size):
            acts = self.probe.activations(self.images[start:start + self.batch_size], self.tensors)
            for i, (a, chans) in enumerate(zip(acts, self.channels)):
                a = np.asarray(a)[:, chans]
                flat = a.transpose(1, 0, 2, 3).reshape(len(chans), -1)
                arg = np.argmax(flat, axis=1)  # first maximum: lowest image, then row, then column
                val = flat[np.arange(len(chans)), arg]
                img, y, x = np.unravel_index(arg, (a.shape[0], a.shape[2], a.shape[3]))
                cur = (val, img + start, np.stack([y, x], axis=1))
                if best[i] is None:
                    best[i] = cur
                else:
                    better = cur[0] > best[i][0]
                    best[i] = tuple(np.where(better[:, None] if b.ndim == 2 else better, c, b)
                                    for c, b in zip(cur, best[i]))
        return best

    def record(self, epoch: int) -> EpochRecord:
        """Compute one epoch's record (without storing it)."""
        values, images, positions, projections = [], [], [], []
        for (val, img, pos), layer, tensor, chans in zip(self.strongest(), self.layers, self.tensors, self.channels):
            used = np.unique(img)
            slot = np.searchsorted(used, img)
            shape = self.probe.graph.shape(tensor)
            seeds = np.zeros((len(chans),) + tuple(shape[1:]), np.float32)
            seeds[np.arange(len(chans)), chans, pos[:, 0], pos[:, 1]] = val
            proj = self.probe.project(self.images[used], layer, seeds, slot, rule=self.rule)
            values.append(val.astype(np.float32))
            images.append(img.astype(np.int64))
            positions.append(pos.astype(np.int64))
            projections.append(proj)
        return EpochRecord(int(epoch), time.time(), values, images, positions, projections)

    def step(self, epoch: int) -> bool:
        """Record ``epoch`` if it is a chosen epoch not yet in the store; True if recorded."""
        if not self.wants(epoch):
            return False
        t0 = time.perf_counter()
        record = self.record(epoch)
        added = self.store.append(record)
        self.timings.append(time.perf_counter() - t0)
        if added:
            self.last = record
        return added
