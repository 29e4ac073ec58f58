"""The PyTorch adapter (zfprobe.attach on a live nn.Module) and the torch backend.

Exactness: projections of the attached module equal an independent autograd oracle with the
rule applied at EVERY rectifier -- nn.ReLU modules, F.relu(..., inplace=True), torch.relu,
x.relu_(), ReLU6 / Hardtanh / clamp(min=0), reused modules -- to 1e-4; and equal the ONNX path
(the same network exported with torch.onnx.export, loaded with zfprobe.load, run by
onnxruntime). Two oracles: tests/oracle.py (patches torch.nn.functional; for tests/nets.py)
and tests/torch_nets_extra.py (a TorchFunctionMode that sees every form; for the extra nets).

Also: the module is left exactly as it was; live weights; no autograd; refusals name the
module path and the op; the torch backend agrees with onnxruntime op by op; CUDA (skipped
without a GPU).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import nets
import oracle
import torch_nets_extra as extra
import zfprobe
from zfprobe.adapters.backends.torch_backend import TorchBackend
from zfprobe.errors import UnsupportedOpError, ZfprobeError
from zfprobe.probe import Probe

RULES = ("deconvnet", "gradient", "guided")
TOL = 1e-4

# net -> (layers to probe, minimum rectifier calls the oracle must replace)
NET_LAYERS = {
    "zfnet_small": (["conv5", "pool2"], 3),
    "resnet_bn": (["layer2", "layer1.1"], 5),
    "densenet_small": (["block2", "trans1"], 6),
    "mobilenet_small": (["blocks.4", "head"], 6),
    "digit_recognizer": (["conv_layers.7", "fc_layers.0"], 3),
}


def _close(a, b, tol=TOL):
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"max abs error {err:.3g} (scale {scale:.3g})"


def _seeds(acts, n_images):
    channels = [0, acts.shape[1] // 2, acts.shape[1] - 1]
    images = [0, min(1, n_images - 1), 0]
    return oracle.unit_seeds(acts, channels, images)


_PROBES: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These nets are tiny: one intra-op thread is as fast, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _probe(case):
    """One attached probe per test network (attach is the expensive part)."""
    if case.name not in _PROBES:
        _PROBES[case.name] = zfprobe.attach(case.module, case.images[:1])
    return _PROBES[case.name]


# --------------------------------------------------------------------------------------------
# exactness: oracle and ONNX path


@pytest.mark.parametrize("name", sorted(NET_LAYERS))
def test_projections_equal_rule_aware_autograd_oracle(zoo, name):
    case = zoo.torch_net(name)
    probe = _probe(case)
    assert isinstance(probe, Probe) and probe.backend.name == "torch"
    layers, min_rect = NET_LAYERS[name]
    lrn = "gradient" if name.startswith("zfnet") else "identity"  # the oracle differentiates LRN
    for layer in layers:
        acts = probe.activations(case.images, layer)
        seeds, seed_image = _seeds(acts, len(case.images))
        for rule in RULES:
            ours = probe.project(case.images, layer, seeds, seed_image, rule=rule, lrn=lrn)
            ref = oracle.oracle_from_module(case.module, case.images, layer, seeds, seed_image, rule=rule,
                                            min_rectifiers=min_rect if layer == layers[0] else 0)
            assert np.abs(ref).max() > 0
            _close(ours, ref)
        # single-image batches take the broadcasting program variant
        ours = probe.project(case.images[:1], layer, seeds[:1], rule="guided", lrn=lrn)
        _close(ours, oracle.oracle_from_module(case.module, case.images[:1], layer, seeds[:1], rule="guided"))
        # whole feature maps (and units with windowing off) take the full reversed network
        if acts.ndim == 4:
            maps, map_image = oracle.map_seeds(acts, [1, acts.shape[1] - 2], [0, len(case.images) - 1])
            _close(probe.project(case.images, layer, maps, map_image, rule="deconvnet", lrn=lrn),
                   oracle.oracle_from_module(case.module, case.images, layer, maps, map_image, rule="deconvnet"))
        _close(probe.project(case.images, layer, seeds, seed_image, rule="gradient", lrn=lrn, windowed=False),
               oracle.oracle_from_module(case.module, case.images, layer, seeds, seed_image, rule="gradient"))


@pytest.mark.parametrize("name", sorted(NET_LAYERS))
def test_graph_and_projections_equal_the_onnx_path(zoo, name):
    case = zoo.torch_net(name)
    probe = _probe(case)
    onnx_probe = zoo.probe(case.onnx_path)
    assert [n.op_type for n in probe.graph.nodes] == [n.op_type for n in onnx_probe.graph.nodes]
    for layer in NET_LAYERS[name][0]:
        tensor = case.layers[layer]
        acts = probe.activations(case.images, layer)
        _close(acts, onnx_probe.activations(case.images, tensor))
        seeds, seed_image = _seeds(acts, len(case.images))
        for rule in RULES:
            _close(probe.project(case.images, layer, seeds, seed_image, rule=rule),
                   onnx_probe.project(case.images, tensor, seeds, seed_image, rule=rule))


@pytest.mark.parametrize("name", sorted(extra.EXTRA_NETS))
def test_every_rectifier_form_follows_the_rule(tmp_path, name):
    """torch.relu, x.relu_(), torch.relu_, F.relu(inplace), a reused nn.ReLU, Hardtanh(0, 6),
    clamp(min=0), F.relu6, leaky_relu, F.max_pool2d, adaptive pools, grouped / depthwise convs,
    view / reshape / flatten: oracle = TorchFunctionMode autograd; and the ONNX path agrees."""
    builder, shape = extra.EXTRA_NETS[name]
    module = builder()
    images = np.random.default_rng(5).standard_normal((2,) + shape).astype(np.float32)
    probe = zfprobe.attach(module, shape)
    layers = probe.layer_names()
    with torch.no_grad():
        np.testing.assert_allclose(probe.activations(images, probe.graph.outputs[0]),
                                   module(torch.from_numpy(images)).numpy(), atol=1e-5)
    path = tmp_path / f"{name}.onnx"
    names = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    onnx_probe = zfprobe.load(str(path))
    targets = ["fc1", "mix", "conv_a"] if name == "rectifier_zoo" else ["fc", "conv2"]
    for layer in targets:
        assert layer in layers
        acts = probe.activations(images, layer)
        seeds, seed_image = _seeds(acts, 2)
        for rule in RULES:
            ours = probe.project(images, layer, seeds, seed_image, rule=rule)
            ref = extra.rule_projection(module, images, layer, seeds, seed_image, rule)
            assert np.abs(ref).max() > 0
            _close(ours, ref)
            if rule == "guided":  # (one rule for the ONNX path: each rule costs an onnxruntime session)
                _close(ours, onnx_probe.project(images, names[layer], seeds, seed_image, rule=rule))


def test_rectifier_zoo_oracle_sees_every_rectifier():
    """The mode-based oracle replaces all 13 rectifier calls of RectifierZoo (Captum hooks only the 3 calls of its one nn.ReLU module)."""
    module = extra.rectifier_zoo()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    seeds = np.zeros((1, 10), np.float32)
    seeds[0, 3] = 1.0
    extra.rule_projection(module, x, lambda inp: module(inp), seeds, rule="deconvnet", min_rectifiers=13)
    assert sum(isinstance(m, nn.ReLU) for m in module.modules()) == 1


def test_right_where_captum_is_wrong():
    """Captum's NeuronDeconvolution applies the rule only at nn.ReLU modules (after making the
    in-place one out-of-place, which its hooks need): on RectifierZoo it is off; zfprobe is exact."""
    captum_attr = pytest.importorskip("captum.attr")
    module = extra.rectifier_zoo()
    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)
    probe = zfprobe.attach(module, x)
    acts = probe.activations(x, "fc1")
    unit = int(np.argmax(acts[0]))
    seeds = np.zeros_like(acts)
    seeds[0, unit] = 1.0
    ref = extra.rule_projection(module, x, "fc1", seeds, None, "deconvnet")
    _close(probe.project(x, "fc1", seeds), ref)
    theirs_model = copy.deepcopy(module)
    theirs_model.relu.inplace = False
    deconv = captum_attr.NeuronDeconvolution(theirs_model, theirs_model.fc1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = deconv.attribute(torch.from_numpy(x), neuron_selector=unit).detach().numpy()
    assert np.abs(theirs - ref).max() > 100 * TOL * max(1.0, float(np.abs(ref).max()))


def test_mode_oracle_agrees_with_functional_oracle(zoo):
    case = zoo.torch_net("resnet_bn")
    acts = _probe(case).activations(case.images, "layer2")
    seeds, seed_image = _seeds(acts, 2)
    for rule in RULES:
        a = extra.rule_projection(case.module, case.images, "layer2", seeds, seed_image, rule)
        b = oracle.oracle_from_module(case.module, case.images, "layer2", seeds, seed_image, rule=rule)
        _close(a, b, 1e-5)


# --------------------------------------------------------------------------------------------
# the module is left untouched; live weights; no autograd


def _state(module):
    return {
        "params": {k: (v.detach().clone(), v.requires_grad, v.grad) for k, v in module.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in module.named_buffers()},
        "training": {k: m.training for k, m in module.named_modules()},
        "hooks": {k: tuple(len(getattr(m, a)) for a in sorted(vars(m)) if "hook" in a and isinstance(getattr(m, a), dict))
                  for k, m in module.named_modules()},
        "ids": {k: id(v) for k, v in module.named_parameters()},
    }


def _assert_same_state(before, after):
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["ids"] == after["ids"]
    for k, (v, rg, grad) in before["params"].items():
        v2, rg2, grad2 = after["params"][k]
        assert torch.equal(v, v2) and rg == rg2 and grad2 is None and grad is None, k
    for k, v in before["buffers"].items():
        assert torch.equal(v, after["buffers"][k]), k


def test_module_is_left_untouched():
    module = nets.resnet_bn()
    module.train()                 # a model in training mode, with mixed flags and a frozen layer
    module.layer1.eval()
    module.conv1.weight.requires_grad_(False)
    before = _state(module)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    probe = zfprobe.attach(module, x[:1])
    acts = probe.activations(x, "layer2")
    seeds, seed_image = _seeds(acts, 2)
    ours = probe.project(x, "layer2", seeds, seed_image, rule="guided")
    probe.visualize(x[:1], "layer1.1", top=3)
    _assert_same_state(before, _state(module))
    # it analysed the inference-mode network (BatchNorm with running statistics)
    ref = extra.rule_projection(module, x, "layer2", seeds, seed_image, "guided")
    _close(ours, ref)
    _assert_same_state(before, _state(module))


def test_live_weights_change_the_next_projection():
    module = nets.zfnet_small()
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    probe = zfprobe.attach(module, (3, 64, 64))
    acts = probe.activations(x, "conv4")
    seeds, _ = oracle.unit_seeds(acts, [1, 7], 0)
    first = probe.project(x, "conv4", seeds, lrn="gradient")  # the oracle differentiates LRN
    with torch.no_grad():                               # an in-place edit ...
        module.conv2.weight.mul_(-1.5)
        module.conv1.bias.add_(0.3)
    second = probe.project(x, "conv4", seeds, lrn="gradient")
    assert np.abs(second - first).max() > 1e-3
    _close(second, extra.rule_projection(module, x, "conv4", seeds, None, "deconvnet"))
    module.conv3.weight = nn.Parameter(torch.randn_like(module.conv3.weight))  # ... and a new Parameter
    third = probe.project(x, "conv4", seeds, lrn="gradient")
    _close(third, extra.rule_projection(module, x, "conv4", seeds, None, "deconvnet"))
    _close(probe.activations(x, "conv4"), extra.layer_fn(module, "conv4")(torch.from_numpy(x)).detach().numpy())


@pytest.mark.parametrize("capture", ["fx", "onnx"])
def test_weights_computed_in_the_forward_are_live_too(capture):
    """``weight * gain`` and ``w.t()`` become constants (fx: LiveComputation handles; ONNX: folded
    by the importer, DerivedConstant handles); the backend recomputes them from live parameters."""
    from zfprobe.adapters.frontends.torch_adapter import DerivedConstant
    from zfprobe.adapters.frontends.torch_fx import LiveComputation

    module = extra.computed_weight_net()
    probe = zfprobe.attach(module, (3, 16, 16), capture=capture)
    handle = LiveComputation if capture == "fx" else DerivedConstant
    assert sum(isinstance(h, handle) for h in probe.graph.parameter_refs.values()) == 2
    x = np.random.default_rng(6).standard_normal((2, 3, 16, 16)).astype(np.float32)
    layer = probe.graph.outputs[0]
    seeds = np.eye(6, dtype=np.float32)[[1, 4]]

    def check():
        for rule in RULES:
            _close(probe.project(x, layer, seeds, np.array([0, 1]), rule=rule),
                   extra.rule_projection(module, x, lambda inp: module(inp), seeds, np.array([0, 1]), rule))

    check()
    before = probe.project(x, layer, seeds, np.array([0, 1]))
    with torch.no_grad():
        module.gain.mul_(torch.linspace(-1, 2, 8).view(8, 1, 1, 1))
        module.w.add_(0.05)
    assert np.abs(probe.project(x, layer, seeds, np.array([0, 1])) - before).max() > 1e-3
    check()
    with torch.no_grad():
        np.testing.assert_allclose(probe.activations(x, layer), module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_backend_builds_no_autograd_graph():
    module = nets.densenet_small()
    probe = zfprobe.attach(module, (3, 32, 32))
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    program = probe.deconv_program("block2", "guided")
    acts = probe.activations(x, "block2")
    seeds, seed_image = oracle.unit_seeds(acts, [0, 5], 0)
    (out,) = probe.backend.run_tensors(program, {probe.input_name: x, "zf_seed": seeds, "zf_seed_image": seed_image})
    assert out.is_inference() and not out.requires_grad and out.grad_fn is None
    assert all(p.grad is None for p in module.parameters())


def test_example_forms_and_device():
    module = extra.global_max_net()
    shapes = [(3, 24, 24), (1, 3, 24, 24), torch.zeros(1, 3, 24, 24), np.zeros((2, 3, 24, 24), np.float32)]
    for example in shapes:
        probe = zfprobe.attach(module, example)
        assert probe.input_shape == (1, 3, 24, 24)
        assert probe.backend.device == "cpu"
        assert probe.preprocessing.size == (24, 24)
    with pytest.raises(ZfprobeError, match="example"):
        zfprobe.attach(module)
    with pytest.raises(TypeError, match="unknown option"):
        zfprobe.attach(module, (3, 24, 24), colour="red")


@pytest.mark.parametrize("capture", ["fx", "onnx"])
def test_layer_names_are_module_paths(zoo, capture):
    case = zoo.torch_net("resnet_bn")
    probe = zfprobe.attach(case.module, case.images[:1], capture=capture)
    names = probe.layer_names()
    for expected in ("conv1", "bn1", "maxpool", "layer1.0.conv1", "layer1.0.bn2", "layer2.0.downsample.0", "fc"):
        assert expected in names
    # composite modules and functional ops resolve to their outputs, with the same names either way
    assert probe.resolve("layer1.0") == probe.resolve("layer1.0.Relu_1")
    assert probe.resolve("layer2") == probe.resolve("layer2.1.Relu_1")
    if capture == "onnx":  # the ONNX node names resolve too
        assert probe.resolve("/layer1/layer1.0/conv1/Conv") == probe.resolve("layer1.0.conv1")
    assert probe.graph.parameter_refs["layer1.0.bn1.running_var"] == "layer1.0.bn1.running_var"


def test_native_capture_is_the_default_and_names_match_the_onnx_route(zoo):
    """torch.fx capture builds the same graph (ops, names, shapes) as the ONNX route."""
    for name in ("resnet_bn", "densenet_small", "mobilenet_small", "zfnet_small"):
        case = zoo.torch_net(name)
        fx_graph = zfprobe.attach(case.module, case.images[:1]).graph
        onnx_graph = zfprobe.attach(case.module, case.images[:1], capture="onnx").graph
        assert fx_graph.metadata["frontend"].startswith("torch.fx")
        assert [(n.name, n.op_type) for n in fx_graph.nodes] == [(n.name, n.op_type) for n in onnx_graph.nodes]
        assert [fx_graph.shape(n.outputs[0]) for n in fx_graph.nodes] == \
            [onnx_graph.shape(n.outputs[0]) for n in onnx_graph.nodes]


def test_capture_falls_back_to_onnx_in_one_line_and_fx_alone_refuses():
    from zfprobe.adapters.frontends.torch_adapter import CaptureFallbackWarning
    from zfprobe.adapters.frontends.torch_fx import CaptureError

    with pytest.warns(CaptureFallbackWarning) as caught:
        probe = zfprobe.attach(extra.SinNet().eval(), (3, 8, 8))   # torch.sin has no converter
    message = str(caught[0].message)
    assert "\n" not in message and "sin" in message and "ONNX route" in message
    assert probe.graph.metadata["frontend"].startswith("torch.onnx.export")
    with pytest.raises(CaptureError, match="sin"):
        zfprobe.attach(extra.SinNet().eval(), (3, 8, 8), capture="fx")
    with pytest.raises(ZfprobeError, match="capture must be"):
        zfprobe.attach(extra.SinNet().eval(), (3, 8, 8), capture="jit")


# --------------------------------------------------------------------------------------------
# refusals name the module path and the operation, before any computation


@pytest.mark.filterwarnings("ignore::UserWarning")  # (the fallback from torch.fx to the ONNX route)
def test_control_flow_on_tensor_values_is_refused():
    with pytest.raises(ZfprobeError) as err:
        zfprobe.attach(extra.BranchyNet().eval(), (3, 8, 8))
    assert "module 'gate'" in str(err.value) and "bool" in str(err.value)
    zfprobe.attach(extra.BranchyNet().eval(), (3, 8, 8), strict=False)  # accepted when asked


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_op_without_onnx_form_is_refused_with_module_path():
    with pytest.raises(ZfprobeError) as err:
        zfprobe.attach(extra.OddOpNet().eval(), (3, 8, 8))
    assert "body.1" in str(err.value) and "i0" in str(err.value)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_op_without_reversal_is_refused_with_module_path():
    probe = zfprobe.attach(extra.SinNet().eval(), (3, 8, 8))
    x = np.zeros((1, 3, 8, 8), np.float32)
    assert probe.activations(x, "conv2").shape == (1, 4, 4, 4)       # forward works
    with pytest.raises(UnsupportedOpError) as err:
        probe.project(x, "conv2", np.ones((1, 4, 4, 4), np.float32))
    assert "head" in str(err.value) and "Sin" in str(err.value)


# --------------------------------------------------------------------------------------------
# the torch backend agrees with onnxruntime op by op (geometry corner cases)


def _single_op_models():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)

    def model(nodes, shape, inits):
        g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    shape = (1, 3, 11, 11)
    cases = {}
    for key, (w, attrs) in {
        "conv_asym": ((4, 3, 5, 5), dict(strides=[2, 2], pads=[1, 2, 2, 0])),
        "conv_tail": ((4, 3, 3, 3), dict(strides=[3, 3])),
        "conv_dilated": ((4, 3, 3, 3), dict(dilations=[2, 3], pads=[2, 3, 2, 3])),
        "conv_depthwise": ((3, 1, 3, 3), dict(group=3, strides=[2, 2], pads=[1, 1, 1, 1])),
        "conv_same_upper": ((4, 3, 4, 4), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    }.items():
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])]
        cases[key] = model(nodes, shape, {"w": rng.randn(*w)})
    for key, attrs in {
        "maxpool_overlap": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        "maxpool_asym": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 0]),
        "maxpool_ceil": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        "avgpool_asym": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
        "avgpool_incl": dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1),
    }.items():
        op = "MaxPool" if key.startswith("max") else "AveragePool"
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node(op, ["c"], ["y"], **attrs)]
        cases[key] = model(nodes, shape, {"w": rng.randn(4, 3, 3, 3)})
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("LRN", ["c"], ["l"], size=5, alpha=0.5, beta=0.75, bias=2.0),
             helper.make_node("LeakyRelu", ["l"], ["r"], alpha=0.2),
             helper.make_node("GlobalMaxPool", ["r"], ["y"])]
    cases["lrn_leaky_gmp"] = model(nodes, shape, {"w": rng.randn(6, 3, 3, 3)})
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("PRelu", ["c", "s"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    cases["prelu_gemm"] = model(nodes, shape, {"w": rng.randn(4, 3, 3, 3), "s": rng.rand(4, 1, 1) * 0.3,
                                               "g": rng.randn(5, 4 * 9 * 9)})
    return cases, shape


def test_torch_backend_agrees_with_onnxruntime_on_corner_cases(tmp_path):
    import onnx

    cases, shape = _single_op_models()
    x = np.random.RandomState(1).randn(2, *shape[1:]).astype(np.float32)
    for key, model in cases.items():
        path = tmp_path / f"{key}.onnx"
        onnx.save(model, str(path))
        ort_probe = zfprobe.load(str(path))
        torch_probe = zfprobe.load(str(path), backend="torch")
        assert torch_probe.backend.name == "torch" and isinstance(torch_probe.backend, TorchBackend)
        ya = ort_probe.activations(x, "y")
        _close(torch_probe.activations(x, "y"), ya, 1e-5)
        seeds = np.random.RandomState(2).randn(3, *ya.shape[1:]).astype(np.float32)
        for rule in RULES:
            for lrn in (("identity", "gradient") if key.startswith("lrn") else ("identity",)):
                _close(torch_probe.project(x, "y", seeds, np.array([0, 1, 1]), rule=rule, lrn=lrn),
                       ort_probe.project(x, "y", seeds, np.array([0, 1, 1]), rule=rule, lrn=lrn), 1e-5)


# --------------------------------------------------------------------------------------------
# analyses run unchanged on an attached model


def test_analyses_run_on_an_attached_model(zoo, tmp_path):
    case = zoo.torch_net("zfnet_small")
    probe = _probe(case)
    vis = probe.visualize(case.images[:1], "conv5", top=4)
    assert vis.projections.shape == (4, 3, 64, 64)
    files = vis.save(str(tmp_path / "vis"), probe)
    assert any(f.endswith("contact_sheet.png") for f in files)
    try:
        from zfprobe.io.datasets import ArrayDataset
        from zfprobe.studies.mining.compute import mine
    except ImportError:
        mine = None
    if mine is not None:
        images = np.concatenate([case.images, case.images[:, :, ::-1]]).copy()
        result = mine(probe, ArrayDataset(None, probe.preprocessing, probe.input_shape, array=images), ["conv5"], k=2,
                      position="any")  # the oracle below is the plain max over every position
        assert result.images_seen == 4
        ref = probe.activations(images, "conv5").reshape(4, 32, -1).max(axis=2)
        assert set(result.layers) == {"conv5"}
        top = result.layers["conv5"]
        np.testing.assert_allclose(np.asarray(top.values)[:, 0], ref.max(axis=0), rtol=1e-5)
    try:
        from zfprobe.studies.occlusion import occlude
    except ImportError:
        pytest.skip("occlusion not available")
    result = occlude(probe, case.images[:1], "conv5", size=16, stride=16)
    assert result is not None


# --------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_module_runs_on_its_device():
    module = nets.resnet_bn()
    cpu_probe = zfprobe.attach(copy.deepcopy(module), (3, 64, 64))
    module = module.cuda()
    probe = zfprobe.attach(module, (3, 64, 64))
    assert probe.backend.device.startswith("cuda")
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    acts = probe.activations(x, "layer2")
    seeds, seed_image = _seeds(acts, 2)
    for rule in RULES:
        _close(probe.project(x, "layer2", seeds, seed_image, rule=rule),
               cpu_probe.project(x, "layer2", seeds, seed_image, rule=rule), 1e-3)
    with torch.no_grad():
        module.conv1.weight.mul_(2.0)
    assert np.abs(probe.project(x, "layer2", seeds, seed_image) -
                  cpu_probe.project(x, "layer2", seeds, seed_image)).max() > 1e-3
