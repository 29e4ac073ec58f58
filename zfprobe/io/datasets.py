"""Datasets for dataset-wide analyses (mining): a folder of images or an array file, streamed.

* **Folder**: every file below it (recursively, sorted by relative path) whose extension Pillow
  can read (jpg, png, bmp, gif, tiff, webp, ...). Files that fail to decode are skipped with a
  warning and counted (``skipped``), never a crash. Each image goes through the model's
  :class:`~zfprobe.io.preprocess.Preprocessing` exactly as ``visualize`` does it.
* **Array file** (``.npy``, ``.npz``): ``uint8`` pixels ``[N, H, W]`` or ``[N, H, W, C]`` are
  preprocessed like image files (resized if their size differs); a floating-point array whose
  per-item shape equals the model input (e.g. ``[N, 1, 28, 28]``) is taken as already
  preprocessed model input; other float arrays are pixel values 0..255. ``.npy`` files are
  memory-mapped; in a ``.npz`` the array ``images`` (else ``x``, else the first one) is used
  and read into memory (use ``.npy`` for arrays larger than memory).

* **List of paths** (``.txt``): one image file per line, absolute or relative to the list's
  folder (blank lines and ``#`` comments ignored), in the list's order. Missing or unreadable
  files are skipped like a folder's.
* **Array shards**: a folder of ``.npy`` files (and no images), taken in sorted order as one
  array; each shard is memory-mapped, batches run across shard boundaries.

Batches are produced one at a time, so memory does not grow with the dataset. Array datasets
pickle as their file names (a worker process re-maps the files instead of receiving a copy).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from zfprobe.errors import ImageError, ZfprobeError
from zfprobe.io.images import fit_image, to_display
from zfprobe.io.images import image_extensions as _safe_extensions
from zfprobe.io.preprocess import Preprocessing, read_pixels


MIN_FILES_FOR_PROCESSES = 256  # fewer files: starting decoder processes costs more than it saves


class DatasetError(ZfprobeError):
    """A dataset that cannot be used (missing, empty, no readable images, bad array)."""


def image_extensions() -> set[str]:
    """Extensions of the image formats zfprobe opens (Pillow's, minus those that shell out)."""
    return _safe_extensions()


@dataclass
class Batch:
    """``tensors`` [B, *input] for dataset items ``indices`` (skipped items are left out)."""

    indices: np.ndarray
    tensors: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)


