"""Labelled datasets for the studies that need classes (transfer, per-layer probes, ablation).

Three forms, all streamed through :mod:`zfprobe.io.datasets` (images are decoded batch by batch):

* **a folder per class**: ``DATA/<class>/**/*.png``; the class is the first folder below DATA;
* **a CSV** of ``path,label`` rows (a header row is optional; paths relative to the CSV's folder);
* **arrays**: a ``.npz`` with an image array and a label array (``labels``, ``y``, ``targets``
  or ``label``), or a ``.npy`` image array with ``labels=`` a ``.npy`` / text file of labels.

A separate ``labels`` file (one label per item, in dataset order) may also label a plain image
folder. Labels that are all integers keep their values (so they can be a model's class indices,
as ablation needs); other labels are numbered in sorted order of their names.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from zfprobe.io.datasets import ARRAY_FILE_ERRORS, Dataset, DatasetError, ImageFolder, image_extensions, open_dataset
from zfprobe.io.preprocess import Preprocessing

LABEL_KEYS = ("labels", "y", "Y", "targets", "label")


@dataclass
class Labelled:
    """``dataset`` items with integer ``labels`` [N]; ``names[label]`` is the class's name.
    ``numeric``: the labels are the integers written in the data (e.g. a model's class ids)."""

    dataset: Dataset
    labels: np.ndarray
    names: dict[int, str]
    numeric: bool

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def counts(self) -> dict[int, int]:
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def describe(self) -> dict:
        return dict(self.dataset.describe(), classes=len(self.classes),
                    per_class={self.names[k]: v for k, v in self.counts().items()}, numeric_labels=self.numeric)


class FileList(ImageFolder):
    """An explicit list of image files (paths relative to ``root``), e.g. from a CSV."""

    def __init__(self, root: str, files: list[str], prep: Preprocessing):
        self.root = os.path.abspath(root)
        self.prep = prep
        self.files = list(files)
        self.ignored = 0
        missing = [f for f in self.files if not os.path.isfile(os.path.join(self.root, f))]
        if missing:
            raise DatasetError(f"{len(missing)} listed image(s) do not exist, e.g. '{missing[0]}'")

    def describe(self) -> dict:
        return {"kind": "file list", "path": self.root, "images": len(self.files)}


def encode_labels(raw: list) -> tuple[np.ndarray, dict[int, str], bool]:
    """Label values -> (int labels, names, numeric)."""
    text = [str(v).strip() for v in raw]
    if any(t == "" for t in text):
        raise DatasetError(f"{sum(t == '' for t in text)} item(s) have no label")
    try:
        values = [int(float(t)) if float(t) == int(float(t)) else None for t in text]
        numeric = all(v is not None for v in values)
    except (ValueError, OverflowError):  # 'abc', 'nan'; 'inf', '1e309'
        numeric = False
    if numeric:
        labels = np.asarray(values, np.int64)
        return labels, {int(v): str(int(v)) for v in np.unique(labels)}, True
    names = sorted(set(text))
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[t] for t in text], np.int64), dict(enumerate(names)), False


MAX_TABLE_BYTES = 256 << 20  # a label or list file larger than this is not one


