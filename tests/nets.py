"""Test networks for zfprobe's exactness tests, and the tools to turn them into ONNX files.

Every builder returns an eval-mode ``nn.Module`` with deterministic (seeded) random weights:
He-normal conv / linear weights (so activations neither vanish nor explode with depth), small
random biases, and BatchNorm layers with non-trivial running statistics and affine parameters
(a BN whose running stats are 0 / 1 and gamma / beta are 1 / 0 would hide a wrong BN adjoint).

Rectifiers are written the ways real code writes them -- ``nn.ReLU`` modules, ``F.relu(...,
inplace=True)``, ``nn.ReLU6`` / ``F.relu6`` -- and nothing else (never ``torch.relu`` or
``x.relu()``): the native-module oracle (tests/oracle.py) patches ``torch.nn.functional``'s
rectifiers, which is also what ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.LeakyReLU`` call.

Also here:
- :func:`export_onnx`: TorchScript ONNX export (``dynamo=False``) with an explicit IR version,
  returning a map from friendly layer names (module paths like ``"conv5"``, ``"layer1.0"``) to
  the ONNX tensor names of those layers' outputs.
- :func:`randomize_weights`: give the ONNX model-zoo "light" graphs (whose weights are all
  ``ConstantOfShape(0.02)``) random He-scaled weights as initializers.
- :func:`digit_recognizer`: the real, trained net of digit-recognizer-py 0.1.0.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IR_VERSION = 8  # onnxruntime 1.31 accepts IR <= 13, onnx 1.23 writes 14 by default


# --------------------------------------------------------------------------------------------
# building blocks


class LRN(nn.Module):
    """Local response normalization across channels (AlexNet / ZFNet style).

    Runs ``F.local_response_norm`` in torch (so autograd gives its true gradient), but exports
    as ONE ONNX ``LRN`` node: torch's exporter otherwise decomposes it into Pow / AveragePool /
    If nodes. ``size`` must be odd (onnxruntime rejects even sizes; torch and ONNX also place
    the window differently for even sizes).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        if size % 2 != 1:
            raise ValueError("LRN size must be odd")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return _LRNExport.apply(x, self.size, self.alpha, self.beta, self.k)
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)


