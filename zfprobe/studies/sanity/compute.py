"""Sanity checks: does a projection explain the model, or only the image?

Adebayo et al. (NeurIPS 2018) re-initialize a trained model's weights, from the top layer down
("cascading") or one layer at a time ("independent"), and compare the maps of the same units with
the trained model's: a method whose maps hardly change shows the image more than the model.
Mahendran & Vedaldi (2016) compare the projections of different units of one image: when they
are alike, the picture says little about the unit. See docs/sanity.md.

The randomized models are the trained graph with other constants. Every weight that any step may
replace is turned into an input of the projection program once (``Probe.with_parameters``), so
all steps of all modes run on one built program and one backend session per rule; the model file
and a live torch or Keras model are never touched (the weights are fed, not written).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from zfprobe.errors import ImageError, OptionError, ZfprobeError
from zfprobe.engine.graph import Graph
from zfprobe.engine.seeds import strongest_unit, top_channels
from zfprobe.studies.sanity.similarity import METRICS, compare, mean_pairwise

from zfprobe.engine.rules import LRN_IDENTITY, RULES
MODES = ("cascade", "independent")
INITS = ("matched", "he", "glorot")
# Op types whose constant inputs are the layer's learned weights: (weight input, bias input).
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1)}
# Verdict thresholds on the mean Spearman rank correlation of |p| with everything randomized.
INSENSITIVE, SENSITIVE = 0.5, 0.2


class SanityError(ZfprobeError):
    """A sanity run that cannot be done as asked (nothing to randomize, no images, ...)."""


@dataclass(frozen=True)
class WeightLayer:
    """One layer with learned weights: its node and the constants re-initialized with it."""

    node: str
    op_type: str
    weight: str
    bias: str | None
    order: int  # position in the graph (seeds its random generator)


@dataclass(frozen=True)
class Step:
    """One randomized model: which weight layers carry random weights."""

    index: int
    label: str
    randomized: tuple[str, ...]  # node names
    short: str = ""              # a compact label for plots


def short_name(node: str, width: int = 24) -> str:
    """A node name fit for an axis label: exporter prefixes and op suffixes dropped
    ('/_blocks.13/_expand_conv/Conv' -> '_blocks.13/_expand_conv'), then cut to ``width``."""
    parts = [p for p in node.strip("/").split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        parts = parts[:-1]
    text = "/".join(parts) or node
    return text if len(text) <= width else "…" + text[-(width - 1):]


@dataclass
class SanityResult:
    layer: str
    tensor: str
    rules: tuple[str, ...]
    modes: tuple[str, ...]
    init: str
    seed: int
    units: str
    layers: list[WeightLayer]
    steps: dict[str, list[Step]]
    rows: list[dict]               # one per (mode, step, rule, image, unit): the measures
    selectivity: list[dict]        # one per (image, rule): mean pairwise similarity of units
    strips: dict[str, dict[str, list[np.ndarray]]]  # mode -> rule -> projection per step (first unit)
    seeds: list[dict]
    images: list[str | None]
    display: list[np.ndarray | None]
    layout: str
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> list[dict]:
        """Mean and standard deviation of each measure per (mode, step, rule)."""
        out = []
        for mode in self.modes:
            for step in self.steps[mode]:
                for rule in self.rules:
                    rows = [r for r in self.rows if r["mode"] == mode and r["step"] == step.index and r["rule"] == rule]
                    entry = {"mode": mode, "step": step.index, "randomized": step.label, "rule": rule, "n": len(rows)}
                    for m in METRICS:
                        values = np.array([r[m] for r in rows], np.float64)
                        values = values[np.isfinite(values)]
                        entry[f"{m}_mean"] = float(values.mean()) if len(values) else float("nan")
                        entry[f"{m}_std"] = float(values.std()) if len(values) else float("nan")
                    out.append(entry)
        return out

    def _repr_html_(self) -> str:
        """Jupyter: the verdicts, the similarity curves and the projection strips that
        ``render.save`` writes, drawn in memory."""
        from zfprobe.io.inline import block, img_tag, markdown_html
        from zfprobe.studies.sanity.render import curves_figure, strip_figure

        verdicts = markdown_html("\n".join(f"- {text}" for text in self.verdicts().values()))
        strips = [img_tag(strip_figure(self, mode), f"strip_{mode}.png") for mode in self.modes]
        return block(f"sanity: {self.layer}, {len(self.seeds)} units, rules {', '.join(self.rules)}", verdicts,
                     img_tag(curves_figure(self), "curves.png"), *strips)

    def verdicts(self) -> dict[str, str]:
        """One plain-words sentence per rule, from the last step (cascade if run, else the
        independent step with the highest similarity) and the unit-selectivity check."""
        summary = self.summary()
        out = {}
        for rule in self.rules:
            if "cascade" in self.modes:
                last = [s for s in summary if s["mode"] == "cascade" and s["rule"] == rule][-1]
                what = f"with all {len(self.layers)} weight layers at or below {self.layer} randomized"
            else:
                cands = [s for s in summary if s["mode"] == "independent" and s["rule"] == rule and s["step"] > 0]
                last = max(cands, key=lambda s: s["spearman_abs_mean"])
                what = f"with only {last['randomized']} randomized (the least sensitive layer)"
            value = last["spearman_abs_mean"]
            if value >= INSENSITIVE:
                text = (f"{rule}: rank correlation of |p| with the trained model's stays at {value:.2f} {what}: "
                        "it shows the image more than the model")
            elif value <= SENSITIVE:
                text = (f"{rule}: rank correlation of |p| falls to {value:.2f} {what}: "
                        "the picture depends on the learned weights (passes the check)")
            else:
                text = (f"{rule}: rank correlation of |p| is {value:.2f} {what}: "
                        "the picture depends on the weights only in part")
            sel = [r["spearman_abs"] for r in self.selectivity if r["rule"] == rule and np.isfinite(r["spearman_abs"])]
            if sel:
                mean_sel = float(np.mean(sel))
                text += (f"; different units of one image give {'similar' if mean_sel >= INSENSITIVE else 'distinct'} "
                         f"pictures (mean pairwise rank correlation {mean_sel:.2f})")
            out[rule] = text + "."
        return out


# -- the weights ---------------------------------------------------------------------------------


def weight_layers(graph: Graph, tensor: str) -> list[WeightLayer]:
    """The layers with learned weights that the projection of ``tensor`` depends on, top first."""
    found = []
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    for node in graph.ancestors([tensor]):
        slots = WEIGHT_INPUTS.get(node.op_type)
        if not slots:
            continue
        ins = list(node.inputs) + ["", "", ""]
        if node.op_type == "MatMul":
            weight = next((t for t in node.inputs if t and graph.is_constant(t)), None)
            bias = None
        else:
            weight = ins[slots[0]] if graph.is_constant(ins[slots[0]]) else None
            bias = ins[slots[1]] if ins[slots[1]] and graph.is_constant(ins[slots[1]]) else None
        if weight is None or np.asarray(graph.constants[weight]).dtype.kind != "f":
            continue
        found.append(WeightLayer(node.name, node.op_type, weight, bias, order[node.name]))
    found.sort(key=lambda w: -w.order)
    return found


def _fans(layer: WeightLayer, graph: Graph) -> tuple[int, int]:
    w = np.asarray(graph.constants[layer.weight])
    if layer.op_type in ("Conv", "ConvTranspose") and w.ndim >= 3:
        # [out, in/groups, *kernel] for Conv, [in, out/groups, *kernel] for ConvTranspose: torch's
        # fan_in is axis 1 times the kernel for both (what He and Glorot init mean for them)
        field_size = int(np.prod(w.shape[2:]))
        return w.shape[1] * field_size, w.shape[0] * field_size
    if layer.op_type == "Gemm" and graph.node(layer.node).attrs.get("transB", 0):
        return w.shape[1], w.shape[0]
    return w.shape[0], w.shape[-1]


def reinitialize(graph: Graph, layer: WeightLayer, init: str = "matched", seed: int = 0) -> dict[str, np.ndarray]:
    """New values for the layer's weight (and bias), drawn with a generator seeded by ``seed`` and
    the layer's position, so a layer gets the same values in every mode and every run.

    - ``matched``: normal with the trained weights' mean and standard deviation (bias likewise);
    - ``he``: normal(0, sqrt(2 / fan_in)), bias zero;
    - ``glorot``: uniform(+-sqrt(6 / (fan_in + fan_out))), bias zero.
    """
    if init not in INITS:
        raise OptionError(f"unknown --init '{init}'; choose one of {', '.join(INITS)}")
    rng = np.random.default_rng([int(seed), int(layer.order)])
    w = np.asarray(graph.constants[layer.weight])
    if init == "matched":
        new_w = rng.normal(float(w.mean()), float(w.std()), w.shape)
    elif init == "he":
        fan_in, _ = _fans(layer, graph)
        new_w = rng.normal(0.0, np.sqrt(2.0 / max(1, fan_in)), w.shape)
    else:
        fan_in, fan_out = _fans(layer, graph)
        limit = np.sqrt(6.0 / max(1, fan_in + fan_out))
        new_w = rng.uniform(-limit, limit, w.shape)
    out = {layer.weight: new_w.astype(w.dtype)}
    if layer.bias:
        b = np.asarray(graph.constants[layer.bias])
        new_b = rng.normal(float(b.mean()), float(b.std()), b.shape) if init == "matched" else np.zeros(b.shape)
        out[layer.bias] = new_b.astype(b.dtype)
    return out


def plan_steps(layers: list[WeightLayer], mode: str, max_steps: int | None = None) -> list[Step]:
    """Step 0 is the trained model. ``cascade``: step k randomizes the top k groups of layers;
    ``independent``: step k randomizes group k alone. With more layers than ``max_steps``, the
    layers are split into that many contiguous groups (top first)."""
    if mode not in MODES:
        raise OptionError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    n_groups = len(layers) if not max_steps else min(len(layers), int(max_steps))
    groups = [list(g) for g in np.array_split(np.arange(len(layers)), n_groups)] if layers else []
    steps = [Step(0, "none (trained)", (), "trained")]
    for k, group in enumerate(groups, start=1):
        names = [layers[i].node for i in group]
        label = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]} ({len(names)})"
        short = short_name(names[0]) if len(names) == 1 else f"{short_name(names[0])} +{len(names) - 1}"
        if mode == "cascade":
            randomized = tuple(layers[i].node for g in groups[:k] for i in g)
        else:
            randomized = tuple(names)
        steps.append(Step(k, label, randomized, short))
    return steps


# -- the run -------------------------------------------------------------------------------------


def parse_units(spec: str) -> tuple[str, int]:
    """``top:N`` (the N strongest channels of each image, at their strongest position) or
    ``logit`` (the top-1 class of each image, for a layer without spatial axes)."""
    spec = (spec or "top:8").strip().lower()
    if spec == "logit":
        return "logit", 1
    if spec.startswith("top:"):
        try:
            n = int(spec[4:])
        except ValueError:
            n = 0
        if n >= 1:
            return "top", n
    raise OptionError(f"cannot read --units '{spec}'; write top:N (e.g. top:8) or logit")


def parse_choices(values: Sequence[str] | str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if not items:
        raise OptionError(f"no {what} given; choose from {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise OptionError(f"unknown {what} '{item}'; choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def _load_images(probe, images, preprocessing):
    if images is None or (not isinstance(images, np.ndarray) and len(images) == 0):
        raise SanityError("no images given; pass at least one image")
    if isinstance(images, np.ndarray):
        arr = np.asarray(images, np.float32)
        if arr.ndim == len(probe.input_shape) - 1:
            arr = arr[None]
        prep = preprocessing or probe.preprocessing
        display = [prep.to_display(a) if prep else None for a in arr]
        return arr, [None] * len(arr), display
    tensors, paths, display = [], [], []
    for image in images:
        shown, tensor, path = probe.load_input(image, preprocessing)
        tensors.append(tensor)
        paths.append(path)
        display.append(shown)
    return np.concatenate(tensors), paths, display


def _unit_seeds(acts: np.ndarray, kind: str, n: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Seeds with value 1 at each chosen unit (every rule is linear in the seed and every
    measure is scale-free, so the trained activation value would change nothing)."""
    rows, image_index, described = [], [], []
    for i in range(acts.shape[0]):
        if kind == "logit":
            if acts.ndim != 2:
                raise SanityError("--units logit needs a layer without spatial axes (the class scores); "
                                  f"this layer has shape {list(acts.shape[1:])}")
            channels = [int(np.argmax(acts[i]))]
        else:
            channels = top_channels(acts, n, i)
        for c in channels:
            unit = strongest_unit(acts, c, i)
            seed = np.zeros(acts.shape[1:], np.float32)
            seed[(c,) + tuple(unit.position)] = 1.0
            rows.append(seed)
            image_index.append(i)
            described.append({"image_index": i, "channel": c, "position": list(unit.position),
                              "trained_activation": unit.value})
    return np.stack(rows), np.array(image_index, np.int64), described


