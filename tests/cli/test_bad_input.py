"""The bad-input matrix (issue 10): every row a user can get wrong, for every command.

Each case must end with exit status 2 and exactly one line ``zfprobe: error: ...`` on stderr (no
traceback, no click usage block, nothing from native libraries), and must leave the file system
as it was: no output folder created, an earlier result in the output folder untouched, no
staging or lock files left behind. ``test_matrix_count`` prints how many rows there are.
"""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import judge, run, tree

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"
SAMPLES = DATA / "samples"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels (a decompression bomb's front)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every hostile or broken input of the matrix, built once."""
    d = tmp_path_factory.mktemp("inputs")
    f: dict[str, Path] = {"model": MODEL, "image": DIGIT}
    f["missing"] = d / "nope.onnx"
    (d / "dir.onnx").mkdir()
    f["model_dir"] = d / "dir.onnx"
    f["garbage"] = d / "garbage.onnx"
    f["garbage"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)))
    f["empty"] = d / "empty.onnx"
    f["empty"].write_bytes(b"")
    f["truncated"] = d / "truncated.onnx"
    f["truncated"].write_bytes(MODEL.read_bytes()[:1500])
    for name, sidecar in {"side_list": "[1, 2]", "side_abc": '{"mean": "abc"}', "side_std0": '{"std": 0}',
                          "side_nan": '{"mean": NaN}', "side_badjson": "{not json", "side_preset": '{"preset": "zzz"}',
                          "side_order": '{"channel_order": 5}', "side_labels": '{"labels": "cat"}'}.items():
        sub = d / name
        sub.mkdir()
        shutil.copy(MODEL, sub / "m.onnx")
        (sub / "m.json").write_text(sidecar)
        f[name] = sub / "m.onnx"
    sub = d / "side_bytes"
    sub.mkdir()
    shutil.copy(MODEL, sub / "m.onnx")
    (sub / "m.json").write_bytes(b'{"mean": "\xff\xfe"}')
    f["side_bytes"] = sub / "m.onnx"
    # images
    f["img_missing"] = d / "nope.png"
    (d / "imgdir.png").mkdir()
    f["img_dir"] = d / "imgdir.png"
    f["img_garbage"] = d / "garbage.png"
    f["img_garbage"].write_bytes(b"this is not an image" * 10)
    f["img_empty"] = d / "empty.png"
    f["img_empty"].write_bytes(b"")
    f["img_truncated"] = d / "truncated.png"
    f["img_truncated"].write_bytes(DIGIT.read_bytes()[:60])
    f["img_bomb"] = d / "bomb.png"
    f["img_bomb"].write_bytes(_png_header_only(20000, 20000))
    f["img_eps"] = d / "figure.eps"
    f["img_eps"].write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 0 0 moveto showpage\n")
    # datasets
    data = d / "data"
    data.mkdir()
    for p in sorted(SAMPLES.iterdir())[:6]:
        shutil.copy(p, data / p.name)
    f["data"] = data
    (d / "empty_data").mkdir()
    f["data_empty"] = d / "empty_data"
    (d / "text_data").mkdir()
    (d / "text_data" / "a.txt").write_text("x")
    f["data_text"] = d / "text_data"
    (d / "broken_data").mkdir()
    (d / "broken_data" / "a.png").write_bytes(b"garbage")
    (d / "broken_data" / "b.jpg").write_bytes(b"")
    f["data_broken"] = d / "broken_data"
    arrays = {"npy_0d": np.array(3.0), "npy_0x0": np.zeros((3, 0, 0), np.uint8),
              "npy_complex": np.zeros((4, 28, 28), np.complex64), "npy_empty": np.zeros((0, 28, 28), np.uint8),
              "npy_5d": np.zeros((2, 3, 4, 5, 6), np.uint8), "npy_bool_str": np.array(["a", "b"])}
    for name, arr in arrays.items():
        f[name] = d / f"{name}.npy"
        np.save(f[name], arr)
    f["npy_object"] = d / "object.npy"
    np.save(f["npy_object"], np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    f["npz_none"] = d / "none.npz"
    np.savez(f["npz_none"])
    f["npz"] = d / "ok.npz"
    np.savez(f["npz"], images=np.zeros((3, 28, 28), np.uint8))
    f["npy_truncated"] = d / "truncated.npy"
    f["npy_truncated"].write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (100, 28, 28), }" + b" " * 40)
    f["txt_data"] = d / "data.txt"
    f["txt_data"].write_text("1,2,3")
    f["labels_empty"] = d / "labels.txt"
    f["labels_empty"].write_text("\n\n")
    f["a_file"] = d / "a_file.txt"
    f["a_file"].write_text("I am a file, not a folder")
    return f


# (id, argv): {name} is replaced by files[name]; OUT is the output folder (holding an earlier
# result), FILE an existing plain file.
MODEL_ROWS = [("missing", "does not exist"), ("model_dir", "directory"), ("garbage", "not a readable ONNX"),
              ("empty", "ONNX"), ("truncated", "ONNX"), ("side_list", "JSON object"), ("side_abc", "mean"),
              ("side_std0", "std"), ("side_nan", "mean"), ("side_badjson", "preprocessing file"),
              ("side_preset", "preset"), ("side_order", "channel_order"), ("side_labels", "labels"),
              ("side_bytes", "preprocessing file")]