class _LRNExport(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


def _init_(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic He-normal weights, small biases, non-trivial BatchNorm state; eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                fan_in = w[0].numel()
                w.copy_(randn(*w.shape) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(randn(*m.bias.shape) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + rand(c))            # gamma in [0.5, 1.5)
                m.bias.copy_(randn(c) * 0.2)             # beta
                m.running_mean.copy_(randn(c) * 0.2)
                m.running_var.copy_(0.5 + 1.5 * rand(c))  # var in [0.5, 2)
    return module.eval()


def _conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


# --------------------------------------------------------------------------------------------
# ZFNet (PAPER.md section 9)


class ZFNet(nn.Module):
    """Zeiler & Fergus 2014, Fig. 3. ``width`` scales every channel count, ``fc`` the FC width.

    Spatial sizes for a 224 input: conv1 (7x7 s2 p1) 110 -> pool1 (3x3 s2 p1) 55 -> conv2
    (5x5 s2) 26 -> pool2 (3x3 s2 p1) 13 -> conv3..5 (3x3 p1) 13 -> pool5 (3x3 s2) 6 -> FC.
    The max-pooling windows overlap (3x3, stride 2): gradients from two windows add up.
    """

    def __init__(self, width: float = 1.0, fc: int = 4096, num_classes: int = 1000,
                 in_size: int = 224, lrn_alpha: float = 1e-4, lrn_k: float = 1.0, torch_lrn: bool = False):
        super().__init__()
        # torch_lrn: torch's own nn.LocalResponseNorm, which the exporter decomposes into a chain
        # (Mul, 5-D Reshape, Pad, AveragePool, Div, ...) that zfprobe fuses back into one LRN.
        norm = (lambda: nn.LocalResponseNorm(5, alpha=lrn_alpha, beta=0.75, k=lrn_k)) if torch_lrn else \
            (lambda: LRN(5, alpha=lrn_alpha, beta=0.75, k=lrn_k))
        c1, c2, c3, c4, c5 = (max(4, int(round(c * width))) for c in (96, 256, 384, 384, 256))
        self.conv1 = nn.Conv2d(3, c1, 7, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.norm1 = norm()
        self.conv2 = nn.Conv2d(c1, c2, 5, stride=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.norm2 = norm()
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        self.relu5 = nn.ReLU()
        self.pool5 = nn.MaxPool2d(3, stride=2)
        self.flatten = nn.Flatten()
        with torch.no_grad():
            n = self._features(torch.zeros(1, 3, in_size, in_size)).shape[1]
        self.fc6 = nn.Linear(n, fc)
        self.relu6 = nn.ReLU()
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(fc, fc)
        self.relu7 = nn.ReLU()
        self.drop7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(fc, num_classes)

    def _features(self, x):
        x = self.norm1(self.pool1(self.relu1(self.conv1(x))))
        x = self.norm2(self.pool2(self.relu2(self.conv2(x))))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        x = self.pool5(self.relu5(self.conv5(x)))
        return self.flatten(x)

    def forward(self, x):
        x = self._features(x)
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        return self.fc8(x)


def zfnet(seed: int = 0) -> nn.Module:
    """The full ZFNet: 224x224x3 input, 96-256-384-384-256 channels, FC 4096-4096-1000."""
    return _init_(ZFNet(), seed)


def zfnet_small(seed: int = 1) -> nn.Module:
    """ZFNet's topology at 64x64 input and 1/8 the channels (12-32-48-48-32), FC 128-128-10.

    64 -> conv1 30 -> pool1 15 -> conv2 6 -> pool2 3 -> conv3..5 3 -> pool5 1. The LRN here is
    strong (alpha 0.5, k 2) so that its gradient visibly matters in the tests.
    """
    return _init_(ZFNet(width=0.125, fc=128, num_classes=10, in_size=64,
                        lrn_alpha=0.5, lrn_k=2.0), seed)


def zfnet_torch_lrn(seed: int = 0) -> nn.Module:
    """:func:`zfnet` with torch's ``nn.LocalResponseNorm`` (the decomposed export)."""
    return _init_(ZFNet(torch_lrn=True), seed)


def zfnet_small_torch_lrn(seed: int = 1) -> nn.Module:
    """:func:`zfnet_small` with torch's ``nn.LocalResponseNorm`` (alpha 0.5, k 2)."""
    return _init_(ZFNet(width=0.125, fc=128, num_classes=10, in_size=64, lrn_alpha=0.5, lrn_k=2.0,
                        torch_lrn=True), seed)


ZFNET_LAYERS = ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
                "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
                "fc6", "relu6", "fc7", "relu7", "fc8"]


# --------------------------------------------------------------------------------------------
# ResNet-style


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = out + identity          # residual: x is used twice, gradients add
        return F.relu(out, inplace=True)


class ResNetBN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_bn(seed: int = 2) -> nn.Module:
    """ResNet-18-like, 64x64x3 input: stem conv7 s2 + BN + ReLU + maxpool (64->32->16), two
    basic blocks at 16 channels, a downsampling block (1x1 conv + BN shortcut) to 32 channels
    at 8x8 and one more block, global average pool, FC 10. Rectifiers: ``nn.ReLU(inplace)``
    in the stem, ``F.relu(..., inplace=True)`` in the blocks."""
    return _init_(ResNetBN(), seed)


# --------------------------------------------------------------------------------------------
# DenseNet-style


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.pool(self.conv(F.relu(self.bn(x))))


class DenseNetSmall(nn.Module):
    def __init__(self, growth=8, num_classes=10):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        c = 16
        self.block1 = nn.Sequential(*[DenseLayer(c + i * growth, growth) for i in range(3)])
        c += 3 * growth                                   # 40
        self.trans1 = Transition(c, c // 2)
        c //= 2                                           # 20
        self.block2 = nn.Sequential(*[DenseLayer(c + i * growth, growth) for i in range(3)])
        c += 3 * growth                                   # 44
        self.bn_final = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.block2(self.trans1(self.block1(self.conv0(x))))
        x = F.relu(self.bn_final(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def densenet_small(seed: int = 3) -> nn.Module:
    """DenseNet-BC-like, 32x32x3 input: conv 16, dense block (3 layers, growth 8: BN-ReLU-1x1
    conv-BN-ReLU-3x3 conv, torch.cat), transition (BN-ReLU-1x1 conv-avgpool 2x2), dense block,
    BN-ReLU, global average pool, FC 10. All rectifiers are functional ``F.relu``."""
    return _init_(DenseNetSmall(), seed)


# --------------------------------------------------------------------------------------------
# MobileNetV2-style


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = _conv_bn(cin, hidden, 1)
        self.act1 = nn.ReLU6(inplace=True)
        self.dw = _conv_bn(hidden, hidden, 3, stride, groups=hidden)   # depthwise
        self.project = _conv_bn(hidden, cout, 1)                       # linear bottleneck

    def forward(self, x):
        out = self.act1(self.expand(x))
        out = F.relu6(self.dw(out))
        out = self.project(out)
        return x + out if self.use_res else out


class MobileNetSmall(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2)
        self.stem_act = nn.ReLU6()
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            InvertedResidual(24, 32, 2, 4),
            InvertedResidual(32, 32, 1, 4),
        )
        self.head = _conv_bn(32, 64, 1)
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem_act(self.stem(x))
        x = self.blocks(x)
        x = self.head_act(self.head(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def mobilenet_small(seed: int = 4) -> nn.Module:
    """MobileNetV2-like, 64x64x3 input: stem conv3 s2 + BN + ReLU6, five inverted residual
    blocks (1x1 expand + BN + ReLU6, depthwise 3x3 (groups = channels) + BN + ReLU6,
    1x1 linear projection + BN, residual add when shapes allow), 1x1 head + ReLU6, global
    average pool, FC 10. ReLU6 appears as ``nn.ReLU6`` and as ``F.relu6``; it exports to
    ONNX as ``Clip(min=0, max=6)``."""
    return _init_(MobileNetSmall(), seed)


# --------------------------------------------------------------------------------------------
# digit-recognizer-py 0.1.0 (real weights)


class DigitCNN(nn.Module):
    """Exactly ``digit_recognizer.model.CNN`` (state-dict keys conv_layers.{0,3,6},
    fc_layers.{0,2}): 28x28x1 -> [conv3x3 p1, ReLU, maxpool 2] x3 (32/64/128; 28->14->7->3)
    -> flatten 1152 -> FC 256 -> ReLU -> FC 10. Its input is ``(x/255 - 0.1307) / 0.3081``."""

    def __init__(self):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        x = self.conv_layers(x)
        x = x.view(x.size(0), -1)
        return self.fc_layers(x)


def digit_recognizer(pth: str | Path | None = None) -> nn.Module:
    """The trained digit-recognizer-py 0.1.0 MNIST net with its real weights (strict load)."""
    if pth is None:
        from assets import digit_recognizer_pth

        pth = digit_recognizer_pth()
    state = torch.load(str(pth), map_location="cpu", weights_only=True)
    net = DigitCNN()
    net.load_state_dict(state, strict=True)
    return net.eval()


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# --------------------------------------------------------------------------------------------
# ONNX export


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | Path,
                opset: int = 17) -> dict[str, str]:
    """Export ``module`` (TorchScript exporter, ``dynamo=False``) to ``path`` with input name
    ``"input"``, a dynamic batch axis and IR version :data:`IR_VERSION`.

    Returns a dict from friendly layer names to ONNX tensor names. torch names nodes by module
    scope, e.g. ``/layer1/layer1.0/conv1/Conv`` or (older exporters) ``/layer1/0/conv1/Conv``,
    and their outputs ``<node>_output_0``. For each module path ``p`` (``"conv5"``,
    ``"layer1.0"``, ``"blocks.2.dw.1"``) the map holds the output of the LAST node created in
    that module's scope (nested scopes included) -- the module's output, when the module ends
    with an op (not with an identity like Dropout / Flatten of a flat tensor); for each node
    also ``"<p>.<Op>"`` (``"layer1.0.Relu_1"``, ``"blocks.0.Add"``) for functional ops.
    """
    import onnx

    import warnings

    path = Path(path)
    module = module.eval()
    # the TorchScript exporter is deprecated and chatty (constant folding in PRESERVE mode,
    # tracer warnings); none of it applies to an eval-mode module
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=True,
            # PRESERVE (with the module in eval mode) exports inference-mode BatchNormalization
            # nodes; the default (EVAL) would fold every BN into the preceding conv's weights,
            # and zfprobe's BN adjoint would never be exercised.
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    model = onnx.load(str(path))
    model.ir_version = IR_VERSION
    onnx.save(model, str(path))

    module_paths = {name for name, _ in module.named_modules() if name}
    friendly: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Constant" or not node.name.startswith("/"):
            continue
        parts = node.name.strip("/").split("/")
        scope, op = parts[:-1], parts[-1]
        mpath = _module_path(scope, module_paths)
        out = node.output[0]
        if mpath:
            friendly[f"{mpath}.{op}"] = out
            # every enclosing module path: the last node in its scope is its output
            segs = mpath.split(".")
            for i in range(1, len(segs) + 1):
                p = ".".join(segs[:i])
                if p in module_paths:
                    friendly[p] = out
        else:
            friendly[op] = out
    return friendly


def _module_path(scope: list[str], module_paths: set[str]) -> str:
    """``["layer1", "layer1.0", "conv1"]`` or ``["layer1", "0", "conv1"]`` -> ``"layer1.0.conv1"``."""
    path = ""
    for seg in scope:
        if seg in module_paths and (not path or seg.startswith(path + ".")):
            path = seg
        else:
            cand = f"{path}.{seg}" if path else seg
            path = cand
    return path


def onnx_output_of(model, tensor: str):
    """The ONNX node that produces ``tensor`` (or None)."""
    for node in model.graph.node:
        if tensor in node.output:
            return node
    return None


# --------------------------------------------------------------------------------------------
# ONNX model-zoo "light" graphs: random weights


def randomize_weights(onnx_path: str | Path, out_path: str | Path, seed: int = 0) -> dict:
    """Give a model-zoo "light" graph random weights and save it with IR :data:`IR_VERSION`.

    In these Caffe2 exports every conv / gemm weight and bias (and most BN parameters) is
    ``ConstantOfShape(<shape initializer>, value=0.02)``; the rest are initializers with the
    trained values of some BN layers, meaningless beside random convs. Every such parameter is
    replaced by a random initializer of the same name, by role (found from its consumer, through
    Reshape / Unsqueeze):

    - Conv / Gemm weight: He-normal, std sqrt(2 / fan_in); their bias: N(0, 0.1^2);
    - BatchNormalization scale U[0.5, 1.5), bias N(0, 0.2^2), mean N(0, 0.2^2), var U[0.5, 2);
    - the Caffe2 affine after a BN (``Mul(Unsqueeze(s))`` / ``Add(Unsqueeze(b))``): as BN scale /
      bias.

    Graph inputs that are initializers or unused are dropped (the data input stays, with its
    fixed shape); the opset (9) is kept. Shape initializers (int64) are kept. Raises if a float
    parameter has a role not listed above, so nothing is silently left at 0.02.

    Returns ``{"path": out_path, "input_name": ..., "input_shape": (1, 3, 224, 224)}``.
    """
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[tuple]] = defaultdict(list)
    for node in g.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))

    def const_value(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def role(name):
        """(op_type, input index, node, reshape_target or None) of the final consumer."""
        target = None
        seen = 0
        while True:
            cs = consumers.get(name, [])
            if not cs:
                return None
            kinds = {(n.op_type, i) for n, i in cs}
            if len(kinds) != 1:
                raise ValueError(f"parameter {name!r} has mixed consumers {kinds}")
            node, i = cs[0]
            if node.op_type in ("Reshape", "Unsqueeze") and i == 0:
                if node.op_type == "Reshape":
                    target = const_value(node.input[1])
                name = node.output[0]
                seen += 1
                if seen > 4:
                    raise ValueError("too deep")
                continue
            return node.op_type, i, node, target

    def attr(node, key, default):
        for a in node.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    def make(name, shape):
        r = role(name)
        if r is None:
            return None
        op, i, node, target = r
        n = int(np.prod(shape))
        if op == "Conv" and i == 1:
            fan_in = int(np.prod(shape[1:]))
            val = rng.standard_normal(n, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        elif op == "Gemm" and i == 1:
            wshape = tuple(int(s) for s in (target if target is not None else shape))
            fan_in = wshape[1] if attr(node, "transB", 0) else wshape[0]
            val = rng.standard_normal(n, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        elif (op in ("Conv", "Gemm") and i == 2):
            val = rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)
        elif op == "BatchNormalization" or op in ("Mul", "Add"):
            k = {("BatchNormalization", 1): "scale", ("BatchNormalization", 2): "bias",
                 ("BatchNormalization", 3): "mean", ("BatchNormalization", 4): "var",
                 ("Mul", 1): "scale", ("Add", 1): "bias"}.get((op, i))
            if k is None:
                raise ValueError(f"unexpected role {op}[{i}] for {name!r}")
            if k == "scale":
                val = (0.5 + rng.random(n, dtype=np.float32)).astype(np.float32)
            elif k == "var":
                val = (0.5 + 1.5 * rng.random(n, dtype=np.float32)).astype(np.float32)
            else:
                val = rng.standard_normal(n, dtype=np.float32) * np.float32(0.2)
        else:
            raise ValueError(f"unexpected role {op}[{i}] for parameter {name!r}")
        return numpy_helper.from_array(val.reshape(shape).astype(np.float32), name)

    new_nodes = []
    new_inits = {}
    for node in g.node:
        if node.op_type == "ConstantOfShape":
            shape = tuple(int(s) for s in const_value(node.input[0]))
            t = make(node.output[0], shape)
            if t is None:
                continue  # unused
            new_inits[t.name] = t
            continue
        new_nodes.append(node)
    for t in g.initializer:
        if t.name in new_inits or t.data_type != onnx.TensorProto.FLOAT:
            continue
        if not consumers.get(t.name):
            continue
        r = role(t.name)
        if r is not None and r[0] in ("Conv", "Gemm", "BatchNormalization", "Mul", "Add"):
            new_inits[t.name] = make(t.name, tuple(t.dims))

    used = {name for node in new_nodes for name in node.input}
    kept = [t for t in g.initializer if t.name not in new_inits and t.name in used]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(kept + [new_inits[k] for k in sorted(new_inits) if k in used])
    init_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names and i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    model.ir_version = IR_VERSION
    if model.ByteSize() < 100_000_000:     # the checker takes seconds on vgg19's 575 MB
        onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    (inp,) = g.input
    return {"path": Path(out_path), "input_name": inp.name,
            "input_shape": tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)}


def light_input_shape(onnx_path: str | Path) -> tuple[int, ...]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    (inp,) = [i for i in m.graph.input if i.name not in inits]
    return tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)


def onnx_input_name(onnx_path: str | Path) -> str:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits][0]


# --------------------------------------------------------------------------------------------
# builders by name (used by conftest / tests)

TORCH_NETS = {
    "zfnet_small": (zfnet_small, (3, 64, 64)),
    "zfnet": (zfnet, (3, 224, 224)),
    "resnet_bn": (resnet_bn, (3, 64, 64)),
    "densenet_small": (densenet_small, (3, 32, 32)),
    "mobilenet_small": (mobilenet_small, (3, 64, 64)),
    "digit_recognizer": (digit_recognizer, (1, 28, 28)),
}

LIGHT_NAMES = ["bvlc_alexnet", "zfnet512", "vgg19", "resnet50", "squeezenet",
               "inception_v1", "inception_v2", "densenet121", "shufflenet"]
