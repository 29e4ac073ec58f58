"""Benchmark of the feature extraction behind `zfprobe transfer` / `probe-layers` (issue 14).

Prints, in one run, on EfficientNet-Lite0 (real ImageNet weights, 224x224) and on the bundled
MNIST CNN:

(a) zfprobe's one-pass extraction of several layers against a naive loop that extracts one layer
    at a time (each pass running the network up to that layer), as a ratio, cold (first call:
    sessions created) and warm;
(b) zfprobe's extraction throughput (images/s; the deepest layer is the output, so the same network runs) as a fraction
    of plain onnxruntime throughput of the full model file on the same preprocessed images (the
    ceiling: the same network, no pooling, no dataset plumbing).

Features are checked equal between the two extraction paths. Times are wall-clock and process
CPU seconds (CPU time is less sensitive to other load on a shared machine).

    python benchmarks/transfer.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import zfprobe  # noqa: E402
from zfprobe.io.datasets import ArrayDataset  # noqa: E402
from zfprobe.studies.transfer.features import extract  # noqa: E402

MNIST = os.path.join(REPO, "zfprobe", "data", "mnist_cnn.onnx")


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def plain_ort(path: str, x: np.ndarray, batch: int) -> tuple[float, float]:
    """Images/s (wall, CPU) of onnxruntime running the model file on preprocessed batches (warm)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    for v in list(model.graph.input) + list(model.graph.output):  # a batch axis of any size
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:batch]})
    t, c = time.perf_counter(), time.process_time()
    for lo in range(0, len(x), batch):
        sess.run(None, {name: x[lo:lo + batch]})
    return len(x) / (time.perf_counter() - t), len(x) / (time.process_time() - c)


def case(title: str, path: str, layers: list[str], pixels: np.ndarray, preset: str | None, batch: int) -> None:
    probe_one = zfprobe.load(path)
    prep = probe_one.preprocessing.with_preset(preset) if preset else probe_one.preprocessing
    ds = ArrayDataset(None, prep, probe_one.input_shape, array=pixels)
    print(f"\n== {title}: {len(pixels)} images, {len(layers)} layers, batch {batch}")
    one_cold, w1c, c1c = timed(lambda: extract(probe_one, ds, layers, "avg", batch))
    one_warm, w1w, c1w = timed(lambda: extract(probe_one, ds, layers, "avg", batch))
    probe_naive = zfprobe.load(path)

    def naive():
        return {l: extract(probe_naive, ds, [l], "avg", batch).matrices[l] for l in layers}

    naive_cold, wnc, cnc = timed(naive)
    naive_warm, wnw, cnw = timed(naive)
    for l in layers:
        np.testing.assert_allclose(one_warm.matrices[l], naive_warm[l], rtol=1e-5, atol=1e-5)
    print(f"(a) one pass for all layers: cold {w1c:.2f} s wall / {c1c:.2f} s CPU, warm {w1w:.2f} s / {c1w:.2f} s")
    print(f"    naive per-layer loop:      cold {wnc:.2f} s wall / {cnc:.2f} s CPU, warm {wnw:.2f} s / {cnw:.2f} s")
    print(f"    ratio naive / one pass:    cold {wnc / w1c:.2f}x wall ({cnc / c1c:.2f}x CPU), "
          f"warm {wnw / w1w:.2f}x wall ({cnw / c1w:.2f}x CPU); features equal")
    x = np.concatenate([b.tensors for b in ds.batches(batch)])
    ceiling, ceiling_cpu = plain_ort(path, x, batch)
    pre = ArrayDataset(None, prep, probe_one.input_shape, array=x)  # already preprocessed model input
    extract(probe_one, pre, layers, "avg", batch)
    _, wp, cp = timed(lambda: extract(probe_one, pre, layers, "avg", batch))
    print(f"(b) plain onnxruntime forward of the model file: {ceiling:.1f} img/s wall, {ceiling_cpu:.1f} img/s per CPU second")
    print(f"    zfprobe from uint8 pixels (preprocessing + pooling included): {len(x) / w1w:.1f} img/s wall, "
          f"{len(x) / c1w:.1f} per CPU s: fraction {len(x) / w1w / ceiling:.2f} wall, {len(x) / c1w / ceiling_cpu:.2f} CPU")
    print(f"    zfprobe from preprocessed arrays (pooling included): {len(x) / wp:.1f} img/s wall, "
          f"{len(x) / cp:.1f} per CPU s: fraction {len(x) / wp / ceiling:.2f} wall, {len(x) / cp / ceiling_cpu:.2f} CPU")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer images")
    args = ap.parse_args()
    from assets import mnist_5k

    digits = np.asarray(mnist_5k()[0])
    n_small = 1000 if args.quick else 5000
    case("MNIST CNN (bundled)", MNIST, ["relu1", "relu2", "relu3", "fc"], digits[:n_small], None, 256)
    import efficientnet_lite0 as eff

    path = os.path.join(tempfile.mkdtemp(prefix="zf-bench-"), "efficientnet_lite0.onnx")
    eff.export_onnx(path)
    from assets import foolbox_samples
    from PIL import Image

    photos = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224))) for p, _ in foolbox_samples("imagenet")])
    n = 40 if args.quick else 120
    pixels = np.concatenate([photos] * (n // len(photos) + 1))[:n]
    layers = ["/_blocks.2/Add", "/_blocks.7/Add", "/_blocks.14/Add", "/Clip_1", "/_fc/Gemm"]
    case("EfficientNet-Lite0 (ImageNet weights), foolbox ImageNet photos", path, layers, pixels, "imagenet", 20)


if __name__ == "__main__":
    main()
