"""The public API: :func:`occlude` (the maps of one image, with the projection) and
:func:`occlusion_maps` (raw per-position results)."""
from __future__ import annotations

import time

import numpy as np

from zfprobe.errors import ImageError, OptionError, ZfprobeError
from zfprobe.engine.graph import Graph
from zfprobe.studies.occlusion.engine import build_engine, run_engine
from zfprobe.studies.occlusion.options import (METHODS, NoClassOutputError, check_geometry, class_output, fill_values,
                                       positions)
from zfprobe.studies.occlusion.result import OcclusionResult
from zfprobe.engine.rules import AUTO
from zfprobe.io.classes import top_predictions


def occlude(probe, image, layer: str | None, size: int = 8, stride: int = 4, label: int | None = None,
            fill="grey", probability: bool | None = None, channel: int | None = None, method: str = "auto",
            project: bool = True, rule: str = AUTO, preprocessing=None, class_names: list[str] | None = None,
            memory_budget: int | None = None, progress: bool = False) -> OcclusionResult:
    """Occlusion maps of one image (a path, or a preprocessed array [1, ...]); see the module docstring.

    ``probability``: None computes the probability and label maps when the model has a class
    output; True requires them (:class:`NoClassOutputError` otherwise); False skips them.
    ``channel`` overrides the strongest feature map of ``layer``. ``layer`` may be None when only
    the class maps are wanted.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise OptionError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    graph: Graph = probe.graph
    prep = preprocessing if preprocessing is not None else probe.preprocessing
    display, x, image_path = probe.load_input(image, prep)
    x = probe.check_images(x)
    if x.shape[0] != 1:
        raise ImageError(f"occlusion takes one image, not a batch of {x.shape[0]}")
    if x.ndim != 4:
        raise ImageError("occlusion needs an image input [1, C, H, W] or [1, H, W, C]")
    channels_last = prep is not None and prep.layout == "NHWC"
    _, c, h, w = (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if channels_last else x.shape
    if display is None:
        g = x[0].mean(0)
        g = (g - g.min()) / max(1e-12, float(g.max() - g.min())) * 255
        display = np.repeat(np.round(g).astype(np.uint8)[..., None], 3, axis=2)
    check_geometry(h, w, size, stride)
    fill_vec, fill_desc = fill_values(fill, prep, c)

    cls = class_output(graph)
    want_probs = probability if probability is not None else cls is not None
    if want_probs or label is not None:
        if cls is None:
            what = "the probability and label maps" if label is None else f"--label {label}"
            raise NoClassOutputError(
                f"the model has no class output (its output '{(graph.outputs or ['none'])[0]}' has shape "
                f"{list(graph.shapes.get((graph.outputs or [''])[0], ()))}, not [N, classes]): cannot make {what}; "
                "the activation map (--layer) still works")
        if label is not None and not 0 <= int(label) < cls.classes:
            raise OptionError(f"label {label} is out of range: the model has {cls.classes} classes (0..{cls.classes - 1})")
        want_probs = True
    if not want_probs:
        cls = None
    if layer is None and cls is None:
        raise OptionError("nothing to compute: give a layer, or use a model with a class output")
    tensor = probe.resolve(layer) if layer is not None else None
    if tensor is not None and channel is not None:
        n_channels = graph.shape(tensor)[1] if len(graph.shape(tensor)) > 1 else 1
        if not 0 <= channel < n_channels:
            raise OptionError(f"channel {channel} is out of range: layer {layer} has {n_channels} channels (0..{n_channels - 1})")
    names = class_names if class_names is not None else (prep.labels if prep is not None else None)
    if cls is not None:
        from zfprobe.io.classes import class_names_for

        names = class_names_for(cls.classes, names)  # a 1,000-way output: the bundled ImageNet names

    rows, cols = positions(h, size, stride), positions(w, size, stride)
    engine = build_engine(probe, tensor, cls, size, rows, cols, method, channels_last)
    t1 = time.perf_counter()

    totals, probs, base_totals, base_probs = run_engine(engine, x, fill_vec, size, rows, cols, memory_budget, progress)
    t2 = time.perf_counter()
    if tensor is not None:
        if channel is None:
            channel = int(np.argmax(base_totals))
    base_label = int(np.argmax(base_probs)) if base_probs is not None else None
    label_source = None
    if cls is not None:
        label_source = "given" if label is not None else "top-1 of the unoccluded image"
        label = int(label) if label is not None else base_label

    projection, note = None, ""
    if project and tensor is not None and layer != probe.input_name:
        from zfprobe.engine.seeds import feature_map, seed_tensor

        try:
            acts = probe.activations(x, layer)
            seeds, owner = seed_tensor(acts, [feature_map(acts, channel)])
            rule = probe.choose_rule(layer, rule).rule
            projection = probe.project(x, layer, seeds, owner, rule=rule)[0]
            note = f"deconvnet ({rule}) projection of feature map {channel} of {layer} (whole map as seed)"
        except ZfprobeError as exc:
            note = f"no projection: {exc}"
    t3 = time.perf_counter()

    return OcclusionResult(
        layer=layer or "", tensor=tensor or "", channel=channel, size=int(size), stride=int(stride),
        rows=rows, cols=cols, fill=fill_desc, fill_value=[float(v) for v in fill_vec],
        activation=totals[:, :, channel].astype(np.float32) if totals is not None else None,
        probability=probs[:, :, label].astype(np.float32) if probs is not None else None,
        label_map=probs.argmax(2).astype(np.int64) if probs is not None else None,
        label=label if cls is not None else None, label_source=label_source,
        base_activation=float(base_totals[channel]) if base_totals is not None else None,
        base_probability=float(base_probs[label]) if base_probs is not None else None,
        base_label=base_label, class_source=cls.source if cls else None, class_names=list(names) if names else None,
        projection=projection, projection_note=note, image=display, method=engine.method,
        incremental_layers=[op.node.name for op in engine.chain[:engine.end]], preprocessing=prep,
        image_path=image_path,
        timings={"plan": round(t1 - t0, 4), "maps": round(t2 - t1, 4), "projection": round(t3 - t2, 4)},
        predictions=top_predictions(base_probs, names) if base_probs is not None else None)


def occlusion_maps(probe, images: np.ndarray, layer: str | None, size: int, stride: int, fill: np.ndarray | float = 0.0,
                   method: str = "auto", memory_budget: int | None = None, channels_last: bool = False):
    """Low level: raw per-position results for a preprocessed image [1, C, H, W].

    Returns ``(totals [nr, nc, C] or None, probabilities [nr, nc, K] or None, rows, cols, method)``;
    ``fill`` is in model space (a scalar or one value per channel). ``channels_last``: the image
    is [1, H, W, C].
    """
    x = probe.check_images(images)
    h, w, c = (x.shape[1], x.shape[2], x.shape[3]) if channels_last else (x.shape[2], x.shape[3], x.shape[1])
    check_geometry(h, w, size, stride)
    fill_vec = np.broadcast_to(np.asarray(fill, np.float32).reshape(-1), (c,)).copy()
    cls = class_output(probe.graph)
    tensor = probe.resolve(layer) if layer is not None else None
    rows, cols = positions(h, size, stride), positions(w, size, stride)
    engine = build_engine(probe, tensor, cls, size, rows, cols, method, channels_last)
    totals, probs, _, _ = run_engine(engine, x, fill_vec, size, rows, cols, memory_budget)
    return totals, probs, rows, cols, engine.method
