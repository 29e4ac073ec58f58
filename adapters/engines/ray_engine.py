"""The Ray engine of ``zfprobe mine``: the local engine's exact top-k, computed on a Ray cluster.

Loaded only when ``--engine ray`` is asked for; the core never imports ray.

**Mining.** The dataset is cut into the local engine's batches (``[lo, lo + batch)``, the same
boundaries, so every image meets the same batch neighbours and gets bit-identical activations).
A Ray Data pipeline carries one row per batch through two stages:

1. *read*: a pool of decoder actors (each holds the dataset listing once) reads, decodes and
   preprocesses the batch's images with zfprobe's own readers;
2. *forward*: ``map_batches`` on a pool of ``--workers`` actors (``concurrency``); each actor
   holds one backend session for the network truncated at the mined layers (onnxruntime, or
   its GPU build when ``--gpus-per-worker`` gives it one) and returns the batch's own top-k per
   layer (:class:`~zfprobe.studies.mining.compute.LayerTopK` arrays: values, image ids, positions).

When the forward actors take every CPU (and have no GPU), one actor does both stages for its
batches (:class:`_ReadForwardTopK`): the decoded batch then never crosses the object store. On 2
cores with 2 workers that lifted MNIST (1,000-digit batches) from 0.41 to 0.80 of the local
engine after the first batch, and EfficientNet-Lite0 on JPEGs from 0.72 to 1.09; where CPUs are
left over, separate readers use them.

The driver merges those per-batch top-k as they arrive, in any order: the order (value
descending, then image index ascending) is total, so the merge is exact and deterministic and the
result equals the local engine's, ties included. Memory: Ray Data streams with backpressure
(bounded object store), the driver holds ``[C, k]`` arrays per layer.

**Faults.** Forward actors run with ``max_restarts`` / ``max_task_retries``: a killed actor is
restarted and its batch recomputed, with the same result. The driver checkpoints the merged
top-k and the list of finished batches (``.mine-state.npz``, atomically); a rerun after the
driver was killed mines only the missing batches.

**Projection.** A second pipeline over the kept units, grouped by image (each image's forward
pass is done once per layer), on actors that each hold a probe; they return the uint8 tiles that
:func:`zfprobe.studies.mining.render.render_layer` lays out, so sheets, index and manifest are written
by the local writer (atomically, through :mod:`zfprobe.io.outputs`).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from zfprobe.errors import OptionError, ZfprobeError
from zfprobe.studies.mining.compute import (LayerTopK, MiningResult, load_state, run_fingerprint, run_setup,
                            save_state, state_meta)

INSTALL_HINT = "pip install 'zfprobe[ray]'"
MAX_RESTARTS = 4          # a forward actor that dies is restarted this often, its batch retried as often
KILL_ONCE_ENV = "ZFPROBE_RAY_KILL_ONCE"  # test hook: "FLAG_FILE:LO" kills the actor of batch LO once


class RayUnavailableError(ZfprobeError):
    """--engine ray without Ray installed, or a cluster that cannot be reached."""


def import_ray():
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError:
        raise RayUnavailableError(f"--engine ray needs Ray Data, which is not installed; {INSTALL_HINT}") from None
    return ray


@contextmanager
def connected(address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None):
    """Ray, connected: to ``address`` ('auto', 'HOST:PORT', 'ray://HOST:10001') or, without one,
    to a local cluster started here (and stopped at the end). An already initialized Ray is used
    as it is."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=num_cpus if address is None else None,
                     object_store_memory=object_store_memory if address is None else None,
                     include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at '{address}'" if address else "a local Ray cluster"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RayUnavailableError(f"cannot connect to {where}: {first}") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _quiet_ray_data(ray) -> None:
    """zfprobe draws its own progress bar: Ray Data's bars and execution logs are turned off."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its errors reach zfprobe as exceptions
    logging.getLogger("ray").setLevel(logging.ERROR)


# ------------------------------------------------------------------------ the model on workers --
@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to open the model itself: the file (on storage every node reads), the
    input shape it was opened with, and the device."""

    path: str
    input_shape: tuple[int, ...]
    device: str = "auto"

    def open(self, device: str | None = None, threads: int | None = None):
        import zfprobe

        probe = zfprobe.load(self.path, input_shape=tuple(self.input_shape[1:]), device=device or self.device)
        if threads and hasattr(probe.backend, "threads"):
            probe.backend.threads = int(threads)  # one worker's share of the node, not all its cores
        return probe


