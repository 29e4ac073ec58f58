"""PReLU (per-channel and single slope) against torch autograd with the rule-aware PReLU of
tests/oracle.py under all three rules: the live module (attach) and its ONNX export, with the
oracle on the original module and, independently, on the ONNX file through onnx2torch. The rule
(docs/methods.md): deconvnet prelu(g), gradient g * slope(x), guided prelu(g) * slope(x). The
Keras front-end (keras.layers.PReLU) is checked in tests/engine/test_modern_ops.py."""
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


class PReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8)
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.PReLU()
        self.c3 = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        return self.c3(self.a2(self.c2(self.a1(self.c1(x)))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    module = nets._init_(PReLUNet(), 7)
    with torch.no_grad():  # slopes away from 0 and 1, one negative
        module.a1.weight.copy_(torch.linspace(-0.3, 0.6, 8))
        module.a2.weight.fill_(0.2)
    images = np.random.RandomState(1).randn(2, 3, 16, 16).astype(np.float32)
    path = tmp_path_factory.mktemp("prelu") / "prelu.onnx"
    names = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    return module, images, path, names


@pytest.mark.parametrize("front", ["attach", "onnx"])
def test_prelu_matches_autograd(setup, front):
    module, images, path, names = setup
    probe = zfprobe.attach(module, images[:1]) if front == "attach" else zfprobe.load(path)
    assert "PRelu" in {n.op_type for n in probe.graph.nodes}
    layer = "c3" if front == "attach" else names["c3"]
    acts = probe.activations(images, layer)
    seeds, seed_image = oracle.unit_seeds(acts, [0, 3, 5], [0, 1, 1])
    want = oracle.oracle_from_module(module, images, "c3", seeds, seed_image, rule=oracle.RULES)
    onnx_want = oracle.oracle_from_onnx(path, images, names["c3"], seeds, seed_image, rule=oracle.RULES)
    for rule in oracle.RULES:
        got = probe.project(images, layer, seeds, seed_image, rule=rule)
        scale = float(np.abs(want[rule]).max())
        assert float(np.abs(got - want[rule]).max()) <= 1e-4 * scale, (front, rule)
        assert float(np.abs(onnx_want[rule] - want[rule]).max()) <= 1e-4 * scale, rule
    # the rules differ on this net (a test that cannot fail would not tell them apart)
    assert float(np.abs(want["deconvnet"] - want["gradient"]).max()) > 1e-2 * float(np.abs(want["gradient"]).max())
