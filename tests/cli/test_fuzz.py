"""Fuzzing (issue 10): mutated copies of a real ONNX model through `layers` and `visualize`.

Every run must end in success or in exactly one clean error line (exit 2): no traceback, no
internal error, no onnxruntime log line, no hang (30 s per run). The default set runs 300 mutants
(600 runs, about 30 s on one core); ``--runslow`` adds 1,000 more (2,000 runs).
"""
from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest

from clirun import judge, run
from onnx_fuzz import mutant

DIGIT = Path(__file__).resolve().parents[2] / "zfprobe" / "data" / "digit.png"


class RunTimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise RunTimedOut("a fuzz run took over 30 s")


def fuzz(seeds, tmp_path: Path):
    failures, outcomes = [], collections.Counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for seed in seeds:
            folder = tmp_path / f"m{seed}"
            folder.mkdir()
            model = folder / "model.onnx"
            model.write_bytes(mutant(seed))
            for argv in (["layers", model], ["visualize", model, "-i", DIGIT, "-l", "relu2", "-o", folder / "out"]):
                signal.alarm(30)
                try:
                    r = run(*argv)
                finally:
                    signal.alarm(0)
                problem = judge(r)
                outcomes["ok" if r.exit_code == 0 else "clean error" if problem is None else "broken"] += 1
                if problem:
                    failures.append(f"seed {seed} {argv[0]}: {problem}")
                staging = [p for p in folder.rglob(".zfprobe-*")]
                if staging:
                    failures.append(f"seed {seed} {argv[0]}: left {staging}")
    finally:
        signal.signal(signal.SIGALRM, old)
    return outcomes, failures


def _report(label, outcomes, failures):
    total = sum(outcomes.values())
    print(f"{label}: {total} runs: {dict(outcomes)}; {len(failures)} broken")
    for f in failures[:30]:
        print("  ", f)


def test_fuzzed_models_fail_cleanly(tmp_path):
    outcomes, failures = fuzz(range(300), tmp_path)
    _report("fuzz (default set)", outcomes, failures)
    assert not failures, "\n".join(failures[:20])
    assert outcomes["ok"] > 0 and outcomes["clean error"] > 0  # both paths were exercised


@pytest.mark.slow
def test_fuzzed_models_fail_cleanly_large(tmp_path):
    outcomes, failures = fuzz(range(1000, 2000), tmp_path)
    _report("fuzz (large set)", outcomes, failures)
    assert not failures, "\n".join(failures[:20])
