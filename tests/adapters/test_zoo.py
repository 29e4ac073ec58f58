"""The model-zoo corpus (tests/zoo_nets.py): torchvision and timm CNN families, random weights.

For each net: ``zfprobe.attach`` captures it natively (one recorded forward, no fallback to fx's
symbolic trace or to the ONNX route);
every layer is passable by the deconvnet; and at three layers (shallow, middle, deepest) the
projections of the strongest units of two channels equal the independent autograd oracle
(tests/torch_nets_extra.py: torch autograd with the rule at every rectifier, however written)
under the three rules, to ``RTOL`` of the oracle's largest value per seed (random-weight nets
reach activations in the hundreds; float32 kernels that sum in another order differ by ~1e-5
relative there). The windowed default path and the full program are both checked.

Nets in ``zoo_nets.FLOAT64_ORACLE`` (whose float32 oracle is itself off by more than the
tolerance) are compared with the oracle run in float64. Nets in ``zoo_nets.KNOWN_ORACLE_GAPS`` (an engine issue the ONNX route shares) are compared with
the ONNX route instead. ``zoo_nets.FAST`` runs by default; the other families are marked slow (``--runslow``).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import torch_nets_extra as extra
import zfprobe
import zoo_nets
from conftest import natural_images
from zfprobe.adapters.frontends.torch_fx import RECORDED

RULES = ("deconvnet", "gradient", "guided")
RTOL = 2e-4


def _params():
    for name in zoo_nets.NETS:
        marks = () if name in zoo_nets.FAST else (pytest.mark.slow,)
        if name in zoo_nets.OPEN:
            marks += (pytest.mark.xfail(reason=zoo_nets.OPEN[name], strict=False),)
        yield pytest.param(name, marks=marks, id=name)


def _seeds(acts: np.ndarray) -> np.ndarray:
    """The strongest unit of the two channels with the largest activations (image 0)."""
    flat = acts[0].reshape(acts.shape[1], -1)
    channels = np.argsort(-flat.max(axis=1))[:2]
    seeds = np.zeros((2,) + acts.shape[1:], np.float32)
    for k, c in enumerate(channels):
        pos = np.unravel_index(int(np.argmax(acts[0, c])), acts.shape[2:])
        seeds[(k, c) + pos] = acts[(0, c) + pos]
    return seeds


def _assert_close(got, want, what):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    for k in range(len(want)):
        scale = np.abs(want[k]).max()
        assert scale > 0, f"{what}: the oracle's projection of seed {k} is zero"
        err = np.abs(got[k] - want[k]).max() / scale
        assert err <= RTOL, f"{what}: seed {k} differs from the oracle by {err:.3e} (relative)"


def _oracle(module, module64, images, layer, seeds, rule):
    """The autograd oracle; in float64 where a float64 copy of the module is given."""
    if module64 is None:
        return extra.rule_projection(module, images, layer, seeds, None, rule, min_rectifiers=0)
    layer_fn = extra.layer_fn(module64, layer)
    return extra.rule_projection(module, images, lambda x: layer_fn(x.double()).float(), seeds, None, rule,
                                 min_rectifiers=0)


@pytest.mark.parametrize("name", list(_params()))
def test_zoo_net_is_captured_natively_and_projects_like_autograd(name):
    module = zoo_nets.build(name)
    size = zoo_nets.NETS[name].size
    images = natural_images(1, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the ONNX route fails the test
        probe = zfprobe.attach(module, images)
    # the one-forward recording, not a silent fall back to fx's symbolic trace
    assert probe.graph.metadata["frontend"] == RECORDED, (name, probe.graph.metadata["frontend"])
    blocked = [info for info in probe.layers() if not info.invertible]
    assert not blocked, f"{name}: {blocked[0].name}: {blocked[0].blocker}"
    x = torch.from_numpy(images)
    gap = zoo_nets.KNOWN_ORACLE_GAPS.get(name)
    reference = zfprobe.attach(module, images, capture="onnx") if gap else None
    float64 = name in zoo_nets.FLOAT64_ORACLE
    module64 = copy.deepcopy(module).double() if float64 else None
    for layer in zoo_nets.NETS[name].layers:
        acts = probe.activations(images, layer)
        with torch.no_grad():
            want_acts = (extra.layer_fn(module64, layer)(x.double()).float() if float64
                         else extra.layer_fn(module, layer)(x)).numpy()
        assert np.abs(acts - want_acts).max() <= RTOL * np.abs(want_acts).max(), (name, layer)
        seeds = _seeds(acts)
        if gap:  # the same projections as the ONNX route (see zoo_nets.KNOWN_ORACLE_GAPS)
            for rule in RULES:
                _assert_close(probe.project(images, layer, seeds, rule=rule),
                              reference.project(images, layer, seeds, rule=rule), f"{name} {layer} {rule} vs ONNX")
            continue
        want = {rule: _oracle(module, module64, images, layer, seeds, rule) for rule in RULES}
        for rule in RULES:
            _assert_close(probe.project(images, layer, seeds, rule=rule), want[rule], f"{name} {layer} {rule}")
        _assert_close(probe.project(images, layer, seeds, rule="deconvnet", windowed=False), want["deconvnet"],
                      f"{name} {layer} full program")