def model_spec(probe, device: str = "auto") -> ModelSpec:
    source = getattr(probe, "source", "")
    if not source or not os.path.isfile(source):
        raise OptionError("--engine ray needs a model file that every worker can open (an .onnx / .keras file), "
                          "not a model built in this process")
    return ModelSpec(os.path.abspath(source), tuple(probe.input_shape), device)


def _worker_device(gpus: float, device: str) -> str:
    return "cuda" if gpus > 0 else ("cpu" if device == "auto" else device)


# ------------------------------------------------------------------------ pipeline stages ----
def _rows(payloads: Sequence[bytes], extra: dict | None = None) -> dict:
    out = {"payload": np.array(list(payloads), dtype=object)}
    for key, values in (extra or {}).items():
        out[key] = np.asarray(values)
    return out


class _ReadBatch:
    """Stage 1: read, decode and preprocess the images ``[lo, hi)`` of the dataset."""

    def __init__(self, dataset):
        self.dataset = dataset
        if hasattr(dataset, "decoders"):
            dataset.decoders = 0  # decode in this actor: Ray's actors are the parallelism, not a pool per call

    def __call__(self, rows: dict) -> dict:
        payloads = []
        for lo, hi in zip(rows["lo"], rows["hi"]):
            lo, hi = int(lo), int(hi)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                batch = next(iter(self.dataset.batches(hi - lo, lo)))
            keep = batch.indices < hi
            indices, tensors = batch.indices[keep], batch.tensors[keep] if len(batch.indices) else batch.tensors
            skipped = [(int(i), r) for i, r in batch.skipped if i < hi]
            payloads.append(pickle.dumps((indices, tensors, skipped), protocol=5))
        return _rows(payloads, {"lo": rows["lo"], "hi": rows["hi"]})


class _ForwardTopK:
    """Stage 2: one backend session for the truncated network; each batch's own top-k per layer."""

    def __init__(self, spec: ModelSpec, layers: dict, k: int, device: str, threads: int, kill_once: str = "",
                 allowed: dict | None = None):
        self.probe = spec.open(device, threads)
        self.layers = layers  # layer -> (tensor, shape)
        self.allowed = allowed or {}  # layer -> positions the strongest unit may sit at (--position)
        self.tensors = [t for t, _ in layers.values()]
        self.k = k
        self.kill_once = kill_once

    def _maybe_die(self, lo: int) -> None:
        if not self.kill_once:
            return
        flag, _, at = self.kill_once.rpartition(":")
        if int(at) == lo and not os.path.exists(flag):
            with open(flag, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)  # a worker that dies mid-batch (OOM killer, lost node): Ray restarts it

    def __call__(self, rows: dict) -> dict:
        payloads = []
        for lo, payload in zip(rows["lo"], rows["payload"]):
            self._maybe_die(int(lo))
            indices, tensors, skipped = pickle.loads(payload)
            tops = {}
            if len(indices):
                acts = self.probe.activations(tensors, self.tensors)
                for (layer, (tensor, shape)), a in zip(self.layers.items(), acts):
                    top = LayerTopK(layer, tensor, shape, self.k, self.allowed.get(layer))
                    top.update(a, indices)
                    tops[layer] = top.state()
            payloads.append(pickle.dumps((tops, skipped), protocol=5))
        return _rows(payloads, {"lo": rows["lo"], "hi": rows["hi"]})


class _ReadForwardTopK:
    """Stages 1 and 2 in one actor, for CPU workers: the decoded batch never crosses the object
    store. On 2 cores, MNIST batches of 1,000 digits cost 47 ms each beyond the local engine's
    work through two stages (the tensors' trip through the object store and a second actor's
    scheduling); decoding and the forward pass share the worker's core either way."""

    def __init__(self, dataset, spec: ModelSpec, layers: dict, k: int, device: str, threads: int,
                 kill_once: str = "", allowed: dict | None = None):
        self.read = _ReadBatch(dataset)
        self.forward = _ForwardTopK(spec, layers, k, device, threads, kill_once, allowed)

    def __call__(self, rows: dict) -> dict:
        return self.forward(self.read(rows))


