"""Exporters' decompositions are fused back (zfprobe/engine/fusion/), and the reversal is exact
through them and through the chains left unfused.

The headline case is the paper's own architecture written with torch's
``nn.LocalResponseNorm``, which torch exports as Mul / 5-D Reshape / Pad / AveragePool / If /
Reshape / Mul / Add / Pow / Div. Before fusion, zfprobe's gradient projection through it was
16% off autograd: the importer folded the ``If`` (its condition only reads a shape) as a constant
although its branch reads the data, so the LRN denominator was frozen at its value for a zero
image. Now the ``If`` is inlined, the chain is fused into one ``LRN`` node, and the net must
agree with torch autograd (tests/oracle.py, rule-aware rectifiers) to 1e-4 under every rule
and both LRN modes, from the ONNX file and attached live; its receptive fields are finite and
both fast paths (windowed reversal, incremental occlusion) apply.

The oracle for ``lrn="identity"`` (the paper: LRN is not inverted) is the same autograd with
each ``nn.LocalResponseNorm`` replaced by a function whose forward is torch's LRN and whose
backward passes the signal through unchanged.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nets
import oracle
from conftest import natural_images

import zfprobe
from zfprobe.engine.fusion import fuse
from zfprobe.engine.graph import Graph, Node

RULES = oracle.RULES
RTOL = 1e-4


# --------------------------------------------------------------------------------------------
# oracle helpers


class _LRNIdentityBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None, None


class IdentityBackLRN(nn.Module):
    def __init__(self, lrn: nn.LocalResponseNorm):
        super().__init__()
        self.args = (lrn.size, lrn.alpha, lrn.beta, lrn.k)

    def forward(self, x):
        return _LRNIdentityBackward.apply(x, *self.args)


def identity_lrn_copy(module: nn.Module) -> nn.Module:
    out = copy.deepcopy(module)
    for name, m in list(out.named_modules()):
        if isinstance(m, nn.LocalResponseNorm):
            setattr(out, name, IdentityBackLRN(m))
    return out.eval()


def seeds_for(acts: np.ndarray):
    """Two unit seeds (strongest unit of image 1 and of image 0) and one feature-map seed."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    seeds = np.zeros((3,) + acts.shape[1:], np.float32)
    seed_image = np.array([1, 0, 0])
    for k, img in enumerate((1, 0)):
        ch = int(np.argmax(flat[img].max(1)))
        pos = int(np.argmax(flat[img, ch]))
        seeds[k].reshape(c, -1)[ch, pos] = flat[img, ch, pos]
    ch = int(np.argmax(flat[0].max(1)))
    seeds[2, ch] = acts[0, ch]
    return seeds, seed_image


def assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = RTOL):
    assert got.shape == want.shape, (got.shape, want.shape)
    for k in range(len(want)):
        scale = np.abs(want[k]).max()
        assert scale > 0, f"{what}: the oracle's projection of seed {k} is zero"
        err = np.abs(got[k] - want[k]).max() / scale
        assert err <= rtol, f"{what}: seed {k} differs from the oracle by {err:.3e} (relative)"


# --------------------------------------------------------------------------------------------
# the ZFNet with nn.LocalResponseNorm


@pytest.fixture(scope="module")
def zf_lrn(tmp_path_factory):
    module = nets.zfnet_small_torch_lrn()
    images = natural_images(2, 64, 64)
    path = tmp_path_factory.mktemp("fusion") / "zfnet_torch_lrn.onnx"
    layers = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    probes = {"onnx": zfprobe.load(str(path)), "torch": zfprobe.attach(module, (3, 64, 64))}
    layer = {"onnx": layers["conv5"], "torch": "conv5"}
    acts = oracle.module_activations(module, images, "conv5")
    seeds, seed_image = seeds_for(acts)
    want = {"gradient": oracle.oracle_from_module(module, images, "conv5", seeds, seed_image, rule=RULES),
            "identity": oracle.oracle_from_module(identity_lrn_copy(module), images, "conv5", seeds, seed_image,
                                                  rule=RULES)}
    return dict(module=module, images=images, probes=probes, layer=layer, seeds=seeds, seed_image=seed_image,
                want=want, acts=acts)


