"""SIGKILL at each step of a publish over an earlier result (issue 25), for visualize, mine,
occlude and report.

``ZFPROBE_TEST_SIGKILL_AT_PUBLISH_STEP=k`` (zfprobe/io/outputs.py) makes a real run SIGKILL
itself at the k-th step of its publish: 1 = journal written; then each earlier file moved aside
and each new file moved in, the stale files moved aside, the new manifest moved in; the last step
is just after the commit (the journal removed). Killed before the commit, the folder must come
back, after the recovery that starts every run (here: ``recover``), to the earlier result byte
for byte; killed after it, it holds the new result complete. Either way nothing of zfprobe's
(staging, journal) is left once the next run has started.

The default suite kills at four steps (the journal written, the middle, the new manifest moved
in, just after the commit); ``--runslow`` kills at every step and once past the end.
"""
from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clirun import judge, run, tree

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"
SAMPLES = DATA / "samples"

# command: (earlier run, new run); the new run writes other files and leaves some stale
CASES = {
    "visualize": (["visualize", MODEL, "-i", DIGIT, "-l", "conv2", "--top", "5"],
                  ["visualize", MODEL, "-i", DIGIT, "-l", "conv2", "--top", "3"]),
    "mine": (["mine", MODEL, SAMPLES, "-l", "conv2", "-k", "3", "-c", "0-3", "-q"],
             ["mine", MODEL, SAMPLES, "-l", "conv2", "-k", "2", "-c", "0-1", "-q"]),
    "occlude": (["occlude", MODEL, "-i", DIGIT, "-l", "conv2", "--no-progress", "-s", "7", "-t", "7"],
                ["occlude", MODEL, "-i", DIGIT, "-l", "conv2", "--no-progress", "-s", "7", "-t", "7",
                 "--no-projection"]),
    "report": (["report", MODEL, SAMPLES, "-l", "conv2", "--unit-pages", "1", "--occlusion-images", "0", "-q"],
               ["report", MODEL, SAMPLES, "-l", "conv1", "--unit-pages", "1", "--occlusion-images", "0", "-q"]),
}


def visible(out: Path) -> dict[str, bytes]:
    """The result: every file but zfprobe's hidden ones (a mining checkpoint may change)."""
    return {k: v for k, v in tree(out).items() if not k.split("/")[-1].startswith(".")}


def listed(out: Path) -> set[str]:
    return set(json.loads((out / "manifest.json").read_text())["files"])


def publish_steps(earlier: set[str], new: set[str]) -> int:
    """Steps of a publish of ``new`` over ``earlier`` (see zfprobe.io.outputs._apply_journal)."""
    moved = [f for f in new if f != "manifest.json"]
    return (1 + ("manifest.json" in earlier) + len(moved) + len(set(moved) & earlier)
            + len(earlier - new) + 1 + 1)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each command's earlier and new result, made once: (earlier files, new files)."""
    made = {}
    for name, (first, second) in CASES.items():
        a, b = tmp_path_factory.mktemp(name) / "a", tmp_path_factory.mktemp(name) / "b"
        for args, out in ((first, a), (second, b)):
            r = run(*args, "-o", out)
            assert judge(r, expect_error=False) is None, r.stderr
        made[name] = (a, b)
    return made


def killed_run(args, out: Path, step: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, ZFPROBE_TEST_SIGKILL_AT_PUBLISH_STEP=str(step))
    return subprocess.run([sys.executable, "-m", "zfprobe.cli.main", *map(str, args), "-o", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)


def check_steps(name: str, results, tmp_path: Path, every: bool) -> None:
    first, second = CASES[name]
    a, b = results[name]
    total = publish_steps(listed(a), listed(b))
    steps = range(1, total + 2) if every else sorted({1, total // 2, total - 1, total})
    for step in steps:
        out = tmp_path / f"step{step}"
        shutil.copytree(a, out, symlinks=True)  # the earlier result (as the first run left it)
        earlier = visible(out)
        p = killed_run(second, out, step)
        if step > total:  # past the last step: the run completes
            assert p.returncode == 0, (step, total, p.stderr)
        else:
            assert p.returncode == -signal.SIGKILL, (step, total, p.returncode, p.stderr)
        from zfprobe.io.outputs import output_lock

        with output_lock(str(out)):  # what the next run does first: roll back an unfinished publish
            pass
        now = visible(out)
        if step < total:
            assert now == earlier, (name, step, total, set(now) ^ set(earlier))
        else:  # killed just after the commit, or not at all: the new result, complete
            assert set(now) == listed(out) == listed(b), (name, step, total)
        assert not [n for n in os.listdir(out) if n.startswith(".zfprobe-")], (name, step)


@pytest.mark.parametrize("name", sorted(CASES))
def test_sigkill_at_publish_steps_keeps_the_earlier_result(results, tmp_path, name):
    check_steps(name, results, tmp_path, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_sigkill_at_every_publish_step_keeps_the_earlier_result(results, tmp_path, name):
    check_steps(name, results, tmp_path, every=True)