COMMAND_BASE = {
    "layers": ["layers", "{M}"],
    "visualize": ["visualize", "{M}", "-i", "{image}", "-l", "conv2", "-o", "OUT"],
    "occlude": ["occlude", "{M}", "-i", "{image}", "-l", "conv2", "--no-progress", "-o", "OUT"],
    "mine": ["mine", "{M}", "{data}", "-l", "conv2", "-q", "-k", "2", "-o", "OUT"],
    "export-deconv": ["export-deconv", "{M}", "-l", "conv2", "-o", "OUT/deconv.onnx"],
}
PREP_ROWS = [(["--std", "0"], "--std"), (["--std", "nan"], "--std"), (["--std", "inf"], "--std"),
             (["--mean", "abc"], "--mean"), (["--mean", "1,2"], "values"), (["--mean", "-inf"], "--mean"),
             (["--scale", "0"], "--scale"), (["--scale", "nan"], "--scale"), (["--input-size", "abc"], "input size"),
             (["--input-size", "0x0"], "input size"), (["--device", "tpu"], "--device"), (["--preset", "zzz"], "--preset"),
             (["--resize", "squash"], "--resize")]
IMAGE_ROWS = [("img_missing", "does not exist"), ("img_dir", "directory"), ("img_garbage", "cannot read image"),
              ("img_empty", "cannot read image"), ("img_truncated", "cannot read image"),
              ("img_bomb", "over the limit"), ("img_eps", "cannot read image")]
OUTPUT_ROWS = [(["-o", ""], "empty"), (["-o", "{a_file}"], "")]

SPECIFIC = {
    "visualize": [(["--top", "0"], "--top"), (["--top", "-1"], "--top"), (["--top", "abc"], "--top"),
                  (["--channel", "999"], "channel"), (["--channel", "-1"], "channel"), (["--unit", "abc"], "unit"),
                  (["--unit", "1,99,99"], ""), (["--percentile", "0"], "--percentile"),
                  (["--percentile", "101"], "--percentile"), (["--percentile", "nan"], "--percentile"),
                  (["--layer", "nope"], "does not exist"), (["--rule", "nope"], "--rule"), (["--mode", "x"], "--mode"),
                  (["--lrn", "x"], "--lrn"), (["--bogus"], "--bogus"), (["--image"], "--image")],
    "occlude": [(["--fill", "nan"], "fill"), (["--fill", "1e999"], "fill"), (["--fill", "abc"], "fill"),
                (["--fill", "-1"], "fill"), (["--fill", "256"], "fill"), (["--size", "0"], "size"),
                (["--size", "-3"], "size"), (["--size", "1000"], "size"), (["--stride", "0"], "stride"),
                (["--stride", "abc"], "--stride"), (["--label", "-1"], "label"), (["--label", "99"], "label"),
                (["--labels", "{missing}"], ""), (["--labels", "{labels_empty}"], "empty"),
                (["--channel", "999"], "channel"), (["--layer", "nope"], "does not exist"),
                (["--method", "magic"], "--method")],
    "mine": [(["-c", "5-2"], "empty"), (["-c", "abc"], "channels"), (["-c", "999"], "out of range"),
             (["-c", ","], "select no channel"), (["--tile", "-5"], "--tile"), (["--tile", "100000"], "--tile"),
             (["--top", "100000000"], "--top"), (["--top", "0"], "--top"), (["--top", "abc"], "--top"),
             (["--per-page", "0"], "--per-page"), (["--limit", "0"], "--limit"), (["--batch-size", "0"], "--batch-size"),
             (["--percentile", "0"], "--percentile"), (["--layer", "nope"], "does not exist"),
             (["--rule", "x"], "--rule")],
    "export-deconv": [(["--layer", "nope"], "does not exist"), (["--rule", "x"], "--rule"),
                      (["--input-size", "abc"], "input size")],
    "layers": [(["--input-size", "abc"], "input size"), (["--channels", "abc"], "--channels"), (["--bogus"], "--bogus")],
}
DATA_ROWS = [("missing", "does not exist"), ("data_empty", "no images"), ("data_text", "no images"),
             ("data_broken", "could be read"), ("npy_0d", "as images"), ("npy_0x0", "no pixels"),
             ("npy_complex", "as images"), ("npy_empty", "no images"), ("npy_5d", "as images"),
             ("npy_bool_str", "as images"), ("npy_object", "array file"), ("npz_none", "no arrays"),
             ("npy_truncated", "array file"), ("txt_data", "list of image paths")]


