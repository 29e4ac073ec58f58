"""Fig. 6 on this machine: an AlexNet-shaped first layer (11x11, stride 4) and a ZFNet-shaped one
(7x7, stride 2), otherwise identical nets, trained briefly on the same real photographs; then
``zfprobe filters A B DATA --aliasing-layer relu2`` compares them (each net's layer-2 grid is
the stride of that layer's receptive field: 8 = 4 x 2 for the AlexNet shape, 4 = 2 x 2 for ZFNet).

Data: foolbox's 20 ImageNet samples and scikit-image's colour photographs, resized to 160 px,
random 96x96 crops with flips; the task is to tell the photographs apart from a crop (instance
classification: a real training signal that needs no labelled dataset, which no package ships).
Both nets see the same crops in the same order (fixed seeds). About 3 min on 2 cores.

    python scripts/filters_stride_demo.py [--seconds 80] [--out /tmp/filters_demo]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def photographs(side=160):
    from PIL import Image
    from skimage import data

    from assets import foolbox_samples

    images = [Image.open(p).convert("RGB") for p, _ in foolbox_samples("imagenet")]
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel", "retina"):
        try:
            images.append(Image.fromarray(getattr(data, name)()).convert("RGB"))
        except Exception:  # a sample that needs pooch (not installed) is skipped
            pass
    out = []
    for im in images:
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((side, side), Image.BILINEAR)
        out.append(((np.asarray(im, np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out)


def net(kernel, stride, classes):
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 48, kernel, stride=stride, padding=kernel // 2)
            self.relu1 = nn.ReLU()
            self.pool1 = nn.MaxPool2d(3, 2, padding=1)
            self.conv2 = nn.Conv2d(48, 64, 5, padding=2)
            self.relu2 = nn.ReLU()
            self.pool2 = nn.MaxPool2d(3, 2, padding=1)
            self.conv3 = nn.Conv2d(64, 96, 3, padding=1)
            self.relu3 = nn.ReLU()
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(96, classes)

        def forward(self, x):
            x = self.pool1(self.relu1(self.conv1(x)))
            x = self.pool2(self.relu2(self.conv2(x)))
            return self.fc(self.gap(self.relu3(self.conv3(x))).flatten(1))

    return Net()


def crops(photos, n, rng, size=96):
    idx = rng.integers(0, len(photos), n)
    ys, xs = rng.integers(0, photos.shape[2] - size + 1, (2, n))
    out = np.stack([photos[i, :, y:y + size, x:x + size] for i, y, x in zip(idx, ys, xs)])
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, :, ::-1]
    return np.ascontiguousarray(out), idx


def train(model, photos, seconds, seed=0, max_steps=0):
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    t0, steps = time.perf_counter(), 0
    while (steps < max_steps) if max_steps else (time.perf_counter() - t0 < seconds):
        x, y = crops(photos, 32, rng)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        steps += 1
    x, y = crops(photos, 256, np.random.default_rng(99))
    with torch.no_grad():
        acc = float((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    return steps, float(loss.detach()), acc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=80)
    ap.add_argument("--steps", type=int, default=150, help="training steps of 32 crops, the same for both (0: --seconds each)")
    ap.add_argument("--out", default="/tmp/filters_demo")
    args = ap.parse_args()
    import torch

    import nets

    os.makedirs(args.out, exist_ok=True)
    photos = photographs()
    print(f"{len(photos)} photographs", flush=True)
    rng = np.random.default_rng(5)
    data, _ = crops(photos, 64, rng)
    np.save(os.path.join(args.out, "crops.npy"), data.astype(np.float32))
    paths = []
    for name, kernel, stride in (("alexnet_l1_11x11_s4", 11, 4), ("zfnet_l1_7x7_s2", 7, 2)):
        model = net(kernel, stride, len(photos))
        steps, loss, acc = train(model, photos, args.seconds, max_steps=args.steps)
        print(f"{name}: {steps} steps, last loss {loss:.3f}, crop accuracy {acc:.2f}", flush=True)
        path = os.path.join(args.out, f"{name}.onnx")
        layer_names = nets.export_onnx(model.eval(), torch.from_numpy(data[:1]), path)
        paths.append(path)
    out = os.path.join(args.out, "compare")
    subprocess.run([sys.executable, "-m", "zfprobe.cli.main", "filters", *paths, os.path.join(args.out, "crops.npy"),
                    "--aliasing-layer", layer_names["relu2"], "-q", "-o", out], check=True)
    print(open(os.path.join(out, "summary.md")).read())