class _ProjectUnits:
    """Projection stage: one probe; a group of units (one layer, a few images) to uint8 tiles."""

    def __init__(self, spec: ModelSpec, dataset, rule: str, lrn: str, percentile, device: str, threads: int):
        self.probe = spec.open(device, threads)
        self.dataset = dataset
        self.rule, self.lrn, self.percentile = rule, lrn, percentile

    def __call__(self, rows: dict) -> dict:
        from zfprobe.studies.mining.render import projection_tiles

        payloads = []
        for payload in rows["payload"]:
            layer, units = pickle.loads(payload)
            tiles = list(projection_tiles(self.probe, self.dataset, layer, units, self.rule, self.lrn,
                                          self.percentile, image_chunk=len({u.image for u in units})))
            payloads.append(pickle.dumps((layer, tiles), protocol=5))
        return _rows(payloads)


# ------------------------------------------------------------------------ resources ----------
@dataclass(frozen=True)
class Plan:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    readers: int
    cpus_per_reader: float


def plan(ray, workers: int, gpus_per_worker: float) -> Plan:
    """Forward actors get one CPU each (and their GPU share); readers get what is left of the
    cluster's CPUs (at least one reader, sharing a CPU when the forward actors take them all)."""
    if workers < 1:
        raise OptionError("--workers must be at least 1")
    if gpus_per_worker < 0:
        raise OptionError("--gpus-per-worker must be 0 or more")
    res = ray.cluster_resources()
    cpus = float(res.get("CPU", 1))
    if gpus_per_worker > 0 and workers * gpus_per_worker > float(res.get("GPU", 0)) + 1e-9:
        raise OptionError(f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} asks for more GPUs than the "
                          f"cluster has ({res.get('GPU', 0):g})")
    cpu_each = 1.0 if workers <= cpus else cpus / workers
    left = cpus - workers * cpu_each
    readers = max(1, int(left))
    return Plan(workers, float(gpus_per_worker), cpu_each, readers, 1.0 if left >= 1 else 0.25)


