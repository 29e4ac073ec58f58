"""Top-k per feature map over a dataset (the paper's Fig. 2): mining, then projection.

**Mining** streams the dataset in batches through only the part of the network the requested
layers need (one forward pass serves every layer), and keeps, for each channel of each layer, the
``k`` images whose strongest position in that channel is largest: one entry per image (as the
paper shows 9 different images), with that position and its value. Memory holds one batch of
activations per forward run in flight (see :func:`forward_parallelism`) plus ``[C, k]`` arrays
per layer, whatever the dataset's size. Order (and so ties) is
deterministic: value descending, then image index ascending; within an image the first position
in raster order wins. A layer without spatial extent (an FC layer ``[N, F]``) is mined per unit:
each of its F units is a "channel" with a single position, and its receptive field is the whole
image.

**Projection** sends every kept unit down the deconvnet (any rule), batched: units sorted by
image, each backend call as many seeds as the memory budget allows together with only the
images they belong to (one forward pass per image, one reverse pass per batch of seeds). Each unit keeps two crops at
its nominal receptive field (one size for the whole layer; see :mod:`zfprobe.engine.receptive_field`):
the image patch (grey beyond the image border) and the projection.

Resume: :func:`mine` can write its state (the top-k arrays, the number of images consumed and a
fingerprint of model, dataset, layers, k and preprocessing) atomically every few seconds; a later
call with the same inputs continues from there, with different inputs it starts clean.
"""
from __future__ import annotations

import io
import json
import os
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from zfprobe.engine.rules import AUTO, LRN_IDENTITY
from zfprobe.io.datasets import Dataset
from zfprobe.io.interrupts import deferred, pause
from zfprobe.errors import OptionError, ZfprobeError

STATE_FILE = ".mine-state.npz"
_NO_IMAGE = np.iinfo(np.int64).max  # sorts after every real image index
MAX_RUNS_IN_FLIGHT = 4  # concurrent forward passes on CPU (each holds one batch of activations)


@dataclass(frozen=True)
class MinedUnit:
    """One kept unit: ``rank`` (0 = strongest) of ``channel``, at ``position`` of image ``image``."""

    layer: str
    channel: int
    rank: int
    image: int
    position: tuple[int, ...]
    value: float

    def to_dict(self) -> dict:
        return {"layer": self.layer, "channel": self.channel, "rank": self.rank, "image": self.image,
                "position": list(self.position), "value": self.value}


def channel_maxima(acts: np.ndarray) -> np.ndarray:
    """[B, C]: each image's largest activation in each channel of ``acts`` [B, C, *spatial] (NaN
    where a map holds NaN); an FC layer [B, F] is its own maximum."""
    return acts.reshape(acts.shape[0], acts.shape[1], -1).max(axis=2)


