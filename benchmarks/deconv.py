"""Benchmark: 64 deconvnet projections of conv5 on a 224x224 ZFNet, zfprobe vs Captum.

Work: for one image, the strongest unit of each of 64 channels of conv5, each projected to
pixel space with the deconvnet rule. Captum's NeuronDeconvolution does one projection per call
(forward + backward each time); zfprobe does one forward and one batched reverse pass.
Both use the same weights; the results are checked equal (LRN reversed by its gradient, as
autograd does) before the times are printed.

Run:  python benchmarks/deconv.py [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args()

    import torch
    from captum.attr import NeuronDeconvolution

    import zfprobe
    from tests.nets import export_onnx, zfnet

    torch.set_num_threads(os.cpu_count() or 1)
    model = zfnet().eval()
    for m in model.modules():  # Captum's backward hooks need out-of-place ReLUs
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    image = torch.from_numpy(np.random.RandomState(0).rand(1, 3, 224, 224).astype(np.float32) * 2 - 1)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "zfnet.onnx")
        names = export_onnx(model, image, path)
        probe = zfprobe.load(path)
        layer = names["conv5"]
        x = image.numpy()

        def run_zfprobe():
            acts = probe.activations(x, layer)
            channels = list(range(args.channels))
            seeds = np.zeros((len(channels),) + acts.shape[1:], np.float32)
            units = []
            for k, c in enumerate(channels):
                y, xx = np.unravel_index(int(np.argmax(acts[0, c])), acts.shape[2:])
                seeds[k, c, y, xx] = 1.0
                units.append((c, int(y), int(xx)))
            return units, probe.project(x, layer, seeds, rule="deconvnet", lrn="gradient")

        probe.project(x, layer, np.zeros((1,) + probe.graph.shape(layer)[1:], np.float32), lrn="gradient")  # warm-up
        t_zf, (units, ours) = best_of(run_zfprobe, args.repeats)

        deconv = NeuronDeconvolution(model, model.conv5)

        def run_captum():
            with torch.no_grad():
                acts = model.conv5(model.relu4(model.conv4(model.relu3(model.conv3(
                    model.norm2(model.pool2(model.relu2(model.conv2(model.norm1(model.pool1(model.relu1(model.conv1(image)))))))))))))
            out = []
            for c in range(args.channels):
                y, xx = np.unravel_index(int(torch.argmax(acts[0, c])), acts.shape[2:])
                out.append(deconv.attribute(image, neuron_selector=(c, int(y), int(xx))).detach().numpy()[0])
            return np.stack(out)

        run_captum()  # warm-up
        t_captum, theirs = best_of(run_captum, args.repeats)

    err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    print(f"workload: ZFNet 224x224, conv5, strongest unit of {args.channels} channels, deconvnet rule, "
          f"{os.cpu_count()} CPU threads, best of {args.repeats}")
    print(f"zfprobe (onnxruntime {probe.backend.device}): {t_zf:8.3f} s")
    print(f"captum NeuronDeconvolution:        {t_captum:8.3f} s")
    print(f"speed-up: {t_captum / t_zf:.2f}x   max relative difference: {err:.2e}")
    if err > 1e-4:
        raise SystemExit("results differ: the benchmark is not comparing the same work")


if __name__ == "__main__":
    main()
