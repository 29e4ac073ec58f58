"""The bad-input matrix for the study commands (issue 25): filters, correspondence, invariance,
evolution, transfer, probe-layers, ablate, sanity and report, with the same promise as
tests/cli/test_bad_input.py (the five core commands): exit 2, exactly one line
``zfprobe: error: ...``, and nothing written (an earlier result in the output folder untouched).

The rows: every broken model of the core matrix, empty and file output folders, the
preprocessing rows (NaN / zero / unreadable --std, --mean, --scale, ...), seeds (-1, 2^32, text),
label files (binary garbage, not UTF-8, missing columns, one class, count mismatch), datasets
(missing, empty, every image corrupt), parts files, ``-l ""``, folders that must be a `mine`
output, and each command's own options. ``test_documented_successes`` covers the inputs that
are meant to work (a 16-bit PNG, partly corrupt datasets, a model without graph outputs).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import fill_disk, judge, run, tree
from test_bad_input import MODEL_ROWS, PREP_ROWS, OUTPUT_ROWS, _earlier_result, files  # noqa: F401 (fixture)

DATA = Path(__file__).resolve().parents[2] / "zfprobe" / "data"
MODEL = DATA / "mnist_cnn.onnx"
DIGIT = DATA / "digit.png"
SAMPLES = DATA / "samples"


@pytest.fixture(scope="module")
def study(files, tmp_path_factory) -> dict[str, Path]:
    """The study commands' own inputs, good and bad, built once (beside the core matrix's)."""
    d = tmp_path_factory.mktemp("study")
    f = dict(files)
    lab = d / "lab"
    for p in sorted(SAMPLES.glob("*.png")):
        (lab / p.stem.split("_")[1]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, lab / p.stem.split("_")[1] / p.name)
    f["lab"] = lab
    f["parts"] = d / "parts.json"
    f["parts"].write_text(json.dumps({"00_0.png": {"a": [2, 2, 12, 12], "b": [10, 10, 20, 20]},
                                      "01_0.png": {"a": [3, 3, 13, 13], "b": [12, 12, 22, 22]}}))
    f["img0"], f["img1"] = SAMPLES / "00_0.png", SAMPLES / "01_0.png"
    rng = np.random.default_rng(25)
    f["garbage_csv"] = d / "garbage.csv"
    f["garbage_csv"].write_bytes(bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
    f["latin1_csv"] = d / "latin1.csv"
    f["latin1_csv"].write_bytes("00_0.png,caf\xe9\n".encode("latin-1"))
    f["one_column_csv"] = d / "one.csv"
    f["one_column_csv"].write_text("".join(f"{p}\n" for p in sorted(SAMPLES.glob("*.png"))))
    f["one_class_csv"] = d / "oneclass.csv"
    f["one_class_csv"].write_text("".join(f"{p},3\n" for p in sorted(SAMPLES.glob("*.png"))))
    f["npy20"] = d / "x20.npy"
    np.save(f["npy20"], np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted(SAMPLES.glob("*.png"))]))
    f["labels_short"] = d / "short.txt"
    f["labels_short"].write_text("1\n2\n3\n")
    f["labels_garbage"] = d / "labels.txt"
    f["labels_garbage"].write_bytes(b"\x00\xff\xfe" * 300)
    bad = d / "allbad"
    for c in ("0", "1"):
        (bad / c).mkdir(parents=True)
        for i in range(2):
            (bad / c / f"x{i}.png").write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    f["allbad"] = bad
    f["not_mine"] = d / "vis"
    f["not_mine"].mkdir()
    (f["not_mine"] / "manifest.json").write_text(json.dumps({"command": "visualize", "files": []}))
    f["plain_dir"] = d / "plain"
    f["plain_dir"].mkdir()
    for name, text in {"parts_garbage": None, "parts_badjson": "{not json", "parts_empty_box": '{"00_0.png": {"a": [5, 5, 5, 5]}}',
                       "parts_nan": '{"00_0.png": {"a": [NaN, 1, 2, 3]}}', "parts_csv_cols": "00_0.png,a,1,2\n"}.items():
        f[name] = d / (name + (".csv" if name.endswith("cols") else ".json"))
        if text is None:
            f[name].write_bytes(b"\xff\xfe\x00garbage" * 50)
        else:
            f[name].write_text(text)
    store = d / "store_broken"
    store.mkdir()
    (store / "meta.json").write_text("{not json")
    f["store_broken"] = store
    f["store_empty"] = d / "store_empty"
    f["store_empty"].mkdir()
    return f


COMMAND_BASE = {
    "filters": ["filters", "{M}", "-q", "-o", "OUT"],
    "correspondence": ["correspondence", "{M}", "{img0}", "{img1}", "--parts", "{parts}", "-l", "relu1", "--random", "2",
                       "--no-progress", "-o", "OUT"],
    "invariance": ["invariance", "{M}", "{image}", "-l", "conv2", "-t", "rotate", "--no-progress", "-o", "OUT"],
    "evolution": ["evolution", "{store}", "-o", "OUT"],
    "transfer": ["transfer", "{M}", "{lab}", "-l", "relu3", "--per-class", "1", "--splits", "1", "--no-scratch",
                 "--no-cache", "-q", "-o", "OUT"],
    "probe-layers": ["probe-layers", "{M}", "{lab}", "-l", "relu3", "--per-class", "1", "--splits", "1", "--no-cache",
                     "-q", "-o", "OUT"],
    "ablate": ["ablate", "{M}", "{lab}", "-l", "conv2", "-q", "-o", "OUT"],
    "sanity": ["sanity", "{M}", "{image}", "-l", "conv2", "--units", "top:1", "--no-progress", "-o", "OUT"],
    "report": ["report", "{M}", "{data}", "-l", "conv2", "--unit-pages", "1", "--occlusion-images", "0", "-q", "-o", "OUT"],
}
WITH_PREP = ["correspondence", "invariance", "transfer", "probe-layers", "ablate", "sanity", "report"]
SEEDED = ["correspondence", "transfer", "probe-layers", "sanity", "ablate"]
SEED_ROWS = [(["--seed", "-1"], "--seed"), (["--seed", "4294967296"], "--seed"), (["--seed", "abc"], "--seed")]
LABELLED = ["transfer", "probe-layers", "ablate"]
LABEL_ROWS = [({"lab": "garbage_csv"}, [], "not text"), ({"lab": "latin1_csv"}, [], "UTF-8"),
              ({"lab": "one_column_csv"}, [], "label"), ({"lab": "missing"}, [], "does not exist"),
              ({"lab": "data_empty"}, [], "no images"), ({"lab": "npy20"}, ["--labels", "{labels_short}"], "label"),
              ({"lab": "npy20"}, ["--labels", "{labels_garbage}"], "binary"),
              ({"lab": "npy20"}, ["--labels", "{missing}"], "does not exist"), ({"lab": "npy20"}, [], "labels")]
SPECIFIC = {
    "filters": [(["--std", "0"], "--std"), (["--std", "nan"], "--std"), (["--mean", "a,b"], "--mean"),
                (["--scale", "nan"], "--scale"), (["--dead-norm", "nan"], "--dead-norm"),
                (["--dead-norm", "-1"], "--dead-norm"), (["--inactive-rate", "nan"], "--inactive-rate"),
                (["--inactive-rate", "2"], "--inactive-rate"), (["--saturated-rate", "-0.5"], "--saturated-rate"),
                (["--preset", "imagenet"], "no DATA"), (["--period", "0"], "--period"), (["--fft-size", "0"], "--fft-size"),
                (["--batch-size", "0"], "--batch-size"), (["--limit", "0"], "--limit"), (["--layer", "nope"], "does not exist"),
                (["--aliasing-layer", "conv2"], "needs DATA"), (["{data_broken}"], "could be read"),
                (["{data_empty}"], "no images"), (["{M}", "{M}", "{M}"], "at most two"), (["{data}", "{data}"], "more than one"),
                (["{data}", "--std", "0"], "--std"), (["{data}", "--mean", "nan"], "--mean")],
    "correspondence": [(["--parts", "{missing}"], "does not exist"), (["--parts", "{parts_garbage}"], "parts file"),
                       (["--parts", "{parts_badjson}"], "JSON"), (["--parts", "{parts_empty_box}"], "empty"),
                       (["--parts", "{parts_nan}"], "parts"), (["--parts", "{parts_csv_cols}"], "fields"),
                       (["--random", "-1"], "--random"), (["--size", "0"], "size"), (["--fill", "nan"], "fill"),
                       (["--fill", "abc"], "fill"), (["-l", "nope"], "does not exist"), (["{img_garbage}"], "image")],
    "invariance": [(["-l", ""], "empty"), (["-l", "nope"], "does not exist"), (["--range", "a:b:c"], "range"),
                   (["--range", "1:0:0"], "range"), (["--label", "-1"], "label"), (["--label", "99"], "label"),
                   (["--fill", "nan"], "fill"), (["--fill", "300"], "fill"), (["--batch-size", "0"], "--batch-size"),
                   (["-t", "warp"], "--transform")],
    "evolution": [],
    "transfer": [(["--per-class", "0"], "per-class"), (["--per-class", "abc"], "per-class"), (["--splits", "0"], "splits"),
                 (["--epochs", "0"], "epochs"), (["-l", "nope"], "does not exist"), (["--batch-size", "0"], "--batch-size"),
                 (["--test", "{missing}"], "does not exist"), (["--pool", "median"], "--pool")],
    "probe-layers": [(["--per-class", "0"], "per-class"), (["--splits", "0"], "splits"), (["-l", "nope"], "does not exist")],
    "ablate": [(["--mine-dir", "{missing}", "--importance", "conv2"], "--mine-dir"),
               (["--mine-dir", "{not_mine}", "--importance", "conv2"], "zfprobe visualize"),
               (["--mine-dir", "{plain_dir}", "--importance", "conv2"], "not a zfprobe output"),
               (["--mine-dir", "{plain_dir}"], "only applies"), (["--batch-size", "0"], "--batch-size"),
               (["--channels", "conv2:99"], "channel"), (["--branch", "nope"], ""), (["--importance", "nope"], "does not exist"),
               (["--layer", "nope"], "does not exist")],
    "sanity": [(["-l", "nope"], "does not exist"), (["--units", "top:0"], "units"), (["--units", "abc"], "units"),
               (["--max-steps", "0"], "max-steps"), (["--rules", "nope"], "rule"), (["--init", "x"], "--init")],
    "report": [(["-l", ""], "empty"), (["-l", ","], "empty"), (["-l", "nope"], "does not exist"),
               (["--limit", "0"], "--limit"), (["--unit-pages", "-1"], "--unit-pages"),
               (["--include", "{plain_dir}"], "not a zfprobe output"), (["--with", "filters"], "no output")],
}
DATA_ROWS = {"ablate": [({"lab": "allbad"}, [], "could be read")],
             "report": [({"data": "missing"}, [], "does not exist"), ({"data": "data_empty"}, [], "no images"),
                        ({"data": "data_broken"}, [], "could")],
             "evolution": [({"store": "missing"}, [], "store"), ({"store": "store_empty"}, [], "store"),
                           ({"store": "store_broken"}, [], "store"), ({"store": "a_file"}, [], "")]}
CORE_EMPTY_LAYER = [("visualize", ["visualize", "{M}", "-i", "{image}", "-l", "", "-o", "OUT"]),
                    ("occlude", ["occlude", "{M}", "-i", "{image}", "-l", "", "--no-progress", "-o", "OUT"])]


def _cases():
    cases = []
    for cmd in COMMAND_BASE:
        if cmd != "evolution":
            for name, needle in MODEL_ROWS:
                cases.append((f"{cmd}-model-{name}", cmd, {"M": name}, [], needle))
        for i, (extra, needle) in enumerate(OUTPUT_ROWS):
            cases.append((f"{cmd}-out{i}", cmd, {}, extra, needle))
        if cmd in WITH_PREP:
            for extra, needle in PREP_ROWS:
                cases.append((f"{cmd}-prep{'='.join(extra)}", cmd, {}, extra, needle))
        if cmd in SEEDED:
            for extra, needle in SEED_ROWS:
                cases.append((f"{cmd}-{'='.join(extra)}", cmd, {}, extra, needle))
        if cmd in LABELLED:
            for i, (subs, extra, needle) in enumerate(LABEL_ROWS):
                cases.append((f"{cmd}-labels{i}-{'-'.join(subs.values())}", cmd, subs, extra, needle))
        for i, (subs, extra, needle) in enumerate(DATA_ROWS.get(cmd, [])):
            cases.append((f"{cmd}-data{i}-{'-'.join(subs.values())}", cmd, subs, extra, needle))
        for extra, needle in SPECIFIC[cmd]:
            cases.append((f"{cmd}-{'='.join(extra)}", cmd, {}, extra, needle))
    return cases


CASES = _cases()


def _argv(base, subs, extra, files, out: Path):
    names = {"M": "model", "image": "image", "data": "data", "lab": "lab", "store": "store_empty"}
    names.update(subs)
    skip_o = "-o" in extra
    argv = [a for i, a in enumerate(base) if not (skip_o and (a == "-o" or (i > 0 and base[i - 1] == "-o")))]
    if extra and extra[0].startswith("{") and base[0] == "filters":  # filters: more positional paths
        argv = argv[:2] + extra + argv[2:]
        extra = []
    out_s = str(out)
    result = []
    for a in argv + extra:
        if a.startswith("{") and a.endswith("}"):
            key = a[1:-1]
            a = str(files[names.get(key, key)])
        result.append(a.replace("OUT", out_s))
    return result


def check_refused(argv, tmp_path, needle, name):
    out = tmp_path / "out"
    _earlier_result(out)
    before = tree(tmp_path)
    r = run(*argv)
    problem = judge(r, expect_error=True)
    assert problem is None, (name, problem, r.stderr)
    assert needle.lower() in r.stderr.lower(), (name, needle, r.stderr)
    assert tree(tmp_path) == before, f"{name}: the failed run changed {tmp_path}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, study, tmp_path):
    name, cmd, subs, extra, needle = case
    check_refused(_argv(COMMAND_BASE[cmd], subs, extra, study, tmp_path / "out"), tmp_path, needle, name)


@pytest.mark.parametrize("cmd,base", CORE_EMPTY_LAYER, ids=[c for c, _ in CORE_EMPTY_LAYER])
def test_empty_layer_name_is_an_error_not_the_default(study, tmp_path, cmd, base):
    check_refused(_argv(base, {}, [], study, tmp_path / "out"), tmp_path, "empty", cmd)


def test_matrix_count():
    """How many rows the matrix has, by command (docs/guarantees.md gives the totals)."""
    per_command = {}
    for _, cmd, *_ in CASES:
        per_command[cmd] = per_command.get(cmd, 0) + 1
    per_command["visualize"] = per_command.get("visualize", 0) + 1
    per_command["occlude"] = per_command.get("occlude", 0) + 1
    print(f"study bad-input matrix: {sum(per_command.values())} cases {per_command}")
    assert set(COMMAND_BASE) <= set(per_command) and len(CASES) >= 250


# ------------------------------------------------------------------ documented successes ----
def test_good_base_commands_succeed(study, tmp_path):
    """Every base command line of the matrix works as given (so each row tests only its change)."""
    for cmd, base in COMMAND_BASE.items():
        if cmd == "evolution":
            continue
        r = run(*_argv(base, {}, [], study, tmp_path / cmd))
        assert judge(r, expect_error=False) is None, (cmd, r.stderr)
        assert all(l.startswith("zfprobe: ") for l in r.stderr.splitlines() if l.strip()), (cmd, r.stderr)


def test_sixteen_bit_png_through_invariance(study, tmp_path):
    """A 16-bit PNG (levels x257) gives the same curves as its 8-bit original: images.py's levels."""
    deep = tmp_path / "d16.png"
    Image.fromarray(np.asarray(Image.open(DIGIT).convert("L")).astype(np.uint16) * 257).save(deep)
    assert Image.open(deep).mode.startswith("I;16")
    curves = {}
    for name, image in (("8", DIGIT), ("16", deep)):
        r = run("invariance", MODEL, image, "-l", "conv2", "-t", "rotate", "--no-progress", "-o", tmp_path / name)
        assert judge(r, expect_error=False) is None and not r.stderr.strip(), r.stderr
        rows = (tmp_path / name / "curves.csv").read_text().splitlines()
        curves[name] = np.array([[float(v) for v in row.split(",")[5:7]] for row in rows[1:]])
    # the untransformed image: the same levels exactly; rotated ones differ by the 8-bit copy's
    # rounding of each bilinear sample to a whole level (the 16-bit one keeps the fraction)
    np.testing.assert_allclose(curves["16"][0], curves["8"][0], atol=1e-5)
    np.testing.assert_allclose(curves["16"], curves["8"], rtol=5e-3, atol=1e-3)


