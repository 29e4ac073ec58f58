"""Benchmark: zfprobe's torch backend vs Captum's NeuronDeconvolution, on one live ZFNet module.

Work: a 224x224 ZFNet (tests/nets.py, full width: 96-256-384-384-256, FC 4096), one image; for
each of 64 channels of conv5 the strongest unit, projected to pixel space with the deconvnet
rule. Both sides use the same module object and its weights:

- zfprobe: ``zfprobe.attach(model, example)`` (done once, timed separately), then one forward
  pass and one batched reverse pass of the 64 seeds with torch kernels on the module's device;
- Captum: ``NeuronDeconvolution(model, model.conv5).attribute(image, neuron_selector=(c, y, x))``
  once per unit (its API takes one neuron per call), each a forward + a backward pass;
- Captum, batched (for reference): the image repeated 64 times and a callable selector picking
  each row's own unit, one forward + backward at batch 64.

Every result is checked equal to the others (LRN reversed by its gradient, as autograd does)
before the times are printed. ``nn.ReLU(inplace=True)`` modules are made out-of-place first:
Captum's backward hooks fail on in-place ReLUs (zfprobe does not care).

Cold = the first call (zfprobe: attach + first projection; Captum: its first unit-by-unit pass),
as a script pays it; warm = best of the repeats. On a GPU, the CUDA context is created before
either side is timed, and TF32 is off for Captum too (zfprobe always runs float32), so both
compute the same numbers.

Run:  python benchmarks/torch_backend.py [--repeats 3] [--captum-repeats 1] [--channels 64] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def best_of(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of zfprobe and batched Captum (best kept)")
    parser.add_argument("--captum-repeats", type=int, default=1, help="runs of the unit-by-unit Captum loop")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--no-batched", action="store_true", help="skip the batched-Captum reference")
    args = parser.parse_args()

    import torch
    from captum.attr import NeuronDeconvolution

    import zfprobe
    from tests.nets import zfnet

    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.zeros(1, device=device)
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.set_num_threads(os.cpu_count() or 1)
    model = zfnet().eval().to(device)
    for m in model.modules():  # Captum's backward hooks need out-of-place ReLUs
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    image = torch.from_numpy(np.random.RandomState(0).rand(1, 3, 224, 224).astype(np.float32) * 2 - 1).to(device)
    x = image.cpu().numpy()
    channels = list(range(args.channels))

    sync()
    t0 = time.perf_counter()
    probe = zfprobe.attach(model, image)
    t_attach = time.perf_counter() - t0

    def strongest_units(acts):
        units = []
        for c in channels:
            y, xx = np.unravel_index(int(np.argmax(acts[0, c])), acts.shape[2:])
            units.append((c, int(y), int(xx)))
        return units

    def run_zfprobe():
        acts = probe.activations(x, "conv5")
        units = strongest_units(acts)
        seeds = np.zeros((len(units),) + acts.shape[1:], np.float32)
        for k, (c, y, xx) in enumerate(units):
            seeds[k, c, y, xx] = 1.0
        return units, probe.project(x, "conv5", seeds, rule="deconvnet", lrn="gradient")

    t_first, _ = best_of(run_zfprobe, 1, sync)  # the first call builds the program
    t_zf_cold = t_attach + t_first
    t_zf, (units, ours) = best_of(run_zfprobe, args.repeats, sync)

    deconv = NeuronDeconvolution(model, model.conv5)

    def conv5(inp):
        with torch.no_grad():
            m = model
            h = m.norm1(m.pool1(m.relu1(m.conv1(inp))))
            h = m.norm2(m.pool2(m.relu2(m.conv2(h))))
            return m.conv5(m.relu4(m.conv4(m.relu3(m.conv3(h)))))

    def run_captum(limit=None):
        acts = conv5(image).cpu().numpy()
        out = []
        for c, y, xx in strongest_units(acts)[:limit]:
            out.append(deconv.attribute(image, neuron_selector=(c, y, xx)).detach().cpu().numpy()[0])
        return np.stack(out)

    t_captum_cold, _ = best_of(run_captum, 1, sync)
    t_captum, theirs = best_of(run_captum, args.captum_repeats, sync)

    t_batched, batched = None, None
    if not args.no_batched:
        def run_captum_batched():
            acts = conv5(image).cpu().numpy()
            u = strongest_units(acts)
            rows = torch.arange(len(u), device=device)
            cs = torch.tensor([c for c, _, _ in u], device=device)
            ys = torch.tensor([y for _, y, _ in u], device=device)
            xs = torch.tensor([xx for _, _, xx in u], device=device)
            selector = lambda out: out[rows, cs, ys, xs]  # noqa: E731
            inp = image.expand(len(u), -1, -1, -1).contiguous()
            return deconv.attribute(inp, neuron_selector=selector).detach().cpu().numpy()

        run_captum_batched()
        t_batched, batched = best_of(run_captum_batched, args.repeats, sync)

    scale = np.abs(theirs).max()
    err = float(np.abs(ours - theirs).max() / scale)
    print(f"workload: ZFNet 224x224 (live nn.Module), conv5, strongest unit of {args.channels} channels, "
          f"deconvnet rule, device {device}, {torch.get_num_threads()} CPU threads, best of {args.repeats} "
          f"(Captum unit by unit: best of {args.captum_repeats})")
    print(f"zfprobe.attach (trace + import, once):       {t_attach:8.3f} s")
    print(f"zfprobe torch backend ({probe.backend.device}):               {t_zf:8.3f} s")
    print(f"captum NeuronDeconvolution (one per unit):  {t_captum:8.3f} s")
    if t_batched is not None:
        err_b = float(np.abs(batched - theirs).max() / scale)
        print(f"captum NeuronDeconvolution (batched trick): {t_batched:8.3f} s   (max rel. diff {err_b:.1e})")
    print(f"cold (first call): zfprobe attach + first projection {t_zf_cold:.3f} s, Captum first pass "
          f"{t_captum_cold:.3f} s: speed-up {t_captum_cold / t_zf_cold:.2f}x")
    print(f"warm speed-up vs Captum: {t_captum / t_zf:.2f}x"
          + (f"   (vs batched Captum: {t_batched / t_zf:.2f}x)" if t_batched else "")
          + f"   max relative difference: {err:.2e}")
    if err > 1e-4:
        raise SystemExit("results differ: the benchmark is not comparing the same work")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
