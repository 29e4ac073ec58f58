"""Benchmark: 64 deconvnet projections of conv5 on a 224x224 ZFNet, zfprobe vs Captum.

Work: for one image, the strongest unit of each of 64 channels of conv5, each projected to
pixel space with the deconvnet rule. Captum's NeuronDeconvolution does one projection per call
(forward + backward each time); zfprobe does one forward and one batched reverse pass.
Both use the same weights; the results are checked equal (LRN reversed by its gradient, as
autograd does) before the times are printed.

Cold = ``zfprobe.load`` plus the first projection, as the CLI pays it (import, program building,
backend sessions), against Captum's first call; warm = the best of ``--repeats`` later calls.
``--torch-lrn``: the ZFNet written with torch's ``nn.LocalResponseNorm`` (exported as a chain that
zfprobe fuses back into LRN).

Run:  python benchmarks/deconv.py [--repeats 3] [--threads N] [--torch-lrn]
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
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--torch-lrn", action="store_true", help="ZFNet with torch's nn.LocalResponseNorm")
    args = parser.parse_args()

    import torch
    from captum.attr import NeuronDeconvolution

    import zfprobe
    from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend
    from tests.nets import export_onnx, zfnet, zfnet_torch_lrn

    torch.set_num_threads(args.threads)
    model = (zfnet_torch_lrn if args.torch_lrn else zfnet)().eval()
    for m in model.modules():  # Captum's backward hooks need out-of-place ReLUs
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    image = torch.from_numpy(np.random.RandomState(0).rand(1, 3, 224, 224).astype(np.float32) * 2 - 1)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "zfnet.onnx")
        names = export_onnx(model, image, path)
        t_load = time.perf_counter()
        probe = zfprobe.load(path)
        probe.backend = OnnxRuntimeBackend("cpu", threads=args.threads)
        t_load = time.perf_counter() - t_load
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

        t_cold, _ = best_of(run_zfprobe, 1)  # the first call: programs and sessions built here
        t_cold += t_load
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

        t_captum_cold, _ = best_of(run_captum, 1)
        t_captum, theirs = best_of(run_captum, args.repeats)

    err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    lrn = "nn.LocalResponseNorm (fused: " + ", ".join(sorted(set(probe.graph.metadata.get("fused", {}).values()))) + ")" \
        if args.torch_lrn else "ONNX LRN nodes"
    print(f"workload: ZFNet 224x224 with {lrn}, conv5, strongest unit of {args.channels} channels, deconvnet rule, "
          f"{args.threads} CPU threads, warm = best of {args.repeats}")
    print(f"zfprobe (onnxruntime {probe.backend.device}): warm {t_zf:8.3f} s, cold {t_cold:8.3f} s "
          f"(load {t_load:.2f} s + first call)")
    print(f"captum NeuronDeconvolution:        warm {t_captum:8.3f} s, cold {t_captum_cold:8.3f} s")
    print(f"speed-up: warm {t_captum / t_zf:.2f}x, cold {t_captum_cold / t_cold:.2f}x   "
          f"max relative difference: {err:.2e}")
    if err > 1e-4:
        raise SystemExit("results differ: the benchmark is not comparing the same work")


if __name__ == "__main__":
    main()