def _cases():
    cases = []
    for cmd, base in COMMAND_BASE.items():
        for name, needle in MODEL_ROWS:
            cases.append((f"{cmd}-model-{name}", cmd, {"M": name}, [], needle))
        if cmd != "layers":
            for i, (extra, needle) in enumerate(OUTPUT_ROWS):
                if cmd == "export-deconv":
                    extra = ["-o", "" if i == 0 else "{data}"]
                cases.append((f"{cmd}-out{i}", cmd, {}, extra, needle))
        if cmd in ("visualize", "occlude", "mine"):
            for extra, needle in PREP_ROWS:
                cases.append((f"{cmd}-prep{'='.join(extra)}", cmd, {}, extra, needle))
        if cmd in ("visualize", "occlude"):
            for name, needle in IMAGE_ROWS:
                cases.append((f"{cmd}-image-{name}", cmd, {"image": name}, [], needle))
        if cmd == "mine":
            for name, needle in DATA_ROWS:
                cases.append((f"mine-data-{name}", cmd, {"data": name}, [], needle))
            cases.append(("mine-npz-key", cmd, {"data": "npz"}, ["--array-key", "nope"], "no array"))
        for extra, needle in SPECIFIC[cmd]:
            cases.append((f"{cmd}-{'='.join(extra)}", cmd, {}, extra, needle))
    return cases


CASES = _cases()


def _argv(cmd, subs, extra, files, out: Path):
    names = {"M": "model", "image": "image", "data": "data"}
    names.update(subs)
    argv = []
    base = COMMAND_BASE[cmd]
    skip_o = "-o" in extra
    for i, a in enumerate(base):
        if skip_o and (a == "-o" or (i > 0 and base[i - 1] == "-o")):
            continue
        argv.append(a)
    argv += extra
    out_s = str(out)
    result = []
    for a in argv:
        if a.startswith("{") and a.endswith("}"):
            key = a[1:-1]
            a = str(files[names.get(key, key)])
        result.append(a.replace("OUT", out_s))
    return result


def _earlier_result(out: Path) -> None:
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"command": "visualize", "files": ["old.png", "manifest.json"]}))
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(out / "old.png")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, files, tmp_path):
    name, cmd, subs, extra, needle = case
    out = tmp_path / "out"
    _earlier_result(out)
    before = tree(tmp_path)
    r = run(*_argv(cmd, subs, extra, files, out))
    problem = judge(r, expect_error=True)
    assert problem is None, (name, problem, r.stderr)
    assert needle.lower() in r.stderr.lower(), (name, needle, r.stderr)
    assert tree(tmp_path) == before, f"{name}: the failed run changed {tmp_path}"


def test_matrix_count():
    """How many rows the matrix has (reported in the issue's closing note)."""
    per_command = {}
    for _, cmd, *_ in CASES:
        per_command[cmd] = per_command.get(cmd, 0) + 1
    print(f"bad-input matrix: {len(CASES)} cases {per_command}")
    assert len(CASES) >= 150 and set(per_command) == set(COMMAND_BASE)


def test_output_inside_the_dataset_is_not_mined(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data)
    out = data / "results"
    for _ in range(2):  # the second run sees the first run's PNGs inside data/ and must skip them
        r = run("mine", MODEL, data, "-l", "conv2", "-k", "2", "-c", "0-1", "-q", "-o", out)
        assert judge(r, expect_error=False) is None, r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["dataset"]["images"] == 20, manifest["dataset"]


def test_an_existing_file_as_output_folder(tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    r = run("visualize", MODEL, "-i", DIGIT, "-l", "conv2", "-o", target)
    assert judge(r, expect_error=True) is None and "is a file" in r.stderr
    assert target.read_text() == "keep me"


def test_checkpoint_of_other_inputs_is_kept(tmp_path):
    out = tmp_path / "out"
    first = ["mine", MODEL, SAMPLES, "-l", "conv2", "-k", "3", "-c", "0", "-q", "-o", out]
    assert judge(run(*first), expect_error=False) is None
    state = (out / ".mine-state.npz").read_bytes()
    other = ["mine", MODEL, SAMPLES, "-l", "conv2", "-k", "2", "-c", "0", "-q", "-o", out]
    r = run(*other)
    assert judge(r, expect_error=False) is None and "saved state is for other inputs" in r.stderr
    assert (out / ".mine-state.npz").read_bytes() == state  # not replaced by another run's state
    r = run(*first)
    assert "resuming after 20 of 20" in r.stderr  # the first run's pass is still there to reuse


def test_output_folder_equal_to_the_dataset_is_refused(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data)
    before = tree(tmp_path)
    r = run("mine", MODEL, data, "-l", "conv2", "-q", "-o", data)
    assert judge(r, expect_error=True) is None and "dataset folder" in r.stderr
    assert tree(tmp_path) == before


def test_layers_whose_names_differ_only_by_slash_get_their_own_folders(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r1"], name="blk/relu"),
             helper.make_node("Relu", ["r1"], ["r2"], name="blk_relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 12, 12])],
                              [helper.make_tensor_value_info("r2", TensorProto.FLOAT, [1, 4, 12, 12])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    r = run("mine", path, SAMPLES, "-l", "blk/relu", "-l", "blk_relu", "-k", "2", "-q", "-o", out)
    assert judge(r, expect_error=False) is None, r.stderr
    from zfprobe.io.outputs import name_from_file

    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert sorted(name_from_file(f) for f in folders) == ["blk/relu", "blk_relu"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")} == set(manifest["files"])
