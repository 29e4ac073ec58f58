"""GPU paths: onnxruntime's CUDA provider gives the CPU's projections.

Skipped cleanly where onnxruntime-gpu or a GPU is missing (CI has none); run on a GPU machine
with `pip install -e '.[gpu]'` (instead of `[cpu]`) and `pytest -m gpu`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import zfprobe
from zfprobe.adapters.backends.onnxruntime_backend import _cuda_device_present, available_providers

MODEL = Path(__file__).resolve().parents[2] / "zfprobe" / "data" / "mnist_cnn.onnx"

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in available_providers() or not _cuda_device_present(),
    reason="needs onnxruntime-gpu and an NVIDIA GPU",
)


@needs_cuda
@pytest.mark.parametrize("rule", ["deconvnet", "gradient", "guided"])
def test_cuda_projection_equals_cpu(rule):
    x = np.random.RandomState(0).rand(1, 1, 28, 28).astype(np.float32)
    cpu = zfprobe.load(MODEL, device="cpu")
    gpu = zfprobe.load(MODEL, device="cuda")
    assert gpu.backend.device == "cuda"
    acts = cpu.activations(x, "relu3")
    seeds = np.zeros((16,) + acts.shape[1:], np.float32)
    for c in range(16):
        seeds[c, c] = acts[0, c]
    a = cpu.project(x, "relu3", seeds, rule=rule)
    b = gpu.project(x, "relu3", seeds, rule=rule)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())


def test_device_cuda_without_gpu_is_a_clear_error():
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("onnxruntime here has a CUDA provider")
    with pytest.raises(zfprobe.ZfprobeError, match="no CUDA provider"):
        zfprobe.load(MODEL, device="cuda")
