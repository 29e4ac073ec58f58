"""A unit at its own ReLU6 ceiling projects (docs/methods.md, "Units that project").

zfprobe seeds a ReLU6 / Clip(0, m) layer past its own ceiling, as the paper seeds a feature map
after its rectifier. The oracle (tests/oracle.py, ``SEED_PAST_CEILING``) applies the same choice
independently: it back-propagates from the clip's input through a rule-aware ReLU. With the plain
definition (the clip's own derivative) the oracle's projection of a saturated unit is exactly
zero under every rule: the blank tiles of issue 23.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zfprobe

sys.path.insert(0, str(Path(__file__).parents[1]))
import nets  # noqa: E402
import oracle  # noqa: E402


class Six(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6()
        self.c2, self.a2 = nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU6()

    def forward(self, x):
        return self.a2(self.c2(self.a1(self.c1(x))))


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    module = nets._init_(Six(), 11)
    with torch.no_grad():  # gains large enough that the strongest units sit at 6.0
        module.c1.weight.mul_(4.0)
        module.c2.weight.mul_(4.0)
    images = np.random.RandomState(2).randn(2, 3, 16, 16).astype(np.float32)
    path = tmp_path_factory.mktemp("six") / "six.onnx"
    names = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    return module, images, path, names


def test_strongest_units_sit_at_the_ceiling(six):
    module, images, _, _ = six
    acts = oracle.module_activations(module, images, "a2")
    assert (acts.reshape(2, 6, -1).max(axis=2) == 6.0).sum() >= 6  # most channels saturate


@pytest.mark.parametrize("front", ["attach", "onnx"])
def test_saturated_units_project_like_the_oracle(six, front):
    module, images, path, names = six
    probe = zfprobe.attach(module, images[:1]) if front == "attach" else zfprobe.load(path)
    layer = "a2" if front == "attach" else names["a2"]
    acts = probe.activations(images, layer)
    seeds, seed_image = oracle.unit_seeds(acts, [0, 1, 2, 3], [0, 0, 1, 1])
    assert np.all(seeds.reshape(4, -1).max(axis=1) == 6.0)
    want = oracle.oracle_from_module(module, images, "a2", seeds, seed_image, rule=oracle.RULES)
    oracle.SEED_PAST_CEILING["on"] = False
    try:
        plain = oracle.oracle_from_module(module, images, "a2", seeds, seed_image, rule=oracle.RULES)
    finally:
        oracle.SEED_PAST_CEILING["on"] = True
    for rule in oracle.RULES:
        assert not np.any(plain[rule])  # the plain definition: the ceiling masks its own seed
        assert np.all(np.abs(want[rule]).reshape(4, -1).max(axis=1) > 0)
        for windowed in (True, False):
            got = probe.project(images, layer, seeds, seed_image, rule=rule, windowed=windowed)
            scale = float(np.abs(want[rule]).max())
            assert float(np.abs(got - want[rule]).max()) <= 1e-4 * scale, (front, rule, windowed)


def test_visualize_warns_only_for_zero_projections(six):
    module, images, _, _ = six
    probe = zfprobe.attach(module, images[:1])
    vis = probe.visualize(images[:1], "a2", top=6)
    assert vis.zero_warning() is None  # every strongest unit (at 6.0) projects
    dead = nets._init_(Six(), 12)
    with torch.no_grad():
        dead.c2.bias.fill_(-100.0)  # no unit of a2 is ever active
    vis = zfprobe.attach(dead, images[:1]).visualize(images[:1], "a2", top=2)
    line = vis.zero_warning()
    assert line.startswith("2 of 2 projection(s) are exactly zero (c0, c1): their seed value is <= 0")
