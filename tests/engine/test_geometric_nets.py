"""Whole networks built on the geometric ops (tests/geometric_nets.py) agree with the oracle:
torch autograd on the ORIGINAL module with rule-aware rectifiers (tests/oracle.py), under all
three rules, through every front-end / backend route the framework has:

- ``attach``: the torch front-end and the torch backend (live module);
- the ONNX export of the same module, run by onnxruntime and by the TensorFlow backend.

Seeds: the strongest unit of three channels, in two real photographs (scikit-image's astronaut
and chelsea, resized to 32 x 48). Tolerance: 1e-4 of the oracle's largest value.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zfprobe
from zfprobe.adapters.frontends.onnx_import import import_onnx
from zfprobe.probe import Probe

sys.path.insert(0, str(Path(__file__).parents[1]))
import geometric_nets  # noqa: E402
import nets  # noqa: E402
import oracle  # noqa: E402

TOL = 1e-4
# net -> (module path of a mid layer, rectifier calls the oracle must see per forward pass)
LAYERS = {"unet": ("dec1", 3), "fpn_pan": ("s4", 4), "yolo_focus": ("fuse", 1), "pixelshuffle_sr": ("body", 2)}


@pytest.fixture(scope="module")
def images():
    from skimage import data, transform

    pics = [transform.resize(p, (32, 48), anti_aliasing=True) for p in (data.astronaut(), data.chelsea())]
    return np.stack(pics).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seeds(acts):
    chans = [0, acts.shape[1] // 2, acts.shape[1] - 1]
    return oracle.unit_seeds(acts, chans, [0, 1, 1])


def _check(probe, layer, module, images, get_layer, min_rect=0):
    acts = probe.activations(images, layer)
    seeds, seed_image = _seeds(acts)
    want = oracle.oracle_from_module(module, images, get_layer, seeds, seed_image, rule=oracle.RULES,
                                     min_rectifiers=min_rect)
    for rule in oracle.RULES:
        got = probe.project(images, layer, seeds, seed_image, rule=rule)
        scale = float(np.abs(want[rule]).max())
        assert scale > 0, (layer, rule)
        err = float(np.abs(got - want[rule]).max()) / scale
        assert err <= TOL, (layer, rule, err)


def _whole(m, x):
    return m(x)


@pytest.mark.parametrize("name", sorted(geometric_nets.NETS))
def test_attached_module_matches_oracle(name, images):
    module = geometric_nets.build(name)
    probe = zfprobe.attach(module, images[:1])
    assert probe.backend.name == "torch"
    assert all(l.invertible for l in probe.layers()), [(l.name, l.blocker) for l in probe.layers() if not l.invertible]
    mid, min_rect = LAYERS[name]
    _check(probe, mid, module, images, mid, min_rect)
    _check(probe, probe.graph.outputs[0], module, images, _whole)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorflow"])
@pytest.mark.parametrize("name", sorted(geometric_nets.NETS))
def test_onnx_export_matches_oracle(name, backend, images, tmp_path):
    if backend == "tensorflow" and name not in ("unet", "yolo_focus"):
        pytest.skip("TensorFlow backend: a representative pair of nets in the default run")
    module = geometric_nets.build(name)
    path = tmp_path / f"{name}.onnx"
    friendly = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    if backend == "tensorflow":
        from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

        probe = Probe(import_onnx(path), TensorFlowBackend("cpu"), source=str(path))
    else:
        probe = zfprobe.load(path)
    assert all(l.invertible for l in probe.layers())
    mid, _ = LAYERS[name]
    _check(probe, friendly[mid], module, images, mid)
    _check(probe, "output", module, images, _whole)
