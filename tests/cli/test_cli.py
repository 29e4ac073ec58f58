"""The command line on the bundled default model: outputs, manifest, and every bad input.

Each bad input must give a one-line error on stderr, exit status 2, no traceback, and leave the
output folder as it was.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zfprobe.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zfprobe: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def folder_state(path: Path) -> dict[str, bytes]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_visualize_writes_pngs_sheet_and_manifest(tmp_path):
    out = tmp_path / "out"
    r = run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--top", "4", "--channel", "3", "-o", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layer"] == "conv2" and manifest["rule"] == "deconvnet"
    assert manifest["model"]["sha256"] and len(manifest["model"]["sha256"]) == 64
    channels = [s["channel"] for s in manifest["seeds"]]
    assert channels[0] == 3 and len(channels) == 5 and len(set(channels)) == 5
    for seed in manifest["seeds"]:
        png = out / seed["file"]
        im = np.asarray(Image.open(png))
        assert im.shape == (28, 28, 3)
        assert im.min() < 128 or im.max() > 128  # a real projection, not a blank grey tile
        assert seed["value"] > 0
    assert (out / "contact_sheet.png").exists() and (out / "input.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".zfprobe-staging")]


def test_visualize_positions_are_the_strongest_units(tmp_path):
    import zfprobe
    from zfprobe.io.preprocess import load_image

    out = tmp_path / "out"
    assert zfprobe_main_ok("visualize", MODEL, "--image", DIGIT, "--layer", "relu2", "-c", "5", "-c", "7", "-o", out)
    manifest = json.loads((out / "manifest.json").read_text())
    probe = zfprobe.load(MODEL)
    _, x = load_image(str(DIGIT), probe.preprocessing)
    acts = probe.activations(x, "relu2")
    for seed in manifest["seeds"]:
        c = seed["channel"]
        y, xx = np.unravel_index(np.argmax(acts[0, c]), acts.shape[2:])
        assert seed["position"] == [y, xx]
        assert seed["value"] == pytest.approx(float(acts[0, c, y, xx]), rel=1e-6)


def zfprobe_main_ok(*args) -> bool:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return True


def test_layers_lists_every_layer_with_shapes():
    r = run_cli("layers", MODEL)
    assert r.returncode == 0, r.stderr
    for name in ("conv1", "relu1", "pool1", "conv2", "pool2", "conv3", "flatten", "fc"):
        assert any(line.split()[0] == name for line in r.stdout.splitlines()[1:]), name
    assert "16x28x28" in r.stdout and "yes" in r.stdout


def test_export_deconv_passes_checker_and_reproduces_projection(tmp_path):
    import onnxruntime as ort

    import zfprobe

    path = tmp_path / "deconv.onnx"
    r = run_cli("export-deconv", MODEL, "--layer", "pool2", "--rule", "guided", "-o", path)
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)

    probe = zfprobe.load(MODEL)
    rng = np.random.RandomState(0)
    x = rng.rand(2, 1, 28, 28).astype(np.float32)
    seeds = rng.randn(3, 32, 7, 7).astype(np.float32)
    seed_image = np.array([0, 1, 1], np.int64)
    expected = probe.project(x, "pool2", seeds, seed_image, rule="guided")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x, "zf_seed": seeds, "zf_seed_image": seed_image})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert np.abs(expected).max() > 0


# ----------------------------------------------------------------------------- bad inputs


def _tiny_model_with(op_node, extra_inits=(), path=None):
    """input -> Conv -> <op> -> Relu, opset 17 (a model zfprobe cannot invert through <op>)."""
    w = numpy_helper.from_array(np.random.RandomState(0).randn(4, 1, 3, 3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), op_node,
             helper.make_node("Relu", ["u"], ["y"], name="relu_top")]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *extra_inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def image_8x8(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray((np.random.RandomState(1).rand(8, 8) * 255).astype(np.uint8)).save(p)
    return p


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(DIGIT.read_bytes())  # a PNG renamed
    out = tmp_path / "out"
    assert_clean_error(run_cli("visualize", bad, "--image", DIGIT, "--layer", "conv1", "-o", out), "model.onnx")
    assert not out.exists()


def test_truncated_onnx_file(tmp_path):
    bad = tmp_path / "truncated.onnx"
    data = MODEL.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    assert_clean_error(run_cli("layers", bad), "truncated.onnx")


def test_missing_model_file(tmp_path):
    assert_clean_error(run_cli("layers", tmp_path / "nope.onnx"), "does not exist")


def test_op_the_deconvnet_cannot_invert_names_node_and_op(tmp_path, image_8x8):
    node = helper.make_node("Round", ["c"], ["u"], name="the_round")
    model = _tiny_model_with(node, [], tmp_path / "round.onnx")
    out = tmp_path / "out"
    r = run_cli("visualize", model, "--image", image_8x8, "--layer", "relu_top", "-o", out)
    assert_clean_error(r, "the_round", "Round", "probe a layer below it")
    assert not out.exists()
    # below the node the same model works, and `layers` says where the deconvnet stops
    assert run_cli("visualize", model, "--image", image_8x8, "--layer", "conv", "-o", out).returncode == 0
    listing = run_cli("layers", model).stdout
    assert "no: node 'the_round' (Round)" in listing


def test_resize_that_needs_a_region_of_interest_is_refused_with_reason(tmp_path, image_8x8):
    roi = numpy_helper.from_array(np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["c", "roi", "scales"], ["u"], name="crop_resize", mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize")
    model = _tiny_model_with(node, [roi, scales], tmp_path / "crop.onnx")
    r = run_cli("visualize", model, "--image", image_8x8, "--layer", "relu_top", "-o", tmp_path / "o")
    assert_clean_error(r, "crop_resize", "Resize", "region of interest")


def test_reflect_pad_and_resize_pass(tmp_path, image_8x8):
    """Issue 9: reflect padding and Resize have exact reversals now (tests/engine/test_linear_ops.py)."""
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    node = helper.make_node("Pad", ["c", "pads"], ["u"], name="reflect_pad", mode="reflect")
    model = _tiny_model_with(node, [pads], tmp_path / "pad.onnx")
    assert run_cli("visualize", model, "--image", image_8x8, "--layer", "relu_top", "-o", tmp_path / "o").returncode == 0
    assert "no: " not in run_cli("layers", model).stdout


def test_unknown_layer_suggests_close_names(tmp_path):
    r = run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv22", "-o", tmp_path / "o")
    assert_clean_error(r, "conv22", "did you mean", "conv2")


def test_channel_out_of_range(tmp_path):
    out = tmp_path / "o"
    r = run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--channel", "32", "-o", out)
    assert_clean_error(r, "channel 32", "32 channels")
    assert not out.exists()


def test_unreadable_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = run_cli("visualize", MODEL, "--image", bad, "--layer", "conv2", "-o", tmp_path / "o")
    assert_clean_error(r, "broken.png")
    r = run_cli("visualize", MODEL, "--image", tmp_path / "missing.png", "--layer", "conv2", "-o", tmp_path / "o")
    assert_clean_error(r, "missing.png", "does not exist")


def test_failed_run_keeps_earlier_results(tmp_path):
    out = tmp_path / "out"
    assert zfprobe_main_ok("visualize", MODEL, "--image", DIGIT, "--layer", "conv1", "--top", "2", "-o", out)
    before = folder_state(out)
    assert before
    r = run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv1", "--channel", "99", "-o", out)
    assert r.returncode == 2
    assert folder_state(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".zfprobe-staging")]


def test_bad_option_values(tmp_path):
    assert_clean_error(run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--top", "0", "-o", tmp_path / "o"),
                       "--top")
    assert_clean_error(run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--unit", "1,a,b", "-o", tmp_path / "o"),
                       "CHANNEL,Y,X")
    assert_clean_error(run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--unit", "1,30,2", "-o", tmp_path / "o"),
                       "outside")


def test_dynamic_input_size(tmp_path, image_8x8):
    """A model whose spatial size is not fixed needs --input-size; without it the error says so."""
    w = numpy_helper.from_array(np.random.RandomState(0).randn(4, 1, 3, 3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["y"], name="relu")], "dyn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    assert_clean_error(run_cli("layers", path), "--input-size")
    r = run_cli("layers", path, "--input-size", "12x10")
    assert r.returncode == 0 and "4x12x10" in r.stdout, r.stderr
    r = run_cli("visualize", path, "--image", image_8x8, "--layer", "relu", "--input-size", "16", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["model"]["input_shape"] == [1, 1, 16, 16]


def test_visualize_verbose_says_which_projection_program_ran_and_why(tmp_path):
    """--verbose: one stderr line per projected layer, with the path and the cost model's two
    estimates (recomputed here from the graph); whole maps say the full program; no line without -v."""
    import re

    import zfprobe
    from zfprobe.engine.windowed import WINDOWED_MAX_FRACTION, projection_costs

    probe = zfprobe.load(MODEL)
    windowed, full = projection_costs(probe.graph, probe.resolve("conv2"))
    r = run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--top", "2", "-v", "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("zfprobe: projection at")]
    assert len(lines) == 1, r.stderr
    m = re.fullmatch(r"zfprobe: projection at conv2: (windowed|full) program \(estimated multiply-adds per seed: "
                     r"windowed (\S+), full (\S+); windowed runs where <= (\S+) x full\)", lines[0])
    assert m, lines[0]
    assert m.group(1) == ("windowed" if windowed <= WINDOWED_MAX_FRACTION * full else "full")
    assert float(m.group(2)) == pytest.approx(windowed, rel=1e-2) and float(m.group(3)) == pytest.approx(full, rel=1e-2)
    r = run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--mode", "map", "-c", "1", "--verbose",
                "-o", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert "zfprobe: projection at conv2: full program (whole feature maps" in r.stderr
    r = run_cli("visualize", MODEL, "--image", DIGIT, "--layer", "conv2", "--top", "2", "-o", tmp_path / "c")
    assert r.returncode == 0 and "projection at" not in r.stderr
