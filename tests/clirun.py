"""Run the zfprobe CLI in this process (fast enough for hundreds of runs) and judge the result.

``run`` calls the real click group (the same ``main`` the console script calls), captures
stdout / stderr and, at the file-descriptor level, anything native libraries (onnxruntime,
TensorFlow) print to fd 2 behind Python's back. ``judge`` says whether a run kept the promise:
exit 0, or exit 2 with exactly one line ``zfprobe: error: ...`` that is not an internal error.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner


@dataclass
class Run:
    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    native: str  # bytes written straight to fd 2 (e.g. onnxruntime's logger)
    exception: BaseException | None


def run(*args, env: dict | None = None) -> Run:
    from zfprobe.cli.main import cli

    args = [str(a) for a in args]
    with tempfile.TemporaryFile() as native:
        saved = os.dup(2)
        os.dup2(native.fileno(), 2)
        try:
            result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        native.seek(0)
        raw = native.read().decode(errors="replace")
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return Run(args, result.exit_code, result.stdout, result.stderr, raw, exc)


def judge(r: Run, expect_error: bool | None = None) -> str | None:
    """None if the run kept the promise, else what went wrong (one line)."""
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    if r.exception is not None:
        return f"exception escaped: {type(r.exception).__name__}: {r.exception}"
    if "Traceback" in r.stderr or "Traceback" in r.native:
        return "traceback on stderr"
    if r.native.strip():
        return f"native library wrote to stderr: {r.native.strip().splitlines()[0][:200]}"
    if r.exit_code == 0:
        if expect_error:
            return f"accepted bad input (exit 0): {r.stdout.strip()[:200]}"
        return None
    if r.exit_code != 2:
        return f"exit {r.exit_code}: {' | '.join(lines)[:300]}"
    if expect_error is False:
        return f"refused good input: {' | '.join(lines)[:300]}"
    errors = [l for l in lines if l.startswith("zfprobe: error: ")]
    others = [l for l in lines if not l.startswith(("zfprobe: error: ", "zfprobe: note: ", "zfprobe: warning: "))]
    if len(errors) != 1 or others:
        return f"not one clean error line: {lines[:4]}"
    if "internal error" in errors[0]:
        return errors[0][:300]
    return None


def tree(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` (hidden ones too) with its bytes; {} if it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def fill_disk(disk: Path, leave: int) -> None:
    """Fill the file system of ``disk`` (a small tmpfs) but for about ``leave`` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, os.path.getsize(filler) - leave))