@pytest.mark.parametrize("front", ["onnx", "torch"])
def test_torch_lrn_is_fused(zf_lrn, front):
    g = zf_lrn["probes"][front].graph
    lrns = [n for n in g.nodes if n.op_type == "LRN"]
    assert len(lrns) == 2
    for n in lrns:
        assert n.attrs["size"] == 5
        assert math.isclose(n.attrs["alpha"], 0.5, rel_tol=1e-6)
        assert math.isclose(n.attrs["beta"], 0.75, rel_tol=1e-6)
        assert math.isclose(n.attrs["bias"], 2.0, rel_tol=1e-6)
    ops = {n.op_type for n in g.nodes}
    assert not ops & {"AveragePool", "Pow", "Div", "If", "Pad"}, ops
    if front == "torch":
        assert {"norm1", "norm2"} <= set(zf_lrn["probes"][front].layer_names())
    # the forward pass is the module's
    got = zf_lrn["probes"][front].activations(zf_lrn["images"], zf_lrn["layer"][front])
    assert np.abs(got - zf_lrn["acts"]).max() <= 1e-5 * np.abs(zf_lrn["acts"]).max()


@pytest.mark.parametrize("lrn", ["gradient", "identity"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("front", ["onnx", "torch"])
def test_torch_lrn_zfnet_matches_autograd(zf_lrn, front, rule, lrn):
    probe = zf_lrn["probes"][front]
    got = probe.project(zf_lrn["images"], zf_lrn["layer"][front], zf_lrn["seeds"], zf_lrn["seed_image"],
                        rule=rule, lrn=lrn)
    assert_close(got, zf_lrn["want"][lrn][rule], f"{front} {rule} lrn={lrn}")


def test_lrn_option_changes_the_projection(zf_lrn):
    """--lrn is followed: the two LRN modes give clearly different projections here (alpha 0.5)."""
    want = zf_lrn["want"]
    diff = np.abs(want["gradient"]["deconvnet"] - want["identity"]["deconvnet"]).max()
    assert diff > 0.05 * np.abs(want["identity"]["deconvnet"]).max()


def test_torch_lrn_receptive_fields_and_fast_paths(zf_lrn):
    from zfprobe.studies.occlusion import local_chain
    from zfprobe.engine.receptive_field import describe, receptive_field

    probe = zf_lrn["probes"]["onnx"]
    tensor = zf_lrn["layer"]["onnx"]
    size, stride = describe(receptive_field(probe.graph, tensor))
    assert size != "global" and stride != "-", (size, stride)
    for rule in RULES:
        for lrn in ("identity", "gradient"):
            assert probe.windowed_program(tensor, rule, lrn, single_image=False) is not None
    chain = [op.node.op_type for op in local_chain(probe.graph)]
    assert chain.count("LRN") == 2 and "Conv" in chain[chain.index("LRN", chain.index("LRN") + 1):], chain


# --------------------------------------------------------------------------------------------
# the reversal through chains that stay unfused


def test_unfused_lrn_chain_is_exact(tmp_path):
    """An even-size torch LRN has no ONNX LRN equivalent (ONNX centres the window differently),
    so it stays a Mul / Pad / AveragePool / Pow / Div chain; the gradient rule through it must
    still equal autograd (Div by a signal and Pow are reversed by their local derivatives)."""
    torch.manual_seed(3)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.LocalResponseNorm(4, alpha=0.5, beta=0.75, k=2.0),
                           nn.Conv2d(8, 6, 3)).eval()
    images = natural_images(2, 20, 20)
    path = tmp_path / "even_lrn.onnx"
    layers = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    probe = zfprobe.load(str(path))
    ops = {n.op_type for n in probe.graph.nodes}
    assert "LRN" not in ops and {"Pow", "Div", "AveragePool"} <= ops, ops
    acts = oracle.module_activations(module, images, "3")
    seeds, seed_image = seeds_for(acts)
    want = oracle.oracle_from_module(module, images, "3", seeds, seed_image, rule=RULES)
    for rule in RULES:
        got = probe.project(images, layers["3"], seeds, seed_image, rule=rule, lrn="gradient")
        assert_close(got, want[rule], f"even LRN chain, {rule}")


# --------------------------------------------------------------------------------------------
# pointwise decompositions, by exporter


def _chain_graph(build) -> Graph:
    """A graph x -> Conv -> <chain written by ``build(b, t)``> with static shapes."""
    shapes = {"x": (1, 2, 5, 5), "c": (1, 2, 5, 5)}
    nodes = [Node("conv", "Conv", ["x", "w"], ["c"], {"kernel_shape": [1, 1], "strides": [1, 1],
                                                      "dilations": [1, 1], "pads": [0, 0, 0, 0], "group": 1})]
    consts = {"w": np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)}
    count = [0]

    def op(op_type, *ins, **attrs):
        count[0] += 1
        out = f"t{count[0]}"
        nodes.append(Node(f"n{count[0]}", op_type, list(ins), [out], attrs))
        shapes[out] = (1, 2, 5, 5)
        return out

    def const(v):
        count[0] += 1
        consts[f"k{count[0]}"] = np.array(v, np.float32)
        return f"k{count[0]}"

    y = build(op, const, "c")
    return Graph(nodes, ["x"], [y], consts, shapes)


