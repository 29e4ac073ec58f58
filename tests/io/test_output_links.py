"""Output folders cannot be turned against the user (issue 25): a symbolic link planted in the
output folder (to a file or a folder, in a layer folder, in the report tree, as a staging folder)
or a crafted manifest or journal never makes zfprobe write, move or delete anything outside it.

Every test snapshots an ``outside`` folder (every entry with its kind, link target and bytes)
before the run and compares after it: any change outside fails the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clirun import judge, run

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"
SAMPLES = DATA / "samples"
VIS = ["visualize", MODEL, "-i", DIGIT, "-l", "conv2", "--top", "2"]
MINE = ["mine", MODEL, SAMPLES, "-l", "conv2", "-k", "2", "-c", "0-1", "-q"]
REPORT = ["report", MODEL, SAMPLES, "-l", "conv2", "--unit-pages", "1", "--occlusion-images", "0", "-q"]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root`` (links not followed): kind, link target or bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode)
    return out


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside the output folder with a file and a subfolder a link can point at."""
    v = tmp_path / "outside"
    (v / "sub").mkdir(parents=True)
    (v / "a").write_text("keep me\n")
    (v / "sub" / "b").write_text("keep me too\n")
    return v


def refused_for_link(r) -> None:
    assert judge(r, expect_error=True) is None, (r.exit_code, r.stderr)
    assert "symbolic link" in r.stderr, r.stderr


def test_crafted_manifest_through_a_linked_folder_deletes_nothing_outside(tmp_path, outside):
    out = tmp_path / "o"
    out.mkdir()
    os.symlink(outside, out / "e")
    (out / "manifest.json").write_text(json.dumps({"files": ["e/a", "e/sub/b"]}))
    before = snapshot(outside)
    refused_for_link(run(*VIS, "-o", out))
    assert snapshot(outside) == before
    assert not [n for n in os.listdir(out) if n.startswith(".zfprobe-")]


@pytest.mark.parametrize("where", ["manifest-listed file", "published file", "manifest itself"])
def test_links_to_files_are_not_replaced_or_followed(tmp_path, outside, where):
    out = tmp_path / "o"
    assert judge(run(*VIS, "-o", out), expect_error=False) is None
    target = {"manifest-listed file": "extra.png", "published file": "contact_sheet.png", "manifest itself": "manifest.json"}[where]
    if where == "manifest-listed file":
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["files"].append("extra.png")
        (out / "manifest.json").write_text(json.dumps(manifest))
    if (out / target).exists():
        (out / target).unlink()
    os.symlink(outside / "a", out / target)
    before = snapshot(outside)
    refused_for_link(run(*VIS, "-o", out))
    assert snapshot(outside) == before


def test_mine_into_a_linked_layer_folder_writes_nothing_outside(tmp_path, outside):
    out = tmp_path / "o2"
    out.mkdir()
    os.symlink(outside / "sub", out / "conv2")
    before = snapshot(outside)
    refused_for_link(run(*MINE, "-o", out))
    assert snapshot(outside) == before


def test_mine_with_a_link_inside_the_layer_folder(tmp_path, outside):
    out = tmp_path / "o2"
    assert judge(run(*MINE, "-o", out), expect_error=False) is None
    sheet = out / "conv2" / "sheet_001.png"
    sheet.unlink()
    os.symlink(outside / "a", sheet)
    channels = out / "conv2" / "channels"
    for p in channels.iterdir():
        p.unlink()
    channels.rmdir()
    os.symlink(outside / "sub", channels)
    before = snapshot(outside)
    refused_for_link(run(*MINE, "--restart", "-o", out))
    assert snapshot(outside) == before


