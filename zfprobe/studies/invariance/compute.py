"""Invariance curves (PAPER.md section 4, Zeiler & Fergus Fig. 5).

Each image is transformed (see :mod:`zfprobe.studies.invariance.transforms`) by every amount of every
transform, and for each transformed image zfprobe records

* at every requested layer, the Euclidean distance between the layer's feature vector (the
  whole output tensor, flattened) for the original and for the transformed image, raw and
  divided by the norm of the original's vector;
* when the model has a class output: the probability of the true class (the given label, else
  the top-1 class of the original) and the predicted class.

All layers come from one pass: the original and its transformed versions go through the network
in batches, and the network is cut after the deepest requested layer when no class output is
wanted (:meth:`Probe.forward_program` keeps only the ancestors of the tensors read). Memory is
bounded by the batch size, not by the number of images: only the distances are kept.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from zfprobe.errors import ImageError, OptionError
from zfprobe.io.image_files import image_size
from zfprobe.studies.invariance.transforms import IDENTITY, Transform, apply, default_amounts, expand_kinds, fill_pixel, parse_range
from zfprobe.studies.occlusion import ClassOutput, NoClassOutputError, class_output



@dataclass
class InvarianceResult:
    """Curves for ``images`` x ``transforms``; arrays per transform kind.

    ``distance[kind]`` / ``normalized[kind]``: [image, amount, layer];
    ``probability[kind]`` / ``predicted[kind]``: [image, amount] (None without a class output).
    """

    images: list[str]
    layers: list[str]
    tensors: list[str]
    transforms: list[Transform]
    fill: tuple[int, ...]
    fill_name: str
    distance: dict[str, np.ndarray]
    normalized: dict[str, np.ndarray]
    norms: np.ndarray                        # [image, layer] norm of the original's feature vector
    probability: dict[str, np.ndarray] | None
    predicted: dict[str, np.ndarray] | None
    labels: list[int] | None                 # the true class per image
    label_source: str | None
    base_probability: np.ndarray | None      # [image] p(true class) of the original
    base_predicted: np.ndarray | None        # [image]
    class_source: str | None
    class_names: list[str] | None
    examples: dict[str, np.ndarray]          # kind -> uint8 [amount, H, W, 3], the first image transformed
    preprocessing: object = None
    batch_size: int = 0
    timings: dict = field(default_factory=dict)

    @property
    def has_classes(self) -> bool:
        return self.probability is not None

    def rows(self) -> list[dict]:
        """One row per image, transform, amount and layer (the rows of ``curves.csv``)."""
        out = []
        for t in self.transforms:
            for i, image in enumerate(self.images):
                for a, amount in enumerate(t.amounts):
                    for l, layer in enumerate(self.layers):
                        row = {"image": image, "transform": t.kind, "amount": amount, "unit": t.unit,
                               "layer": layer, "distance": float(self.distance[t.kind][i, a, l]),
                               "normalized_distance": float(self.normalized[t.kind][i, a, l])}
                        if self.has_classes:
                            row.update(true_class=self.labels[i],
                                       probability=float(self.probability[t.kind][i, a]),
                                       predicted_class=int(self.predicted[t.kind][i, a]))
                        out.append(row)
        return out

    def save(self, out_dir: str, probe=None) -> list[str]:
        from zfprobe.studies.invariance.render import save_result

        return save_result(self, out_dir, probe)

    def _repr_html_(self) -> str:
        """Jupyter: the curves and the transformed examples ``save()`` writes, drawn in memory."""
        from zfprobe.io.inline import block, img_tag
        from zfprobe.studies.invariance.render import examples_png, figure_png

        title = (f"invariance: {len(self.images)} image(s), {', '.join(t.kind for t in self.transforms)}; "
                 f"layers {', '.join(self.layers)}")
        return block(title, img_tag(figure_png(self), "invariance.png"), img_tag(examples_png(self), "examples.png"))


def resolve_transforms(kinds: Sequence[str], size: tuple[int, int], ranges: dict | str | None = None) -> list[Transform]:
    """Transforms with their amounts: ``ranges`` is one spec for all kinds, or kind -> spec / amounts."""
    kinds = expand_kinds(kinds)
    if isinstance(ranges, str):
        units = {Transform(k, (0.0,)).unit for k in kinds}
        if len(units) > 1:
            raise OptionError(f"one --range for transforms with different units ({', '.join(kinds)}); "
                              "give one --transform per run, or use the API's per-transform ranges")
        ranges = {k: ranges for k in kinds}
    out = []
    for kind in kinds:
        spec = (ranges or {}).get(kind)
        if spec is None:
            amounts = default_amounts(kind, size)
        elif isinstance(spec, str):
            amounts = parse_range(spec, kind)
        else:
            amounts = tuple(float(a) for a in spec)
            if not amounts:
                raise OptionError(f"the range for {kind} is empty")
            if kind == "scale" and min(amounts) <= 0:
                raise OptionError("scale factors must be positive")
        out.append(Transform(kind, amounts))
    return out


def _read(image, prep) -> tuple[str, np.ndarray]:
    """(name, uint8 pixels [H, W, C] at the model size) of a path or a pixel array."""
    from zfprobe.io.preprocess import read_pixels

    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image), read_pixels(os.fspath(image), prep)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[:2] != tuple(prep.size) or arr.shape[2] != prep.channels:
        raise ImageError(f"a pixel array must be uint8 [{prep.size[0]}, {prep.size[1]}, {prep.channels}], "
                         f"not {arr.dtype} {list(arr.shape)}")
    return "<array>", arr


def _softmax(values: np.ndarray, cls: ClassOutput) -> np.ndarray:
    flat = values.reshape(len(values), -1).astype(np.float64)
    if not cls.softmax:
        return flat
    flat = flat - flat.max(1, keepdims=True)
    e = np.exp(flat)
    return e / e.sum(1, keepdims=True)


def batch_size_for(probe, tensors: Sequence[str], budget: int | None = None) -> int:
    """Images per forward batch such that the (truncated) network's peak live memory (with the
    tensors read back held to the end) fits ``budget`` (default: the activations share of the
    memory budget, zfprobe.io.memory)."""
    from zfprobe.io.memory import batch_that_fits, budget_for, forward_peak

    per_image = forward_peak(probe.graph, probe.forward_program(list(tensors)), list(tensors))
    return batch_that_fits(per_image, budget_for("activations") if budget is None else budget, cap=128)


def invariance(probe, images: Sequence, layers: Sequence[str] | str, transforms: Sequence[str] = ("translate-y", "scale", "rotate"),
               ranges: dict | str | None = None, labels: int | Sequence[int] | None = None, fill="mean",
               probability: bool | None = None, preprocessing=None, batch_size: int | None = None,
               progress: bool = False, class_names: Sequence[str] | None = None) -> InvarianceResult:
    """Invariance curves of ``images`` (paths, or uint8 pixel arrays at the model size).

    ``ranges``: one ``A:B:STEP`` spec for all transforms, or a dict kind -> spec or amounts.
    ``labels``: the true class, one for all images or one per image (default: the top-1 class
    of each original). ``probability``: None records probabilities when the model has a class
    output, True requires one, False skips them (the network is then cut after the deepest layer).
    """
    t0 = time.perf_counter()
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise OptionError("give at least one layer (--layer)")
    images = list(images)
    if not images:
        raise OptionError("give at least one image")
    prep = preprocessing if preprocessing is not None else probe.preprocessing
    if prep is None:
        raise OptionError("this model's input is not an image batch; invariance needs image preprocessing")
    tensors = [probe.resolve(l) for l in layers]
    for image in images:  # a missing or unreadable file fails now, not after minutes of work
        if isinstance(image, (str, os.PathLike)):
            image_size(os.fspath(image))
    plan = resolve_transforms(transforms, tuple(prep.size), ranges)
    fill_rgb = fill_pixel(fill, prep)

    cls = class_output(probe.graph)
    if probability is False:
        cls = None
    elif cls is None and (probability or labels is not None):
        raise NoClassOutputError(f"the model has no class output (its output '{(probe.graph.outputs or ['none'])[0]}' has shape "
                                 f"{list(probe.graph.shapes.get((probe.graph.outputs or [''])[0], ()))}, not [N, classes]): "
                                 "cannot record class probabilities; the distances still work")
    label_list = _labels(labels, len(images), cls)
    wanted = list(dict.fromkeys(tensors + ([cls.tensor] if cls else [])))
    bs = int(batch_size or batch_size_for(probe, wanted))
    if batch_size is not None and int(batch_size) < 1:
        raise OptionError("the batch size must be at least 1")
    n_img, n_l = len(images), len(layers)
    dist = {t.kind: np.zeros((n_img, len(t.amounts), n_l)) for t in plan}
    norm_d = {t.kind: np.zeros((n_img, len(t.amounts), n_l)) for t in plan}
    probs = {t.kind: np.zeros((n_img, len(t.amounts))) for t in plan} if cls else None
    preds = {t.kind: np.zeros((n_img, len(t.amounts)), np.int64) for t in plan} if cls else None
    norms = np.zeros((n_img, n_l))
    base_p = np.zeros(n_img) if cls else None
    base_pred = np.zeros(n_img, np.int64) if cls else None
    names, examples = [], {}
    # identity amounts (shift 0, scale 1, rotation 0) give the original's pixels exactly: not run
    jobs = [(t.kind, a, amount) for t in plan for a, amount in enumerate(t.amounts) if not _is_identity(t.kind, amount)]
    refs: dict[int, list[np.ndarray]] = {}   # the originals' features, for images in flight only
    left = {}                                 # rows still to come per image in flight

    def consume(meta, outs) -> None:
        """Distances and probabilities of one finished batch (runs while the next one computes)."""
        by_tensor = dict(zip(wanted, outs))
        flat = [by_tensor[t].reshape(len(meta), -1) for t in tensors]
        p = _softmax(by_tensor[cls.tensor], cls) if cls else None
        for r, (i, job) in enumerate(meta):
            if job is None:
                refs[i] = [f[r].copy() for f in flat]
                norms[i] = [float(np.linalg.norm(f.astype(np.float64))) for f in refs[i]]
                if cls:
                    base_pred[i] = int(np.argmax(p[r]))
                    if label_list[i] is None:
                        label_list[i] = int(base_pred[i])
                    base_p[i] = p[r][label_list[i]]
        for i in dict.fromkeys(i for i, job in meta if job is not None):
            rows = [r for r, (k, job) in enumerate(meta) if k == i and job is not None]
            for l in range(n_l):
                d = np.linalg.norm(flat[l][rows] - refs[i][l][None], axis=1).astype(np.float64)
                for r, v in zip(rows, d):
                    kind, a, _ = meta[r][1]
                    dist[kind][i, a, l] = v
                    norm_d[kind][i, a, l] = v / norms[i, l] if norms[i, l] > 0 else np.nan
            if cls:
                for r in rows:
                    kind, a, _ = meta[r][1]
                    probs[kind][i, a] = p[r][label_list[i]]
                    preds[kind][i, a] = int(np.argmax(p[r]))
            left[i] -= len(rows)
            if not left[i]:
                del refs[i], left[i]
        bar.update(len(meta))

    def batches():
        """(rows, model inputs): each image's original, then its transformed versions, across images."""
        meta, xs = [], []
        for i, image in enumerate(images):
            name, pixels = _read(image, prep)
            names.append(name)
            left[i] = len(jobs)
            for job in [None] + jobs:
                if job is None:
                    moved = pixels
                else:
                    moved = apply(pixels, job[0], job[2], fill_rgb)
                    if i == 0:
                        examples.setdefault(job[0], {})[job[1]] = moved
                meta.append((i, job))
                xs.append(prep.to_tensor(moved))
                if len(meta) == bs:
                    yield meta, np.concatenate(xs)
                    meta, xs = [], []
            if i == 0:
                for t in plan:
                    for a, amount in enumerate(t.amounts):
                        examples.setdefault(t.kind, {}).setdefault(a, pixels)
        if meta:
            yield meta, np.concatenate(xs)

    bar = _progress(n_img * (len(jobs) + 1), progress)
    t1 = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="zfprobe-data") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="zfprobe-forward") as runner:
        stream = batches()
        upcoming = reader.submit(next, stream, None)
        pending = None
        try:
            while True:
                item = upcoming.result()
                if item is None:
                    break
                upcoming = reader.submit(next, stream, None)   # read and transform the next batch meanwhile
                future = runner.submit(probe.activations, item[1], wanted)
                if pending is not None:
                    consume(pending[0], pending[1].result())
                pending = (item[0], future)
            if pending is not None:
                consume(pending[0], pending[1].result())
        finally:
            upcoming.cancel()
            bar.close()
    for t in plan:  # the identity amounts: the original itself
        for a, amount in enumerate(t.amounts):
            if _is_identity(t.kind, amount):
                dist[t.kind][:, a] = norm_d[t.kind][:, a] = 0.0
                if cls:
                    probs[t.kind][:, a] = base_p
                    preds[t.kind][:, a] = base_pred
    examples = {k: [np.repeat(m, 3, 2) if m.shape[2] == 1 else m for _, m in sorted(v.items())] for k, v in examples.items()}
    t2 = time.perf_counter()
    names_out = class_names if class_names is not None else (prep.labels if prep is not None else None)
    return InvarianceResult(
        images=names, layers=layers, tensors=tensors, transforms=plan, fill=fill_rgb,
        fill_name=str(fill), distance=dist, normalized=norm_d, norms=norms, probability=probs, predicted=preds,
        labels=[int(v) for v in label_list] if cls else None,
        label_source=("given" if labels is not None else "top-1 class of the original") if cls else None,
        base_probability=base_p, base_predicted=base_pred, class_source=cls.source if cls else None,
        class_names=list(names_out) if names_out else None,
        examples={k: np.stack(v) for k, v in examples.items()}, preprocessing=prep, batch_size=bs,
        timings={"setup": round(t1 - t0, 4), "curves": round(t2 - t1, 4)})


def _is_identity(kind: str, amount: float) -> bool:
    return amount == IDENTITY[kind] if kind != "rotate" else float(amount) % 360.0 == 0.0


def _labels(labels, n: int, cls: ClassOutput | None) -> list:
    if labels is None:
        return [None] * n
    values = [labels] if isinstance(labels, (int, np.integer)) else list(labels)
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise OptionError(f"{len(values)} labels for {n} images; give one label for all or one per image")
    for v in values:
        if int(v) != v or not 0 <= int(v) < cls.classes:
            raise OptionError(f"label {v} is out of range: the model has {cls.classes} classes (0..{cls.classes - 1})")
    return [int(v) for v in values]


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="invariance", dynamic_ncols=True, disable=not enabled)
