"""The oracle (tests/oracle.py) checked on its own, without zfprobe.

If these pass, the oracle computes what PAPER.md section 1 defines: the rectifier rules match
the table exactly, the deconvnet of a conv-relu(-maxpool) net equals a hand-written numpy
conv-transpose / unpooling, the "gradient" rule equals plain torch autograd, and the two routes
(native module with patched functionals; ONNX via onnx2torch with swapped modules) agree.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nets
import oracle

RULES = oracle.RULES


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --------------------------------------------------------------------------------------------
# the rectifier table, element by element


X = torch.tensor([-2.0, -0.5, 0.5, 3.0, 7.0, 0.25, -1.0, 5.0])
G = torch.tensor([1.0, -1.0, 2.0, -3.0, 4.0, -0.5, -2.0, 1.5])


def _backward(fn, rule):
    x = X.clone().requires_grad_(True)
    with oracle.rectifier_rule(rule):
        y = fn(x)
        (gx,) = torch.autograd.grad(y, x, G)
    return y.detach().numpy(), gx.numpy()


@pytest.mark.parametrize("rule", RULES)
def test_relu_rule_table(rule):
    y, gx = _backward(oracle.rule_relu, rule)
    x, g = X.numpy(), G.numpy()
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    want = {"gradient": g * (x > 0),
            "deconvnet": np.maximum(g, 0),
            "guided": np.maximum(g, 0) * (x > 0)}[rule]
    np.testing.assert_array_equal(gx, want)


@pytest.mark.parametrize("rule", RULES)
def test_clip_rule_table(rule):
    y, gx = _backward(lambda t: oracle.rule_clip(t, 6.0), rule)
    x, g = X.numpy(), G.numpy()
    np.testing.assert_array_equal(y, np.clip(x, 0, 6))
    inside, below = (x > 0) & (x < 6), x < 6
    want = {"gradient": g * inside,
            "deconvnet": np.maximum(g, 0) * below,
            "guided": np.maximum(g, 0) * inside}[rule]
    np.testing.assert_array_equal(gx, want)


@pytest.mark.parametrize("rule", RULES)
def test_leaky_rule_table(rule):
    a = 0.1
    y, gx = _backward(lambda t: oracle.rule_leaky(t, a), rule)
    x, g = X.numpy(), G.numpy()
    np.testing.assert_allclose(y, np.where(x > 0, x, a * x), rtol=1e-7)
    slope = np.where(x > 0, 1.0, a)
    leaky_g = np.where(g > 0, g, a * g)
    want = {"gradient": g * slope, "deconvnet": leaky_g, "guided": leaky_g * slope}[rule]
    np.testing.assert_allclose(gx, want, rtol=1e-7)


def test_patching_is_scoped():
    before = F.relu
    with oracle.rectifier_rule("deconvnet", patch_functional=True):
        assert F.relu is not before
    assert F.relu is before
    with pytest.raises(RuntimeError):
        oracle.rule_relu(torch.ones(2))       # outside a rule context


# --------------------------------------------------------------------------------------------
# hand-written numpy reference for conv -> relu (-> maxpool)


def np_conv2d(x, w, b, stride, pad):
    """x [C, H, W], w [O, C, k, k] -> [O, Ho, Wo] (cross-correlation, like torch)."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad), np.float64)
    xp[:, pad:pad + h, pad:pad + wd] = x
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((o, ho, wo), np.float64)
    for u in range(k):
        for v in range(k):
            patch = xp[:, u:u + stride * ho:stride, v:v + stride * wo:stride]   # [C, Ho, Wo]
            out += np.einsum("oc,chw->ohw", w[:, :, u, v], patch)
    return out + b[:, None, None]


def np_conv_transpose2d(g, w, stride, pad, in_hw):
    """The adjoint of np_conv2d w.r.t. x: the 'filter' step of the deconvnet (no bias)."""
    o, ho, wo = g.shape
    _, c, k, _ = w.shape
    h, wd = in_hw
    xp = np.zeros((c, h + 2 * pad + k, wd + 2 * pad + k), np.float64)
    for u in range(k):
        for v in range(k):
            xp[:, u:u + stride * ho:stride, v:v + stride * wo:stride] += \
                np.einsum("oc,ohw->chw", w[:, :, u, v], g)
    return xp[:, pad:pad + h, pad:pad + wd]