def _selectivity_seeds(acts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """For each image, the ``n`` strongest channels all seeded at ONE position (the strongest
    unit's), so their projections share a receptive field and differ only by the channel."""
    rows, image_index, described = [], [], []
    for i in range(acts.shape[0]):
        channels = top_channels(acts, n, i)
        position = strongest_unit(acts, channels[0], i).position
        for c in channels:
            seed = np.zeros(acts.shape[1:], np.float32)
            seed[(c,) + tuple(position)] = 1.0
            rows.append(seed)
            image_index.append(i)
            described.append({"image_index": i, "channel": c, "position": list(position)})
    return np.stack(rows), np.array(image_index, np.int64), described


def _unit_boxes(probe, tensor: str, described: list[dict], layout: str) -> list:
    """Each unit's receptive-field box: a unit projection is zero outside it whatever the
    weights, so comparing whole frames would count that shared zero area as agreement."""
    from zfprobe.engine.receptive_field import receptive_field

    rf = receptive_field(probe.graph, tensor, layout)
    boxes = []
    for meta in described:
        box = rf.box(tuple(meta["position"])) if meta["position"] else None
        meta["receptive_field"] = [list(b) for b in box] if box else None
        boxes.append(box)
    return boxes


def run_sanity(probe, images, layer: str, rules: Sequence[str] | str = RULES, units: str = "top:8",
               modes: Sequence[str] | str = MODES, init: str = "matched", seed: int = 0,
               max_steps: int | None = None, lrn: str = LRN_IDENTITY, preprocessing=None,
               progress: bool = True) -> SanityResult:
    """Cascading and independent weight randomization for the units of ``layer``; see module doc."""
    rules = parse_choices(rules, RULES, "rule")
    modes = parse_choices(modes, MODES, "mode")
    kind, n_units = parse_units(units)
    if init not in INITS:
        raise OptionError(f"unknown --init '{init}'; choose one of {', '.join(INITS)}")
    if max_steps is not None and max_steps < 1:
        raise OptionError("--steps must be at least 1")
    tensor = probe.resolve(layer)
    layers = weight_layers(probe.graph, tensor)
    if not layers:
        raise SanityError(f"layer '{layer}' has no layer with learned weights (Conv, Gemm, MatMul) at or below it; "
                          "nothing to randomize: pick a deeper layer")
    x, paths, display = _load_images(probe, images, preprocessing)
    if x.shape[0] == 0:
        raise ImageError("no images given; pass at least one image")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    trained = {name: np.asarray(probe.graph.constants[name]) for l in layers for name in (l.weight, l.bias) if name}
    random = {}
    for l in layers:
        random[l.node] = reinitialize(probe.graph, l, init, seed)
    acts = probe.activations(x, layer)
    seeds, seed_image, described = _unit_seeds(acts, kind, n_units)
    layout = probe.preprocessing.layout if probe.preprocessing else "NCHW"
    steps = {mode: plan_steps(layers, mode, max_steps) for mode in modes}
    boxes = _unit_boxes(probe, tensor, described, layout)
    timings["setup"] = time.perf_counter() - t0

    def weights_for(step: Step) -> dict[str, np.ndarray]:
        values = dict(trained)  # always every candidate: one parametrized program for all steps
        for node in step.randomized:
            values.update(random[node])
        return values

    total = len(rules) * (1 + sum(len(s) - 1 for s in steps.values()))
    bar = _progress(total, progress)
    rows: list[dict] = []
    strips: dict[str, dict[str, list[np.ndarray]]] = {m: {r: [] for r in rules} for m in modes}
    base: dict[str, np.ndarray] = {}
    t1 = time.perf_counter()
    for rule in rules:
        base[rule] = probe.project(x, layer, seeds, seed_image, rule=rule, lrn=lrn)
        bar.update(1)
    timings["trained"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    for mode in modes:
        for step in steps[mode]:
            for rule in rules:
                # step 0 feeds the trained weights through the same program as every other step
                projections = probe.project(x, layer, seeds, seed_image, rule=rule, lrn=lrn,
                                            constants=weights_for(step))
                if step.index:
                    bar.update(1)
                for k, meta in enumerate(described):
                    measures = compare(base[rule][k], projections[k], layout, boxes[k])
                    rows.append({"mode": mode, "step": step.index, "randomized": step.label, "rule": rule,
                                 "image_index": meta["image_index"], "channel": meta["channel"],
                                 "position": "x".join(map(str, meta["position"])) or "-", **measures})
                strips[mode][rule].append(projections[0])
    timings["randomized"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    selectivity = []
    sel_seeds, sel_image, sel_meta = _selectivity_seeds(acts, max(2, n_units if kind == "top" else 8))
    sel_boxes = _unit_boxes(probe, tensor, sel_meta, layout)
    for rule in rules:
        projections = probe.project(x, layer, sel_seeds, sel_image, rule=rule, lrn=lrn)
        for i in range(x.shape[0]):
            rows_i = np.flatnonzero(sel_image == i)
            selectivity.append({"rule": rule, "image_index": i, "units": int(len(rows_i)),
                                "channels": " ".join(str(sel_meta[r]["channel"]) for r in rows_i),
                                "position": "x".join(map(str, sel_meta[rows_i[0]]["position"])) or "-",
                                **mean_pairwise(projections[rows_i], layout, sel_boxes[rows_i[0]])})
    timings["selectivity"] = time.perf_counter() - t3
    bar.close()
    return SanityResult(layer=layer, tensor=tensor, rules=rules, modes=modes, init=init, seed=int(seed),
                        units=units, layers=layers, steps=steps, rows=rows, selectivity=selectivity, strips=strips,
                        seeds=described, images=paths, display=display, layout=layout, timings=timings)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="sanity", unit="model", disable=not enabled, leave=False)
