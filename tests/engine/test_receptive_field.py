"""Receptive fields from the graph == bounding boxes of non-zero input gradients (torch autograd).

The reference is independent of zfprobe: a float64 copy of each torch module in which every
parameter is positive (so no ReLU is ever inactive and no gradient cancels), max pooling is
swapped for average pooling of the same window geometry (every window position then gets
gradient, not only the switch), and LRN (pointwise in space) for the identity. For a sample of
units of each layer -- every row along the middle column and every column along the middle
row, which covers all borders -- the bounding box of the pixels with non-zero gradient must equal
zfprobe's box for that unit, computed from the ONNX export of the original module.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import geometric_nets  # noqa: E402  (tests/geometric_nets.py)
import nets  # noqa: E402  (tests/nets.py)
import zfprobe  # noqa: E402
from zfprobe.engine.receptive_field import receptive_field, receptive_fields  # noqa: E402


class Cat(nn.Module):
    def forward(self, a, b):
        return torch.cat([a, b], 1)


class ReflectPad(nn.Module):
    def forward(self, x):
        return F.pad(x, (1, 2, 0, 1), mode="reflect")


class ZeroPad(nn.Module):
    def forward(self, x):
        return F.pad(x, (2, 0, 1, 3))


class DilatedNet(nn.Module):
    """Dilated convs, an inception-style channel concat of two dilations, a ceil-mode padded
    max pool, reflect and zero Pad ops, a strided dilated conv, global pooling and an FC."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=2, dilation=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.branch_a = nn.Conv2d(6, 4, 1)
        self.branch_b = nn.Conv2d(6, 4, 3, padding=4, dilation=4)
        self.cat = Cat()
        self.pad = ReflectPad()
        self.conv3 = nn.Conv2d(8, 6, 3, stride=2, dilation=3)
        self.zpad = ZeroPad()
        self.conv4 = nn.Conv2d(6, 6, 2, stride=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.cat(self.branch_a(x), self.branch_b(x))
        x = self.conv4(self.zpad(self.conv3(self.pad(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


def _reference(module: nn.Module) -> nn.Module:
    ref = copy.deepcopy(module).double().eval()

    def swap(parent):
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode, count_include_pad=False))
            elif isinstance(child, nets.LRN):
                setattr(parent, name, nn.Identity())
            else:
                swap(child)

    swap(ref)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        for p in ref.parameters():
            p.copy_(0.05 + torch.rand(p.shape, generator=gen, dtype=p.dtype))
    return ref


def _module(root: nn.Module, path: str) -> nn.Module:
    m = root
    for part in path.split("."):
        m = getattr(m, part)
    return m


def _gradient_boxes(ref: nn.Module, path: str, in_shape, positions):
    """For each position (y, x) at module ``path``'s output: the bounding box of input pixels with
    non-zero gradient for the units there, ((y0, y1), (x0, x1)). Summed over channels: where a
    channel concat joins branches of different reach, zfprobe reports their union."""
    captured = {}
    handle = _module(ref, path).register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    try:
        x = (0.1 + torch.rand((len(positions),) + tuple(in_shape[1:]), generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64)).requires_grad_(True)
        ref(x)
        out = captured["out"]
        picked = []
        for k, pos in enumerate(positions):
            picked.append(out[(k, slice(None)) + tuple(pos)].sum())
        torch.stack(picked).sum().backward()
    finally:
        handle.remove()
    boxes = []
    for k in range(len(positions)):
        nz = (x.grad[k] != 0).any(dim=0).numpy()
        ys, xs = np.nonzero(nz)
        boxes.append(((int(ys.min()), int(ys.max())), (int(xs.min()), int(xs.max()))) if len(ys) else None)
    return boxes


def _sample_positions(h, w):
    rows = [(i, w // 2) for i in range(h)]
    cols = [(h // 2, j) for j in range(w)]
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    return sorted(set(rows + cols + corners))


CASES = {
    "zfnet": (lambda: nets.zfnet_small(), (1, 3, 64, 64),
              ["conv1", "pool1", "norm1", "conv2", "pool2", "conv3", "conv5", "pool5", "fc6"]),
    "resnet": (lambda: nets.resnet_bn(), (1, 3, 64, 64),
               ["conv1", "maxpool", "layer1.0", "layer2.0.downsample", "layer2.0", "layer2", "avgpool"]),
    "dilated": (lambda: nets._init_(DilatedNet(), 5), (1, 3, 40, 40),
                ["conv1", "pool1", "branch_b", "cat", "pad", "conv3", "zpad", "conv4", "gap", "fc"]),
    # issue 9: ConvTranspose, Resize (bilinear / nearest), Focus slicing, Gather; torch's
    # PixelUnshuffle (exported as a 6-D Reshape / Transpose / Reshape, fused to SpaceToDepth and
    # a channel Gather), reflect Pad and PixelShuffle (DepthToSpace).
    "unet": (lambda: geometric_nets.build("unet"), (1, 3, 32, 40), ["up1", "dec1", "dec2", "up3", "head"]),
    "yolo_focus": (lambda: geometric_nets.build("yolo_focus"), (1, 3, 32, 40), ["focus", "b1", "up", "fuse", "head"]),
    "fpn_pan": (lambda: geometric_nets.build("fpn_pan"), (1, 3, 32, 40), ["up", "s4", "s3", "down3", "down4"]),
    "pixelshuffle_sr": (lambda: geometric_nets.build("pixelshuffle_sr"), (1, 3, 32, 40),
                        ["unshuffle", "body.0", "body.2", "tail", "shuffle"]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    build, shape, layers = CASES[request.param]
    module = build()
    path = tmp_path_factory.mktemp("rf") / f"{request.param}.onnx"
    friendly = nets.export_onnx(module, torch.zeros(shape), path)
    return request.param, module, shape, layers, friendly, zfprobe.load(path)


def test_receptive_field_equals_gradient_box(case):
    name, module, shape, layers, friendly, probe = case
    ref = _reference(module)
    tensors = {layer: friendly[layer] for layer in layers}
    rfs = receptive_fields(probe.graph, list(tensors.values()))
    checked = 0
    for layer, tensor in tensors.items():
        rf = rfs[tensor]
        out_shape = probe.graph.shape(tensor)
        if len(out_shape) == 4:
            positions = _sample_positions(out_shape[2], out_shape[3])
        else:
            positions = [()]
        want = _gradient_boxes(ref, layer, shape, positions)
        got = [rf.box(p) for p in positions]
        bad = [(p, g, w) for p, g, w in zip(positions, got, want) if g != w]
        assert not bad, f"{name}:{layer}: {len(bad)} of {len(positions)} boxes differ, e.g. {bad[:3]}"
        assert rf.exact, f"{name}:{layer} fell back to a conservative receptive field"
        checked += len(positions)
    assert checked > 50


def test_nominal_geometry_zfnet():
    """Textbook values for ZFNet at 224 (conv1 7x7 s2 -> 7, stride 2; conv5: 2 + ... by formula)."""
    module = nets.ZFNet(width=0.05, fc=16, num_classes=4)
    import tempfile
    import os

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "zf.onnx")
        friendly = nets.export_onnx(nets._init_(module, 0), torch.zeros(1, 3, 224, 224), path)
        probe = zfprobe.load(path)
        got = {k: receptive_field(probe.graph, friendly[k]) for k in ("conv1", "pool1", "conv2", "pool2", "conv5", "pool5", "fc6")}
    # r_l = r_{l-1} + (k-1) * j_{l-1}; j_l = j_{l-1} * s
    assert got["conv1"].size == (7, 7) and got["conv1"].stride == (2, 2)
    assert got["pool1"].size == (11, 11) and got["pool1"].stride == (4, 4)
    assert got["conv2"].size == (27, 27) and got["conv2"].stride == (8, 8)
    assert got["pool2"].size == (43, 43) and got["pool2"].stride == (16, 16)
    assert got["conv5"].size == (139, 139) and got["conv5"].stride == (16, 16)
    assert got["pool5"].size == (171, 171) and got["pool5"].stride == (32, 32)
    assert got["fc6"].is_global
    # nominal box of unit i: start + i * jump; conv1 has padding 1 -> starts at -1
    assert got["conv1"].nominal_box((0, 0)) == ((-1, 5), (-1, 5))
    assert got["conv1"].box((0, 0)) == ((0, 5), (0, 5))


def test_layers_command_shows_receptive_fields():
    from click.testing import CliRunner
    from importlib.resources import files

    from zfprobe.cli.main import cli

    model = str(files("zfprobe") / "data" / "mnist_cnn.onnx")
    res = CliRunner().invoke(cli, ["layers", model])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line.split() for line in res.output.splitlines()[1:] if line.strip()}
    assert "RF size" in res.output.splitlines()[0]
    assert lines["pool1"][3:5] == ["6x6", "2x2"]
    assert lines["fc"][3] == "global"
