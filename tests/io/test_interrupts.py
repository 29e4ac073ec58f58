"""SIGKILL, SIGTERM and SIGINT at exact moments of real runs (issue 10).

The run is a real ``zfprobe`` subprocess. ``ZFPROBE_PAUSE_AT`` makes it stop at a named point
(``mining``: after the first mined batch; ``publish``: outputs staged and journaled, nothing
moved; ``publish-file``: one file moved) and create a flag file; the test then sends the signal.
Afterwards, and after the next run into the same folder, there must be no mixed, stale or leaked
output: either the earlier result intact, or no manifest (incomplete, which the next run rolls
back to the earlier result), or the new result complete; never a staging folder or journal after
a rerun.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import judge, run, tree

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"
SAMPLES = DATA / "samples"
MINE = ["mine", MODEL, SAMPLES, "-l", "conv2", "-k", "3", "-c", "0-3", "--batch-size", "4", "-q"]
VIS = ["visualize", MODEL, "-i", DIGIT, "-l", "conv2", "--top", "3"]


def start(args, pause_at: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    flag = tmp_path / f"paused-{pause_at}-{time.monotonic_ns()}"
    env = dict(os.environ, ZFPROBE_PAUSE_AT=pause_at, ZFPROBE_PAUSE_FILE=str(flag), ZFPROBE_PAUSE_SECONDS="120")
    proc = subprocess.Popen([sys.executable, "-m", "zfprobe.cli.main", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before reaching {pause_at}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"run never reached {pause_at}")
        time.sleep(0.05)
    return proc, flag


def interrupt(args, pause_at: str, sig: int, tmp_path: Path) -> tuple[int, str]:
    proc, flag = start(args, pause_at, tmp_path)
    proc.send_signal(sig)
    time.sleep(0.3)
    Path(str(flag) + ".go").touch()  # a run that holds the signal (publishing) goes on from the pause
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".zfprobe-")] if out.exists() else []


def complete(out: Path) -> dict:
    """The manifest of a complete result in ``out``: every listed file there, nothing unlisted."""
    manifest = json.loads((out / "manifest.json").read_text())
    listed = set(manifest["files"])
    present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert present == listed, (present ^ listed)
    return manifest


def earlier_result(out: Path) -> dict[str, bytes]:
    r = run(*VIS, "--top", "5", "-o", out)
    assert judge(r, expect_error=False) is None, r.stderr
    return tree(out)


# ---------------------------------------------------------------------------- mining --------
@pytest.fixture(scope="module")
def clean_index(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("clean") / "out"
    r = run(*MINE, "-o", out)
    assert judge(r, expect_error=False) is None, r.stderr
    return (out / "index.csv").read_text()


def _check_resume(out: Path, clean_index: str) -> None:
    r = run(*MINE, "-o", out)
    assert judge(r, expect_error=False) is None, r.stderr
    assert (out / "index.csv").read_text() == clean_index
    complete(out)
    assert not leftovers(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_while_mining_saves_checkpoint_and_says_so(tmp_path, clean_index, sig):
    out = tmp_path / "out"
    code, err = interrupt([*MINE, "-o", out], "mining", sig, tmp_path)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == (143 if sig == signal.SIGTERM else 130), err
    # paused after the first batch of 4; the batches already computing then (one per forward run
    # in flight, see zfprobe.studies.mining.compute.forward_parallelism) are merged before the checkpoint
    saved = re.search(r"checkpoint saved after (\d+) of 20 images", lines[0]) if len(lines) == 1 else None
    assert saved and int(saved.group(1)) % 4 == 0 and int(saved.group(1)) >= 4, lines
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == [".mine-state.npz"]  # only the checkpoint: no partial output
    r = run(*MINE, "-o", out)
    assert f"resuming after {saved.group(1)} of 20" in r.stderr
    assert (out / "index.csv").read_text() == clean_index
    complete(out)
    assert not leftovers(out)


@pytest.mark.slow
def test_sigkill_while_mining_keeps_earlier_result(tmp_path, clean_index):
    out = tmp_path / "out"
    before = earlier_result(out)
    code, _ = interrupt([*MINE, "-o", out], "mining", signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    after = tree(out)
    assert {k: v for k, v in after.items() if not k.startswith(".")} == before  # the earlier result, intact
    _check_resume(out, clean_index)


def test_second_run_into_a_locked_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    proc, flag = start([*MINE, "-o", out], "mining", tmp_path)
    try:
        r = run(*VIS, "-o", out)
        assert judge(r, expect_error=True) is None and "another zfprobe run" in r.stderr, r.stderr
    finally:
        Path(str(flag) + ".go").touch()  # let the first run finish
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    complete(out)


# ---------------------------------------------------------------------------- publishing -----
def test_sigkill_mid_publish_never_shows_a_mix_and_is_rolled_back(tmp_path):
    out = tmp_path / "out"
    before = earlier_result(out)
    code, _ = interrupt([*VIS, "-o", out], "publish-file", signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    # killed after one file moved: no manifest, so no reader takes the folder for a complete result
    assert not (out / "manifest.json").exists()
    assert (out / ".zfprobe-journal.json").exists()
    from zfprobe.io.outputs import recover, output_lock

    with output_lock(out):  # what the next run does first
        pass
    assert tree(out) == before  # the earlier result, byte for byte; nothing of the killed run left
    assert not leftovers(out)
    assert recover(out) is False


@pytest.mark.slow
def test_sigkill_before_publish_keeps_earlier_result(tmp_path):
    out = tmp_path / "out"
    before = earlier_result(out)
    code, _ = interrupt([*VIS, "-o", out], "publish", signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    visible = {k: v for k, v in tree(out).items() if not k.startswith(".")}
    assert visible == before  # journaled but nothing moved: the earlier result, intact
    r = run(*VIS, "-o", out)  # the next run rolls the journal back, then publishes its own
    assert judge(r, expect_error=False) is None, r.stderr
    assert len(complete(out)["seeds"]) == 3 and not leftovers(out)


def test_sigterm_during_publish_waits_for_it(tmp_path):
    out = tmp_path / "out"
    earlier_result(out)
    code, err = interrupt([*VIS, "-o", out], "publish", signal.SIGTERM, tmp_path)
    assert code == 143, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "published" in lines[0], lines
    assert len(complete(out)["seeds"]) == 3 and not leftovers(out)


def test_leaked_staging_of_dead_runs_is_removed(tmp_path):
    out = tmp_path / "out"
    earlier_result(out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / f".zfprobe-staging-{pid}-abc").mkdir()
    (out / f".zfprobe-staging-{pid}-abc" / "x.png").write_bytes(b"x")
    (out / ".zfprobe-tmp-half").write_bytes(b"half")
    alive = out / f".zfprobe-staging-{os.getpid()}-old"
    alive.mkdir()
    old = time.time() - 3 * 24 * 3600
    os.utime(alive, (old, old))
    r = run(*VIS, "-o", out)
    assert judge(r, expect_error=False) is None
    assert not leftovers(out)
    shutil.rmtree(out)