def test_partly_corrupt_data_warns_in_one_line_each(study, tmp_path):
    data = tmp_path / "mixed"
    data.mkdir()
    for p in sorted(SAMPLES.glob("*.png"))[:4]:
        shutil.copy(p, data / p.name)
    (data / "bad1.png").write_bytes(b"not an image" * 30)
    (data / "bad2.png").write_bytes(b"")
    r = run("report", MODEL, data, "-l", "conv2", "--unit-pages", "1", "--occlusion-images", "0", "-q", "-o", tmp_path / "r")
    assert judge(r, expect_error=False) is None, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 2 and all(l.startswith("zfprobe: warning: skipped bad") for l in lines), lines


def test_occlude_on_a_model_without_graph_outputs(tmp_path):
    import onnx

    model = onnx.load(str(MODEL))
    del model.graph.output[:]
    path = tmp_path / "no_outputs.onnx"
    onnx.save(model, path)
    r = run("occlude", path, "-i", DIGIT, "-l", "conv2", "--no-progress", "-s", "7", "-t", "7", "-o", tmp_path / "o")
    problem = judge(r)
    assert problem is None, (problem, r.stderr)
    if r.exit_code == 0:  # documented: without a class output only the activation map is made
        assert "no class output" in r.stderr
    r = run("occlude", path, "-i", DIGIT, "-l", "conv2", "--no-progress", "--label", "3", "-o", tmp_path / "o2")
    assert judge(r, expect_error=True) is None, r.stderr


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "m"
        r = run("mine", MODEL, SAMPLES, "-l", "conv2", "-k", "2", "-c", "0", "-q", "-o", out)
        assert judge(r, expect_error=False) is None, r.stderr
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes[".mine-state.npz"] == 0o644 and modes["manifest.json"] == 0o644 and modes["index.csv"] == 0o644
    assert set(modes.values()) == {0o644, 0o755}, modes


