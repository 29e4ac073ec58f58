"""A report that scales (issue 22): the strongest channels shown by default (checked against
onnxruntime's own activations), --all-channels, a rerun served from the cache (no projection
at all, the same bytes), and a progress bar that names the stage and the layer."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "zfprobe" / "data" / "mnist_cnn.onnx"
SAMPLES = ROOT / "zfprobe" / "data" / "samples"


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "zfprobe.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **env))


def strongest_by_onnxruntime(layer: str, n: int, k: int = 9) -> list[int]:
    """Per channel: each sample's maximum (onnxruntime, the layer exposed as an output, x / 255),
    the mean of the k largest; the n channels with the largest mean."""
    model = onnx.load(str(MODEL))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(layer))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    files = sorted(SAMPLES.glob("*.png"))
    maxima = []
    for f in files:
        x = np.asarray(Image.open(f).convert("L"), np.float32)[None, None] / 255.0
        act = sess.run([layer], {"image": x})[0][0]
        maxima.append(act.reshape(act.shape[0], -1).max(axis=1))
    maxima = np.sort(np.stack(maxima), axis=0)[::-1][:k]  # [k, C]: each channel's k largest image maxima
    return sorted(np.argsort(-maxima.mean(axis=0), kind="stable")[:n].tolist())


def shown_channels(page: Path) -> list[int]:
    return [int(c) for c in re.findall(r'data-channel="(\d+)"', page.read_text())]


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_strongest_channels_cache_and_progress(tmp_path, monkeypatch):
    import zfprobe
    from zfprobe.probe import Probe
    from zfprobe.report import ReportOptions, build_report

    env = {"ZFPROBE_CACHE": str(tmp_path / "cache")}
    first, again, every = tmp_path / "first", tmp_path / "again", tmp_path / "every"
    r = run_cli("report", MODEL, SAMPLES, "-l", "relu2,relu3", "--channels", "10", "--unit-pages", "2",
                "-o", first, env=env)
    assert r.returncode == 0, r.stderr
    for stage in ("report: mining relu2, relu3", "report: projections relu2", "report: unit pages relu3",
                  "report: model page"):
        assert stage in r.stderr, r.stderr[-2000:]
    for layer in ("relu2", "relu3"):
        assert shown_channels(first / "layers" / f"{layer}.html") == strongest_by_onnxruntime(layer, 10)
        assert len(list((first / "img" / layer).glob("c*.png"))) == 10
    assert "the 10 strongest of 64 channels" in (first / "layers" / "relu3.html").read_text()
    assert any(p.name.startswith("thumbs-") for p in (tmp_path / "cache").rglob("*"))
    # a rerun (same model, data, layers, options) projects nothing and writes the same bytes
    monkeypatch.setenv("ZFPROBE_CACHE", env["ZFPROBE_CACHE"])

    def no_projection(*args, **kwargs):
        raise AssertionError("a rerun projected")

    subset = tmp_path / "subset"  # other data: its own mining checkpoint beside the first one's
    subset.mkdir()
    for f in sorted(SAMPLES.glob("*.png"))[:6]:
        (subset / f.name).write_bytes(f.read_bytes())
    r = run_cli("report", MODEL, subset, "-l", "relu3", "--all-channels", "--unit-pages", "1", "-q", "-o", every, env=env)
    assert r.returncode == 0, r.stderr
    assert shown_channels(every / "layers" / "relu3.html") == list(range(64))
    assert len(list((tmp_path / "cache").rglob("mine-state-*.npz"))) == 2
    # after a report of other layers and options, the first one's rerun is still served whole from
    # the cache: its mining pass resumes finished (no image read again), nothing is projected or
    # occluded, and the files are the same bytes
    from zfprobe.report import build as report_build

    monkeypatch.setattr(Probe, "project", no_projection)
    monkeypatch.setattr(report_build.ReportBuilder, "_occlusions", no_projection)
    meta = build_report(zfprobe.load(str(MODEL)), str(again), ReportOptions(
        layers=["relu2", "relu3"], data=str(SAMPLES), unit_pages=2, channels=10, progress=False))
    assert meta["mining"]["resumed_from"] == meta["mining"]["images"] == len(list(SAMPLES.glob("*.png")))
    assert digests(again) == digests(first)


def test_one_occlusion_pass_gives_every_unit_page_channel_its_map(tmp_path):
    """The unit pages' occlusion maps come from one pass per sample image for all channels; each
    equals the map of that channel alone from ``occlude`` (a pass per channel, as before)."""
    import zfprobe
    from zfprobe.report import ReportOptions
    from zfprobe.report.build import HEAT_SIZE, ReportBuilder, _heatmap
    from zfprobe.studies.occlusion import occlude

    probe = zfprobe.load(str(MODEL))
    builder = ReportBuilder(probe, str(tmp_path / "r"), ReportOptions(layers=["relu2"]))
    image = str(sorted(SAMPLES.glob("*.png"))[3])
    chans = [0, 7, 31]
    got = builder._occlusions("relu2", chans, [("s", image)])
    side = min(probe.preprocessing.size)
    size = max(1, round(side / 7))
    for c in chans:
        r = occlude(probe, image, "relu2", size=size, stride=max(1, size // 2), channel=c, project=False,
                    probability=False)
        assert np.array_equal(got[c][0][1], _heatmap(r.activation, r.image, HEAT_SIZE)), c