def test_report_with_links_in_its_tree(tmp_path, outside):
    out = tmp_path / "rep"
    assert judge(run(*REPORT, "-o", out), expect_error=False) is None
    for sub in ("layers", "units"):
        for p in sorted((out / sub).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    (out / "layers").rmdir()
    os.symlink(outside, out / "layers")
    before = snapshot(outside)
    refused_for_link(run(*REPORT, "-o", out))
    assert snapshot(outside) == before


def crafted_journal(out: Path, journal: dict) -> None:
    (out / ".zfprobe-journal.json").write_text(json.dumps(journal))


@pytest.mark.parametrize("case", ["old format", "stale through a link", "file through a link",
                                  "staging is a link", "journal is a link", "absolute path", "dot-dot", "garbage"])
def test_crafted_journal_is_refused_not_obeyed(tmp_path, outside, case):
    out = tmp_path / "o3"
    out.mkdir()
    os.symlink(outside, out / "esc")
    staging = out / ".zfprobe-staging-1-abc"
    staging.mkdir()
    ino = os.stat(outside / "a").st_ino
    v2 = {"version": 2, "staging": staging.name, "files": [], "stale": [], "inodes": {}, "pid": 1, "time": 0}
    if case == "old format":  # what zfprobe wrote before issue 25, as in the report
        crafted_journal(out, {"staging": staging.name, "files": [], "stale": ["esc/a"], "pid": 1, "time": 0})
    elif case == "stale through a link":
        crafted_journal(out, dict(v2, stale=["esc/a", "esc/sub/b"]))
    elif case == "file through a link":
        crafted_journal(out, dict(v2, files=["esc/a"], inodes={"esc/a": ino}))
    elif case == "staging is a link":
        staging.rmdir()
        os.symlink(outside / "sub", staging)
        crafted_journal(out, dict(v2, files=["b"], inodes={"b": os.stat(outside / "sub" / "b").st_ino}))
    elif case == "journal is a link":
        (outside / "j.json").write_text(json.dumps(dict(v2, stale=["esc/a"])))
        os.symlink(outside / "j.json", out / ".zfprobe-journal.json")
    elif case == "absolute path":
        crafted_journal(out, dict(v2, stale=[str(outside / "a")]))
    elif case == "dot-dot":
        crafted_journal(out, dict(v2, stale=["../outside/a"]))
    else:
        (out / ".zfprobe-journal.json").write_bytes(b"\x00\xff{not json")
    before = snapshot(outside)
    for _ in range(2):  # refused every time, and never obeyed in between
        r = run(*VIS, "-o", out)
        assert judge(r, expect_error=True) is None, r.stderr
        assert "journal" in r.stderr or "symbolic link" in r.stderr, r.stderr
        assert snapshot(outside) == before


def test_leaked_staging_that_is_a_link_or_holds_links(tmp_path, outside):
    out = tmp_path / "o"
    assert judge(run(*VIS, "-o", out), expect_error=False) is None
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    os.symlink(outside, out / f".zfprobe-staging-{dead}-link")
    leaked = out / f".zfprobe-staging-{dead}-real"
    (leaked / "deep").mkdir(parents=True)
    os.symlink(outside, leaked / "deep" / "to-outside")
    os.symlink(outside / "a", leaked / "file-link")
    os.symlink(outside / "a", out / ".zfprobe-tmp-x")
    before = snapshot(outside)
    assert judge(run(*VIS, "-o", out), expect_error=False) is None
    assert snapshot(outside) == before
    assert not [n for n in os.listdir(out) if n.startswith(".zfprobe-")]


def test_output_stage_refuses_links_before_moving_anything(tmp_path, outside):
    from zfprobe.errors import OutputError
    from zfprobe.io.outputs import OutputStage

    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    (out / "manifest.json").write_text(json.dumps({"files": ["keep.txt", "manifest.json"]}))
    os.symlink(outside / "sub", out / "layer")
    before, inside = snapshot(outside), snapshot(out)
    with pytest.raises(OutputError, match="symbolic link"):
        with OutputStage(str(out)) as stage:
            stage.write_bytes("keep.txt", b"new")
            stage.write_png("layer/tile.png", np.zeros((2, 2), np.uint8))
            stage.write_json("manifest.json", {"files": stage.files + ["manifest.json"]})
            stage.commit()
    assert snapshot(outside) == before
    assert snapshot(out) == inside  # nothing moved inside either: the check comes before the journal