def test_report_rerun_leaves_no_pages_of_layers_no_longer_asked_for(tmp_path):
    out = tmp_path / "rep"
    base = ["report", MODEL, SAMPLES, "--unit-pages", "1", "--occlusion-images", "0", "-q", "-o", out]
    assert judge(run(*base, "-l", "conv2"), expect_error=False) is None
    assert any("conv2" in str(p) for p in out.rglob("*"))
    assert judge(run(*base, "-l", "conv1"), expect_error=False) is None
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == set(json.loads((out / "manifest.json").read_text())["files"])
    assert not [f for f in files if "conv2" in f]


def test_home_not_writable_gives_no_native_warning(tmp_path):
    env = dict(os.environ, HOME="/proc/self")  # a folder nobody can create files in, root included
    p = subprocess.run([sys.executable, "-m", "zfprobe.cli.main", "visualize", str(MODEL), "-i", str(DIGIT), "-l", "conv2",
                        "-o", str(tmp_path / "v")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr


def test_correspondence_on_a_full_disk_is_one_line(study, tmpfs):
    disk = tmpfs("disk", size="256k")
    fill_disk(disk, 4096)
    r = run(*_argv(COMMAND_BASE["correspondence"], {}, [], study, disk / "out"))
    assert judge(r, expect_error=True) is None, r.stderr
    assert "No space left" in r.stderr
    assert sorted(os.listdir(disk)) == ["filler"]
