"""Hostile model files (issue 10): external data that points outside the model's folder.

A folder ``secret/`` beside the model folder holds a file of exactly the right size (so a naive
loader would happily read it as weights). Each hostile model reaches for it another way
(symlink, hard link, ``..``, ``sub/../..``, an absolute path, a symlinked folder, a FIFO, a
device, a range past the end). Every command must refuse each with one line, and no file under
``secret/`` may ever be opened: checked by a Python audit hook over the whole run, and, in the
slow set, by strace (which also sees native code). The well-formed external-data model must load
and give the same activations as onnxruntime on the embedded original (the oracle).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "zfprobe" / "data" / "mnist_cnn.onnx"
DIGIT = ROOT / "zfprobe" / "data" / "digit.png"


def _external_model(folder: Path, location: str = "weights.bin") -> Path:
    """mnist_cnn.onnx with every initializer in one external file ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(MODEL))
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        m = onnx.load(str(path), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save_model(m, str(path))
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    base = tmp_path_factory.mktemp("hostile")
    good = _external_model(base / "good")
    size = (base / "good" / "weights.bin").stat().st_size
    secret = base / "secret"
    secret.mkdir()
    (secret / "secret.bin").write_bytes(b"SECRET!!" * (size // 8 + 1))
    models = {"good": good}

    def variant(name, location="weights.bin", prepare=None):
        path = _external_model(base / name, location)
        (base / name / "weights.bin").unlink()
        if prepare:
            prepare(base / name)
        models[name] = path

    variant("symlink", prepare=lambda d: os.symlink(secret / "secret.bin", d / "weights.bin"))
    variant("hardlink", prepare=lambda d: os.link(secret / "secret.bin", d / "weights.bin"))
    variant("dotdot", "../secret/secret.bin")
    variant("sub_dotdot", "sub/../../secret/secret.bin", prepare=lambda d: (d / "sub").mkdir())
    variant("absolute", str(secret / "secret.bin"))
    variant("symlinked_dir", "sub/secret.bin", prepare=lambda d: os.symlink(secret, d / "sub"))
    variant("fifo", "pipe", prepare=lambda d: os.mkfifo(d / "pipe"))
    variant("device", "zero", prepare=lambda d: os.symlink("/dev/zero", d / "zero"))
    variant("missing", "nothing.bin")

    def short(d):
        (d / "weights.bin").write_bytes(b"\0" * 100)
    variant("past_the_end", prepare=short)
    return secret, models


SCRIPT = textwrap.dedent('''
    import json, os, sys
    secret, models, digit, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    opened = []

    def hook(event, args):
        if event in ("open", "os.link", "os.symlink", "shutil.copyfile") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            p = os.fsdecode(args[0])
            if os.path.realpath(p).startswith(secret) or os.path.abspath(p).startswith(secret):
                opened.append([event, p])
            if event == "open" and p.endswith("weights.bin"):
                opened.append(["weights", p])

    sys.addaudithook(hook)
    from zfprobe.cli.main import cli
    results = {}
    for name, model in models.items():
        for cmd in (["layers", model], ["visualize", model, "-i", digit, "-l", "relu2", "-o", out + "/" + name],
                    ["export-deconv", model, "-l", "relu2", "-o", out + "/" + name + ".onnx"]):
            code = cli.main(cmd, prog_name="zfprobe", standalone_mode=False)
            results[name + " " + cmd[0]] = code
    print(json.dumps({"results": results, "opened": opened}))
''')


def _run(secret: Path, models: dict[str, Path], out: Path, strace: Path | None = None):
    cmd = [sys.executable, "-c", SCRIPT, str(secret), json.dumps({k: str(v) for k, v in models.items()}),
           str(DIGIT), str(out)]
    if strace:
        cmd = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2,execve", "-o", str(strace)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_external_data_cannot_leave_the_model_folder(hostile, tmp_path):
    secret, models = hostile
    report, stderr = _run(secret, models, tmp_path / "out")
    results, opened = report["results"], report["opened"]
    # the hook works: it saw the good model's weights being read
    assert any(kind == "weights" and "/good/" in p for kind, p in opened), opened
    assert not [o for o in opened if o[0] != "weights"], opened  # nothing under secret/ was ever opened
    for key, code in results.items():
        name = key.split()[0]
        assert code == (0 if name == "good" else 2), (key, code)
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 3 * (len(models) - 1) and all(l.startswith("zfprobe: error: ") for l in lines), lines
    assert all("external data" in l for l in lines), lines
    assert "hard link" in stderr and "outside the model's folder" in stderr and "not a regular file" in stderr
    assert b"SECRET" not in b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())


def test_good_external_data_matches_the_embedded_model(hostile):
    import onnxruntime as ort

    import zfprobe
    from zfprobe.io.preprocess import load_image

    _, models = hostile
    probe = zfprobe.load(str(models["good"]))
    _, x = load_image(str(DIGIT), probe.preprocessing)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"image": x})[0]
    got = probe.activations(x, "logits")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_no_native_code_opens_the_secret_either(hostile, tmp_path):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    secret, models = hostile
    log = tmp_path / "strace.log"
    _run(secret, models, tmp_path / "out", strace=log)
    text = log.read_text()
    assert str(MODEL.parent) in text or "weights.bin" in text  # strace saw the file activity
    hits = [l for l in text.splitlines() if str(secret) in l and "ENOENT" not in l]
    assert not hits, hits[:5]
