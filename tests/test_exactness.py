"""zfprobe's projections == the independent oracle (tests/oracle.py), network by network.

For each (network, layer) the same K = 3 seeds go to ``Probe.project`` in ONE call, over a batch
of 2 images, with ``seed_image`` = [1, 0, 0] choosing the image of each seed:

- 2 single-unit seeds: the strongest position of the strongest channel of image 1, and of
  image 0, valued at the activation there;
- 1 whole-feature-map seed: image 0's strongest channel, its whole map (signed, where the layer
  is pre-ReLU).

(For a fully-connected layer a "unit" is one neuron and the "map" seed is the whole layer; a
unit saturated at a ReLU6 plateau, whose projection is zero under every rule, is passed over.)
Each of the three rules is compared, with ``lrn="gradient"`` (the oracle takes LRN's true
gradient), and zfprobe's activations of the layer are compared with the oracle's forward pass.

The oracle is the onnx2torch route on the very ONNX file zfprobe loads (our torch networks are
exported first; tests/test_oracle_selfcheck.py shows that route equals the native-module route
on them), with rectifier masks and pooling switches decided on onnxruntime's forward values
(tests/oracle.py, "Forward decisions"). A projection is discontinuous at those decisions, and
on the big zoo graphs a handful of ReLU inputs out of ~10^7 lie within float32 noise of zero
(|x| ~ 1e-7 next to values ~ 10-100), where zfprobe's program and a plain onnxruntime run can
disagree. So when a seed differs, the test reads the forward values zfprobe's program computed
(via ``Probe.export_deconv``), checks that they equal onnxruntime's within 1e-5 of each tensor's
scale and that every decision that differs is such a boundary case, and then demands the same
exact agreement with the oracle recomputed on zfprobe's decisions. It prints which decisions
those were. A real bug cannot hide there: the values taken from zfprobe's program must equal
onnxruntime's to 1e-5, so only boundary decisions can change (zfprobe's own choice of which
tensor masks what, its unpooling and its rules are still checked against the oracle's), and
the projections must still agree to 1e-4.

Tolerance: max |zfprobe - oracle| <= 1e-4 * max |oracle|, per seed (relative to that seed's own
projection). Both sides compute in float32 from the same weights; onnxruntime and torch differ
only by summation order (about 1e-6 relative here), so 1e-4 leaves room for deep graphs while
any real error (a missing adjoint, a wrong switch, a wrong rule, a mixed-up seed) is orders of
magnitude larger. Every seed's oracle projection must be non-zero, so no case passes vacuously.
"""
from __future__ import annotations

import numpy as np
import pytest

import oracle

RULES = oracle.RULES
RTOL = 1e-4

# network -> layers (friendly module paths for our torch nets, ONNX tensor names otherwise),
# shallow to deep.
TORCH_LAYERS = {
    "zfnet_small": ["relu1", "pool1", "norm1", "conv2", "norm2", "relu3", "relu5", "pool5",
                    "fc6", "fc8"],
    "zfnet": ["relu5"],                    # the paper's layer 5, through 2 pools and 2 LRNs
    "resnet_bn": ["bn1", "maxpool", "layer1.0", "layer2.0", "layer2", "fc"],
    "densenet_small": ["block1.0", "trans1", "block2.1", "bn_final", "fc"],
    "mobilenet_small": ["stem_act", "blocks.0", "blocks.1", "blocks.2.dw", "blocks.4",
                        "head_act", "fc"],
    "digit_recognizer": ["conv_layers.1", "conv_layers.2", "conv_layers.5", "conv_layers.8",
                         "fc_layers.1", "fc_layers.2"],
}

# ONNX model-zoo light graphs (opset 9 Caffe2 exports, 224x224, batch 1 declared): tensor names,
# shallow to deep; the deepest layers of the biggest graphs are left out to keep the file
# within minutes on 2 cores (their ops all occur in the layers probed).
LIGHT_LAYERS = {
    "bvlc_alexnet": ["r2", "r13", "r17"],         # LRN1, conv5 relu, fc6 relu
    "zfnet512": ["r6", "r14", "r19"],             # LRN2, pool5, fc7 relu
    "vgg19": ["r4", "r17"],                       # pool1, conv3_4 relu
    "resnet50": ["r3", "r24", "r76"],             # pool1, res2 sum, res3 sum
    "squeezenet": ["r4", "r24", "r48"],           # fire2 squeeze relu, fire3 concat, fire7 relu
    "inception_v1": ["r8", "r37", "r77"],         # LRN2, inception_3b concat, pool3
    "inception_v2": ["r22", "r124"],              # pool2, inception_3b concat
    "densenet121": ["r7", "r82", "r120"],         # pool1, dense layer concat, after transition
    "shufflenet": ["r15", "r63", "r124"],         # first concat, avgpool shortcut, sum
}

