"""Sanity checks (zfprobe/studies/sanity/compute.py) against independent computations: scipy / scikit-image
measures computed by hand, and torch autograd oracles of models whose weights were randomized in
torch (or written into a new ONNX file) the same way."""
from __future__ import annotations

import copy
import glob
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import zfprobe
from zfprobe.studies.sanity.compute import plan_steps, reinitialize, run_sanity, weight_layers
from zfprobe.studies.sanity.similarity import compare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = os.path.join(ROOT, "zfprobe", "data", "mnist_cnn.onnx")
SAMPLES = sorted(glob.glob(os.path.join(ROOT, "zfprobe", "data", "samples", "*.png")))


@pytest.fixture(scope="module")
def mnist():
    probe = zfprobe.load(MNIST, device="cpu")
    x = np.concatenate([probe.load_input(p)[1] for p in SAMPLES[:3]])
    return probe, x


def _unit_seeds(acts, n=3):
    seeds, index = [], []
    for i in range(acts.shape[0]):
        for c in np.argsort(-acts[i].reshape(acts.shape[1], -1).max(1))[:n]:
            s = np.zeros(acts.shape[1:], np.float32)
            pos = np.unravel_index(int(np.argmax(acts[i, c])), acts.shape[2:])
            s[(int(c),) + pos] = 1.0
            seeds.append(s)
            index.append(i)
    return np.stack(seeds), np.array(index)


def test_no_randomization_gives_similarity_one(mnist):
    probe, x = mnist
    result = run_sanity(probe, x, "conv3", units="top:3", progress=False)
    step0 = [r for r in result.rows if r["step"] == 0]
    assert len(step0) == 2 * 3 * 9  # modes x rules x (3 images x 3 units)
    for row in step0:
        for m in ("spearman_abs", "spearman_signed", "ssim", "hog"):
            assert row[m] == pytest.approx(1.0, abs=1e-6), (m, row)
    later = [r["spearman_abs"] for r in result.rows if r["step"] > 0]
    assert max(later) < 0.999  # the randomized models really differ


def test_measures_equal_direct_scipy_and_skimage_calls(mnist):
    from scipy.stats import spearmanr
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    probe, x = mnist
    acts = probe.activations(x, "conv2")
    seeds, index = _unit_seeds(acts, 2)
    a = probe.project(x, "conv2", seeds, index, rule="guided")
    b = probe.project(x, "conv2", seeds, index, rule="gradient")
    from zfprobe.engine.receptive_field import receptive_field

    rf = receptive_field(probe.graph, probe.resolve("conv2"))
    for p, q, seed in zip(a, b, seeds):
        _, y, x_ = np.unravel_index(int(np.argmax(seed)), seed.shape)
        box = rf.box((y, x_))
        got = compare(p, q, "NCHW", box)
        crop = (slice(box[0][0], box[0][1] + 1), slice(box[1][0], box[1][1] + 1))
        mp, mq = p.sum(0)[crop].astype(np.float64), q.sum(0)[crop].astype(np.float64)
        assert min(mp.shape) >= 8 and np.ptp(mp) > 0 and np.ptp(mq) > 0
        assert got["spearman_abs"] == pytest.approx(spearmanr(np.abs(mp).ravel(), np.abs(mq).ravel())[0], abs=1e-9)
        assert got["spearman_signed"] == pytest.approx(spearmanr(mp.ravel(), mq.ravel())[0], abs=1e-9)
        np_, nq = np.abs(mp) / np.abs(mp).max(), np.abs(mq) / np.abs(mq).max()
        assert got["ssim"] == pytest.approx(structural_similarity(np_, nq, data_range=1.0, win_size=7), abs=1e-9)
        cell = max(2, min(mp.shape) // 8)
        hp = hog(np_, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))
        hq = hog(nq, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))
        assert got["hog"] == pytest.approx(np.corrcoef(hp, hq)[0, 1], abs=1e-9)


def test_degenerate_maps():
    zero = np.zeros((1, 8, 8))
    ramp = np.arange(64, dtype=np.float64).reshape(1, 8, 8)
    assert compare(zero, zero)["spearman_abs"] == 1.0
    assert compare(zero, ramp)["spearman_abs"] == 0.0
    assert compare(ramp, 3.5 * ramp) == pytest.approx({"spearman_abs": 1, "spearman_signed": 1, "ssim": 1, "hog": 1})


def _write_randomized_onnx(src: str, dst: str, values: dict[str, np.ndarray]) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(src)
    replaced = set()
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
            replaced.add(init.name)
    assert replaced == set(values)
    onnx.save(model, dst)


