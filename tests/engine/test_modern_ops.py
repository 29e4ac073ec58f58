"""Modern-CNN ops (issue 9, part 2) against the independent oracle: torch autograd with
rule-aware rectifiers (tests/oracle.py) for the ONNX and torch front-ends, and
``tf.GradientTape`` with rule-aware rectifiers (tests/adapters/test_keras_adapter.py) for Keras.

Each op sits in a small net ``Conv -> ReLU -> op -> Conv`` so that the three rules differ (at the
ReLU) while the op itself is reversed by its local derivative under every rule. Normalization
layers get random affine parameters. Then a ConvNeXt-style net (4x4 stem, 7x7 depthwise convs,
channels-last LayerNorm, Linear-GELU-Linear, layer scale, residuals) from ONNX and attached live.
Tolerance: max |zfprobe - oracle| <= 1e-4 * max |oracle| per seed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import nets
import oracle
from conftest import natural_images
from test_fusion import assert_close, seeds_for

import zfprobe

RULES = oracle.RULES

TORCH_OPS = {
    "gelu": (lambda c: nn.GELU(), "Gelu"),
    "gelu_tanh": (lambda c: nn.GELU(approximate="tanh"), "Gelu"),
    "silu": (lambda c: nn.SiLU(), "Swish"),
    "mish": (lambda c: nn.Mish(), "Mish"),
    "hardswish": (lambda c: nn.Hardswish(), "HardSwish"),
    "elu": (lambda c: nn.ELU(0.7), "Elu"),
    "selu": (lambda c: nn.SELU(), "Selu"),
    "celu": (lambda c: nn.CELU(1.3), "Celu"),
    "softplus": (lambda c: nn.Softplus(), "Softplus"),
    "leaky_relu": (lambda c: nn.LeakyReLU(0.1), "LeakyRelu"),
    "layernorm": (lambda c: nn.LayerNorm([c, 16, 16]), "LayerNormalization"),
    # the ONNX exporter writes GroupNorm as InstanceNormalization between reshapes; torch.fx
    # capture keeps it one GroupNormalization
    "groupnorm": (lambda c: nn.GroupNorm(2, c), ("InstanceNormalization", "GroupNormalization")),
    "instancenorm": (lambda c: nn.InstanceNorm2d(c, affine=True), "InstanceNormalization"),
}


def _randomize_affine(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))


def single_op_net(name: str) -> nn.Module:
    torch.manual_seed(sum(map(ord, name)))
    act = TORCH_OPS[name][0](8)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), act, nn.Conv2d(8, 6, 3, padding=1)).eval()
    _randomize_affine(net, 7)
    return net


@pytest.mark.parametrize("name", sorted(TORCH_OPS))
def test_single_op_matches_autograd(name, tmp_path):
    module = single_op_net(name)
    images = natural_images(2, 16, 16)
    path = tmp_path / f"{name}.onnx"
    layers = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    acts = oracle.module_activations(module, images, "3")
    seeds, seed_image = seeds_for(acts)
    want = oracle.oracle_from_module(module, images, "3", seeds, seed_image, rule=RULES, min_rectifiers=1)
    for front, probe, layer in (("onnx", zfprobe.load(str(path)), layers["3"]),
                                ("torch", zfprobe.attach(module, (3, 16, 16)), "3")):
        ops = [n.op_type for n in probe.graph.nodes]
        expected = TORCH_OPS[name][1]
        assert any(op in ops for op in ((expected,) if isinstance(expected, str) else expected)), (front, ops)
        got_acts = probe.activations(images, layer)
        assert np.abs(got_acts - acts).max() <= 1e-5 * np.abs(acts).max(), front
        for rule in RULES:
            got = probe.project(images, layer, seeds, seed_image, rule=rule)
            assert_close(got, want[rule], f"{name} {front} {rule}")


# --------------------------------------------------------------------------------------------
# ConvNeXt-style


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm over channels of an NCHW map: permute, LayerNorm(C), permute back."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtSmall(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), ChannelsFirstLayerNorm(16))
        self.stage1 = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.down = nn.Sequential(ChannelsFirstLayerNorm(16), nn.Conv2d(16, 32, 2, stride=2))
        self.stage2 = ConvNeXtBlock(32)
        self.norm = nn.LayerNorm(32, eps=1e-6)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((-2, -1))))


def convnext_small(seed: int = 11) -> nn.Module:
    torch.manual_seed(seed)
    net = ConvNeXtSmall().eval()
    _randomize_affine(net, seed)
    return net


@pytest.fixture(scope="module")
def convnext(tmp_path_factory):
    module = convnext_small()
    images = natural_images(2, 64, 64)
    path = tmp_path_factory.mktemp("convnext") / "convnext.onnx"
    layers = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    return module, images, layers, {"onnx": zfprobe.load(str(path)), "torch": zfprobe.attach(module, (3, 64, 64))}


@pytest.mark.parametrize("front", ["onnx", "torch"])
@pytest.mark.parametrize("layer", ["stage1", "stage2", "head"])
def test_convnext_matches_autograd(convnext, front, layer):
    module, images, layers, probes = convnext
    probe = probes[front]
    ops = {n.op_type for n in probe.graph.nodes}
    assert {"LayerNormalization", "Gelu"} <= ops, ops
    tensor = layers[layer] if front == "onnx" else layer
    acts = oracle.module_activations(module, images, layer)
    got_acts = probe.activations(images, tensor)
    assert np.abs(got_acts - acts).max() <= 1e-5 * np.abs(acts).max()
    if acts.ndim == 2:  # the logits: one neuron seed per image, and the whole layer
        seeds = np.zeros((3, acts.shape[1]), np.float32)
        seeds[0, int(np.argmax(acts[1]))] = 1.0
        seeds[1, int(np.argmax(acts[0]))] = 1.0
        seeds[2] = acts[0]
        seed_image = np.array([1, 0, 0])
    else:
        seeds, seed_image = seeds_for(acts)
    want = oracle.oracle_from_module(module, images, layer, seeds, seed_image, rule=RULES)
    for rule in RULES:
        got = probe.project(images, tensor, seeds, seed_image, rule=rule)
        assert_close(got, want[rule], f"convnext {layer} {front} {rule}")


# --------------------------------------------------------------------------------------------
# Keras


def test_keras_modern_layers_match_tf_oracle():
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from test_keras_adapter import tf_oracle, keras_acts

    L = keras.layers
    keras.utils.set_random_seed(5)
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Activation("gelu", name="gelu")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Conv2D(8, 3, padding="same", activation="swish", name="c2")(x)
    x = L.GroupNormalization(groups=2, name="gn")(x)
    x = L.Activation("mish", name="mish")(x)
    x = L.ELU(name="elu")(x)
    x = L.PReLU(name="prelu")(x)
    x = L.Activation("selu", name="selu")(x)
    x = L.Activation("softplus", name="softplus")(x)
    out = L.Conv2D(6, 3, padding="same", name="out")(x)
    model = keras.Model(inp, out)
    for layer in model.layers:  # non-trivial affine parameters and slopes
        for v in layer.weights:
            if v.name in ("gamma", "beta", "alpha"):
                v.assign(np.random.default_rng(len(v.name)).uniform(0.3, 1.2, v.shape).astype(np.float32))
    images = np.transpose(natural_images(2, 16, 16), (0, 2, 3, 1)).copy()
    probe = zfprobe.attach(model)
    ops = {n.op_type for n in probe.graph.nodes}
    assert {"Gelu", "LayerNormalization", "Swish", "GroupNormalization", "Mish", "Elu", "PRelu", "Selu",
            "Softplus"} <= ops, ops
    acts = keras_acts(model, "out", images)
    assert np.abs(probe.activations(images, "out") - acts).max() <= 1e-4 * np.abs(acts).max()
    seeds, seed_image = seeds_for(acts)
    prelu = model.get_layer("prelu")
    for rule in RULES:
        got = probe.project(images, "out", seeds, seed_image, rule=rule)
        object.__setattr__(prelu, "call", _rule_prelu(prelu.alpha, rule))
        try:
            want = tf_oracle(model, "out", images, seeds, seed_image, rule)
        finally:
            object.__delattr__(prelu, "call")
        assert_close(got, want, f"keras {rule}")


def _rule_prelu(alpha, rule: str):
    """PReLU as a leaky rectifier (docs/methods.md): deconvnet prelu(g), gradient g * slope,
    guided both -- the oracle's own TensorFlow version."""
    import tensorflow as tf

    a = tf.constant(np.asarray(alpha.numpy()))

    @tf.custom_gradient
    def prelu(x):
        y = tf.where(x > 0, x, a * x)

        def grad(g):
            slope = tf.where(x > 0, tf.ones_like(x), a * tf.ones_like(x))
            leaky = tf.where(g > 0, g, a * g)
            return {"deconvnet": leaky, "gradient": g * slope, "guided": leaky * slope}[rule]

        return y, grad

    return lambda x: prelu(x)