class LayerTopK:
    """The running top-k of one layer: ``values``, ``images``, ``positions`` (flat raster index
    over the spatial axes), each ``[C, k]``; empty slots have image -1 (value -inf)."""

    def __init__(self, layer: str, tensor: str, shape: tuple[int, ...], k: int, allowed: np.ndarray | None = None):
        self.layer, self.tensor, self.k = layer, tensor, int(k)
        self.shape = tuple(shape)  # without batch: (C, *spatial) or (F,)
        self.channels = self.shape[0]
        self.spatial = self.shape[1:]
        # the positions an image's strongest unit may sit at (flat bool over the spatial axes;
        # None: anywhere); see zfprobe.engine.seeds.allowed_positions (--position)
        self.allowed = None if allowed is None else np.asarray(allowed, bool).reshape(-1)
        self._values = np.full((self.channels, self.k), -np.inf, np.float32)
        self._images = np.full((self.channels, self.k), _NO_IMAGE, np.int64)
        self._positions = np.full((self.channels, self.k), -1, np.int64)

    # -- update ----------------------------------------------------------------------------
    def update(self, acts: np.ndarray, indices: np.ndarray, maxima: np.ndarray | None = None) -> None:
        """Merge a batch: ``acts`` [B, *shape] of the images with dataset indices ``indices``.

        ``maxima`` [B, C] (optional): each image's largest activation per channel, when the
        caller already has it (e.g. from a GlobalMaxPool in its program); else numpy computes it.
        Only (image, channel) pairs whose maximum reaches the channel's current k-th value can
        enter, so the first-maximum position (argmax) is only looked for in those rows: after the
        first batches that is a handful per batch, whatever the dataset's size.
        """
        b = acts.shape[0]
        if b == 0:
            return
        flat = acts.reshape(b, self.channels, -1)
        if self.allowed is not None:  # one image at a time: no second copy of the whole batch
            maxima = np.stack([np.where(self.allowed, flat[i], -np.inf).max(axis=1) for i in range(b)])
        elif maxima is None:
            maxima = channel_maxima(acts)
        maxima = np.asarray(maxima).reshape(b, self.channels)
        # NaN counts as -inf (it never beats a real value; it may fill a slot nothing else fills)
        best = np.where(np.isnan(maxima), -np.inf, maxima)
        rows, chans = np.nonzero(best >= self._values[:, -1])  # >=: a tie may still win on index
        if rows.size == 0:
            return
        if self.allowed is not None:
            pos = np.where(self.allowed, flat[rows, chans], -np.inf).argmax(axis=1)
        elif 2 * rows.size > maxima.size:  # early batches: most rows are candidates
            pos = flat.argmax(axis=2)[rows, chans]              # first maximum in raster order
        else:
            pos = flat[rows, chans].argmax(axis=1)
        val = flat[rows, chans, pos].astype(np.float32)
        val = np.where(np.isnan(val), np.float32(-np.inf), val)
        self.merge(chans, val, np.asarray(indices, np.int64)[rows], pos)

    def merge(self, channels: np.ndarray, values: np.ndarray, images: np.ndarray, positions: np.ndarray) -> None:
        """Merge candidate entries (flat arrays: channel, value, dataset index, flat position; at
        most one per image and channel) into the running top-k. Exact and order-independent:
        per channel, value descending, then image index ascending."""
        touched = np.unique(channels)
        k = self.k
        c = np.concatenate([np.repeat(touched, k), channels])
        v = np.concatenate([self._values[touched].ravel(), values.astype(np.float32)])
        i = np.concatenate([self._images[touched].ravel(), images])
        p = np.concatenate([self._positions[touched].ravel(), positions])
        order = np.lexsort((i, -v.astype(np.float64), c))      # channel, value desc, image asc
        # each touched channel has at least its k old slots: keep the first k of its block
        starts = np.searchsorted(c[order], touched)
        take = order[starts[:, None] + np.arange(k)]
        self._values[touched] = v[take]
        self._images[touched] = i[take]
        self._positions[touched] = p[take]

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        """Merge another top-k of the same layer over disjoint images (``state()`` of it, e.g. one
        block's, computed elsewhere): the result is the top-k of the union, in any merge order.
        Dense ``[C, k]`` states are merged row-wise (4x faster than :meth:`merge` on them)."""
        values = np.concatenate([self._values, np.asarray(state["values"], np.float32)], axis=1)
        images = np.concatenate([self._images, np.asarray(state["images"], np.int64)], axis=1)
        positions = np.concatenate([self._positions, np.asarray(state["positions"], np.int64)], axis=1)
        order = np.lexsort((images, -values.astype(np.float64)), axis=1)[:, : self.k]
        self._values = np.take_along_axis(values, order, axis=1)
        self._images = np.take_along_axis(images, order, axis=1)
        self._positions = np.take_along_axis(positions, order, axis=1)

    # -- results ---------------------------------------------------------------------------
    @property
    def values(self) -> np.ndarray:
        return np.where(self._images == _NO_IMAGE, -np.inf, self._values)

    @property
    def images(self) -> np.ndarray:
        return np.where(self._images == _NO_IMAGE, -1, self._images)

    @property
    def positions(self) -> np.ndarray:
        """[C, k, ndim] positions over the spatial axes (ndim 0 for FC layers); -1 when empty."""
        if not self.spatial:
            return np.zeros((self.channels, self.k, 0), np.int64)
        filled = self._positions >= 0
        coords = np.stack(np.unravel_index(np.where(filled, self._positions, 0), self.spatial), axis=-1)
        return np.where(filled[..., None], coords, -1)

    def entries(self, channel: int) -> list[MinedUnit]:
        out = []
        pos = self.positions
        for r in range(self.k):
            img = int(self._images[channel, r])
            if img == _NO_IMAGE:
                break
            out.append(MinedUnit(self.layer, int(channel), r, img, tuple(int(p) for p in pos[channel, r]),
                                 float(self._values[channel, r])))
        return out

    def units(self, channels: Sequence[int] | None = None) -> list[MinedUnit]:
        chans = range(self.channels) if channels is None else channels
        return [u for c in chans for u in self.entries(int(c))]

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        return {"values": self._values, "images": self._images, "positions": self._positions}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._values = np.array(arrays["values"], np.float32)
        self._images = np.array(arrays["images"], np.int64)
        self._positions = np.array(arrays["positions"], np.int64)