@pytest.mark.parametrize("layer", ["conv3", "fc"])
def test_randomized_projection_equals_oracle_of_randomized_file(mnist, tmp_path, layer):
    """Cascade step 2 (the top two weight layers random) through the parametrized program, on
    onnxruntime and on the torch backend, equals the torch autograd oracle of an ONNX file whose
    initializers hold the same random values."""
    from oracle import oracle_from_onnx

    probe, x = mnist
    tensor = probe.resolve(layer)
    layers = weight_layers(probe.graph, tensor)
    step = plan_steps(layers, "cascade")[2]
    values = {}
    for l in layers:
        if l.node in step.randomized:
            values.update(reinitialize(probe.graph, l, "matched", seed=7))
    path = str(tmp_path / "randomized.onnx")
    _write_randomized_onnx(MNIST, path, values)
    randomized_probe = zfprobe.load(path, device="cpu")
    acts = randomized_probe.activations(x, layer)
    if acts.ndim == 4:
        seeds, index = _unit_seeds(acts, 2)
    else:
        seeds = np.eye(acts.shape[1], dtype=np.float32)[np.argmax(acts, 1)]
        index = np.arange(len(x))
    torch_probe = zfprobe.load(MNIST, device="cpu", backend="torch")
    for rule in ("deconvnet", "gradient", "guided"):
        want = oracle_from_onnx(path, x, tensor, seeds, index, rule=rule)
        scale = np.abs(want).max()
        for p in (probe, torch_probe):
            got = p.project(x, layer, seeds, index, rule=rule, constants=values)
            np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0, err_msg=f"{rule} {p.backend.name}")
        trained = probe.project(x, layer, seeds, index, rule=rule)
        assert np.abs(trained - want).max() > 1e-2 * scale  # the weights really changed the result


def test_attached_torch_model_randomized_like_in_torch(zoo):
    """A live nn.Module: zfprobe's randomized projection equals the oracle of a deep copy whose
    parameters were set to the same values in torch, and the live module is left untouched."""
    import torch

    from oracle import oracle_from_module

    case = zoo.torch_net("digit_recognizer")
    module = case.module
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    probe = zfprobe.attach(module, case.images[:1])
    refs = probe.graph.parameter_refs
    layer = "conv_layers.6" if "conv_layers.6" in probe.layer_names() else None
    if layer is None:  # the third conv of the digit net, by its torch path
        layer = next(n for n in probe.layer_names() if n.endswith(".6") or n == "conv3")
    tensor = probe.resolve(layer)
    layers = weight_layers(probe.graph, tensor)
    values = {}
    for l in layers[:2]:
        values.update(reinitialize(probe.graph, l, "he", seed=3))
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for name, value in values.items():
            path = refs[name]
            twin.get_parameter(path).copy_(torch.from_numpy(value))
    acts = probe.activations(case.images, layer)
    seeds, index = _unit_seeds(acts, 2)
    for rule in ("deconvnet", "gradient", "guided"):
        want = oracle_from_module(twin, case.images, layer, seeds, index, rule=rule)
        got = probe.project(case.images, layer, seeds, index, rule=rule, constants=values)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0, err_msg=rule)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), f"the live module's {k} changed"


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "zfprobe.cli.main", *args], capture_output=True, text=True, cwd=cwd)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_cli_outputs_deterministic_and_model_untouched(tmp_path):
    before = _sha(MNIST)
    outs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / name
        r = _cli("sanity", MNIST, *SAMPLES[:2], "-l", "conv2", "--units", "top:2", "--seed", seed, "-o", str(out),
                 "--no-progress")
        assert r.returncode == 0, r.stderr
        outs.append(out)
    assert _sha(MNIST) == before
    files = sorted(os.listdir(outs[0]))
    assert {"curves.png", "strip_cascade.png", "strip_independent.png", "sanity.csv", "summary.csv",
            "selectivity.csv", "summary.md", "manifest.json"} <= set(files)
    assert (outs[0] / "sanity.csv").read_bytes() == (outs[1] / "sanity.csv").read_bytes()
    assert (outs[0] / "sanity.csv").read_bytes() != (outs[2] / "sanity.csv").read_bytes()
    import json

    manifest = json.loads((outs[0] / "manifest.json").read_text())
    assert manifest["command"] == "sanity" and manifest["model"]["sha256"] == before
    assert [l["node"] for l in manifest["weight_layers"]] == ["conv2", "conv1"]
    assert "verdict" in (outs[0] / "summary.md").read_text().lower()


@pytest.mark.parametrize("args, message", [
    (["-l", "image"], "nothing to randomize"),
    (["-l", "conv2", "--rule", "deconvnet,smoothgrad"], "unknown rule 'smoothgrad'"),
    (["-l", "conv2", "--units", "top:0"], "cannot read --units"),
    (["-l", "nope"], "layer 'nope' does not exist"),
    (["-l", "conv2", "--mode", "sideways"], "unknown mode 'sideways'"),
])
def test_cli_bad_input_one_line_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "out"
    r = _cli("sanity", MNIST, SAMPLES[0], *args, "-o", str(out))
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("zfprobe: error:") and message in lines[0], r.stderr
    assert not out.exists()


def test_cli_no_images(tmp_path):
    out = tmp_path / "out"
    r = _cli("sanity", MNIST, "-l", "conv2", "-o", str(out))
    assert r.returncode == 2 and "no images given" in r.stderr and not out.exists(), r.stderr