CHAINS = {
    # torch GELU (erf): Div, Erf, Add, Mul, Mul 0.5
    "gelu_torch": ("Gelu", lambda op, k, x: op("Mul", op("Mul", x, op("Add", op("Erf", op("Div", x, k(1.4142135))), k(1.0))), k(0.5))),
    # tf2onnx / Keras GELU: 0.5 * x first, x * 0.7071
    "gelu_tf": ("Gelu", lambda op, k, x: op("Mul", op("Mul", k(0.5), x), op("Add", k(1.0), op("Erf", op("Mul", x, k(0.70710677)))))),
    # tanh GELU, x^3 as Pow
    "gelu_tanh": ("Gelu", lambda op, k, x: op("Mul", op("Mul", x, k(0.5)), op("Add", op("Tanh", op("Mul", op("Add", x, op("Mul", op("Pow", x, k(3.0)), k(0.044715))), k(0.7978846))), k(1.0)))),
    "silu": ("Swish", lambda op, k, x: op("Mul", x, op("Sigmoid", x))),
    "mish": ("Mish", lambda op, k, x: op("Mul", x, op("Tanh", op("Softplus", x)))),
    "hardsigmoid_x": ("HardSwish", lambda op, k, x: op("Mul", x, op("HardSigmoid", x, alpha=1 / 6, beta=0.5))),
    # Keras / TF hard-swish: x * relu6(x + 3) / 6
    "hardswish_relu6": ("HardSwish", lambda op, k, x: op("Div", op("Mul", x, op("Clip", op("Add", x, k(3.0)), min=0.0, max=6.0)), k(6.0))),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_pointwise_chain_fuses(name):
    want_op, build = CHAINS[name]
    fused = fuse(_chain_graph(build))
    assert [n.op_type for n in fused.nodes] == ["Conv", want_op]
    assert fused.nodes[-1].inputs == ["c"] and fused.nodes[-1].outputs == fused.outputs


def test_lookalike_chain_is_not_fused():
    """x * sigmoid(2x) is not SiLU; x * sigmoid(x) whose sigmoid is also used elsewhere is kept."""
    g = fuse(_chain_graph(lambda op, k, x: op("Mul", x, op("Sigmoid", op("Mul", x, k(2.0))))))
    assert "Swish" not in [n.op_type for n in g.nodes]

    def shared(op, k, x):
        s = op("Sigmoid", x)
        return op("Add", op("Mul", x, s), s)

    g = fuse(_chain_graph(shared))
    assert "Swish" not in [n.op_type for n in g.nodes]


def test_layernorm_decomposition_fuses():
    def ln(op, k, x):
        m = op("ReduceMean", x, axes=[1], keepdims=1)
        d = op("Sub", x, m)
        v = op("ReduceMean", op("Pow", d, k(2.0)), axes=[1], keepdims=1)
        return op("Div", d, op("Sqrt", op("Add", v, k(1e-6))))

    g = _chain_graph(ln)
    for n in g.nodes:
        if n.op_type == "ReduceMean":
            g.shapes[n.outputs[0]] = (1, 1, 5, 5)
    fused = fuse(g)
    assert [n.op_type for n in fused.nodes] == ["Conv", "ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div"], \
        "axis 1 is not a trailing range: it must stay unfused"

    def ln_last(op, k, x):
        m = op("ReduceMean", x, axes=[2, 3], keepdims=1)
        d = op("Sub", x, m)
        v = op("ReduceMean", op("Mul", d, d), axes=[-2, -1], keepdims=1)
        return op("Mul", d, op("Reciprocal", op("Sqrt", op("Add", v, k(1e-6)))))

    fused = fuse(_chain_graph(ln_last))
    assert [n.op_type for n in fused.nodes] == ["Conv", "LayerNormalization"]
    assert fused.nodes[-1].attrs["axis"] == 2 and math.isclose(fused.nodes[-1].attrs["epsilon"], 1e-6, rel_tol=1e-5)


# --------------------------------------------------------------------------------------------
# tf2onnx's "moments" LayerNorm (Keras LayerNormalization through tf.nn.moments)


def _keras_layernorm_onnx(tmp_path, rank4: bool = True):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    tf2onnx = pytest.importorskip("tf2onnx")
    import onnx

    L = keras.layers
    keras.utils.set_random_seed(3)
    if rank4:
        inp = keras.Input((10, 12, 3))
        x = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
        x = L.LayerNormalization(epsilon=1e-3, name="ln")(x)
        out = L.Conv2D(4, 3, padding="same", name="c2")(x)
    else:  # a sequence: LayerNorm over the trailing axis
        inp = keras.Input((7, 5))
        x = L.Dense(6, activation="relu", name="c1")(inp)
        x = L.LayerNormalization(epsilon=1e-3, name="ln")(x)
        out = L.Dense(4, name="c2")(x)
    model = keras.Model(inp, out)
    ln = model.get_layer("ln")
    rng = np.random.default_rng(0)
    ln.gamma.assign(rng.uniform(0.5, 1.5, ln.gamma.shape).astype(np.float32))
    ln.beta.assign(rng.uniform(-0.5, 0.5, ln.beta.shape).astype(np.float32))
    spec = (tf.TensorSpec((1,) + tuple(inp.shape[1:]), tf.float32, name="x"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda t: model(t)), input_signature=spec, opset=13)
    path = tmp_path / "keras_ln.onnx"
    onnx.save(proto, str(path))
    return model, path, proto


def test_tf2onnx_moments_layernorm_fuses(tmp_path):
    """(On a rank-3 sequence tf2onnx writes the means as GlobalAveragePool over a reshape, a
    form not fused yet.)"""
    import onnxruntime as ort

    model, path, proto = _keras_layernorm_onnx(tmp_path, True)
    raw = [n.op_type for n in proto.graph.node]
    assert raw.count("ReduceMean") == 2 and "Reciprocal" in raw, raw   # the moments form
    probe = zfprobe.load(path)
    ops = [n.op_type for n in probe.graph.nodes]
    assert "LayerNormalization" in ops and "ReduceMean" not in ops and "Reciprocal" not in ops, ops
    shape = (2,) + tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(2)])
    got = probe.activations(x, probe.graph.outputs[0])
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_tf2onnx_moments_layernorm_matches_tf_autograd(tmp_path):
    """Projections through the fused LayerNorm equal tf.GradientTape on the Keras model, under
    every rule (Keras' relu follows the rule in the oracle)."""
    pytest.importorskip("tensorflow")
    from test_keras_adapter import tf_oracle

    model, path, _ = _keras_layernorm_onnx(tmp_path, True)
    probe = zfprobe.load(path)
    layer = next(n.outputs[0] for n in probe.graph.nodes if n.op_type == "Conv" and "c2" in n.outputs[0])
    x = np.random.default_rng(2).uniform(0, 1, (2, 10, 12, 3)).astype(np.float32)
    acts = probe.activations(x, layer)
    seeds, seed_image = seeds_for(acts)
    for rule in ("deconvnet", "gradient", "guided"):
        got = probe.project(x, layer, seeds, seed_image, rule=rule)
        want = tf_oracle(model, "c2", x, seeds, seed_image, rule)
        assert_close(got, want, f"keras layernorm via tf2onnx, {rule}")