def read_text(path: str, what: str) -> str:
    """The text of a small UTF-8 file (a BOM allowed): one line ``zfprobe: error`` for a file
    that is missing, binary, not UTF-8 or too large. Every label, list and parts file is read
    through here (no command decodes one on its own)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TABLE_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"cannot read the {what} '{path}': {exc.strerror or exc}") from None
    if len(raw) > MAX_TABLE_BYTES:
        raise DatasetError(f"the {what} '{path}' is over {MAX_TABLE_BYTES >> 20} MB; it is not a {what}")
    if b"\0" in raw:
        raise DatasetError(f"the {what} '{path}' is a binary file, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"the {what} '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def read_text_table(path: str, what: str) -> list[list[str]]:
    """The non-empty CSV rows of the text file ``path`` (see :func:`read_text`)."""
    text = read_text(path, what)
    try:
        return [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        raise DatasetError(f"the {what} '{path}' is not valid CSV ({exc})") from None


def read_label_file(path: str) -> list:
    """Labels from a ``.npy`` array or a text file (one per line, or the last CSV column)."""
    if not os.path.isfile(path):
        raise DatasetError(f"label file '{path}' does not exist")
    if path.lower().endswith(".npy"):
        try:
            return list(np.load(path, allow_pickle=False).reshape(-1))
        except ARRAY_FILE_ERRORS as exc:
            raise DatasetError(f"cannot read labels from '{path}': {exc}") from None
    rows = read_text_table(path, "label file")
    if not rows:
        raise DatasetError(f"the label file '{path}' holds no labels; write one label per line")
    return [r[-1] for r in rows]


def open_labelled(path: str, prep: Preprocessing, input_shape: tuple[int, ...], labels: str | None = None,
                  array_key: str | None = None, label_key: str | None = None) -> Labelled:
    """Open a labelled dataset in any of the module's forms (checked: labels present, counts match)."""
    if prep is None:
        raise DatasetError("this model's input is not an image batch; zfprobe cannot read a dataset for it")
    if not os.path.exists(path):
        raise DatasetError(f"dataset '{path}' does not exist; give a folder per class, a CSV of path,label, or a .npz")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv" and labels is None:
        return _from_csv(path, prep)
    if os.path.isdir(path) and labels is None:
        return _from_class_folders(path, prep)
    if ext == ".npz" and labels is None:
        dataset = open_dataset(path, prep, input_shape, array_key)
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = [label_key] if label_key else [k for k in LABEL_KEYS if k in z.files]
                if not keys or keys[0] not in z.files:
                    raise DatasetError(f"'{path}' has no label array (looked for {', '.join(label_key and [label_key] or LABEL_KEYS)}; "
                                       f"it has {', '.join(z.files)}); name it 'labels' or give --labels")
                raw = list(np.asarray(z[keys[0]]).reshape(-1))
        except DatasetError:
            raise
        except ARRAY_FILE_ERRORS as exc:
            raise DatasetError(f"cannot read labels from '{path}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return _checked(dataset, raw, path)
    if labels is None:
        raise DatasetError(f"'{path}' carries no labels: give --labels FILE (one label per item), or use a folder "
                           "per class, a CSV of path,label, or a .npz with a 'labels' array")
    dataset = open_dataset(path, prep, input_shape, array_key)
    return _checked(dataset, read_label_file(labels), labels)


def _checked(dataset: Dataset, raw: list, where: str) -> Labelled:
    if len(raw) != len(dataset):
        raise DatasetError(f"{len(raw)} label(s) in '{where}' for {len(dataset)} item(s); give one label per item")
    values, names, numeric = encode_labels(raw)
    return Labelled(dataset, values, names, numeric)


def _from_class_folders(root: str, prep: Preprocessing) -> Labelled:
    dataset = ImageFolder(root, prep)
    loose = [f for f in dataset.files if os.sep not in f]
    if loose:
        raise DatasetError(f"'{root}' has {len(loose)} image(s) outside class folders (e.g. '{loose[0]}'): labels are "
                           "missing; put each class in its own subfolder or give --labels FILE")
    return _checked(dataset, [f.split(os.sep, 1)[0] for f in dataset.files], root)


def _from_csv(path: str, prep: Preprocessing) -> Labelled:
    rows = read_text_table(path, "labelled image list")
    if rows and rows[0] and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    if not rows:
        raise DatasetError(f"'{path}' lists no images")
    short = [i for i, r in enumerate(rows) if len(r) < 2 or not r[1].strip()]
    if short:
        raise DatasetError(f"'{path}' row {short[0] + 1} has no label; write path,label on every row")
    exts = image_extensions()
    bad = [r[0] for r in rows if os.path.splitext(r[0])[1].lower() not in exts]
    if bad:
        raise DatasetError(f"'{path}' lists '{bad[0]}', which is not an image file Pillow reads")
    dataset = FileList(os.path.dirname(os.path.abspath(path)), [r[0].strip() for r in rows], prep)
    return _checked(dataset, [r[1] for r in rows], path)


def subset_dataset(labelled: Labelled, input_shape, indices: np.ndarray) -> np.ndarray:
    """Model inputs [len(indices), *input] of the given items (for small training sets)."""
    return np.concatenate([labelled.dataset.load(int(i))[1] for i in indices]) if len(indices) else \
        np.zeros((0,) + tuple(input_shape[1:]), np.float32)


__all__ = ["Labelled", "FileList", "open_labelled", "encode_labels", "read_label_file", "read_text",
           "read_text_table",
           "subset_dataset"]