# ------------------------------------------------------------------------ mining -------------
def mine_ray(probe, dataset, layers: Sequence[str] | str, k: int = 9, batch_size: int | None = None,
             workers: int = 1, gpus_per_worker: float = 0.0, progress: bool = False, state_path: str | None = None,
             resume: bool = True, checkpoint_every: float = 30.0, limit: int | None = None, log=None,
             device: str = "auto", position: str = "inside") -> MiningResult:
    """:func:`zfprobe.studies.mining.compute.mine` on the connected Ray cluster (see the module docstring); the
    same arguments and the same result, plus ``workers`` forward actors with ``gpus_per_worker``."""
    from tqdm import tqdm

    ray = import_ray()
    if not ray.is_initialized():
        raise RayUnavailableError("Ray is not connected; use zfprobe.adapters.engines.ray_engine.connected()")
    _quiet_ray_data(ray)
    say = log or (lambda m: None)
    shapes, tops, n_total, batch_size = run_setup(probe, dataset, layers, k, batch_size, limit, position)
    spec = model_spec(probe, device)
    resources = plan(ray, workers, gpus_per_worker)
    fingerprint = (run_fingerprint(probe, dataset, shapes, k)
                   + f"|limit={n_total}|engine=ray|batch={batch_size}|position={position}")
    blocks = [(lo, min(lo + batch_size, n_total)) for lo in range(0, n_total, batch_size)]
    done: set[int] = set()
    skipped: list[tuple[int, str]] = []
    if state_path and resume and os.path.isfile(state_path):
        loaded = load_state(state_path, fingerprint, tops)
        if loaded is None:
            say(f"{state_path}: saved state is for other inputs; starting clean without checkpoints, the saved "
                "state is kept (restart to replace it)")
            state_path = None
        else:
            skipped = loaded[1]
            done = set(int(lo) for lo in state_meta(state_path).get("blocks_done", []))
            say(f"resuming after {loaded[0]} of {n_total} images")
    images_done = lambda: sum(hi - lo for lo, hi in blocks if lo in done)  # noqa: E731
    resumed_from = images_done()

    def save():
        if state_path:
            save_state(state_path, fingerprint, tops, images_done(), sorted(skipped), n_total,
                       extra={"engine": "ray", "batch_size": batch_size, "blocks_done": sorted(done)})

    todo = [b for b in blocks if b[0] not in done]
    t0 = time.perf_counter()
    bar = tqdm(total=n_total, initial=resumed_from, unit="img", desc="mining (ray)", dynamic_ncols=True,
               smoothing=0.1, disable=not progress)
    last_save = time.monotonic()
    first = None
    try:
        if todo:
            for lo, hi, payload in _run_forward(ray, dataset, todo, spec, shapes, k, resources,
                                                  {l: t.allowed for l, t in tops.items()}):
                if lo in done:  # a retried batch whose first result also arrived: the same top-k
                    continue
                block_tops, block_skipped = pickle.loads(payload)
                for layer, state in block_tops.items():
                    tops[layer].merge_state(state)
                skipped.extend(block_skipped)
                for index, reason in block_skipped:
                    warnings.warn(f"skipped {dataset.name(int(index))}: {reason}", stacklevel=2)
                done.add(lo)
                if first is None:
                    first = (time.perf_counter() - t0, hi - lo)
                bar.update(hi - lo)
                if state_path and time.monotonic() - last_save > checkpoint_every:
                    save()
                    last_save = time.monotonic()
    except KeyboardInterrupt:
        save()  # every merged batch is in the checkpoint: a rerun mines only the others
        if state_path:
            from zfprobe.io.interrupts import note

            note(f"mining checkpoint saved after {images_done()} of {n_total} images in {state_path}; "
                 "rerun the same command to resume")
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    skipped.sort()
    if n_total - len(skipped) <= 0:
        raise ZfprobeError(f"none of the {n_total} dataset item(s) could be read ({len(skipped)} skipped); nothing to mine")
    save()
    result = MiningResult(tops, dataset, k, n_total, skipped, resumed_from, seconds, position)
    # pipeline start (actors, model load, the first batch) and the steady rate after it
    result.first_result_seconds, result.first_batch = first or (seconds, 0)
    return result