RAPIDOCR_LAYERS = [
    "conv2d_53.tmp_0",       # first conv
    "hardswish_0.tmp_0",     # BN, then x * clip(x + 3, 0, 6) / 6: Clip rule, Mul product rule
    "tmp_0",                 # squeeze-excite: GAP, 1x1 convs, Relu, HardSigmoid, Mul
    "elementwise_add_0",     # inverted residual add
    "pool2d_9.tmp_0",        # last MaxPool (the whole backbone below it)
    "linear_1.tmp_1",        # logits (GAP, Reshape, MatMul, Add)
]

CASES = (
    [pytest.param("torch", n, l, id=f"{n}-{l}") for n, ls in TORCH_LAYERS.items() for l in ls]
    + [pytest.param("light", n, l, id=f"light_{n}-{l}") for n, ls in LIGHT_LAYERS.items()
       for l in ls]
    + [pytest.param("rapidocr", "rapidocr_cls", l, id=f"rapidocr_cls-{l}")
       for l in RAPIDOCR_LAYERS]
)


def make_seeds(acts: np.ndarray, skip: int = 0):
    """The K = 3 seeds described in the module docstring, from the layer's [2, ...] output.

    ``skip``: use the (skip+1)-th strongest position / channel instead of the strongest (when a
    seed's projection is zero: a unit saturated at a ReLU6, or one whose receptive field is all
    clipped, projects to nothing under any rule)."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    top = flat.max()
    if (flat == top).sum() > 1:       # a plateau: saturated units (ReLU6 at 6) project to zero
        flat = np.where(flat == top, -np.inf, flat)
    strength = flat.max(2)                                              # [2, C]
    c0, c1 = (int(np.argsort(-strength[i], kind="stable")[skip % c]) for i in (1, 0))
    seeds = np.zeros((3,) + acts.shape[1:], np.float32)
    seed_image = np.array([1, 0, 0])     # not a palindrome: a reversed mapping is caught too
    for k, (img, ch) in enumerate([(1, c0), (0, c1)]):                   # unit seeds
        order = np.argsort(-flat[img, ch], kind="stable")
        pos = int(order[(skip // c) % len(order)])
        seeds[k].reshape(c, -1)[ch, pos] = flat[img, ch, pos]
    if acts.ndim == 2:        # fully connected: the "map" seed is the whole layer
        seeds[2] = acts[0]
    else:
        seeds[2, c1] = acts[0, c1]
    assert np.isfinite(seeds).all()
    return seeds, seed_image, ["unit", "unit", "map"]


class _Computed:
    """One (network, layer): activations, seeds and the oracle for all rules, computed once
    and shared by the three rule-parametrized tests that follow each other."""

    key = None
    value = None


def _compute(zoo, kind, net, layer):
    key = (kind, net, layer)
    if _Computed.key == key:
        return _Computed.value
    _Computed.key, _Computed.value = None, None
    if kind == "torch":
        case = zoo.torch_net(net)
        tensor = case.layers[layer]
    else:
        case = zoo.light(net) if kind == "light" else zoo.rapidocr()
        tensor = layer
    images, path = case.images, case.onnx_path
    orc = oracle.onnx_oracle(path, tensor)
    acts = orc.ort_activations(images)               # seeds from onnxruntime's activations
    for skip in range(4):
        seeds, seed_image, kinds = make_seeds(acts, skip)
        outs: dict = {}
        want = orc.project(images, seeds, seed_image, rule=RULES, layer_outputs=outs)
        if all(np.abs(w[k]).max() > 0 for w in want.values() for k in range(len(seeds))):
            break
    torch_acts = np.concatenate([outs[i] for i in range(len(images))])
    # the converted graph computes the same layer as onnxruntime (so the oracle differentiates
    # the right function); then zfprobe's activations are compared with torch's
    assert np.abs(torch_acts - acts).max() <= RTOL * np.abs(acts).max(), (net, layer)
    acts = torch_acts
    value = dict(path=path, tensor=tensor, images=images, acts=acts, seeds=seeds,
                 seed_image=seed_image, kinds=kinds, want=want,
                 input_shape=getattr(case, "input_shape", None))
    _Computed.key, _Computed.value = key, value
    return value


def _describe(net, layer, rule, k, kind, got, want):
    diff = np.abs(got - want)
    pos = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return (f"{net} layer {layer} rule {rule} seed {k} ({kind}): max|zfprobe - oracle| = "
            f"{diff.max():.3e} at {pos}, max|oracle| = {np.abs(want).max():.3e}, "
            f"relative {diff.max() / np.abs(want).max():.3e} (tolerance {RTOL:g})")


def _bad_seeds(got, want):
    bad = []
    for k in range(len(want)):
        scale = np.abs(want[k]).max()
        assert scale > 0, f"seed {k}: the oracle's projection is zero"
        if np.abs(got[k] - want[k]).max() > RTOL * scale:
            bad.append(k)
    return bad


def zfprobe_program_values(probe, tensor, rule, images, names):
    """The forward values zfprobe's own deconv program computes for ``names`` (the rectifier and
    max-pool inputs on the path), per image; None when the program does not expose them.

    Read by running the program ``Probe.export_deconv`` writes, with those tensors added as
    outputs, on the same images (all N at once, as ``project`` runs it).
    """
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "deconv.onnx")
        probe.export_deconv(tensor, path, rule=rule, lrn="gradient")
        model = onnx.load(path)
    produced = {o for n in model.graph.node for o in n.output}
    feeds_names = [i.name for i in model.graph.input]
    if any(n not in produced for n in names) or len(feeds_names) != 3:
        return None
    for n in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                                     None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    seed_shape = (1,) + tuple(probe.graph.shape(tensor)[1:])
    feeds = {feeds_names[0]: images, feeds_names[1]: np.zeros(seed_shape, np.float32),
             feeds_names[2]: np.zeros(1, np.int64)}
    vals = sess.run(names, feeds)
    return [{n: v[i:i + 1] for n, v in zip(names, vals)} for i in range(len(images))]


@pytest.mark.parametrize("check", ("activations",) + RULES)
@pytest.mark.parametrize("kind,net,layer", CASES)
def test_exactness(zoo, kind, net, layer, check):
    """``check`` = "activations": zfprobe's layer output == the oracle's (so the layer zfprobe
    probes under that name is the one the oracle differentiates); a rule: the projections.

    Decision boundaries: when a seed's projection differs, the test reads the forward values
    zfprobe's program computed for every rectifier / max-pool input on the path, requires them
    to equal onnxruntime's plain forward pass within 1e-5 of each tensor's scale and every
    rectifier whose sign differs to have |input| <= 1e-5 * scale on both sides (float noise at
    the boundary, not a bug), and then requires exact agreement with the oracle computed on
    those decisions.
    """
    c = _compute(zoo, kind, net, layer)
    probe = zoo.probe(c["path"], c["input_shape"])
    if check == "activations":
        got = probe.activations(c["images"], c["tensor"])
        want = c["acts"]
        assert got.shape == want.shape
        assert np.abs(want).max() > 0
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= RTOL, f"{net} {layer}: activations differ by {err:.3e} (relative)"
        return
    rule = check
    images, seeds, seed_image = c["images"], c["seeds"], c["seed_image"]
    got = probe.project(images, c["tensor"], seeds, seed_image, rule=rule, lrn="gradient")
    want = c["want"][rule]
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.float32
    bad = _bad_seeds(got, want)
    if not bad:
        return
    first = [_describe(net, layer, rule, k, c["kinds"][k], got[k], want[k]) for k in bad]
    orc = oracle.onnx_oracle(c["path"], c["tensor"])
    names = sorted(set(orc.decision_inputs) - {orc.input_name})
    values = zfprobe_program_values(probe, c["tensor"], rule, images, names)
    assert values is not None, "\n".join(first + ["(zfprobe's program values unavailable)"])
    diffs = orc.decision_differences(images, values)
    real = [d for d in diffs if d["kind"] == "value" or not d["ambiguous"]]
    assert not real, "\n".join(first + [f"decision values differ beyond float noise: {real[:5]}"])
    want2 = orc.project(images, seeds[bad], seed_image[bad], rule=rule,
                        decisions=[{n: v[n] for n in names} | _input_value(orc, images, i)
                                   for i, v in enumerate(values)])
    still = [_describe(net, layer, rule, k, c["kinds"][k], got[k], want2[j])
             for j, k in enumerate(bad)
             if np.abs(got[k] - want2[j]).max() > RTOL * np.abs(want2[j]).max()]
    flips = [d for d in diffs if d["kind"] == "sign"]
    assert not still, "\n".join(
        first + [f"after taking zfprobe's forward values for the {len(flips)} boundary "
                 f"decisions that differ: "] + still)
    print(f"{net} {layer} {rule}: seeds {bad} matched once the {len(flips)} boundary decisions "
          f"where zfprobe's float32 forward differs from onnxruntime's plain run were taken from "
          f"zfprobe's values: {flips[:4]}")


def _input_value(orc, images, i):
    return {orc.input_name: images[i:i + 1]} if orc.input_name in orc.decision_inputs else {}
