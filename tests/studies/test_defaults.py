"""Commands that run with only MODEL (issue 11 part 2), the display scale, RF cropping and
dead-channel marking (part 1), checked against plain numpy / onnxruntime computations."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "zfprobe" / "data" / "mnist_cnn.onnx"
DIGIT = ROOT / "zfprobe" / "data" / "digit.png"
CHELSEA = ROOT / "zfprobe" / "data" / "photos" / "chelsea.jpg"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "zfprobe.cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_visualize_with_only_the_model(tmp_path):
    r = run_cli("visualize", MODEL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "digit.png" in r.stderr and "relu3" in r.stderr
    out = tmp_path / "zfprobe-visualize-mnist_cnn"
    assert str(out.name) in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["layer"] == "relu3" and os.path.samefile(m["image"], DIGIT)
    assert m["display"]["percentile"] == 99.0 and m["display"]["frame"] == "rf"
    assert "99th percentile" in m["display"]["mapping"]


def test_mine_and_occlude_with_only_the_model(tmp_path):
    r = run_cli("mine", MODEL, "-q", "--no-project", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pool1, relu2, relu3" in r.stderr
    m = json.loads((tmp_path / "zfprobe-mine-mnist_cnn" / "manifest.json").read_text())
    assert m["summary"]["images_used"] == 20 and list(m["layers"]) == ["pool1", "relu2", "relu3"]
    # dead channels = never positive over the 20 digits, computed with plain onnxruntime
    import onnx
    import onnxruntime as ort
    from PIL import Image

    model = onnx.load(str(MODEL))
    relu2 = [n for n in model.graph.node if n.name == "relu2"][0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(relu2, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString())
    best = np.full(32, -np.inf)
    for p in sorted((ROOT / "zfprobe" / "data" / "samples").glob("*.png")):
        x = np.asarray(Image.open(p).convert("L"), np.float32)[None, None] / 255.0
        best = np.maximum(best, sess.run([relu2], {sess.get_inputs()[0].name: x})[0][0].max(axis=(1, 2)))
    assert m["layers"]["relu2"]["dead_channels"] == [int(c) for c in np.flatnonzero(best <= 0)]
    r = run_cli("occlude", MODEL, "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "zfprobe-occlude-mnist_cnn" / "manifest.json").read_text())
    assert m["layer"] == "relu3" and os.path.samefile(m["image"], DIGIT)


def test_dynamic_input_size_comes_from_the_image(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"], name="relu")],
        "dyn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, [1, 4, "H", "W"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    r = run_cli("visualize", path, "-i", CHELSEA, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "dynamic" in r.stderr and "256x385" in r.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["model"]["input_shape"] == [1, 3, 256, 385]


def test_display_scale_is_a_percentile_of_the_nonzero_values():
    from zfprobe.io.pictures import signed_to_uint8

    rng = np.random.default_rng(1)
    p = np.zeros((40, 40, 3), np.float32)
    p[10:20, 10:20] = rng.standard_normal((10, 10, 3)) ** 3  # heavy-tailed, sparse
    got = signed_to_uint8(p, 99.0)
    s = np.percentile(np.abs(p[p != 0]), 99.0)
    want = np.round(128 + 127 * np.clip(p / s, -1, 1)).astype(np.uint8)
    assert np.array_equal(got, want)
    assert np.array_equal(signed_to_uint8(p, None), np.round(128 + 127 * p / np.abs(p).max()).astype(np.uint8))
    assert (got[p == 0] == 128).all()


def test_rf_crop_matches_the_receptive_field():
    """Each rf-frame tile is the unit's nominal receptive field widened by 25 % a side, clipped
    to the 28x28 image; the full frame keeps 28x28."""
    import zfprobe
    from zfprobe.engine.receptive_field import receptive_field

    probe = zfprobe.load(str(MODEL))
    vis = probe.visualize(str(DIGIT), "relu2", top=3)
    rf = receptive_field(probe.graph, probe.resolve("relu2"), "NCHW")
    for seed, tile, box in zip(vis.seeds, vis.tiles(), vis.boxes):
        (y0, y1), (x0, x1) = rf.nominal_box(tuple(seed.position))
        m = round((y1 - y0 + 1) * 0.25)
        hh = min(27, y1 + m) - max(0, y0 - m) + 1
        ww = min(27, x1 + m) - max(0, x0 - m) + 1
        assert tile.shape[:2] == (hh, ww)
    full = probe.visualize(str(DIGIT), "relu2", top=3, frame="full")
    assert all(t.shape[:2] == (28, 28) for t in full.tiles())


@pytest.mark.parametrize("args, needle", [
    (("visualize", MODEL, "--layer", "nope"), "does not exist"),
    (("mine", MODEL, "--layer", "nope"), "does not exist"),
])
def test_defaults_keep_clear_errors(tmp_path, args, needle):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("zfprobe: error:") and needle in r.stderr
    assert not list(tmp_path.iterdir())