@dataclass
class MiningResult:
    layers: dict[str, LayerTopK]
    dataset: Dataset
    k: int
    images_seen: int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0
    position: str = "inside"  # where each image's strongest unit could sit (zfprobe.engine.seeds.POSITION_RULES)

    @property
    def images_per_second(self) -> float:
        done = self.images_seen - self.resumed_from
        return done / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict:
        return {"images": len(self.dataset), "images_used": self.images_seen - len(self.skipped),
                "skipped": len(self.skipped), "k": self.k, "resumed_from": self.resumed_from,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 1)
                if np.isfinite(self.images_per_second) else None}

    def _repr_html_(self) -> str:
        """Jupyter: the run's summary and, per layer, its strongest channels (pictures need a
        probe: ``render_layer(probe, result, layer)`` shows a layer's top-k sheet)."""
        from zfprobe.io.inline import block, table_html

        rows = []
        for name, top in self.layers.items():
            best = top.values[:, 0]
            order = [int(c) for c in np.argsort(-np.where(np.isfinite(best), best, -np.inf), kind="stable")[:5]]
            rows.append({"layer": name, "shape": "x".join(map(str, top.shape)), "channels": top.channels,
                         "never active": int(np.sum(~(best > 0))),
                         "strongest channels (max)": ", ".join(f"c{c} ({best[c]:.3g})" for c in order)})
        s = self.summary()
        title = (f"mining: top-{self.k} of {s['images_used']} images ({s['skipped']} skipped) "
                 f"in {s['seconds']:g} s")
        return block(title, table_html(rows))