def np_maxpool_switches(x, k, s):
    """Max pooling (no padding) returning values and flat switch positions (first max wins)."""
    c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    vals = np.zeros((c, ho, wo))
    sw = np.zeros((c, ho, wo), np.int64)
    for i in range(ho):
        for j in range(wo):
            win = x[:, i * s:i * s + k, j * s:j * s + k].reshape(c, -1)
            a = win.argmax(1)
            vals[:, i, j] = win[np.arange(c), a]
            sw[:, i, j] = (i * s + a // k) * w + (j * s + a % k)
    return vals, sw


def np_unpool(g, sw, in_hw):
    c = g.shape[0]
    out = np.zeros((c, in_hw[0] * in_hw[1]))
    for ch in range(c):
        np.add.at(out[ch], sw[ch].ravel(), g[ch].ravel())   # overlapping windows add
    return out.reshape(c, *in_hw)


class ConvReluPool(nn.Module):
    def __init__(self, pool: bool, stride=2, pad=1):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 5, stride=stride, padding=pad)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2) if pool else nn.Identity()

    def forward(self, x):
        return self.pool(self.relu(self.conv(x)))


def _small_case(pool: bool, seed=0):
    torch.manual_seed(seed)
    net = nets._init_(ConvReluPool(pool), seed)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((2, 3, 21, 21)).astype(np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy(images)).numpy()
    seeds = rng.standard_normal((3,) + out.shape[1:]).astype(np.float32)   # signed seeds
    seed_image = np.array([1, 0, 1])
    return net, images, seeds, seed_image


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("pool", [False, True], ids=["conv_relu", "conv_relu_maxpool"])
def test_deconvnet_matches_numpy(rule, pool):
    net, images, seeds, seed_image = _small_case(pool)
    got = oracle.oracle_from_module(net, images, "pool", seeds, seed_image, rule=rule,
                                    min_rectifiers=1)
    w = net.conv.weight.detach().double().numpy()
    b = net.conv.bias.detach().double().numpy()
    for k in range(len(seeds)):
        x = images[seed_image[k]].astype(np.float64)
        pre = np_conv2d(x, w, b, 2, 1)
        g = seeds[k].astype(np.float64)
        if pool:
            post = np.maximum(pre, 0)
            _, sw = np_maxpool_switches(post, 3, 2)
            g = np_unpool(g, sw, post.shape[1:])            # unpool at the switches
        if rule == "gradient":
            g = g * (pre > 0)
        elif rule == "deconvnet":
            g = np.maximum(g, 0)                            # rectify the signal itself
        else:
            g = np.maximum(g, 0) * (pre > 0)
        want = np_conv_transpose2d(g, w, 2, 1, x.shape[1:])  # filter: transposed conv, no bias
        assert np.abs(want).max() > 0
        assert rel_err(got[k], want) < 1e-5, (rule, k)


def test_rule_affects_result():
    net, images, seeds, seed_image = _small_case(True)
    res = oracle.oracle_from_module(net, images, "pool", seeds, seed_image, rule=RULES)
    assert rel_err(res["deconvnet"], res["gradient"]) > 1e-2
    assert rel_err(res["guided"], res["gradient"]) > 1e-2


# --------------------------------------------------------------------------------------------
# gradient rule == plain autograd on the test networks; the rule hooks are really reached

NATIVE = {  # layer, number of rectifiers below it (each must reach the patched functions)
    "zfnet_small": ("relu5", 5),
    "resnet_bn": ("layer2", 1 + 2 * 4),
    "densenet_small": ("block2", 2 * 3 + 1 + 2 * 3),
    "mobilenet_small": ("blocks", 1 + 2 * 5),
}


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_gradient_rule_equals_autograd(name, zoo):
    case = zoo.torch_net(name)
    layer, n_rect = NATIVE[name]
    acts = oracle.module_activations(case.module, case.images, layer)
    seeds, seed_image = oracle.map_seeds(acts, [0, 1, 2], [0, 1, 1])
    want = oracle.plain_gradient(case.module, case.images, layer, seeds, seed_image)
    got = oracle.oracle_from_module(case.module, case.images, layer, seeds, seed_image,
                                    rule="gradient", min_rectifiers=n_rect)
    assert np.abs(want).max() > 0
    assert rel_err(got, want) < 1e-6
    dec = oracle.oracle_from_module(case.module, case.images, layer, seeds, seed_image,
                                    rule="deconvnet")
    assert rel_err(dec, want) > 1e-3      # the deconvnet rule does something here


