"""The default rule (``auto``, docs/methods.md "Which rule by default"), checked against the torch
oracle of tests/oracle.py:

- on a ReLU net without max pooling the oracle's deconvnet projection of one unit is the same for
  two different images (so zfprobe picks guided backprop, whose projections differ, and says so),
  and zfprobe's default projection equals the oracle's guided one;
- with a max-pool switch on the path the oracle's deconvnet projections differ between images,
  and zfprobe keeps the paper's deconvnet;
- on a path without a rectifier the oracle's three rules coincide, and zfprobe says so;
- a ReLU6 net: the deconvnet depends on the image only through the ceilings (named in the reason).
"""
from __future__ import annotations

import json
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


class Plain(nn.Module):
    """conv-ReLU-conv(s2)-ReLU-conv, optionally with a 2x2 max pool after the first ReLU."""

    def __init__(self, pool: bool = False, act=nn.ReLU):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), act()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), act()
        self.c3 = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        return self.c3(self.a2(self.c2(self.pool(self.a1(self.c1(x))))))


IMAGES = np.random.RandomState(3).randn(2, 3, 16, 16).astype(np.float32)


def _same_unit_seeds(probe, layer):
    """One unit (channel 2 at the centre) seeded with the value 1 in both images."""
    shape = probe.graph.shape(probe.resolve(layer))
    seeds = np.zeros((2,) + tuple(shape[1:]), np.float32)
    seeds[:, 2, shape[2] // 2, shape[3] // 2] = 1.0
    return seeds, np.array([0, 1])


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_no_switch_deconvnet_is_image_independent_guided_is_default():
    torch.manual_seed(0)
    module = nets._init_(Plain(), 5)
    probe = zfprobe.attach(module, IMAGES[:1])
    seeds, seed_image = _same_unit_seeds(probe, "c3")
    want = oracle.oracle_from_module(module, IMAGES, "c3", seeds, seed_image, rule=oracle.RULES)
    # the oracle: deconvnet gives the same picture for both images, guided does not
    assert _rel(want["deconvnet"][0], want["deconvnet"][1]) < 1e-6
    assert _rel(want["guided"][0], want["guided"][1]) > 0.05
    choice = probe.choose_rule("c3")
    assert (choice.rule, choice.switches, choice.rectifiers, choice.image_free_deconvnet) == ("guided", 0, 2, True)
    assert "does not depend on the image at all" in choice.reason
    got = probe.project(IMAGES, "c3", seeds, seed_image, rule="auto")
    assert _rel(got, want["guided"]) < 1e-4
    vis = probe.visualize(IMAGES[:1], "c3", top=2)
    assert vis.rule == "guided" and vis.rule_choice["rule"] == "guided" and vis.rule_choice["requested"] == "auto"
    assert probe.visualize(IMAGES[:1], "c3", top=2, rule="deconvnet").rule == "deconvnet"  # kept on request


def test_a_switch_keeps_the_deconvnet():
    module = nets._init_(Plain(pool=True), 6)
    probe = zfprobe.attach(module, IMAGES[:1])
    seeds, seed_image = _same_unit_seeds(probe, "c3")
    want = oracle.oracle_from_module(module, IMAGES, "c3", seeds, seed_image, rule="deconvnet")
    assert _rel(want[0], want[1]) > 0.05  # the switches carry the image
    choice = probe.choose_rule("c3")
    assert (choice.rule, choice.switches) == ("deconvnet", 1)
    assert _rel(probe.project(IMAGES, "c3", seeds, seed_image, rule="auto"), want) < 1e-4


def test_no_rectifier_the_three_rules_are_one():
    module = nets._init_(Plain(), 7)
    probe = zfprobe.attach(module, IMAGES[:1])
    choice = probe.choose_rule("c1")
    assert choice.rules_identical and "the same computation" in choice.reason and choice.rule == "guided"
    seeds, seed_image = _same_unit_seeds(probe, "c1")
    want = oracle.oracle_from_module(module, IMAGES, "c1", seeds, seed_image, rule=oracle.RULES)
    for rule in oracle.RULES:
        assert _rel(want[rule], want["gradient"]) == 0.0
        assert _rel(probe.project(IMAGES, "c1", seeds, seed_image, rule=rule), want["gradient"]) < 1e-5


def test_relu6_ceiling_named():
    module = nets._init_(Plain(act=nn.ReLU6), 8)
    probe = zfprobe.attach(module, IMAGES[:1])
    choice = probe.choose_rule("c3")
    assert choice.rule == "guided" and not choice.image_free_deconvnet
    assert "only through the ReLU6 ceiling" in choice.reason


def test_cli_says_the_rule_and_records_it(tmp_path):
    from PIL import Image

    from clirun import run as run_cli

    module = nets._init_(Plain(), 5)
    path = tmp_path / "plain.onnx"
    names = nets.export_onnx(module, torch.from_numpy(IMAGES[:1]), path)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 16, 3), np.uint8)).save(image)
    res = run_cli("visualize", path, "-i", image, "-l", names["c3"], "-n", "2", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if "rule guided" in line]
    assert len(notes) == 1 and notes[0].startswith("zfprobe: note: rule guided at ")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rule"] == "guided"
    assert manifest["rule_choice"]["requested"] == "auto" and "max-pool switch" in manifest["rule_choice"]["reason"]
    res = run_cli("visualize", path, "-i", image, "-l", names["c3"], "-n", "2", "--rule", "deconvnet", "-o", tmp_path / "d")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["rule"] == "deconvnet"
