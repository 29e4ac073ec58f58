"""Publishing outputs (issue 10): stale files, mount points, read-only and full file systems,
reversible names, and the OutputStage API other commands use.

The file-system tests mount a small tmpfs; they need root (CI runs as root) and are skipped
where mounting is not allowed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from clirun import fill_disk, judge, run, tree

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"
VIS = ["visualize", MODEL, "-i", DIGIT, "-l", "conv2"]


def _listed(out: Path) -> set[str]:
    return set(json.loads((out / "manifest.json").read_text())["files"])


def _visible(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_rerun_removes_stale_files_of_the_earlier_run(tmp_path):
    out = tmp_path / "out"
    assert run(*VIS, "--top", "6", "-o", out).exit_code == 0
    first = _listed(out)
    (out / "my_notes.txt").write_text("mine")  # not zfprobe's: must survive
    assert run(*VIS, "--top", "2", "-o", out).exit_code == 0
    second = _listed(out)
    assert len(first - second) >= 4
    assert _visible(out) == second | {"my_notes.txt"}


def test_occlude_without_projection_drops_the_old_projection(tmp_path):
    out = tmp_path / "out"
    args = ["occlude", MODEL, "-i", DIGIT, "-l", "conv2", "--no-progress", "-s", "7", "-t", "7", "-o", out]
    assert run(*args).exit_code == 0
    with_projection = {f for f in _listed(out) if "projection" in f}
    assert with_projection
    assert run(*args, "--no-projection").exit_code == 0
    assert not {f for f in _visible(out) if "projection" in f}
    assert _visible(out) == _listed(out)


def test_output_folder_that_is_a_mount_point(tmpfs):
    out = tmpfs("volume")  # like `docker run -v ...:/out` then `-o /out`
    r = run(*VIS, "-o", out)
    assert judge(r, expect_error=False) is None, r.stderr
    assert _visible(out) == _listed(out) and not [p for p in os.listdir(out) if p.startswith(".zfprobe-")]
    r = run(*VIS, "--top", "2", "-o", out)  # and again, replacing the first result in place
    assert judge(r, expect_error=False) is None, r.stderr
    assert _visible(out) == _listed(out)


def test_read_only_file_system(tmpfs, tmp_path):
    ro = tmpfs("ro", options="ro")
    for args in ([*VIS, "-o", ro / "out"], [*VIS, "-o", ro], ["export-deconv", MODEL, "-l", "conv2", "-o", ro / "d.onnx"]):
        r = run(*args)
        assert judge(r, expect_error=True) is None, r.stderr
        assert "Read-only file system" in r.stderr, r.stderr
    assert os.listdir(ro) == []


def test_disk_full_keeps_the_earlier_result(tmpfs):
    disk = tmpfs("small", size="512k")
    out = disk / "out"
    assert run(*VIS, "--top", "2", "-o", out).exit_code == 0
    before = tree(out)
    fill_disk(disk, 6 * 4096)
    r = run(*VIS, "--top", "9", "-o", out)
    assert judge(r, expect_error=True) is None, r.stderr
    assert "No space left on device" in r.stderr
    assert tree(out) == before  # the earlier result, untouched; no staging left behind
    r = run("mine", MODEL, DATA / "samples", "-l", "conv2", "-q", "-o", disk / "mined")
    assert judge(r, expect_error=True) is None and "No space left" in r.stderr, r.stderr
    assert not (disk / "mined").exists()


def test_output_stage_api_and_reversible_names(tmp_path):
    from zfprobe.io.outputs import OutputStage, name_from_file, safe_file_name

    names = ["blk/relu", "blk_relu", "blk relu", "..", ".hidden", "a%2Fb", "Ünïcode/ß", "x" * 300]
    files = [safe_file_name(n) for n in names]
    assert len(set(files)) == len(names)
    assert all("/" not in f and not f.startswith(".") and len(f.encode()) <= 255 for f in files)
    assert [name_from_file(f) for f in files[:-1]] == names[:-1]
    out = tmp_path / "out"
    with OutputStage(str(out)) as stage:
        for n, f in zip(names, files):
            stage.write_png(f"{f}/tile.png", np.full((2, 2), 9, np.uint8))
        stage.write_json("manifest.json", {"files": stage.files + ["manifest.json"]})
        stage.commit()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(files)
    with pytest.raises(ValueError):
        with OutputStage(str(out)) as stage:
            stage.write_bytes("../escape.txt", b"x")
    assert not (tmp_path / "escape.txt").exists() and _visible(out) == _listed(out)
    # a stage that is never committed leaves nothing, not even the folder it created
    with OutputStage(str(tmp_path / "never")) as stage:
        stage.write_bytes("a.txt", b"a")
    assert not (tmp_path / "never").exists()


def test_failed_run_removes_the_folders_it_created(tmp_path):
    from zfprobe.io.outputs import OutputStage

    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with OutputStage(str(out)) as stage:
            stage.write_bytes("x.txt", b"1")
            assert out.is_dir()
            raise RuntimeError("the run failed")
    assert not (tmp_path / "a").exists()
