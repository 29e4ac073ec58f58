"""Border units (docs/methods.md, "Units that project"): by default the strongest unit of a channel
is chosen among the units with >= 50% of their receptive field inside the image; ``--position
any`` restores the plain strongest. The receptive fields here are worked out by hand for a
conv3(pad 1) - conv3(stride 2, pad 1) - conv3(pad 1) net on a 16 x 16 input: unit y covers input
rows 2y - 4 .. 2y + 4 (9 pixels)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import zfprobe

sys.path.insert(0, str(Path(__file__).parents[1]))
import nets  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
        self.c3 = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        return self.c3(self.a2(self.c2(self.a1(self.c1(x)))))


def hand_fractions() -> np.ndarray:
    per_axis = np.array([(min(2 * y + 4, 15) - max(2 * y - 4, 0) + 1) / 9 for y in range(8)])
    return np.outer(per_axis, per_axis)


def test_inside_fractions_by_hand():
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.engine.seeds import inside_fractions

    probe = zfprobe.attach(nets._init_(Net(), 3), np.zeros((1, 3, 16, 16), np.float32))
    rf = receptive_field(probe.graph, probe.resolve("c3"), "NCHW")
    np.testing.assert_allclose(inside_fractions(rf, (8, 8)), hand_fractions(), atol=1e-12)
    assert hand_fractions()[0, 0] < 0.5 <= hand_fractions()[0, 3]  # corners out, edges in


def test_strongest_inside_by_default_anywhere_on_request():
    module = nets._init_(Net(), 3)
    x = np.random.RandomState(4).randn(1, 3, 16, 16).astype(np.float32)
    x[..., :3, :3] += 6.0  # a bright corner: border units win the plain ranking
    probe = zfprobe.attach(module, x)
    acts = probe.activations(x, "c3")[0]
    mask = hand_fractions() >= 0.5
    channels = list(range(12))
    inside = probe.visualize(x, "c3", channels=channels)
    anywhere = probe.visualize(x, "c3", channels=channels, positions="any")
    moved = 0
    for c, a, b in zip(channels, inside.seeds, anywhere.seeds):
        want_in = np.unravel_index(int(np.argmax(np.where(mask, acts[c], -np.inf))), (8, 8))
        want_any = np.unravel_index(int(np.argmax(acts[c])), (8, 8))
        assert a.position == tuple(map(int, want_in)) and b.position == tuple(map(int, want_any))
        assert mask[a.position]
        moved += a.position != b.position
    assert moved >= 1
    assert inside.manifest()["positions"]["rule"] == "inside"
    json.dumps(inside.manifest())  # the manifest stays JSON
