"""Features of several layers from one pass over a dataset, pooled, optionally cached on disk.

Every image goes through the truncated network once (only the nodes the requested layers need,
as ``mine`` does), and each requested layer's activation is reduced right away (``avg`` / ``max``
global pooling over the spatial axes, or ``flatten``), so memory holds one batch of activations
plus the ``[N, D]`` feature matrices the classifiers need anyway. The next batch is read and
preprocessed in a thread while the backend computes this one.

Cache: feature matrices are saved as one ``.npz`` per (model, dataset, preprocessing, layers,
pool) key in ``cache_dir``; a later run with the same key reads them instead of running the
network. The model part of the key is the model file's SHA-256 (live models are not cached, since
their weights can change in place); the dataset part is :meth:`Dataset.fingerprint`, which
covers the files' sizes and times and the preprocessing.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from zfprobe.io.datasets import Dataset
from zfprobe.errors import OptionError, ZfprobeError

POOLS = ("avg", "max", "flatten")
CACHE_LIMIT = 1024**3  # bytes of features a cache entry may hold ("datasets that fit")


@dataclass
class Features:
    """``matrices[layer]`` [n, D] float32 for dataset items ``indices`` (unreadable ones left out)."""

    matrices: dict[str, np.ndarray]
    indices: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    @property
    def images_per_second(self) -> float:
        return len(self.indices) / self.seconds if self.seconds > 0 else float("nan")


def pool(acts: np.ndarray, how: str) -> np.ndarray:
    """[B, C, *spatial] -> [B, C] (avg / max over space) or [B, C * prod(spatial)] (flatten)."""
    b = acts.shape[0]
    if acts.ndim <= 2 or how == "flatten":
        return acts.reshape(b, -1)
    flat = acts.reshape(b, acts.shape[1], -1)
    return flat.mean(axis=2) if how == "avg" else flat.max(axis=2)


_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def pooled_program(probe, tensors: Sequence[str], how: str):
    """The truncated network with the pooling inside it (GlobalAveragePool / GlobalMaxPool on
    every feature map), so the backend hands back [B, C, 1, 1] instead of whole maps: less
    copying out and no numpy reduction. Cached per probe, so sessions are made once."""
    from zfprobe.engine.graph import Graph, Node

    key = (tuple(tensors), how)
    cache = _PROGRAMS.setdefault(probe, {})
    if key in cache:
        return cache[key]
    base = probe.forward_program(list(tensors))
    nodes, outputs, shapes, dtypes = list(base.nodes), [], dict(base.shapes), dict(base.dtypes)
    op = {"avg": "GlobalAveragePool", "max": "GlobalMaxPool"}.get(how)
    for i, t in enumerate(tensors):
        shape = tuple(probe.graph.shape(t))
        if op is None or len(shape) <= 2:
            outputs.append(t)
            continue
        name = f"{t}/zf_{how}pool"
        nodes.append(Node(f"zf_features/{i}", op, [t], [name]))
        shapes[name] = shape[:2] + (1,) * (len(shape) - 2)
        dtypes[name] = probe.graph.dtypes.get(t, np.dtype(np.float32))
        outputs.append(name)
    program = Graph(nodes, list(base.inputs), outputs, base.constants, shapes, dtypes, base.parameter_refs,
                    f"features({base.name},{how})", base.metadata)
    cache[key] = (program, outputs)
    return cache[key]


def feature_dims(probe, layers: Sequence[str], how: str) -> dict[str, int]:
    out = {}
    for layer in layers:
        shape = tuple(probe.graph.shape(probe.resolve(layer)))[1:]
        out[layer] = int(np.prod(shape)) if how == "flatten" or len(shape) <= 1 else int(shape[0])
    return out


def cache_key(probe, dataset: Dataset, layers: Sequence[str], how: str, limit: int | None) -> str | None:
    """The cache key, or None when the model has no file to hash (a live module)."""
    from zfprobe.io.provenance import __version__
    from zfprobe.studies.visualize.compute import file_sha256

    if not probe.source or not os.path.isfile(probe.source):
        return None
    parts = {"model": file_sha256(probe.source), "dataset": dataset.fingerprint(), "how": how, "limit": limit,
             "layers": [probe.resolve(l) for l in layers], "version": __version__,
             "input": list(probe.input_shape)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> str:
    return os.environ.get("ZFPROBE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zfprobe", "features")


def extract(probe, dataset: Dataset, layers: Sequence[str], how: str = "avg", batch_size: int | None = None,
            progress: bool = False, cache_dir: str | None = None, limit: int | None = None) -> Features:
    """Pooled features of every layer in ``layers`` for every item of ``dataset``, in one pass."""
    from zfprobe.io.memory import budget_for, describe
    from zfprobe.studies.mining.compute import auto_batch_size

    if how not in POOLS:
        raise OptionError(f"--pool must be one of {', '.join(POOLS)}, not '{how}'")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise OptionError("give at least one layer (--layer)")
    tensors = [probe.resolve(l) for l in layers]
    n_total = len(dataset) if limit is None else min(len(dataset), int(limit))
    dims = feature_dims(probe, layers, how)
    need = 4 * n_total * sum(dims.values())
    if need > budget_for("features"):
        raise OptionError(f"the features would take {need / 1024**3:.1f} GB ({', '.join(f'{l}: {d}' for l, d in dims.items())} "
                          f"values per image), more than the {describe(budget_for('features'))} memory budget; "
                          "use --pool avg or max, fewer layers or fewer images, or a larger --memory")
    key = cache_key(probe, dataset, layers, how, limit) if cache_dir else None
    path = os.path.join(cache_dir, f"{key}.npz") if key else None
    if path and os.path.isfile(path):
        loaded = _read_cache(path, layers)
        if loaded is not None:
            return loaded
    batch_size = int(batch_size or auto_batch_size(probe, layers))
    program, outputs = pooled_program(probe, tensors, how)
    out = {l: np.empty((n_total, dims[l]), np.float32) for l in layers}
    kept, skipped = [], []
    bar = _bar(n_total, progress, "features")
    t0 = time.perf_counter()
    runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zfprobe-data")
    try:
        for batch in _ahead(runner, _limited(dataset.batches(batch_size), n_total)):
            skipped.extend((int(i), r) for i, r in batch.skipped)
            if len(batch.indices):
                acts = probe.backend.run(program, {probe.input_name: np.ascontiguousarray(batch.tensors, np.float32)}, outputs)
                rows = np.arange(len(kept), len(kept) + len(batch.indices))
                for layer, a in zip(layers, acts):
                    out[layer][rows] = pool(a, how)
                kept.extend(int(i) for i in batch.indices)
            bar.update(len(batch.indices) + len(batch.skipped))
    finally:
        runner.shutdown(wait=True)
        bar.close()
    if not kept:
        raise ZfprobeError(f"none of the {n_total} dataset item(s) could be read; no features")
    result = Features({l: m[: len(kept)] for l, m in out.items()}, np.asarray(kept, np.int64), skipped,
                      time.perf_counter() - t0)
    if path and need <= CACHE_LIMIT:
        _write_cache(path, result, layers)
    return result


def _limited(batches: Iterator, n_total: int) -> Iterator:
    for batch in batches:
        keep = batch.indices < n_total
        batch.tensors, batch.indices = batch.tensors[keep] if len(batch.indices) else batch.tensors, batch.indices[keep]
        batch.skipped = [(i, r) for i, r in batch.skipped if i < n_total]
        if len(batch.indices) or batch.skipped:
            yield batch
        if not keep.all():
            return


def _ahead(pool_: ThreadPoolExecutor, it: Iterator) -> Iterator:
    """Prepare the next batch in a thread while this one is computed."""
    sentinel = object()
    future = pool_.submit(next, it, sentinel)
    while True:
        item = future.result()
        if item is sentinel:
            return
        future = pool_.submit(next, it, sentinel)
        yield item


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def _write_cache(path: str, features: Features, layers: list[str]) -> None:
    from zfprobe.io.outputs import write_file_atomically

    buf = io.BytesIO()
    meta = {"layers": layers, "skipped": features.skipped, "seconds": features.seconds}
    np.savez(buf, meta=np.array(json.dumps(meta)), indices=features.indices,
             **{f"f{i}": features.matrices[l] for i, l in enumerate(layers)})
    try:
        write_file_atomically(path, buf.getvalue())
    except OSError:
        pass  # a cache that cannot be written is only slower next time


def _read_cache(path: str, layers: list[str]) -> Features | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["layers"] != layers:
                return None
            return Features({l: z[f"f{i}"] for i, l in enumerate(layers)}, z["indices"],
                            [(int(i), r) for i, r in meta["skipped"]], float(meta["seconds"]), cached=True)
    except (OSError, ValueError, KeyError):
        return None