def test_seeds_do_not_mix(zoo):
    """K seeds in one call == each seed alone (two seeds share image 1)."""
    case = zoo.torch_net("zfnet_small")
    acts = oracle.module_activations(case.module, case.images, "norm2")
    seeds, seed_image = oracle.unit_seeds(acts, [3, 5, 7], [1, 0, 1])
    together = oracle.oracle_from_module(case.module, case.images, "norm2", seeds, seed_image)
    for k in range(3):
        alone = oracle.oracle_from_module(case.module, case.images[seed_image[k]][None], "norm2",
                                          seeds[k:k + 1], None)
        assert rel_err(together[k], alone[0]) < 1e-6


def test_lrn_module_matches_onnx_lrn_semantics():
    """nets.LRN (torch formula) == the ONNX LRN definition, computed in numpy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 5, 5)).astype(np.float32) * 3
    size, alpha, beta, bias = 5, 0.5, 0.75, 2.0
    got = nets.LRN(size, alpha, beta, bias)(torch.from_numpy(x)).numpy()
    sq = np.zeros_like(x, dtype=np.float64)
    c = x.shape[1]
    for i in range(c):
        lo, hi = max(0, i - (size - 1) // 2), min(c - 1, i + size // 2)
        sq[:, i] = (x[:, lo:hi + 1].astype(np.float64) ** 2).sum(1)
    want = x / (bias + alpha / size * sq) ** beta
    assert rel_err(got, want) < 1e-6


# --------------------------------------------------------------------------------------------
# ONNX route (onnx2torch) == native route


ROUTE_LAYERS = {
    "zfnet_small": ["relu1", "norm1", "pool2", "relu5", "fc6"],
    "resnet_bn": ["maxpool", "layer1.1", "layer2"],
    "densenet_small": ["block1.1", "trans1", "bn_final"],
    "mobilenet_small": ["stem_act", "blocks.2", "head_act"],
    "digit_recognizer": ["conv_layers.5", "fc_layers.1"],
}


@pytest.mark.parametrize("name", sorted(ROUTE_LAYERS))
def test_onnx_route_matches_module_route(name, zoo):
    case = zoo.torch_net(name)
    for layer in ROUTE_LAYERS[name]:
        tensor = case.layers[layer]
        acts = oracle.module_activations(case.module, case.images, layer)
        acts_onnx = oracle.onnx_activations(case.onnx_path, case.images, tensor)
        assert rel_err(acts_onnx, acts) < 1e-5, layer
        ch = int(np.argmax(acts[1].reshape(acts.shape[1], -1).max(1)))
        seeds_u, si_u = oracle.unit_seeds(acts, [ch, 0], [1, 0])
        seeds_m, si_m = oracle.map_seeds(acts, [ch], [0])
        seeds, seed_image = np.concatenate([seeds_u, seeds_m]), np.concatenate([si_u, si_m])
        via_mod = oracle.oracle_from_module(case.module, case.images, layer, seeds, seed_image,
                                            rule=RULES)
        via_onnx = oracle.oracle_from_onnx(case.onnx_path, case.images, tensor, seeds,
                                           seed_image, rule=RULES, decisions="torch")
        # decisions from onnxruntime's forward values: the same here (no unit of these small
        # nets sits within float noise of a decision boundary)
        via_ort = oracle.oracle_from_onnx(case.onnx_path, case.images, tensor, seeds,
                                          seed_image, rule=RULES, decisions="onnxruntime")
        for rule in RULES:
            assert np.abs(via_mod[rule]).max() > 0, (layer, rule)
            assert rel_err(via_onnx[rule], via_mod[rule]) < 1e-5, (layer, rule)
            assert rel_err(via_ort[rule], via_mod[rule]) < 1e-5, (layer, rule)


class _Acts(nn.Module):
    """LeakyReLU, Clip(0, 4) (not 6: onnx2torch keeps it as OnnxClip), ReLU6, HardSigmoid."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a1 = nn.LeakyReLU(0.2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.a2 = nn.Hardtanh(0.0, 4.0)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.a3 = nn.ReLU6()
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.a1(self.c1(x))
        x = self.a2(self.c2(x))
        x = self.a3(self.c3(x))
        return self.c4(x) * F.hardsigmoid(x)


