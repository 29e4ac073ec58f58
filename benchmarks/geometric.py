"""Benchmark: deconvnet projections through a U-Net decoder (ConvTranspose, bilinear Resize,
skip Concat), zfprobe vs Captum.

Work: one 256x256 image, the strongest unit of each of the 8 channels of the decoder block
``dec2`` (after a ConvTranspose and a bilinear upsampling), each projected to pixel space with
the deconvnet rule. Captum's NeuronDeconvolution does one projection per call (forward +
backward each time); zfprobe does one forward and one batched reverse pass through the exact
adjoints of ConvTranspose (a Conv) and Resize (two MatMuls). The results are checked equal before
the times are printed. zfprobe runs twice: the receptive-field-windowed reversal (the default for
unit seeds; windows follow each op's geometry through ConvTranspose and Resize) and the exact
full program (``windowed=False``), so the speed-up of the windows is printed too. Cold = the first call (zfprobe: ONNX import, program build, onnxruntime
session; Captum: its first call); warm = best of ``--repeats`` later calls.

Run:  python benchmarks/geometric.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def best_of(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t, result = timed(fn)
        best = min(best, t)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    import torch
    from captum.attr import NeuronDeconvolution

    import geometric_nets
    import zfprobe
    from nets import export_onnx

    torch.set_num_threads(os.cpu_count() or 1)
    model = geometric_nets.build("unet")
    image = torch.from_numpy(np.random.RandomState(0).rand(1, 3, args.size, args.size).astype(np.float32))
    x = image.numpy()
    target = model.dec2
    with torch.no_grad():
        captured = {}
        handle = target.register_forward_hook(lambda m, i, o: captured.__setitem__("y", o))
        model(image)
        handle.remove()
    acts_t = captured["y"]
    units = [(c, *np.unravel_index(int(torch.argmax(acts_t[0, c])), acts_t.shape[2:])) for c in range(acts_t.shape[1])]

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "unet.onnx")
        names = export_onnx(model, image, path)
        layer = names["dec2"]

        def run_zfprobe(probe, windowed=True):
            acts = probe.activations(x, layer)
            seeds = np.zeros((len(units),) + acts.shape[1:], np.float32)
            for k, (c, y, xx) in enumerate(units):
                seeds[k, c, y, xx] = 1.0
            return probe.project(x, layer, seeds, rule="deconvnet", windowed=windowed)

        t_zf_cold, ours = timed(lambda: run_zfprobe(zfprobe.load(path)))
        probe = zfprobe.load(path)
        run_zfprobe(probe)
        t_zf, ours = best_of(lambda: run_zfprobe(probe), args.repeats)
        t_full_cold, full = timed(lambda: run_zfprobe(zfprobe.load(path), False))
        probe_full = zfprobe.load(path)
        run_zfprobe(probe_full, False)
        t_full, full = best_of(lambda: run_zfprobe(probe_full, False), args.repeats)
        assert probe.windowed_program(layer, "deconvnet", "identity", single_image=True) is not None

    deconv = NeuronDeconvolution(model, target)

    def run_captum():
        return np.stack([deconv.attribute(image, neuron_selector=(int(c), int(y), int(xx))).detach().numpy()[0]
                         for c, y, xx in units])

    t_cap_cold, _ = timed(run_captum)
    t_captum, theirs = best_of(run_captum, args.repeats)

    err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    print(f"workload: U-Net {args.size}x{args.size}, dec2 (after ConvTranspose + bilinear Resize), strongest unit of "
          f"{len(units)} channels, deconvnet rule, {os.cpu_count()} CPU threads, warm = best of {args.repeats}")
    print(f"zfprobe (onnxruntime {probe.backend.device}): cold {t_zf_cold:8.3f} s   warm {t_zf:8.3f} s")
    print(f"zfprobe full program (no windows): cold {t_full_cold:8.3f} s   warm {t_full:8.3f} s")
    print(f"captum NeuronDeconvolution:        cold {t_cap_cold:8.3f} s   warm {t_captum:8.3f} s")
    win_err = float(np.abs(ours - full).max() / np.abs(full).max())
    print(f"windowed vs full program: cold {t_full_cold / t_zf_cold:.2f}x   warm {t_full / t_zf:.2f}x   "
          f"max relative difference: {win_err:.2e}")
    print(f"speed-up: cold {t_cap_cold / t_zf_cold:.2f}x   warm {t_captum / t_zf:.2f}x   "
          f"max relative difference: {err:.2e}")
    if err > 1e-4 or win_err > 1e-5:
        raise SystemExit("results differ: the benchmark is not comparing the same work")


if __name__ == "__main__":
    main()