def _run_forward(ray, dataset, todo, spec: ModelSpec, shapes: dict, k: int, res: Plan,
                 allowed: dict | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(lo, hi, pickled (per-layer top-k states, skipped)) of each batch, as they finish."""
    ds = ray.data.from_items([{"lo": lo, "hi": hi} for lo, hi in todo],
                             override_num_blocks=max(1, min(len(todo), 8 * (res.workers + res.readers))))
    forward_args = (spec, shapes, k, _worker_device(res.gpus_per_worker, spec.device),
                    max(1, int(res.cpus_per_worker)), os.environ.get(KILL_ONCE_ENV, ""), allowed)
    workers = ray.data.ActorPoolStrategy(size=min(res.workers, len(todo)))
    if not res.gpus_per_worker and res.cpus_per_reader < 1:
        # CPU workers on every CPU read their own batches (see _ReadForwardTopK); where CPUs are
        # left over (or the workers have GPUs), reader actors on them decode alongside
        ds = _stage(ray, ds, _ReadForwardTopK, (dataset,) + forward_args, workers, res.cpus_per_worker, None)
    else:
        ds = _stage(ray, ds, _ReadBatch, (dataset,),
                    ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(res.readers, len(todo)))),
                    res.cpus_per_reader, None)
        ds = _stage(ray, ds, _ForwardTopK, forward_args, workers, res.cpus_per_worker, res.gpus_per_worker or None)
    for rows in _results(ds):
        yield int(rows["lo"][0]), int(rows["hi"][0]), rows["payload"][0]


def _stage(ray, ds, cls, args, compute, cpus, gpus, restarts: int = MAX_RESTARTS):
    # Ray's driver prints one line per process about constructor arguments of restartable actors
    # (ray-project/ray#53727); restarts matter more than that line.
    """``map_batches`` of one row at a time on an actor pool; actors restart, calls retry, a
    bounded number of times (Ray Data's own default is forever)."""
    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():  # ray 2.60 deprecates the remote args; 2.64 names them (pinned: 2.60)
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return ds.map_batches(cls, fn_constructor_args=args, batch_size=1, batch_format="numpy", compute=compute,
                              num_cpus=cpus, num_gpus=gpus, max_restarts=restarts, max_task_retries=restarts)


def _results(ds) -> Iterator[dict]:
    """The pipeline's rows; a zfprobe error raised on a worker is raised here as itself."""
    try:
        yield from ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=1)
    except Exception as exc:  # noqa: BLE001 - ray wraps worker errors in its own types
        cause = exc
        while cause is not None and not isinstance(cause, ZfprobeError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is not None:
            raise cause from None
        said = re.findall(r"zfprobe\.errors\.\w+: (.+)", str(exc))  # e.g. an actor's model file is missing
        if said:
            raise ZfprobeError(f"on a Ray worker: {said[-1].strip()}") from None
        if getattr(exc, "actor_init_failed", False):
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1:]
            raise ZfprobeError(f"a Ray worker could not start: {last[0].strip() if last else type(exc).__name__}") from None
        if type(exc).__name__ in ("ActorDiedError", "RayActorError", "WorkerCrashedError", "ActorUnavailableError") or \
                "ActorDiedError" in str(exc):
            raise ZfprobeError(f"a Ray worker died {MAX_RESTARTS + 1} times on the same batch (out of memory?); "
                               "see the Ray logs of the cluster") from None
        raise


# ------------------------------------------------------------------------ projection ---------
def tile_source(probe, dataset, layer: str, rule: str, lrn: str, percentile, **ray):
    """The Ray projection stage as a tile source for streamed pictures
    (zfprobe.studies.mining.stream): each call projects one group of ``layer``'s units on the
    cluster, so the driver holds one group's tiles at a time."""
    def source(units):
        return project_layers(probe, dataset, {layer: list(units)}, rule, lrn, percentile, **ray)[layer]
    return source


def project_layers(probe, dataset, units: dict[str, list], rule: str, lrn: str, percentile, workers: int = 1,
                   gpus_per_worker: float = 0.0, device: str = "auto", image_chunk: int = 32, progress: bool = False
                   ) -> dict[str, list]:
    """Per layer, the :func:`zfprobe.studies.mining.render.projection_tiles` of its ``units``, computed on
    the cluster: units grouped by image, at most ``image_chunk`` images per group."""
    from tqdm import tqdm

    ray = import_ray()
    _quiet_ray_data(ray)
    spec = model_spec(probe, device)
    res = plan(ray, workers, gpus_per_worker)
    groups = []
    for layer, us in units.items():
        ordered = sorted(us, key=lambda u: (u.image, u.channel, u.rank))
        # enough groups to keep every worker busy, at most image_chunk images each
        per_group = max(1, min(image_chunk, -(-len({u.image for u in us}) // (2 * res.workers))))
        chunk, images = [], set()
        for u in ordered:
            if u.image not in images and len(images) == per_group:
                groups.append(pickle.dumps((layer, chunk), protocol=5))
                chunk, images = [], set()
            chunk.append(u)
            images.add(u.image)
        if chunk:
            groups.append(pickle.dumps((layer, chunk), protocol=5))
    out: dict[str, list] = {layer: [] for layer in units}
    if not groups:
        return out
    total = sum(len(us) for us in units.values())
    ds = ray.data.from_items([{"payload": g} for g in groups],
                             override_num_blocks=max(1, min(len(groups), 8 * res.workers)))
    ds = _stage(ray, ds, _ProjectUnits, (spec, dataset, rule, lrn, percentile, _worker_device(res.gpus_per_worker, spec.device),
                                         max(1, int(res.cpus_per_worker))),
                ray.data.ActorPoolStrategy(size=min(res.workers, len(groups))), res.cpus_per_worker,
                res.gpus_per_worker or None)
    with tqdm(total=total, unit="unit", desc="projecting (ray)", dynamic_ncols=True, disable=not progress) as bar:
        for rows in _results(ds):
            layer, tiles = pickle.loads(rows["payload"][0])
            out[layer].extend(tiles)
            bar.update(len(tiles))
    return out
