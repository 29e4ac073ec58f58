"""GPU paths of the torch backend: projections computed on a CUDA device equal the CPU oracle.

The oracle is torch autograd on the CPU with each rectifier's backward replaced by the rule
(tests/oracle.py), never zfprobe's own output. Skipped cleanly without torch or a CUDA device (CI
has none); run with ``pytest -m gpu`` on a machine with one (see README, "On a GPU").

cuDNN runs float32 convolutions in TF32 by default; the torch backend switches that off while
it runs, so the tolerance here is float32's (1e-4 of the largest value), and one test proves that
the user's TF32 setting is restored afterwards.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle  # noqa: E402
import zfprobe  # noqa: E402

# ZFPROBE_GPU_TEST_DEVICE=cpu runs the same checks on the CPU (to try them without a GPU)
DEVICE = os.environ.get("ZFPROBE_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs torch with a CUDA device")]

RULES = ("deconvnet", "gradient", "guided")
TOL = 1e-4
NET_LAYERS = {"zfnet_small": ["conv5", "pool2"], "resnet_bn": ["layer2"], "densenet_small": ["block2"],
              "mobilenet_small": ["blocks.4"], "digit_recognizer": ["conv_layers.7"]}


def _rel_err(a, b) -> float:
    return float(np.abs(a - b).max()) / max(1e-12, float(np.abs(b).max()))


def _on_cuda(module):
    return copy.deepcopy(module).to(DEVICE).eval()


@pytest.mark.parametrize("name", sorted(NET_LAYERS))
def test_attached_module_on_cuda_equals_cpu_autograd_oracle(zoo, name):
    case = zoo.torch_net(name)
    probe = zfprobe.attach(_on_cuda(case.module), case.images[:1])
    assert probe.backend.device.startswith(DEVICE)
    lrn = "gradient" if name.startswith("zfnet") else "identity"  # the oracle differentiates LRN
    for layer in NET_LAYERS[name]:
        acts = probe.activations(case.images, layer)
        np.testing.assert_allclose(acts, oracle.module_activations(case.module, case.images, layer),
                                   rtol=0, atol=TOL * max(1.0, float(np.abs(acts).max())))
        channels = [0, acts.shape[1] // 2, acts.shape[1] - 1]
        seeds, seed_image = oracle.unit_seeds(acts, channels, [0, len(case.images) - 1, 0])
        refs = oracle.oracle_from_module(case.module, case.images, layer, seeds, seed_image, rule=RULES)
        for rule in RULES:
            ours = probe.project(case.images, layer, seeds, seed_image, rule=rule, lrn=lrn)
            assert np.abs(refs[rule]).max() > 0
            assert _rel_err(ours, refs[rule]) <= TOL, (name, layer, rule, _rel_err(ours, refs[rule]))


@pytest.fixture(scope="module")
def lite0_photos():
    """Two real ImageNet photos, preprocessed as the EfficientNet-Lite0 file says (loaded once)."""
    from efficientnet_lite0 import imagenet_photos, onnx_path

    probe = zfprobe.load(str(onnx_path()))
    return np.concatenate([probe.load_input(str(p))[1] for p, _ in imagenet_photos()[:2]])


@pytest.fixture(scope="module")
def lite0_export(tmp_path_factory):
    """EfficientNet-Lite0 exported to ONNX: the oracle's copy (its stem and head clamp with
    ``torch.clamp``, which the module oracle cannot patch, so the ONNX oracle is used)."""
    from efficientnet_lite0 import export_onnx

    path = tmp_path_factory.mktemp("lite0") / "lite0.onnx"
    return path, export_onnx(path)


@pytest.mark.parametrize("layer", ["_blocks.3"])
def test_efficientnet_lite0_on_cuda_equals_cpu_autograd_oracle(lite0_export, lite0_photos, layer):
    """A real ImageNet net (ReLU6, depthwise convs, asymmetric SAME pads) on real photos, attached
    live. Deeper layers are in tests/engine/test_exactness.py's torch-cuda rows, judged against float64
    with boundary flips proven: there, float32 on the GPU and on the CPU can put a ReLU6 input on
    different sides of 0 or 6 (measured: _conv_head, gradient rule, 8e-3 between any float32
    result, torch's own autograd included, and float64), which a float32 oracle cannot judge."""
    from efficientnet_lite0 import build_module

    path, tensors = lite0_export
    images = lite0_photos
    probe = zfprobe.attach(_on_cuda(build_module()), images[:1])
    acts = probe.activations(images, layer)
    seeds, seed_image = oracle.unit_seeds(acts, [0, 7, acts.shape[1] - 1], [0, 1, 1])
    refs = oracle.oracle_from_onnx(str(path), images, tensors[layer], seeds, seed_image, rule=RULES)
    for rule in RULES:
        ours = probe.project(images, layer, seeds, seed_image, rule=rule)
        assert np.abs(refs[rule]).max() > 0
        assert _rel_err(ours, refs[rule]) <= TOL, (layer, rule, _rel_err(ours, refs[rule]))


def test_onnx_file_on_torch_cuda_equals_onnxruntime_cpu(lite0_photos):
    """The same ONNX file: torch kernels on the GPU against onnxruntime on the CPU (independent).
    Two float32 programs 30 convolutions deep can take a ReLU6 boundary differently (measured
    1.2e-4 between torch and onnxruntime on the CPU), hence 1e-3 here; the oracle tests above
    hold 1e-4."""
    from efficientnet_lite0 import onnx_path

    images = lite0_photos
    cpu = zfprobe.load(str(onnx_path()), device="cpu")
    gpu = zfprobe.load(str(onnx_path()), backend="torch", device=DEVICE)
    assert gpu.backend.device.startswith(DEVICE) and cpu.backend.name == "onnxruntime"
    layer = [n for n in cpu.layer_names() if "_blocks.10" in n][-1]
    acts = cpu.activations(images, layer)
    assert _rel_err(gpu.activations(images, layer), acts) <= TOL
    seeds, seed_image = oracle.unit_seeds(acts, [1, 5, 9], [0, 1, 0])
    for rule in RULES:
        a = cpu.project(images, layer, seeds, seed_image, rule=rule)
        b = gpu.project(images, layer, seeds, seed_image, rule=rule)
        assert _rel_err(b, a) <= 1e-3, (rule, _rel_err(b, a))


def test_tf32_is_off_while_projecting_and_the_users_setting_is_restored(zoo):
    case = zoo.torch_net("zfnet_small")
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = "tf32"  # as a user who wants fast training would have it
    try:
        probe = zfprobe.attach(_on_cuda(case.module), case.images[:1])
        acts = probe.activations(case.images, "conv5")
        seeds, seed_image = oracle.unit_seeds(acts, [3], [0])
        ours = probe.project(case.images, "conv5", seeds, seed_image, rule="gradient", lrn="gradient")
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = before
    ref = oracle.oracle_from_module(case.module, case.images, "conv5", seeds, seed_image, rule="gradient")
    assert _rel_err(ours, ref) <= TOL


def test_mining_on_cuda_equals_cpu(tmp_path):
    """`mine` through the torch backend on the GPU finds the same top-9 as onnxruntime on the CPU."""
    from zfprobe.io.datasets import open_dataset
    from zfprobe.studies.mining.compute import mine

    from pathlib import Path

    path = str(Path(zfprobe.__file__).parent / "data" / "mnist_cnn.onnx")
    cpu = zfprobe.load(path, device="cpu")
    gpu = zfprobe.load(path, backend="torch", device=DEVICE)
    digits = np.random.default_rng(0).integers(0, 255, (300, 28, 28)).astype(np.uint8)
    np.save(tmp_path / "x.npy", digits)
    ref = mine(cpu, open_dataset(str(tmp_path / "x.npy"), cpu.preprocessing, cpu.input_shape), "conv2", k=9)
    got = mine(gpu, open_dataset(str(tmp_path / "x.npy"), gpu.preprocessing, gpu.input_shape), "conv2", k=9)
    a, b = ref.layers["conv2"], got.layers["conv2"]
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)


def test_occlusion_on_cuda_takes_plain_batches_and_equals_incremental_on_the_cpu():
    """``auto`` occlusion on a GPU runs plain batches; its probability map equals the CPU's
    incremental one (onnxruntime: an independent runtime and plan)."""
    from pathlib import Path

    from zfprobe.studies.occlusion import occlude

    path = str(Path(zfprobe.__file__).parent / "data" / "mnist_cnn.onnx")
    x = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    cpu = occlude(zfprobe.load(path, device="cpu"), x, None, size=6, stride=2, method="incremental", project=False)
    gpu = occlude(zfprobe.load(path, backend="torch", device=DEVICE), x, None, size=6, stride=2, project=False)
    if DEVICE == "cuda":
        assert gpu.method == "plain"
    np.testing.assert_allclose(gpu.probability, cpu.probability, rtol=0, atol=1e-5)