def test_onnx_route_swaps_every_rectifier_kind(tmp_path):
    net = nets._init_(_Acts(), 7)
    images = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32) * 2
    path = tmp_path / "acts.onnx"
    layers = nets.export_onnx(net, torch.from_numpy(images[:1]), path)
    o = oracle.onnx_oracle(path, "output")
    kinds = sorted(type(m).__name__ for m in o.gm.modules()
                   if isinstance(m, (oracle.RuleReLU, oracle.RuleClip, oracle.RuleLeaky)))
    assert kinds == ["RuleClip", "RuleClip", "RuleLeaky"], kinds
    seeds = np.random.default_rng(2).standard_normal((3, 8, 12, 12)).astype(np.float32)
    seed_image = np.array([0, 1, 1])
    want = oracle.oracle_from_module(net, images, lambda m, x: m(x), seeds, seed_image,
                                     rule=RULES, min_rectifiers=3)
    got = oracle.oracle_from_onnx(path, images, "output", seeds, seed_image, rule=RULES)
    for rule in RULES:
        assert rel_err(got[rule], want[rule]) < 1e-5, rule
    assert rel_err(want["deconvnet"], want["gradient"]) > 1e-3
    assert "a2" in layers and "a1" in layers


# --------------------------------------------------------------------------------------------
# the ONNX route on third-party graphs: onnx2torch's forward == onnxruntime's


LIGHT_PROBES = {
    "bvlc_alexnet": ["r7", "r17"],
    "zfnet512": ["r6", "r14"],
    "vgg19": ["r9"],
    "resnet50": ["r21", "r76"],
    "squeezenet": ["r24", "r64"],
    "inception_v1": ["r8", "r94"],
    "inception_v2": ["r130"],
    "densenet121": ["r323"],
    "shufflenet": ["r63", "r124"],
}


def _ort_outputs(path, images, input_name, tensors):
    """``tensors`` computed by onnxruntime (on the sub-graph that computes them)."""
    import onnxruntime as ort

    model = oracle.subgraph(path, tensors, for_onnx2torch=False)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dims[0].dim_value == 1:
        runs = [sess.run(tensors, {input_name: images[i:i + 1]}) for i in range(len(images))]
        return [np.concatenate([r[j] for r in runs]) for j in range(len(tensors))]
    return sess.run(tensors, {input_name: images})