class Dataset:
    """Base class: ``len(ds)`` items, each with a name; batches in index order."""

    prep: Preprocessing

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(display RGB uint8 [H, W, 3], model input [1, *input]) of one item."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class ImageFolder(Dataset):
    """``exclude``: folders below ``root`` to leave out (e.g. the run's own output folder).
    ``decoders``: processes that decode files for :meth:`batches` (0: in the calling thread;
    None: :func:`decoder_processes`, from ``MIN_FILES_FOR_PROCESSES`` files on)."""

    decoders: int | None = None  # also for subclasses that set up their own file list

    def __init__(self, root: str, prep: Preprocessing, exclude: tuple[str, ...] = (), decoders: int | None = None):
        self.root = os.path.abspath(root)
        self.prep = prep
        self.decoders = decoders
        exts = image_extensions()
        files, ignored = [], 0
        skip = {os.path.realpath(e) for e in exclude}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and os.path.realpath(os.path.join(dirpath, d)) not in skip)
            for f in filenames:
                if f.startswith("."):
                    continue
                if os.path.splitext(f)[1].lower() in exts:
                    files.append(os.path.relpath(os.path.join(dirpath, f), self.root))
                else:
                    ignored += 1
        self.files = sorted(files)
        self.ignored = ignored
        if not self.files:
            what = f" ({ignored} file(s) with extensions Pillow does not read)" if ignored else ""
            raise DatasetError(f"no images in '{root}'{what}; give a folder of image files or a .npy / .npz array")

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return self.files[index]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = read_pixels(os.path.join(self.root, self.files[index]), self.prep)
        return to_display(pixels), self.prep.to_tensor(pixels)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Batch]:
        workers = int(self.decoders) if self.decoders is not None else \
            (decoder_processes() if len(self) - start >= MIN_FILES_FOR_PROCESSES else 0)
        paths = [os.path.join(self.root, f) for f in self.files]
        decoded = _decode_in_processes(paths, start, self.prep, workers, batch_size) if workers > 0 else \
            ((i, *decode_file(paths[i], self.prep)) for i in range(start, len(self)))
        idx, tensors, skipped = [], [], []
        for i, tensor, reason in decoded:
            if reason is None:
                tensors.append(tensor)
                idx.append(i)
            else:
                skipped.append((i, reason))
            if i + 1 == len(self) or (i + 1 - start) % batch_size == 0:
                arr = np.stack(tensors) if tensors else np.zeros((0,), np.float32)
                yield Batch(np.asarray(idx, np.int64), arr, skipped)
                idx, tensors, skipped = [], [], []

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.root.encode())
        for f in self.files:
            try:
                st = os.stat(os.path.join(self.root, f))
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:  # a listed file that is missing: skipped when read
                h.update(f"{f}\0missing\n".encode())
        h.update(json.dumps(self.prep.to_dict(), sort_keys=True, default=list).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": "folder", "path": self.root, "images": len(self.files), "ignored_files": self.ignored}


class PathList(ImageFolder):
    """A text file of image paths, one per line (absolute, or relative to the list's folder)."""

    def __init__(self, list_path: str, prep: Preprocessing):
        self.list_path = os.path.abspath(list_path)
        self.root = os.path.dirname(self.list_path)
        self.prep = prep
        self.ignored = 0
        try:
            with open(self.list_path, encoding="utf-8") as fh:
                lines = [line.strip() for line in fh]
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read the list of images '{list_path}': {exc}") from None
        self.files = [line for line in lines if line and not line.startswith("#")]
        if not self.files:
            raise DatasetError(f"the list '{list_path}' names no image files; write one path per line")
        if not any(os.path.isfile(os.path.join(self.root, f)) for f in self.files):  # stops at the first file found
            raise DatasetError(f"none of the {len(self.files)} path(s) in '{list_path}' is a file; a .txt DATA is a "
                               "list of image paths, one per line")

    def describe(self) -> dict:
        return {"kind": "list", "path": self.list_path, "images": len(self.files), "ignored_files": 0}


def decode_file(path: str, prep: Preprocessing) -> tuple[np.ndarray | None, str | None]:
    """(model input [*input], None) of one image file, or (None, why it cannot be read)."""
    try:
        return prep.to_tensor(read_pixels(path, prep))[0], None
    except ImageError as exc:
        return None, str(exc)


def decoder_processes() -> int:
    """How many processes decode image files: ``ZFPROBE_DECODERS``, else none on up to 2 cores
    (the forward pass needs them; one decoding thread keeps up) and half the cores above that,
    up to 8. Decoding holds the GIL for much of its time (two decoding threads are no faster than
    one), so more decoding throughput needs processes, not threads."""
    want = os.environ.get("ZFPROBE_DECODERS")
    if want:
        try:
            n = int(want)
        except ValueError:
            raise DatasetError(f"ZFPROBE_DECODERS='{want}' is not a whole number") from None
        if n < 0:
            raise DatasetError(f"ZFPROBE_DECODERS='{want}' must be 0 (decode in the calling thread) or more")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(8, cores // 2)


def _quiet_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, not each worker's


def _decode_in_processes(paths: list[str], start: int, prep: Preprocessing, workers: int,
                         batch_size: int) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """:func:`decode_file` of ``paths[start:]`` in ``workers`` processes, in order; at most
    two batches (and two files per worker) are decoded ahead, so memory stays bounded."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    ahead = 2 * max(batch_size, workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker)
    window: deque = deque()
    todo = iter(range(start, len(paths)))
    try:
        for i in todo:
            window.append((i, pool.submit(decode_file, paths[i], prep)))
            if len(window) >= ahead:
                break
        while window:
            i, future = window.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                window.append((nxt, pool.submit(decode_file, paths[nxt], prep)))
            yield (i, *future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ArrayDataset(Dataset):
    def __init__(self, path: str | None, prep: Preprocessing, input_shape: tuple[int, ...], key: str | None = None,
                 array: np.ndarray | None = None):
        self.path = os.path.abspath(path) if path else None
        self.prep = prep
        self.key = key
        if array is None:
            array, self.key = _open_array(path, key)
        if array.ndim == 0 or array.dtype.kind not in "biuf":
            raise DatasetError(f"cannot use the array in '{path}' ({array.dtype}, shape {array.shape}) as images: "
                               "give real-valued pixels [N, H, W] or [N, H, W, C], or model inputs [N, ...]")
        if array.ndim >= 3 and 0 in array.shape[1:3]:
            raise DatasetError(f"the array in '{path}' has shape {array.shape}: its images have no pixels")
        self.array = array
        self.input_shape = tuple(input_shape)
        self.preprocessed = array.dtype.kind == "f" and tuple(array.shape[1:]) == self.input_shape[1:]
        if len(array) == 0:
            raise DatasetError(f"the array in '{path}' holds no images")
        if not self.preprocessed:
            if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3, 4)):
                raise DatasetError(
                    f"cannot use an array of shape {array.shape} ({array.dtype}) as images: give uint8 pixels "
                    f"[N, H, W] or [N, H, W, C], or model inputs [N, {', '.join(map(str, self.input_shape[1:]))}]")

    def __getstate__(self):
        if self.path and self.path.lower().endswith(".npy"):  # re-mapped where unpickled, not copied
            return {"reopen": (self.path, self.prep, self.input_shape, self.key)}
        return self.__dict__

    def __setstate__(self, state):
        if "reopen" in state:
            self.__init__(*state["reopen"])
        else:
            self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.array)

    def name(self, index: int) -> str:
        base = os.path.basename(self.path) if self.path else "array"
        return f"{base}[{index}]"

    def _pixels(self, raw: np.ndarray) -> np.ndarray:
        from PIL import Image

        x = raw
        if x.dtype != np.uint8:
            x = np.clip(np.round(x.astype(np.float64)), 0, 255).astype(np.uint8)
        if x.ndim == 2:
            x = x[..., None]
        if x.shape[2] == 4:
            x = x[..., :3]
        want_c = self.prep.channels
        if x.shape[2] != want_c:
            x = np.repeat(x, 3, axis=2) if want_c == 3 else np.round(x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None].astype(np.uint8)
        if tuple(x.shape[:2]) != tuple(self.prep.size):
            im = Image.fromarray(x[..., 0] if x.shape[2] == 1 else x)
            x = np.asarray(fit_image(im, self.prep.size, self.prep.resize), np.uint8)
            if x.ndim == 2:
                x = x[..., None]
        return x

    def _tensor(self, raw: np.ndarray) -> np.ndarray:
        if self.preprocessed:
            return np.asarray(raw, np.float32)
        return self.prep.to_tensor(self._pixels(raw))[0]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raw = np.asarray(self.array[index])
        if self.preprocessed:
            t = np.asarray(raw, np.float32)[None]
            return self.prep.to_display(t[0]), t
        pixels = self._pixels(raw)
        return to_display(pixels), self.prep.to_tensor(pixels)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Batch]:
        for lo in range(start, len(self), batch_size):
            hi = min(lo + batch_size, len(self))
            raw = np.asarray(self.array[lo:hi])
            if self.preprocessed:
                tensors = np.ascontiguousarray(raw, dtype=np.float32)
            elif raw.dtype == np.uint8 and tuple(raw.shape[1:3]) == tuple(self.prep.size) and (
                    raw.ndim == 3 and self.prep.channels == 1 or raw.ndim == 4 and raw.shape[3] == self.prep.channels):
                tensors = _batch_to_tensor(raw, self.prep)  # fast path: vectorized preprocessing
            else:
                tensors = np.stack([self._tensor(r) for r in raw])
            indices = np.arange(lo, hi, dtype=np.int64)
            skipped = []
            if raw.dtype.kind == "f":  # NaN / inf items would poison every top-k they enter
                finite = np.isfinite(raw.reshape(len(raw), -1)).all(axis=1)
                if not finite.all():
                    skipped = [(int(i), "holds NaN or infinite values") for i in indices[~finite]]
                    indices, tensors = indices[finite], tensors[finite]
            yield Batch(indices, tensors, skipped)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        if self.path:
            st = os.stat(self.path)
            h.update(f"{self.path}\0{st.st_size}\0{st.st_mtime_ns}\0{self.key}".encode())
        else:
            h.update(np.ascontiguousarray(self.array).tobytes())
        h.update(json.dumps(self.prep.to_dict(), sort_keys=True, default=list).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": "array", "path": self.path, "key": self.key, "images": len(self),
                "shape": list(self.array.shape), "dtype": str(self.array.dtype), "preprocessed": self.preprocessed}


class ArrayShards(Dataset):
    """``.npy`` files of one folder (sorted by relative path) as one dataset; item ``i`` is row
    ``i - offset`` of the shard it falls in, preprocessed as :class:`ArrayDataset` does."""

    def __init__(self, root: str, prep: Preprocessing, input_shape: tuple[int, ...], files: list[str] | None = None):
        self.root = os.path.abspath(root)
        self.prep = prep
        self.input_shape = tuple(input_shape)
        self.files = sorted(files) if files is not None else _npy_files(self.root)
        if not self.files:
            raise DatasetError(f"no .npy shards in '{root}'")
        self.shards = [ArrayDataset(os.path.join(self.root, f), prep, input_shape) for f in self.files]
        kinds = {(s.preprocessed, s.array.shape[1:]) for s in self.shards}
        if len(kinds) > 1:
            raise DatasetError(f"the .npy shards in '{root}' differ in item shape or kind: "
                               + ", ".join(f"{f} {list(s.array.shape)} {s.array.dtype}" for f, s in zip(self.files, self.shards)))
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)

    def __getstate__(self):
        return {"reopen": (self.root, self.prep, self.input_shape, self.files)}

    def __setstate__(self, state):
        self.__init__(*state["reopen"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return shard, int(index - self.offsets[shard])

    def name(self, index: int) -> str:
        shard, row = self._locate(index)
        return f"{self.files[shard]}[{row}]"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        shard, row = self._locate(index)
        return self.shards[shard].load(row)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Batch]:
        for lo in range(start, len(self), batch_size):
            hi = min(lo + batch_size, len(self))
            parts = []
            first, _ = self._locate(lo)
            for s in range(first, len(self.shards)):
                a, b = max(lo, int(self.offsets[s])), min(hi, int(self.offsets[s + 1]))
                if a >= b:
                    if self.offsets[s] >= hi:
                        break
                    continue
                part = next(self.shards[s].batches(b - a, a - int(self.offsets[s])))
                part.indices = part.indices + self.offsets[s]
                part.skipped = [(int(i + self.offsets[s]), r) for i, r in part.skipped]
                parts.append(part)
            kept = [p for p in parts if len(p.indices)]
            tensors = np.concatenate([p.tensors for p in kept]) if kept else np.zeros((0,), np.float32)
            indices = np.concatenate([p.indices for p in kept]) if kept else np.zeros((0,), np.int64)
            yield Batch(indices.astype(np.int64), tensors, [x for p in parts for x in p.skipped])

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.root.encode())
        for shard in self.shards:
            h.update(shard.fingerprint().encode())
        return h.hexdigest()

    def describe(self) -> dict:
        first = self.shards[0]
        return {"kind": "array_shards", "path": self.root, "shards": self.files, "images": len(self),
                "shape": [len(self), *first.array.shape[1:]], "dtype": str(first.array.dtype),
                "preprocessed": first.preprocessed}


def _npy_files(root: str, exclude: tuple[str, ...] = ()) -> list[str]:
    out = []
    skip = {os.path.realpath(e) for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in skip)
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames
                if f.lower().endswith(".npy") and not f.startswith(".")]
    return sorted(out)


def _has_images(root: str, exclude: tuple[str, ...] = ()) -> bool:
    exts = image_extensions()
    skip = {os.path.realpath(e) for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in skip]
        if any(os.path.splitext(f)[1].lower() in exts for f in filenames if not f.startswith(".")):
            return True
    return False


def _batch_to_tensor(raw: np.ndarray, prep: Preprocessing) -> np.ndarray:
    x = raw.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if prep.channels == 3 and prep.channel_order.upper() == "BGR":
        x = x[..., ::-1]
    x = (x * prep.scale - prep.per_channel(prep.mean)) / prep.per_channel(prep.std)
    if prep.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _array_file_errors() -> tuple[type[BaseException], ...]:
    """What numpy raises on a damaged .npy / .npz: its header is parsed as a Python literal and a
    .npz is a zip, so besides OSError / ValueError a tokenizer, syntax or zip error can come out."""
    import tokenize
    import zipfile

    return (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile, KeyError,
            MemoryError, OverflowError)


ARRAY_FILE_ERRORS = _array_file_errors()


def _open_array(path: str, key: str | None) -> tuple[np.ndarray, str | None]:
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if not names:
                raise DatasetError(f"'{path}' holds no arrays")
            if key is None:
                key = next((k for k in ("images", "x", "X", "data") if k in names), names[0])
            elif key not in names:
                raise DatasetError(f"'{path}' has no array '{key}'; it has {', '.join(names)}")
            return z[key], key
    except DatasetError:
        raise
    except ARRAY_FILE_ERRORS as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"cannot read the array file '{path}': {msg}") from None


def open_dataset(path: str, prep: Preprocessing, input_shape: tuple[int, ...], key: str | None = None,
                 exclude: tuple[str, ...] = ()) -> Dataset:
    """A folder of images, a folder of .npy shards, a .txt list of image paths or a .npy / .npz
    array file (see the module docstring); ``exclude``:
    folders inside it that are not data (the output folder of the run)."""
    if prep is None:
        raise DatasetError("this model's input is not an image batch; zfprobe cannot mine it")
    if os.path.isdir(path):
        shards = _npy_files(path, exclude)
        if shards and not _has_images(path, exclude):
            return ArrayShards(path, prep, input_shape, shards)
        return ImageFolder(path, prep, exclude)
    if not os.path.exists(path):
        raise DatasetError(f"dataset '{path}' does not exist; give a folder of images, a .txt list of image paths "
                           "or a .npy / .npz file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".npy", ".npz"):
        return ArrayDataset(path, prep, input_shape, key)
    if ext == ".txt":
        return PathList(path, prep)
    raise DatasetError(f"'{path}' is neither a folder, a .txt list of image paths nor a .npy / .npz array file")


def warn_skipped(name: str, reason: str) -> None:
    warnings.warn(f"skipped {name}: {reason}", stacklevel=2)