# ------------------------------------------------------------------------ mining -------------
def layer_shapes(probe, layers: Sequence[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for layer in layers:
        tensor = probe.resolve(layer)
        shape = tuple(probe.graph.shape(tensor))
        if len(shape) < 2:
            raise OptionError(f"layer '{layer}' has shape {list(shape)}: there are no channels or units to mine")
        out[layer] = (tensor, shape[1:])
    return out


def auto_batch_size(probe, layers: Sequence[str], budget: int | None = None) -> int:
    """Images per batch such that the forward runs in flight fit ``budget`` (default: the
    activations share of the memory budget, zfprobe.io.memory): each run holds the peak live
    memory of the truncated network (its liveness peak, not the sum of its intermediates) and
    the layers it hands back, and the next batches' inputs wait decoded beside them."""
    from zfprobe.io.memory import batch_that_fits, budget_for, forward_peak, tensor_bytes

    tensors = [probe.resolve(l) for l in layers]
    runs = forward_parallelism(probe.backend)[0]
    per_run = forward_peak(probe.graph, probe.forward_program(tensors), tensors)
    waiting = (runs + 1) * tensor_bytes(probe.graph, probe.input_name)  # _prefetch depth
    return batch_that_fits(runs * per_run + waiting, budget_for("activations") if budget is None else budget)


def position_masks(probe, shapes: dict, layout: str, position: str = "inside") -> dict:
    """Per layer, the boolean map of the positions its strongest units may sit at under the
    ``position`` rule (zfprobe.engine.seeds.allowed_positions; None: anywhere). Mining takes each
    image's strongest position among them, as ``visualize`` picks its units."""
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.engine.seeds import allowed_positions

    out = {}
    for layer, (tensor, shape) in shapes.items():
        spatial = tuple(shape[1:])
        rf = receptive_field(probe.graph, tensor, layout) if len(spatial) == 2 and position != "any" else None
        out[layer] = allowed_positions(rf, spatial, position)  # None without a field or 2-D map
    return out


def run_fingerprint(probe, dataset: Dataset, layers: dict, k: int) -> str:
    model = probe.source
    st = os.stat(model) if model and os.path.isfile(model) else None
    parts = {"model": [model, st.st_size if st else None, st.st_mtime_ns if st else None, probe.graph.name],
             "dataset": dataset.fingerprint(), "layers": {l: [t, list(s)] for l, (t, s) in layers.items()}, "k": k}
    return json.dumps(parts, sort_keys=True)


class RunSetup(NamedTuple):
    """What every mining engine derives from its arguments, checked the same way."""

    shapes: dict
    tops: dict
    n_total: int
    batch_size: int


def run_setup(probe, dataset: Dataset, layers: Sequence[str] | str, k: int, batch_size: int | None,
              limit: int | None, position: str = "inside") -> RunSetup:
    """The layers' shapes, an empty top-k per layer, the number of items to use and the batch
    size; a bad layer list, ``k`` or batch size is an :class:`OptionError`."""
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise OptionError("give at least one layer to mine (--layer)")
    if k < 1:
        raise OptionError("--top must be at least 1")
    shapes = layer_shapes(probe, layers)
    masks = position_masks(probe, shapes, dataset.prep.layout, position)
    tops = {l: LayerTopK(l, t, s, k, masks[l]) for l, (t, s) in shapes.items()}
    n_total = len(dataset) if limit is None else min(len(dataset), int(limit))
    batch_size = int(batch_size or auto_batch_size(probe, list(layers)))
    if batch_size < 1:
        raise OptionError("--batch-size must be at least 1")
    return RunSetup(shapes, tops, n_total, batch_size)


def mine(probe, dataset: Dataset, layers: Sequence[str] | str, k: int = 9, batch_size: int | None = None,
         progress: bool = False, state_path: str | None = None, resume: bool = True,
         checkpoint_every: float = 30.0, limit: int | None = None, log=None, position: str = "inside") -> MiningResult:
    """Find, for each channel of each layer, the ``k`` images with the strongest activation.

    ``position``: where an image's strongest unit may sit: "inside" (default) among the units with
    at least half of their receptive field inside the image, as ``visualize`` picks its units
    (a unit lifted by the zero padding at the border does not win); "any": anywhere.

    ``state_path``: where to checkpoint (atomically, every ``checkpoint_every`` seconds and at the
    end or on interruption); with ``resume`` a matching state continues, a stale one is ignored.
    ``limit``: use only the first ``limit`` items of the dataset.
    """
    shapes, tops, n_total, batch_size = run_setup(probe, dataset, layers, k, batch_size, limit, position)
    # only a checkpoint needs it (hashing an in-memory array costs as much as mining a few % of it)
    fingerprint = run_fingerprint(probe, dataset, shapes, k) + f"|limit={n_total}|position={position}" if state_path else ""
    start, skipped = 0, []
    if state_path and resume and os.path.isfile(state_path):
        loaded = load_state(state_path, fingerprint, tops)
        if loaded is None:  # a checkpoint is only ever replaced by a newer one of the same inputs
            (log or (lambda m: None))(f"{state_path}: saved state is for other inputs; starting clean without "
                                      "checkpoints, the saved state is kept (restart to replace it)")
            state_path = None
        else:
            start, skipped = loaded
            (log or (lambda m: None))(f"resuming after {start} of {n_total} images")
    from zfprobe.io.memory import release_freed_memory

    tensors = [shapes[l][0] for l in shapes]
    program = probe.forward_program(tensors)
    workers, threads = forward_parallelism(probe.backend)
    consumed = start
    t0 = time.perf_counter()
    last_save = time.monotonic()
    bar = _progress(n_total, start, progress)

    def save():
        if state_path:
            done = [(i, r) for i, r in skipped if i < consumed]  # not those of a batch in flight
            save_state(state_path, fingerprint, tops, consumed, done, n_total)

    def finish_first() -> None:
        """Merge the oldest batch in flight into the top-k (while the backend computes the next).

        Waiting for its result may be interrupted (Ctrl-C, SIGTERM): the batch then stays in
        ``pending`` for the interruption's drain. The merge, the checkpoint mark ``consumed`` and
        the removal from ``pending`` happen together, signals held, so a checkpoint only ever
        counts batches whose results are in the top-k."""
        nonlocal consumed, last_save
        batch, future = pending[0]
        pause(f"merging-{consumed}")  # test hook: waiting for a batch while later ones compute
        outs = future.result() if future is not None else ()
        with deferred():
            for layer, (acts, maxima) in zip(shapes, outs):
                tops[layer].update(acts, batch.indices, maxima)
            done = int(batch.indices.max() + 1) if len(batch.indices) else 0
            done = max(done, max((i + 1 for i, _ in batch.skipped), default=0))
            bar.update(done - consumed)
            consumed = done
            pending.popleft()
        del outs
        release_freed_memory()  # else freed batches stay resident in the worker threads' malloc arenas
        if state_path and time.monotonic() - last_save > checkpoint_every:
            save()
            last_save = time.monotonic()

    def run(images):
        """The forward pass and each layer's per-channel maxima, in a worker thread: numpy's
        reduction releases the GIL, so it runs beside the other runs and the merge."""
        extra = {} if threads is None else {"threads": threads}
        outs = probe.backend.run(program, {probe.input_name: images}, tensors, **extra)
        return [(a, channel_maxima(a)) for a in outs]

    runner = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zfprobe-forward")
    pending: deque = deque()  # (batch, future) in dataset order; merged in that order
    try:
        batches = _prefetch(_limited(dataset.batches(batch_size, start), n_total), depth=workers + 1)
        for batch in batches:
            for index, reason in batch.skipped:
                skipped.append((int(index), reason))
                warnings.warn(f"skipped {dataset.name(int(index))}: {reason}", stacklevel=2)
            future = runner.submit(run, probe.check_images(batch.tensors)) if len(batch.indices) else None
            pending.append((batch, future))
            while len(pending) > workers:
                finish_first()
                pause("mining")  # test hook (zfprobe.io.interrupts): a deterministic moment mid-run
                pause(f"mining-{consumed}")  # ... and after the batch that ends at image `consumed`
        while pending:
            finish_first()
    except BaseException as exc:
        for _, future in pending:
            if future is not None:
                future.cancel()
        if isinstance(exc, KeyboardInterrupt):  # a failed run writes nothing; an interrupted one checkpoints
            _drain(pending, finish_first)  # batches already computing are waited for anyway: keep them
            save()  # everything consumed so far is in the top-k: a rerun resumes from here
        if state_path and isinstance(exc, KeyboardInterrupt):
            from zfprobe.io.interrupts import note

            note(f"mining checkpoint saved after {consumed} of {n_total} images in {state_path}; "
                 "rerun the same command to resume")
        raise
    finally:
        runner.shutdown(wait=True)
        bar.close()
    seconds = time.perf_counter() - t0
    if consumed - len(skipped) <= 0:
        raise ZfprobeError(f"none of the {n_total} dataset item(s) could be read ({len(skipped)} skipped); nothing to mine")
    save()
    return MiningResult(tops, dataset, k, consumed, skipped, start, seconds, position)


def _drain(pending: deque, finish_first) -> None:
    """Merge, in order, the batches in flight whose forward pass was not cancelled."""
    while pending:
        future = pending[0][1]
        if future is not None and (future.cancelled() or future.exception() is not None):
            return
        finish_first()


def forward_parallelism(backend) -> tuple[int, int | None]:
    """(batches in flight, intra-op threads per run) for mining's forward passes.

    A multi-threaded forward pass waits at every op for its slowest thread, so the merge, the
    decoding and any other load on a core stall all of it. On CPU, a backend whose runs may
    overlap (``concurrent_runs``, onnxruntime) gets instead one single-threaded run per core
    (at most ``MAX_RUNS_IN_FLIGHT``, the rest of the cores split among them); results are the
    same, each batch is still computed by one run. ``ZFPROBE_MINE_RUNS`` overrides the number
    of runs (1: one run with the backend's own threads, the engine before issue 16)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    want = os.environ.get("ZFPROBE_MINE_RUNS")
    if not getattr(backend, "concurrent_runs", False) or getattr(backend, "device", "cpu") != "cpu":
        return 1, None
    try:
        runs = int(want) if want else min(cores, MAX_RUNS_IN_FLIGHT)
    except ValueError:
        raise OptionError(f"ZFPROBE_MINE_RUNS='{want}' is not a whole number") from None
    if runs < 1:
        raise OptionError(f"ZFPROBE_MINE_RUNS='{want}' must be at least 1")
    if runs == 1 and want:
        return 1, None
    return runs, max(1, cores // runs)


def _limited(batches: Iterator, n_total: int) -> Iterator:
    for batch in batches:
        keep = batch.indices < n_total
        if not keep.all():
            batch.tensors = batch.tensors[keep]
            batch.indices = batch.indices[keep]
        batch.skipped = [(i, r) for i, r in batch.skipped if i < n_total]
        if len(batch.indices) or batch.skipped:
            yield batch
        if (len(batch.indices) and batch.indices.max() >= n_total - 1) or not keep.all():
            return


def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Read and preprocess the next batches in a thread while the backend runs this one."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zfprobe-data")
    sentinel = object()
    pending = []
    try:
        for _ in range(depth):
            pending.append(pool.submit(next, it, sentinel))
        while pending:
            item = pending.pop(0).result()
            if item is sentinel:
                break
            pending.append(pool.submit(next, it, sentinel))
            yield item
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="mining", dynamic_ncols=True, smoothing=0.1,
                disable=not enabled)


def save_state(path: str, fingerprint: str, tops: dict[str, LayerTopK], consumed: int, skipped, n_total: int,
               extra: dict | None = None) -> None:
    """Checkpoint the top-k arrays atomically; ``extra``: more metadata (the Ray engine's finished blocks)."""
    from zfprobe.io.outputs import write_file_atomically

    arrays = {}
    for i, top in enumerate(tops.values()):
        for key, arr in top.state().items():
            arrays[f"l{i}_{key}"] = arr
    meta = {"fingerprint": fingerprint, "consumed": consumed, "total": n_total, "layers": list(tops),
            "skipped": [[int(i), r] for i, r in skipped], "complete": consumed >= n_total, **(extra or {})}
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    write_file_atomically(path, buf.getvalue())


def load_state(path: str, fingerprint: str, tops: dict[str, LayerTopK]):
    """(images consumed, skipped) of a checkpoint of the same inputs, loading its top-k into
    ``tops``; None for another run's (or an unreadable) state."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint") != fingerprint or meta.get("layers") != list(tops):
                return None
            for i, top in enumerate(tops.values()):
                top.load_state({key: z[f"l{i}_{key}"] for key in ("values", "images", "positions")})
    except (OSError, ValueError, KeyError):
        return None
    return int(meta["consumed"]), [(int(i), r) for i, r in meta.get("skipped", [])]


def state_meta(path: str) -> dict:
    """The metadata of a checkpoint ({} when unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return {}


# ------------------------------------------------------------------------ projection ---------
@dataclass
class UnitProjection:
    unit: MinedUnit
    projection: np.ndarray | None   # [*input] full projection (only when asked for)
    projection_crop: np.ndarray     # float [h, w, C] RGB-ordered crop of the projection at the RF box
    patch: np.ndarray               # uint8 [h, w, 3] image patch at the RF box (grey beyond the border)
    box: tuple[tuple[int, int], ...]  # the nominal box, unclipped ((y0, y1), (x0, x1))


def project_units(probe, dataset: Dataset, layer: str, units: Sequence[MinedUnit], rule: str = AUTO,
                  lrn: str = LRN_IDENTITY, image_chunk: int = 32, keep_full: bool = False) -> Iterator[UnitProjection]:
    """Deconvnet projection and crops of each unit, batched: each backend call sends as many
    seeds as the memory budget allows (``probe.seed_batch_size``) with only the images they
    belong to (at most ``image_chunk``). Yields in the order of the units' images."""
    from zfprobe.engine.deconv import DeconvOptions
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.io.memory import release_freed_memory
    from zfprobe.io.pictures import projection_to_hwc

    rule = probe.choose_rule(layer, rule).rule  # auto: guided where no max-pool switch carries the image
    DeconvOptions(rule, lrn)
    tensor = probe.resolve(layer)
    shape = tuple(probe.graph.shape(tensor))
    prep = dataset.prep
    rf = receptive_field(probe.graph, tensor, prep.layout)
    probe.deconv_program(layer, rule, lrn)  # fails early on a node that cannot be inverted
    # Units sorted by image; each backend call takes as many seeds as fit the memory budget and
    # only the images those seeds belong to (the forward pass is paid once per image, not per seed).
    ordered = sorted(units, key=lambda u: (u.image, u.channel, u.rank))
    image_chunk = probe.images_per_projection(tensor, image_chunk)
    per_call = max(1, probe.seed_batch_size(tensor, image_chunk))
    loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    lo = 0
    while lo < len(ordered):
        call = ordered[lo: lo + per_call]
        chunk = sorted({u.image for u in call})
        if len(chunk) > image_chunk:  # bound the images of one call
            chunk = chunk[:image_chunk]
            call = [u for u in call if u.image in set(chunk)]
        lo += len(call)
        loaded = {i: loaded[i] if i in loaded else dataset.load(i) for i in chunk}
        displays = [loaded[i][0] for i in chunk]
        images = np.concatenate([loaded[i][1] for i in chunk])
        where = {img: j for j, img in enumerate(chunk)}
        seeds = np.zeros((len(call),) + shape[1:], np.float32)
        seed_image = np.zeros(len(call), np.int64)
        for s, u in enumerate(call):
            seeds[(s, u.channel) + tuple(u.position)] = u.value
            seed_image[s] = where[u.image]
        projections = probe.project(images, layer, seeds, seed_image, rule=rule, lrn=lrn)
        for s, u in enumerate(call):
            box = rf.nominal_box(u.position)
            p = projection_to_hwc(projections[s], prep.layout, prep.channel_order)
            yield UnitProjection(u, projections[s] if keep_full else None, crop(p, box, 0.0),
                                 crop(displays[seed_image[s]], box, 128).astype(np.uint8), box)
        del projections, p
        release_freed_memory()  # the batch's arrays go back to the system before the next


def crop(image: np.ndarray, box, fill) -> np.ndarray:
    """``image`` [H, W, C] cut to ``box`` ((y0, y1), (x0, x1)) inclusive; ``fill`` beyond the border."""
    (y0, y1), (x0, x1) = box
    h, w = image.shape[:2]
    out = np.full((y1 - y0 + 1, x1 - x0 + 1) + image.shape[2:], fill, dtype=image.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h - 1), max(x0, 0), min(x1, w - 1)
    if sy0 <= sy1 and sx0 <= sx1:
        out[sy0 - y0: sy1 - y0 + 1, sx0 - x0: sx1 - x0 + 1] = image[sy0: sy1 + 1, sx0: sx1 + 1]
    return out


def parse_channels(spec: str | None, n: int) -> list[int]:
    """'0-15,20,31' -> [0..15, 20, 31] (checked against the layer's ``n`` channels); None -> all."""
    if not spec:
        return list(range(n))
    out: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part.lstrip("-"):
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise OptionError(f"channel range '{part}' is empty (write low-high, e.g. 2-5)")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise OptionError(f"cannot read channels '{spec}'; write e.g. 0-15,20") from None
    bad = [c for c in out if not 0 <= c < n]
    if bad:
        raise OptionError(f"channel {bad[0]} is out of range: the layer has {n} channels (0..{n - 1})")
    if not out:
        raise OptionError(f"channels '{spec}' select no channel")
    return list(dict.fromkeys(out))
