"""Seeded mutants of the study commands' inputs, for tests/cli/test_fuzz_studies.py (issue 25).

``case(seed, root)`` writes one mutated input under ``root`` and returns the command line that
reads it: a label CSV (transfer, probe-layers, ablate), a parts file (correspondence), a dataset
with damaged images or a damaged .npy (mine, report, ablate), or a mutated ONNX model
(occlude, mine, report; from onnx_fuzz). Deterministic: a failing seed replays.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np

from onnx_fuzz import mutant

DATA = Path(__file__).resolve().parent.parent / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"
SAMPLES = sorted((DATA / "samples").glob("*.png"))
WEIRD = ["", " ", "nan", "inf", "-1", "1e309", "3.5", "0x10", "９", "\u202e", "a" * 300, "\"", "'", ",", "\\", "\x00",
         "../../etc/passwd", "/etc/hostname", "12345678901234567890", "-0", "None", "[]", "{}", "caf\xe9"]
KINDS = ["labels", "parts", "dataset", "npy", "onnx-occlude", "onnx-mine", "onnx-report"]


def _flip(data: bytes, rng: random.Random, n: int = 0) -> bytes:
    b = bytearray(data)
    for _ in range(n or rng.randint(1, 8)):
        if not b:
            break
        b[rng.randrange(len(b))] = rng.randrange(256)
    if rng.random() < 0.3:
        b = b[: rng.randrange(len(b) + 1)]
    if rng.random() < 0.2:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(b)


def _labels(root: Path, rng: random.Random) -> list:
    rows = [[str(p), p.stem.split("_")[1]] for p in SAMPLES]
    for _ in range(rng.randint(1, 4)):
        if not rows:
            break
        r = rng.randrange(len(rows))
        what = rng.randrange(6)
        if what == 0:
            rows[r][1:2] = [rng.choice(WEIRD)]
        elif what == 1:
            rows[r][:1] = [rng.choice(WEIRD + [str(DIGIT), str(DATA)])]
        elif what == 2:
            rows[r] = rows[r][: rng.randint(0, 1)] + [rng.choice(WEIRD)] * rng.randint(0, 3)
        elif what == 3:
            del rows[r]
        elif what == 4:
            rows.insert(r, [rng.choice(WEIRD) for _ in range(rng.randint(1, 4))])
        else:
            rows = [[(row or [""])[0], "3"] for row in rows]  # one class
    text = "\n".join(",".join(row) for row in rows).encode("utf-8", "surrogatepass")
    if rng.random() < 0.4:
        text = _flip(text, rng)
    path = root / "labels.csv"
    path.write_bytes(text)
    cmd = rng.choice(["transfer", "probe-layers", "ablate"])
    if cmd == "ablate":
        return ["ablate", MODEL, path, "-l", "conv2", "-q", "-o", root / "out"]
    extra = ["--no-scratch"] if cmd == "transfer" else []
    return [cmd, MODEL, path, "-l", "relu3", "--per-class", "1", "--splits", "1", "--no-cache", "-q", *extra,
            "-o", root / "out"]


def _parts(root: Path, rng: random.Random) -> list:
    parts = {"00_0.png": {"a": [2, 2, 12, 12], "b": [10, 10, 20, 20]}, "01_0.png": {"a": [3, 3, 13, 13], "b": [12, 12, 22, 22]}}
    for _ in range(rng.randint(1, 3)):
        image = rng.choice(list(parts) + ["missing.png", rng.choice(WEIRD)])
        boxes = parts.setdefault(image, {})
        if not isinstance(boxes, dict):
            boxes = parts[image] = {}
        what = rng.randrange(5)
        if what == 0:
            boxes[rng.choice(["a", "b", rng.choice(WEIRD)])] = [rng.choice([1, -5, 1e9, 3.5, "x", None, float("nan")])
                                                              for _ in range(rng.choice([0, 2, 4, 4, 5]))]
        elif what == 1:
            parts[image] = rng.choice([[], None, "x", 5, {}])
        elif what == 2:
            boxes["a"] = [rng.randint(-40, 60) for _ in range(4)]
        elif what == 3:
            parts.pop(image, None)
        else:
            boxes["z"] = {"nested": True}
    if rng.random() < 0.5:
        text = json.dumps(parts, allow_nan=True).encode()
        name = "parts.json"
    else:
        lines = [f"{i},{p},{','.join(str(v) for v in (b if isinstance(b, list) else [b]))}"
                 for i, ps in parts.items() if isinstance(ps, dict) for p, b in ps.items()]
        text = "\n".join(lines).encode("utf-8", "surrogatepass")
        name = "parts.csv"
    if rng.random() < 0.3:
        text = _flip(text, rng)
    path = root / name
    path.write_bytes(text)
    return ["correspondence", MODEL, SAMPLES[0], SAMPLES[1], "--parts", path, "-l", "relu1", "--random", "2",
            "--no-progress", "-o", root / "out"]


def _dataset(root: Path, rng: random.Random) -> list:
    data = root / "data"
    data.mkdir()
    for p in SAMPLES[:6]:
        raw = p.read_bytes()
        (data / p.name).write_bytes(_flip(raw, rng, rng.randint(1, 40)) if rng.random() < 0.6 else raw)
    cmd = rng.choice(["mine", "report"])
    if cmd == "mine":
        return ["mine", MODEL, data, "-l", "conv2", "-k", "2", "-c", "0-1", "-q", "-o", root / "out"]
    return ["report", MODEL, data, "-l", "conv2", "--unit-pages", "1", "--occlusion-images", "0", "-q", "-o", root / "out"]


def _npy(root: Path, rng: random.Random) -> list:
    arr = np.stack([np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(p).convert("L")) for p in SAMPLES[:6]])
    path = root / "x.npy"
    np.save(path, rng.choice([arr, arr.astype(np.float32), arr.astype(np.float32) / 255.0, arr[:, :, :, None],
                              arr.astype(np.int64) * 1000, arr[:, :5]]))
    if rng.random() < 0.7:
        raw = path.read_bytes()
        head = rng.randrange(min(len(raw), 128))
        path.write_bytes(_flip(raw[:128], rng) + raw[128:] if head < 64 else _flip(raw, rng))
    labels = root / "labels.txt"
    labels.write_text("\n".join(str(rng.choice([0, 1, 2, 9, 10, -1])) for _ in range(6)))
    cmd = rng.choice(["mine", "ablate"])
    if cmd == "mine":
        return ["mine", MODEL, path, "-l", "conv2", "-k", "2", "-c", "0-1", "-q", "-o", root / "out"]
    return ["ablate", MODEL, path, "--labels", labels, "-l", "conv2", "-q", "-o", root / "out"]


def _onnx(root: Path, rng: random.Random, cmd: str, seed: int) -> list:
    model = root / "model.onnx"
    model.write_bytes(mutant(seed))
    if cmd == "occlude":
        return ["occlude", model, "-i", DIGIT, "-l", "relu2", "--no-progress", "-s", "7", "-t", "7", "-o", root / "out"]
    if cmd == "mine":
        return ["mine", model, DATA / "samples", "-l", "relu2", "-k", "2", "-c", "0-1", "-q", "-o", root / "out"]
    return ["report", model, DATA / "samples", "-l", "relu2", "--unit-pages", "1", "--occlusion-images", "0", "-q",
            "--limit", "6", "-o", root / "out"]


def case(seed: int, root: Path) -> tuple[str, list]:
    """(kind, argv) of fuzz case ``seed``, its inputs written under ``root`` (an empty folder)."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    if kind == "labels":
        return kind, _labels(root, rng)
    if kind == "parts":
        return kind, _parts(root, rng)
    if kind == "dataset":
        return kind, _dataset(root, rng)
    if kind == "npy":
        return kind, _npy(root, rng)
    return kind, _onnx(root, rng, kind.split("-")[1], seed)


def clear(root: Path) -> None:
    for p in root.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