@pytest.mark.parametrize("front", ["onnx", "torch"])
def test_convnext_every_layer_passable(convnext, front):
    """`zfprobe layers` shows every layer of the ConvNeXt-style net as passable."""
    layers = convnext[3][front].layers()
    assert len(layers) > 30
    assert [(l.name, l.op_type, l.blocker) for l in layers if not l.invertible] == []


@pytest.mark.slow
def test_tf2onnx_export_of_keras_activations(tmp_path):
    """tf2onnx's forms of swish, mish, hard-swish (x * Clip(x + 3, 0, 6) * 1/6), its LayerNorm
    (moments form, left unfused) and a tanh-GELU split by Transposes (left unfused): the
    pointwise ones are fused, and the whole ONNX file agrees with the onnx2torch oracle."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    tf2onnx = pytest.importorskip("tf2onnx")
    import onnx

    L = keras.layers
    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", activation="swish")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="mish")(x)
    x = L.Conv2D(8, 3, padding="same", activation="hard_swish")(x)
    x = L.LayerNormalization()(x)
    x = L.Conv2D(8, 3, padding="same")(x)
    x = L.Activation(lambda t: keras.activations.gelu(t, approximate=True))(x)
    x = L.Conv2D(4, 3, padding="same")(x)
    model = keras.Model(inp, x)
    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    proto.ir_version = nets.IR_VERSION
    path = tmp_path / "keras_acts.onnx"
    onnx.save(proto, str(path))
    probe = zfprobe.load(str(path))
    assert sorted(probe.graph.metadata["fused"].values()) == ["HardSwish", "Mish", "Swish"]
    layer = [n for n in probe.graph.nodes if n.op_type == "Conv"][-1].outputs[0]
    images = np.transpose(natural_images(2, 16, 16), (0, 2, 3, 1)).copy()
    seeds, seed_image = seeds_for(probe.activations(images, layer))
    want = oracle.oracle_from_onnx(str(path), images, layer, seeds, seed_image, rule=RULES)
    for rule in RULES:
        assert_close(probe.project(images, layer, seeds, seed_image, rule=rule), want[rule], f"tf2onnx {rule}")
