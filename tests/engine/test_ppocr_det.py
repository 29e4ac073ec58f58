"""A real third-party detector: PP-OCRv4's text detector (``ch_PP-OCRv4_det_infer.onnx``, shipped
in rapidocr-onnxruntime 1.4.4; a PaddlePaddle export with an FPN of nearest ``Resize`` ops, a
``ConvTranspose`` head, HardSigmoid attention and a dynamic H x W input).

Oracle: tests/oracle.py (onnx2torch + torch autograd with rule-aware rectifiers, masks and
switches from onnxruntime's forward values), never zfprobe's output. Image: scikit-image's
``page`` (a scanned text page), the kind of input the detector is made for. Tolerance: 1e-4
relative to the largest value of the oracle's projection.

Rules. The detector computes hard-swish as ``x * Clip(x + 3, 0, 6) / 6``. zfprobe fuses that chain
into one ``HardSwish`` node (zfprobe/engine/fusion/) and reverses it by its local derivative under
every rule; the oracle recognizes the same chains (``oracle.hardswish_clips``) and differentiates
their inner ``Clip`` instead of treating it as a ReLU6 rectifier. So the fused graph (what users
get) is compared under all three rules. Imported without fusion, zfprobe treats that ``Clip`` as a
rectifier, which agrees with the oracle only under the gradient rule (the rectifier's gradient
rule IS the clip's derivative): the unfused graph is compared under ``gradient``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zfprobe

sys.path.insert(0, str(Path(__file__).parents[1]))
import assets  # noqa: E402
import oracle  # noqa: E402

H, W = 96, 192  # the detector needs sides divisible by 32


@pytest.fixture(scope="module")
def det_path():
    try:
        return assets.rapidocr_det_onnx()
    except assets.AssetUnavailable as exc:  # pragma: no cover - no registry here
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def page():
    from skimage import data

    gray = data.page()[40:40 + H, 10:10 + W].astype(np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    rgb = np.stack([(gray - m) / s for m, s in zip(mean, std)])
    return rgb[None].astype(np.float32)


@pytest.fixture(scope="module")
def probe(det_path):
    return zfprobe.load(det_path, input_shape=(3, H, W))


@pytest.fixture(scope="module")
def unfused(det_path):
    from zfprobe.adapters.frontends.onnx_import import import_onnx
    from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend
    from zfprobe.probe import Probe

    return Probe(import_onnx(det_path, (3, H, W), fuse_decompositions=False), OnnxRuntimeBackend("cpu"), str(det_path))


def _errors(probe, det_path, image, layer, rules=oracle.RULES) -> dict[str, float]:
    """Relative error per rule of the projection of the strongest feature map of ``layer``
    (-1.0 where the oracle's projection is exactly zero, e.g. below a saturated HardSigmoid;
    zfprobe's must then be zero too)."""
    acts = probe.activations(image, layer)
    channel = int(np.argmax(acts[0].reshape(acts.shape[1], -1).max(axis=1)))
    seeds, seed_image = oracle.map_seeds(acts, [channel])
    tensor = probe.resolve(layer)
    want = oracle.oracle_from_onnx(det_path, image, tensor, seeds, seed_image, rule=tuple(rules))
    errors = {}
    for rule in rules:
        got = probe.project(image, layer, seeds, seed_image, rule=rule)
        scale = float(np.abs(want[rule]).max())
        if scale == 0:
            assert float(np.abs(got).max()) <= 1e-7, (layer, rule)
            errors[rule] = -1.0
        else:
            errors[rule] = float(np.abs(got - want[rule]).max()) / scale
    return errors


def _check(probe, det_path, image, layer, rules=oracle.RULES):
    errors = _errors(probe, det_path, image, layer, rules)
    assert all(0 <= e <= 1e-4 for e in errors.values()), (layer, errors)


def test_every_layer_is_passable(probe):
    layers = probe.layers()
    assert len(layers) > 250  # 330 ops; hard-swish chains fused into one node each
    assert {"Resize", "ConvTranspose", "HardSigmoid", "Concat"} <= {l.op_type for l in layers}
    assert [l.name for l in layers if not l.invertible] == []


@pytest.mark.parametrize("layer", ["p2o.Sigmoid.0", "p2o.ConvTranspose.1", "p2o.Resize.2"])
def test_projection_matches_oracle(probe, unfused, det_path, page, layer):
    _check(probe, det_path, page, layer)
    _check(unfused, det_path, page, layer, rules=("gradient",))


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_every_layer_matches_oracle(probe, unfused, det_path, page, fused):
    p, rules = (probe, oracle.RULES) if fused else (unfused, ("gradient",))
    worst, bad, zero = 0.0, [], 0
    for info in p.layers():
        errors = _errors(p, det_path, page, info.name, rules)
        zero += sum(e < 0 for e in errors.values())
        worst = max([worst, *errors.values()])
        bad += [(info.name, r, e) for r, e in errors.items() if e > 1e-4]
    print(f"PP-OCRv4 det ({'fused' if fused else 'unfused'}): {len(p.layers())} layers x {len(rules)} rule(s), "
          f"worst relative error {worst:.2e}, "
          f"{zero} exactly-zero projections")
    assert not bad, bad[:10]


def test_dynamic_input_size_comes_from_the_image(det_path, tmp_path):
    from PIL import Image
    from skimage import data

    img = tmp_path / "page.png"
    Image.fromarray(data.page()[:64, :160]).convert("RGB").save(img)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "zfprobe.cli.main", "visualize", str(det_path), "--image", str(img),
                        "--layer", "p2o.ConvTranspose.0", "--top", "2", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert "64" in json.dumps(manifest) and "160" in json.dumps(manifest)
