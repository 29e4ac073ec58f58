"""torch.fx converters for the activations the model-zoo corpus met without one (SELU, CELU,
ELU, Softplus, PReLU; as modules and as functions): captured natively (``capture="fx"``, no
fallback), the forward equals the module's, and the projections equal the independent autograd
oracle (tests/torch_nets_extra.py, rule-aware at every ReLU) under the three rules. PReLU is a
rectifier to zfprobe (its rules treat it like a leaky ReLU), which the oracle does not know:
there the gradient rule is checked against autograd and every rule against the ONNX route
(torch's own exporter, which writes PReLU's slope as ONNX broadcasts it).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_nets_extra as extra
import zfprobe

RULES = ("deconvnet", "gradient", "guided")
SHAPE = (3, 12, 12)


class ActNet(nn.Module):
    """conv -> the activation -> conv -> ReLU -> conv ("out")."""

    def __init__(self, act):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = act
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.out = nn.Conv2d(6, 4, 3, stride=2)

    def forward(self, x):
        return self.out(self.relu(self.conv2(self.act(self.conv1(x)))))


class Fn(nn.Module):
    """A functional activation (what a forward writes without a module)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class FnPReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.05, 0.5, 6))

    def forward(self, x):
        return F.prelu(x, self.weight)


ACTS = {
    "SELU": lambda: nn.SELU(),
    "F.selu": lambda: Fn(F.selu),
    "CELU": lambda: nn.CELU(alpha=0.7),
    "F.elu": lambda: Fn(lambda x: F.elu(x, alpha=0.5)),
    "Softplus": lambda: nn.Softplus(),
    "Softplus(beta=2)": lambda: nn.Softplus(beta=2.0),
    "F.softplus": lambda: Fn(lambda x: F.softplus(x, beta=0.5, threshold=30.0)),
}
PRELUS = {
    "PReLU(6)": lambda: nn.PReLU(6, init=0.2),
    "PReLU()": lambda: nn.PReLU(),
    "F.prelu": FnPReLU,
}


def _net(act) -> nn.Module:
    torch.manual_seed(0)
    module = ActNet(act()).eval()
    if isinstance(module.act, nn.PReLU) and module.act.num_parameters > 1:
        with torch.no_grad():  # a different slope per channel
            module.act.weight.copy_(torch.linspace(0.05, 0.5, module.act.num_parameters))
    return module


def _check(module):
    images = np.random.default_rng(3).standard_normal((2,) + SHAPE).astype(np.float32)
    probe = zfprobe.attach(module, SHAPE, capture="fx")
    with torch.no_grad():
        want = module(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(probe.activations(images, "out"), want, rtol=1e-5, atol=1e-5)
    acts = probe.activations(images, "out")
    seeds = np.zeros((2,) + acts.shape[1:], np.float32)
    seeds[0, 1, 2, 2] = 1.0
    seeds[1, 3, 4, 1] = 1.0
    return probe, images, seeds


def _close(got, want):
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_converters_equal_the_autograd_oracle(name):
    module = _net(ACTS[name])
    probe, images, seeds = _check(module)
    for rule in RULES:
        _close(probe.project(images, "out", seeds, np.array([0, 1]), rule=rule),
               extra.rule_projection(module, images, "out", seeds, np.array([0, 1]), rule))


@pytest.mark.parametrize("name", list(PRELUS))
def test_prelu_converters_equal_autograd_and_the_onnx_route(name):
    module = _net(PRELUS[name])
    probe, images, seeds = _check(module)
    onnx_probe = zfprobe.attach(module, SHAPE, capture="onnx")
    _close(probe.project(images, "out", seeds, np.array([0, 1]), rule="gradient"),
           extra.rule_projection(module, images, "out", seeds, np.array([0, 1]), "gradient"))
    for rule in RULES:
        _close(probe.project(images, "out", seeds, np.array([0, 1]), rule=rule),
               onnx_probe.project(images, "out", seeds, np.array([0, 1]), rule=rule))


def test_prelu_slope_stays_live():
    """The per-channel slope is reshaped for broadcasting, but still read from the parameter."""
    module = _net(PRELUS["PReLU(6)"])
    probe, images, _ = _check(module)
    with torch.no_grad():
        module.act.weight.mul_(-3.0)
        want = module(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(probe.activations(images, "out"), want, rtol=1e-5, atol=1e-5)


def test_softplus_with_a_low_threshold_is_refused():
    from zfprobe.adapters.frontends.torch_fx import CaptureError

    with pytest.raises(CaptureError, match="threshold"):
        zfprobe.attach(_net(lambda: nn.Softplus(threshold=2.0)), SHAPE, capture="fx")
