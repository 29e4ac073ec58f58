"""Fuzzing the study commands (issue 25): mutated label CSVs (transfer, probe-layers, ablate),
parts files (correspondence), datasets with damaged images or a damaged .npy (mine, report,
ablate), and mutated ONNX models through occlude, mine and report (tests/study_fuzz.py).

Every run must end in success or in exactly one clean error line (exit 2): no traceback, no
internal error, no native log line, no hang (60 s per run), and no staging or journal left. The
default set runs 70 seeded cases; ``--runslow`` runs 2,100 more (``ZFPROBE_FUZZ_RUNS`` changes
that number). A failing seed replays with ``study_fuzz.case(seed, folder)``.
"""
from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from clirun import judge, run
from study_fuzz import case, clear


class RunTimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise RunTimedOut("a fuzz run took over 60 s")


def fuzz(seeds, tmp_path: Path):
    failures = []
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    old = signal.signal(signal.SIGALRM, _alarm)
    root = tmp_path / "case"
    root.mkdir()
    try:
        for seed in seeds:
            clear(root)
            kind, argv = case(seed, root)
            signal.alarm(60)
            try:
                r = run(*argv)
            except RunTimedOut:
                failures.append(f"seed {seed} {kind}: hang")
                outcomes[argv[0]]["hang"] += 1
                continue
            finally:
                signal.alarm(0)
            problem = judge(r)
            outcomes[argv[0]]["ok" if r.exit_code == 0 else "clean error" if problem is None else "broken"] += 1
            if problem:
                failures.append(f"seed {seed} {kind} {argv[0]}: {problem}")
            left = [p.name for p in root.rglob(".zfprobe-*")]
            if left:
                failures.append(f"seed {seed} {kind} {argv[0]}: left {left}")
    finally:
        signal.signal(signal.SIGALRM, old)
    return outcomes, failures


def _report(label, outcomes, failures):
    total = sum(sum(c.values()) for c in outcomes.values())
    print(f"{label}: {total} runs, {len(failures)} broken")
    for cmd, counts in sorted(outcomes.items()):
        print(f"  {cmd}: {dict(counts)}")
    for f in failures[:30]:
        print("  ", f)


def test_fuzzed_study_inputs_fail_cleanly(tmp_path):
    outcomes, failures = fuzz(range(70), tmp_path)
    _report("study fuzz (default set)", outcomes, failures)
    assert not failures, "\n".join(failures[:20])
    assert sum(c["ok"] for c in outcomes.values()) > 0 and sum(c["clean error"] for c in outcomes.values()) > 0


@pytest.mark.slow
def test_fuzzed_study_inputs_fail_cleanly_large(tmp_path):
    n = int(os.environ.get("ZFPROBE_FUZZ_RUNS", "2100"))
    outcomes, failures = fuzz(range(10_000, 10_000 + n), tmp_path)
    _report("study fuzz (large set)", outcomes, failures)
    assert not failures, "\n".join(failures[:20])