@pytest.mark.parametrize("name", sorted(LIGHT_PROBES))
def test_onnx_route_forward_matches_onnxruntime_light(name, zoo):
    import onnxruntime as ort

    case = zoo.light(name)
    # the randomized graph runs whole in onnxruntime (fixed 1x3x224x224 input)
    sess = ort.InferenceSession(str(case.onnx_path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {case.input_name: case.images[:1]})
    assert out.shape[:2] == (1, 1000) and np.isfinite(out).all()
    del sess
    tensors = LIGHT_PROBES[name]
    ref = _ort_outputs(case.onnx_path, case.images, case.input_name, tensors)
    for t, r in zip(tensors, ref):
        got = oracle.onnx_activations(case.onnx_path, case.images, t)
        assert np.abs(r).max() > 0
        assert rel_err(got, r) < 1e-4, t


def test_onnx_route_forward_matches_onnxruntime_rapidocr(zoo):
    case = zoo.rapidocr()
    tensors = ["batch_norm_0.tmp_2", "hardswish_0.tmp_0", "tmp_0", "elementwise_add_6",
               "linear_1.tmp_1"]
    ref = _ort_outputs(case.onnx_path, case.images, case.input_name, tensors)
    for t, r in zip(tensors, ref):
        got = oracle.onnx_activations(case.onnx_path, case.images, t)
        assert rel_err(got, r) < 1e-4, t


def test_light_weights_are_randomized(zoo):
    import onnx

    case = zoo.light("bvlc_alexnet")
    m = onnx.load(str(case.onnx_path))
    assert not [n for n in m.graph.node if n.op_type == "ConstantOfShape"]
    w = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    conv1 = w["conv1_w_0"]
    assert conv1.shape == (96, 3, 11, 11)
    assert abs(conv1.std() - np.sqrt(2 / (3 * 121))) < 0.01
    assert m.ir_version == nets.IR_VERSION


# --------------------------------------------------------------------------------------------
# decisions taken from reference values


def test_reference_decisions_are_followed():
    """A rectifier's mask and a max-pool's switches come from the reference values when given,
    while the values flowing (and so the layer's output) stay torch's own."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, -4.0]]]], requires_grad=True)     # [1, 1, 2, 2]
    ref_relu = torch.tensor([[[[1.0, -1e-9], [3.0, 5.0]]]])                 # flips two masks
    with oracle.rectifier_rule("gradient"):
        oracle._REF["values"] = {"a": ref_relu}
        try:
            y = oracle.rule_relu(x, "a")
        finally:
            oracle._REF["values"] = None
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    np.testing.assert_array_equal(y.detach().numpy().ravel(), [1, 2, 3, 0])
    np.testing.assert_array_equal(g.numpy().ravel(), [1, 0, 1, 1])

    pool = oracle.RefMaxPool2d(nn.MaxPool2d(2, 1), None, "p")
    x = torch.arange(9.0).reshape(1, 1, 3, 3).requires_grad_(True)
    ref = torch.zeros(1, 1, 3, 3)
    ref[0, 0, 1, 1] = 1.0                        # every window's switch: the centre
    oracle._REF["values"] = {"p": ref}
    try:
        y = pool(x)
    finally:
        oracle._REF["values"] = None
    np.testing.assert_array_equal(y.detach().numpy().ravel(), [4, 4, 4, 4])
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    want = np.zeros(9)
    want[4] = 4.0                                # four overlapping windows add at the centre
    np.testing.assert_array_equal(g.numpy().ravel(), want)
    # without reference values it is an ordinary max-pool
    y = pool(x)
    np.testing.assert_array_equal(y.detach().numpy().ravel(), [4, 5, 7, 8])


def test_reference_maxpool_with_padding_matches_torch(zoo):
    """zfnet_small's padded, overlapping pools: switches from onnxruntime == torch's own."""
    case = zoo.torch_net("zfnet_small")
    o = oracle.onnx_oracle(case.onnx_path, case.layers["norm2"])
    assert sum(isinstance(m, oracle.RefMaxPool2d) for m in o.gm.modules()) == 2
    acts = o.ort_activations(case.images)
    seeds, seed_image = oracle.map_seeds(acts, [1, 2], [0, 1])
    a = o.project(case.images, seeds, seed_image, rule=RULES, decisions="onnxruntime")
    b = o.project(case.images, seeds, seed_image, rule=RULES, decisions="torch")
    for rule in RULES:
        assert rel_err(a[rule], b[rule]) < 1e-6


def test_decision_differences_flags_real_differences(zoo):
    case = zoo.torch_net("zfnet_small")
    o = oracle.onnx_oracle(case.onnx_path, case.layers["relu3"])
    ref = o.reference_values(case.images)
    assert o.decision_differences(case.images, ref) == []
    tampered = [dict(v) for v in ref]
    name = sorted(tampered[1])[-1]
    t = tampered[1][name].copy()
    t.flat[int(np.argmax(np.abs(t)))] *= -1.0         # a decisive sign change: not noise
    tampered[1][name] = t
    diffs = o.decision_differences(case.images, tampered)
    assert any(d["kind"] == "value" for d in diffs)
    assert any(d["kind"] == "sign" and not d["ambiguous"] for d in diffs)


def test_zfnet_has_the_papers_sizes():
    """PAPER.md section 9 / Fig. 3: 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6, FC 9216."""
    net = nets.ZFNet()           # architecture only: no need for the seeded init here
    sizes = {}
    for name in ("conv1", "pool1", "norm1", "conv2", "pool2", "conv3", "conv4", "conv5",
                 "pool5", "fc6", "fc7", "fc8"):
        net.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 224, 224))
    assert sizes == {
        "conv1": (96, 110, 110), "pool1": (96, 55, 55), "norm1": (96, 55, 55),
        "conv2": (256, 26, 26), "pool2": (256, 13, 13), "conv3": (384, 13, 13),
        "conv4": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6),
        "fc6": (4096,), "fc7": (4096,), "fc8": (1000,)}
    assert net.fc6.in_features == 9216
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert net.conv2.kernel_size == (5, 5) and net.conv2.stride == (2, 2)
    assert isinstance(net.norm1, nets.LRN) and net.norm1.size == 5
    assert isinstance(net.drop6, nn.Dropout) and net.drop6.p == 0.5


def test_digit_recognizer_loads_the_real_weights():
    from assets import digit_recognizer_pth

    net = nets.digit_recognizer()
    state = torch.load(str(digit_recognizer_pth()), map_location="cpu", weights_only=True)
    assert torch.equal(net.conv_layers[0].weight, state["conv_layers.0.weight"])
    assert torch.equal(net.fc_layers[2].bias, state["fc_layers.2.bias"])
