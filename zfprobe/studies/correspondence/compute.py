"""Correspondence analysis (PAPER.md section 6, Zeiler & Fergus Table 1).

The same object part (left eye, nose, ...) is occluded in every image with a square, and each
image's feature change at a layer, ``eps_i = x_i - x~_i`` (original minus occluded), is reduced to
its sign pattern. If the network ties the part to the same features in every image, the patterns
agree. The measure is

    Delta_l = sum over ordered pairs i != j of Hamming(sign(eps_i), sign(eps_j)) / (n (n - 1) D)

for n images and D features at layer l: the fraction of (pair, feature) entries whose signs
differ, from 0 (every image changes the same way) to 1 (opposite signs everywhere). Signs are
ternary: an exact zero (the feature did not change, common after a ReLU that stays off) is its
own value, so two zeros agree and a zero against a +1 or -1 differs. Lower than the baseline
means a more consistent correspondence. The baseline occludes random squares of the same size at
the same positions in every image; ``random`` draws give a mean and a spread.

The sum over pairs needs no pair loop: per feature, with c_v the number of images whose sign is
v in {-1, 0, +1}, the number of ordered pairs that agree is sum_v c_v (c_v - 1). Images stream
through the network one at a time; only these counts are kept (memory independent of n).

Part boxes are ``[x0, y0, x1, y1]`` in the pixel coordinates of the image file (x1, y1 exclusive)
and are mapped through the same resize and centre crop as the image. The occluding square (side
``size``, default the median box side after mapping) is centred on the box and filled like
``occlude``'s square (``--fill``).
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from zfprobe.errors import OptionError, ZfprobeError
from zfprobe.io.image_files import image_size
from zfprobe.studies.occlusion import fill_values


class PartsError(ZfprobeError):
    """A parts file that cannot be read or does not fit the images."""


# --------------------------------------------------------------------------------------------
# the measure


def signs(eps: np.ndarray) -> np.ndarray:
    """sign(eps) per row, flattened: int8 [n, D] in {-1, 0, 1}."""
    eps = np.asarray(eps)
    return np.sign(eps.reshape(len(eps), -1)).astype(np.int8)


def delta(eps: np.ndarray) -> float:
    """Delta of ``eps`` [n, ...] (n >= 2 feature differences); see the module docstring."""
    counts = SignCounts(int(np.prod(np.shape(eps)[1:])))
    for row in np.asarray(eps):
        counts.add(row)
    return counts.delta()


class SignCounts:
    """Per feature, how many images have sign -1, 0, +1: enough for Delta, in O(D) memory."""

    def __init__(self, size: int):
        self.counts = np.zeros((3, size), np.int64)
        self.n = 0

    def add(self, eps: np.ndarray) -> None:
        s = np.sign(np.asarray(eps).reshape(-1)).astype(np.int64) + 1
        for v in range(3):
            self.counts[v] += s == v
        self.n += 1

    def delta(self) -> float:
        n, d = self.n, self.counts.shape[1]
        if n < 2 or d == 0:
            raise OptionError("the correspondence measure needs at least 2 images")
        agree = float((self.counts * (self.counts - 1)).sum())
        pairs = float(n) * (n - 1) * d
        return (pairs - agree) / pairs


# --------------------------------------------------------------------------------------------
# parts


def read_parts(path: str) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """A parts file: JSON ``{image: {part: [x0, y0, x1, y1]}}`` or CSV ``image,part,x0,y0,x1,y1``."""
    if not os.path.isfile(path):
        raise PartsError(f"the parts file '{path}' does not exist")
    from zfprobe.io.labelled import read_text

    text = read_text(path, "parts file")
    if path.lower().endswith(".csv"):
        parts: dict = {}
        try:
            rows = list(csv.reader(text.splitlines()))
        except csv.Error as exc:
            raise PartsError(f"the parts file '{path}' is not valid CSV ({exc})") from None
        if rows and rows[0] and rows[0][0].strip().lower() == "image":
            rows = rows[1:]
        for k, row in enumerate(rows, start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 6:
                raise PartsError(f"{path}: row {k} has {len(row)} fields; write image,part,x0,y0,x1,y1")
            parts.setdefault(row[0].strip(), {})[row[1].strip()] = row[2:]
    else:
        try:
            parts = json.loads(text)
        except ValueError as exc:
            raise PartsError(f"the parts file '{path}' is not valid JSON ({exc}); write "
                             '{"image.png": {"left_eye": [x0, y0, x1, y1], ...}, ...} or a CSV') from None
    if not isinstance(parts, dict) or not parts:
        raise PartsError(f"the parts file '{path}' names no images")
    out = {}
    for image, boxes in parts.items():
        if not isinstance(boxes, dict) or not boxes:
            raise PartsError(f"{path}: image '{image}' has no parts (want {{part: [x0, y0, x1, y1]}})")
        out[str(image)] = {str(p): _box(b, f"{path}: part '{p}' of '{image}'") for p, b in boxes.items()}
    return out


def _box(value, where: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PartsError(f"{where}: a box is four numbers [x0, y0, x1, y1], not {value!r}") from None
    if not (x1 > x0 and y1 > y0) or not all(np.isfinite([x0, y0, x1, y1])):
        raise PartsError(f"{where}: the box {[x0, y0, x1, y1]} is empty (want x1 > x0 and y1 > y0)")
    return x0, y0, x1, y1


def match_parts(images: Sequence[str], parts: dict, source: str = "the parts file") -> list[dict]:
    """The boxes of each image (looked up by the path as given, then by file name); every image
    must have the same part names."""
    by_name = {}
    for key, boxes in parts.items():
        by_name.setdefault(os.path.basename(key), boxes)
    out = []
    for image in images:
        boxes = parts.get(image) or parts.get(os.path.normpath(image)) or by_name.get(os.path.basename(image))
        if boxes is None:
            names = ", ".join(sorted(parts)[:5]) + (", ..." if len(parts) > 5 else "")
            raise PartsError(f"image '{image}' is missing from {source} (it names {names})")
        out.append(boxes)
    names = sorted(out[0])
    for image, boxes in zip(images, out):
        if sorted(boxes) != names:
            raise PartsError(f"image '{image}' has parts {sorted(boxes)} but '{images[0]}' has {names}; "
                             "every image needs the same parts")
    return out


def fit_box(box, file_size: tuple[int, int], prep) -> tuple[float, float, float, float]:
    """A box in the file's pixels -> the model input's pixels, through the resize (and centre crop)
    that :func:`zfprobe.io.preprocess.read_pixels` applies (shorter side to size, then the centre)."""
    w0, h0 = file_size
    h, w = prep.size
    if prep.resize == "stretch" or (w0, h0) == (w, h):
        sx, sy, left, top = w / w0, h / h0, 0, 0
    else:
        scale = max(w / w0, h / h0)
        nw, nh = max(w, round(w0 * scale)), max(h, round(h0 * scale))
        sx, sy, left, top = nw / w0, nh / h0, (nw - w) // 2, (nh - h) // 2
    x0, y0, x1, y1 = box
    return x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top


def square_at(box, size: int) -> tuple[int, int]:
    """Top-left corner (row, col) of the ``size`` square centred on ``box``."""
    x0, y0, x1, y1 = box
    return int(round((y0 + y1) / 2 - size / 2)), int(round((x0 + x1) / 2 - size / 2))


# --------------------------------------------------------------------------------------------
# the study


@dataclass
class CorrespondenceResult:
    images: list[str]
    layers: list[str]
    tensors: list[str]
    parts: list[str]
    size: int
    fill: str
    squares: dict[str, list[tuple[int, int]]]   # part -> (row, col) per image
    random_squares: list[tuple[int, int]]        # (row, col), the same in every image
    delta: dict[str, dict[str, float]]           # part -> layer -> Delta
    random_delta: np.ndarray                     # [draw, layer]
    display: list[np.ndarray]                    # uint8 RGB per image (the model's view), for the figure
    seed: int
    preprocessing: object = None
    timings: dict = field(default_factory=dict)

    def random_mean(self) -> np.ndarray:
        return self.random_delta.mean(0) if len(self.random_delta) else np.full(len(self.layers), np.nan)

    def random_std(self) -> np.ndarray:
        return self.random_delta.std(0, ddof=1) if len(self.random_delta) > 1 else np.full(len(self.layers), np.nan)

    def table(self) -> list[dict]:
        """Rows of ``table.csv``: every part and the random baseline at every layer."""
        rows = []
        for p in self.parts:
            for l in self.layers:
                rows.append({"part": p, "layer": l, "delta": self.delta[p][l], "std": "", "draws": 1})
        mean, std = self.random_mean(), self.random_std()
        for k, l in enumerate(self.layers):
            if len(self.random_delta):
                rows.append({"part": "random", "layer": l, "delta": float(mean[k]),
                             "std": float(std[k]) if np.isfinite(std[k]) else "", "draws": len(self.random_delta)})
        return rows

    def save(self, out_dir: str, probe=None) -> list[str]:
        from zfprobe.studies.correspondence.render import save_result

        return save_result(self, out_dir, probe)

    def _repr_html_(self) -> str:
        """Jupyter: the table and the pictures ``save()`` writes, drawn in memory."""
        from zfprobe.io.inline import block, gallery, img_tag, markdown_html
        from zfprobe.studies.correspondence.render import delta_png, parts_png, table_md

        title = f"correspondence: {len(self.images)} image(s), parts {', '.join(self.parts)}"
        return block(title, markdown_html(table_md(self)),
                     gallery(img_tag(parts_png(self), "parts.png"), img_tag(delta_png(self), "delta.png")))


def _occlude(x: np.ndarray, row: int, col: int, size: int, fill: np.ndarray, channels_last: bool) -> np.ndarray:
    y = x.copy()
    if channels_last:
        y[0, row:row + size, col:col + size, :] = fill
    else:
        y[0, :, row:row + size, col:col + size] = fill[:, None, None]
    return y


def correspondence(probe, images: Sequence[str], parts: dict | str, layers: Sequence[str] | str, size: int | None = None,
                   fill="grey", random: int = 10, seed: int = 0, preprocessing=None, progress: bool = False,
                   parts_source: str | None = None) -> CorrespondenceResult:
    """Table 1's Delta for each part and layer, with ``random`` random-square baselines.

    ``parts``: a dict ``{image: {part: [x0, y0, x1, y1]}}`` or the path of a parts file (JSON/CSV).
    """
    from zfprobe.io.preprocess import read_pixels

    t0 = time.perf_counter()
    layers = [layers] if isinstance(layers, str) else list(layers)
    images = [os.fspath(i) for i in images]
    if len(images) < 2:
        raise OptionError(f"correspondence compares images with each other: give at least 2 images, not {len(images)}")
    if not layers:
        raise OptionError("give at least one layer (--layer)")
    if int(random) != random or random < 0:
        raise OptionError(f"--random must be a whole number >= 0, not {random}")
    prep = preprocessing if preprocessing is not None else probe.preprocessing
    if prep is None:
        raise OptionError("this model's input is not an image batch; correspondence needs image preprocessing")
    tensors = [probe.resolve(l) for l in layers]
    if isinstance(parts, (str, os.PathLike)):
        parts_source = parts_source or f"the parts file '{os.fspath(parts)}'"
        parts = read_parts(os.fspath(parts))
    boxes = match_parts(images, parts, parts_source or "the parts")
    names = sorted(boxes[0], key=list(boxes[0]).index)
    h, w = prep.size
    channels_last = prep.layout == "NHWC"

    fitted = []
    for image, bx in zip(images, boxes):
        size0 = image_size(image)
        for p, b in bx.items():
            x0, y0, x1, y1 = b
            if x0 < 0 or y0 < 0 or x1 > size0[0] or y1 > size0[1]:
                raise PartsError(f"part '{p}' of '{image}' {list(b)} falls outside the image ({size0[0]}x{size0[1]} px)")
        fitted.append({p: fit_box(b, size0, prep) for p, b in bx.items()})
    if size is None:
        size = int(round(float(np.median([max(b[2] - b[0], b[3] - b[1]) for f in fitted for b in f.values()]))))
    if int(size) != size or size < 1 or size > min(h, w):
        raise OptionError(f"the square size must be a whole number of pixels in 1..{min(h, w)}, not {size}")
    size = int(size)
    squares = {p: [] for p in names}
    for image, f in zip(images, fitted):
        for p in names:
            r, c = square_at(f[p], size)
            if r < 0 or c < 0 or r + size > h or c + size > w:
                raise PartsError(f"part '{p}' of '{image}': its {size}px square at row {r}, col {c} falls outside "
                                 f"the model input ({h}x{w} px after resizing); use a smaller --size")
            squares[p].append((r, c))
    rng = np.random.default_rng(seed)
    random_squares = [(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))) for _ in range(int(random))]
    fill_vec, fill_desc = fill_values(fill, prep, prep.channels)

    sizes = [int(np.prod(probe.graph.shape(t)[1:])) for t in tensors]
    counts = {p: [SignCounts(s) for s in sizes] for p in names}
    rcounts = [[SignCounts(s) for s in sizes] for _ in random_squares]
    displays = []
    bar = _progress(len(images), progress)
    t1 = time.perf_counter()
    try:
        for i, image in enumerate(images):
            pixels = read_pixels(image, prep)
            displays.append(np.repeat(pixels, 3, 2) if pixels.shape[2] == 1 else pixels)
            x = prep.to_tensor(pixels)
            batch = [x] + [_occlude(x, *squares[p][i], size, fill_vec, channels_last) for p in names]
            batch += [_occlude(x, r, c, size, fill_vec, channels_last) for r, c in random_squares]
            outs = probe.activations(np.concatenate(batch), tensors)
            for l, out in enumerate(outs):
                flat = out.reshape(len(batch), -1)
                for k, p in enumerate(names):
                    counts[p][l].add(flat[0] - flat[1 + k])
                for k in range(len(random_squares)):
                    rcounts[k][l].add(flat[0] - flat[1 + len(names) + k])
            bar.update(1)
    finally:
        bar.close()
    t2 = time.perf_counter()
    table = {p: {l: counts[p][k].delta() for k, l in enumerate(layers)} for p in names}
    rdelta = np.array([[c.delta() for c in row] for row in rcounts]).reshape(len(random_squares), len(layers))
    return CorrespondenceResult(images=images, layers=layers, tensors=tensors, parts=names, size=size, fill=fill_desc,
                                squares=squares, random_squares=random_squares, delta=table, random_delta=rdelta,
                                display=displays, seed=seed, preprocessing=prep,
                                timings={"setup": round(t1 - t0, 4), "delta": round(t2 - t1, 4)})


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="correspondence", dynamic_ncols=True, disable=not enabled)
