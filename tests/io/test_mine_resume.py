"""Resuming `zfprobe mine` loses nothing (issue 25), and a failed run keeps the checkpoint it found.

A real ``zfprobe mine`` subprocess (batches of one image, three forward runs in flight, a
checkpoint after every batch) is stopped at 21 points by the ``ZFPROBE_PAUSE_AT`` hook
(``mining-N``: batch N merged; ``merging-N``: N merged, waiting for the next batch's forward
pass while later batches compute) and sent SIGINT, SIGTERM or SIGKILL; the rerun must resume
and give ``index.csv``, the contact sheets and every channel PNG byte for byte as one
uninterrupted run.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clirun import fill_disk, judge, run, tree

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
N_IMAGES = 48
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
# 21 points: every second batch, alternately just after a merge and while waiting for a batch
POINTS = [(("mining" if i % 2 else "merging"), n, SIGNALS[i % 3]) for i, n in enumerate(range(2, 44, 2))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """48 MNIST digits (the 20 samples, mirrored, and rolled): uint8 [N, 28, 28]."""
    from PIL import Image

    digits = np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted((DATA / "samples").glob("*.png"))])
    images = np.concatenate([digits, digits[:, :, ::-1], np.roll(digits, 3, axis=2)])[:N_IMAGES]
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, np.ascontiguousarray(images))
    return path


def mine_args(dataset: Path) -> list:
    # --top 48 keeps every image in every channel's list: a batch lost by a resume always shows
    return ["mine", MODEL, dataset, "-l", "conv2", "-k", str(N_IMAGES), "-c", "0-1", "--per-page", "1",
            "--batch-size", "1", "-q"]


def results(out: Path) -> dict[str, bytes]:
    """What must not depend on interruptions: index.csv, the sheets and channel PNGs."""
    return {k: v for k, v in tree(out).items() if k == "index.csv" or k.endswith(".png")}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, dataset) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "out"
    r = run(*mine_args(dataset), "-o", out)
    assert judge(r, expect_error=False) is None, r.stderr
    files = results(out)
    assert "index.csv" in files and any(k.endswith("sheet_001.png") for k in files) and len(files) >= 5
    return files


def start_paused(dataset: Path, out: Path, point: str) -> tuple[subprocess.Popen, Path]:
    flag = out.parent / f"paused-{point}"
    env = dict(os.environ, ZFPROBE_PAUSE_AT=point, ZFPROBE_PAUSE_FILE=str(flag), ZFPROBE_PAUSE_SECONDS="120",
               ZFPROBE_MINE_CHECKPOINT_S="0", ZFPROBE_MINE_RUNS="3")
    proc = subprocess.Popen([sys.executable, "-m", "zfprobe.cli.main", *map(str, mine_args(dataset)), "-o", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, flag


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_resume_after_an_interruption_is_byte_identical(tmp_path, dataset, clean, sig):
    """The 7 points of one signal run side by side (each process sleeps at its point), so the
    21 runs cost about what 21 process starts cost on 2 cores."""
    points = [(kind, n) for kind, n, s in POINTS if s == sig]
    runs = {}
    for kind, n in points:
        (tmp_path / f"{kind}-{n}").mkdir()
        runs[(kind, n)] = start_paused(dataset, tmp_path / f"{kind}-{n}" / "out", f"{kind}-{n}")
    try:
        deadline = time.monotonic() + 240
        for (kind, n), (proc, flag) in runs.items():
            while not flag.exists():
                assert proc.poll() is None, f"run ended before {kind}-{n}: {proc.communicate()}"
                assert time.monotonic() < deadline, f"run never reached {kind}-{n}"
                time.sleep(0.02)
            proc.send_signal(sig)
        for (kind, n), (proc, flag) in runs.items():
            _, err = proc.communicate(timeout=120)
            lines = [l for l in err.splitlines() if l.strip()]
            if sig == signal.SIGKILL:
                assert proc.returncode == -signal.SIGKILL
            else:
                assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
                saved = re.search(rf"checkpoint saved after (\d+) of {N_IMAGES} images", lines[0]) if len(lines) == 1 else None
                assert saved and int(saved.group(1)) >= n, (kind, n, lines)  # batches in flight are merged, never dropped
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for kind, n in points:
        out = tmp_path / f"{kind}-{n}" / "out"
        r = run(*mine_args(dataset), "-o", out)
        assert judge(r, expect_error=False) is None, r.stderr
        assert re.search(r"resuming after \d+ of 48 images", r.stderr), (kind, n, r.stderr)
        assert results(out) == clean, (kind, n)


@pytest.fixture
def small_disk(tmpfs):
    """A 1 MB tmpfs (root only; skipped elsewhere), unmounted afterwards."""
    return tmpfs("disk", size="1m")


def test_failed_mine_on_a_full_disk_keeps_the_checkpoint_it_found(small_disk, dataset):
    out = small_disk / "out"
    args = [*mine_args(dataset), "--batch-size", "8"]
    assert judge(run(*args, "--no-project", "-o", out), expect_error=False) is None
    state = out / ".mine-state.npz"
    before = state.read_bytes()
    fill_disk(small_disk, 8 * 4096)
    for extra in ([], ["--restart"]):  # resuming the finished pass, or mining again from the start
        r = run(*args, *extra, "-o", out)
        assert judge(r, expect_error=True) is None and "No space left" in r.stderr, r.stderr
        assert state.read_bytes() == before  # neither rewritten nor removed
        assert not [n for n in os.listdir(out) if n.startswith(".zfprobe-")]


def test_failed_mine_on_a_full_disk_leaves_no_checkpoint(small_disk, dataset):
    fill_disk(small_disk, 8 * 4096)
    out = small_disk / "out"
    r = run(*mine_args(dataset), "--batch-size", "8", "-o", out)
    assert judge(r, expect_error=True) is None and "No space left" in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("library", ["_multiarray_umath", "onnxruntime_pybind11_state"])
def test_early_ctrl_c_is_one_line(tmp_path, dataset, library):
    """Ctrl-C while Python imports numpy (zfprobe's own modules) or initializes onnxruntime (which
    would report it as ``ImportError: initialization failed``): one line, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "zfprobe.cli.main", *map(str, mine_args(dataset)),
                             "-o", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if library in maps.read_text():
                break
        except OSError:
            pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode in (130, -signal.SIGINT), err
    assert len(lines) == 1 and lines[0].startswith("zfprobe: interrupted"), lines
    assert not (tmp_path / "out").exists()
