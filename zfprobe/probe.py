"""The Probe: one model (any front-end) bound to one backend; the object every analysis uses.

``zfprobe.load(path)`` makes one from a file; the torch and Keras adapters make the same object
from live models. It resolves layer names, computes activations through only the part of the
network a layer needs, and projects seeds with a cached deconvnet program per (layer, rule).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zfprobe.engine.rules import AUTO, DECONVNET, LRN_IDENTITY
from zfprobe.errors import ImageError, LayerNotFoundError
from zfprobe.engine.graph import Graph, build_forward
# The deconvnet builder (zfprobe.engine.deconv, and with it the inverse rules of every op) is
# imported where a deconvnet is first needed, not with the Probe: attaching a model and computing
# activations do without it (~5 ms of a cold attach, as much as the forward of a small net).

from zfprobe.io.memory import batch_that_fits, budget_for, liveness_peak, peak_growth, tensor_bytes


@dataclass(frozen=True)
class LayerInfo:
    name: str           # what the user types
    tensor: str         # the tensor it names
    op_type: str
    shape: tuple[int, ...]
    invertible: bool
    blocker: str        # why not ('' when invertible): "node 'x' (Op): reason"


class Probe:
    def __init__(self, graph: Graph, backend, source: str = "", preprocessing=None):
        self.graph = graph
        self.backend = backend
        self.source = source
        self.preprocessing = preprocessing
        self._programs: dict[tuple, Graph] = {}
        self._seed_costs: dict[int, tuple] = {}  # id(windowed program) -> (program, measured bytes per seed)
        # per layer: which projection path the cost model chose and its estimates (manifests)
        self.projection_paths: dict[str, dict] = {}
        self._layers: list[LayerInfo] | None = None
        self._aliases = self._build_aliases()

    # -- layers ----------------------------------------------------------------------------
    def _build_aliases(self) -> dict[str, str]:
        aliases: dict[str, str] = {}
        for node in self.graph.nodes:
            outs = [o for o in node.outputs if o]
            for o in outs:
                aliases[o] = o
            if outs and node.name not in aliases:
                aliases[node.name] = outs[0]
            if node.source and node.source not in aliases and outs:
                aliases[node.source] = outs[0]
        for t in self.graph.inputs:
            aliases[t] = t
        # front-end supplied names (e.g. torch module paths -> their output tensors)
        for alias, tensor in self.graph.metadata.get("aliases", {}).items():
            aliases.setdefault(alias, tensor)
        return aliases

    @property
    def input_name(self) -> str:
        return self.graph.inputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.shape(self.input_name)

    def resolve(self, layer: str) -> str:
        """The tensor a layer name (node name or tensor name) refers to."""
        tensor = self._aliases.get(layer)
        if tensor is None:
            raise LayerNotFoundError(layer, [info.name for info in self.layers()])
        return tensor

    def layer_names(self) -> list[str]:
        return [info.name for info in self.layers()]

    def layers(self) -> list[LayerInfo]:
        """Every probe-able layer in order, with whether the deconvnet can pass through it."""
        if self._layers is not None:
            return self._layers
        from zfprobe.engine.inverses import check_invertible

        blocked: dict[str, str] = {}  # tensor -> first blocker at or below it
        infos = []
        for node in self.graph.nodes:
            own = check_invertible(self.graph, node)
            reason = f"node '{node.name}' ({node.op_type}): {own}" if own else ""
            if not reason:
                for t in self.graph.variable_inputs(node):
                    if t in blocked:
                        reason = blocked[t]
                        break
            for i, out in enumerate(o for o in node.outputs if o):
                if reason:
                    blocked[out] = reason
                name = node.name if i == 0 and node.name not in self.graph.shapes else out
                if out not in self.graph.shapes:
                    continue
                infos.append(LayerInfo(name, out, node.op_type, self.graph.shape(out), not reason, reason))
        self._layers = infos
        return infos

    # -- computation -----------------------------------------------------------------------
    def check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        want = self.input_shape[1:]
        if images.ndim != len(self.input_shape) or tuple(images.shape[1:]) != tuple(want):
            raise ImageError(f"images of shape {images.shape} do not fit the model input [N, {', '.join(map(str, want))}]")
        return np.ascontiguousarray(images, dtype=self.graph.dtypes.get(self.input_name, np.float32))

    def load_input(self, image, preprocessing=None) -> tuple[np.ndarray | None, np.ndarray, str | None]:
        """One image as (display RGB uint8 or None, model input [1, ...], path or None), from a
        file path (preprocessed) or an already preprocessed array ([1, ...] or without batch)."""
        from zfprobe.io.preprocess import load_image

        prep = preprocessing or self.preprocessing
        if isinstance(image, (str, os.PathLike)):
            if prep is None:
                raise ImageError("this model has no image preprocessing; pass a preprocessed array")
            path = os.fspath(image)
            display, tensor = load_image(path, prep)
            return display, tensor, path
        tensor = np.asarray(image, dtype=np.float32)
        if tensor.ndim == len(self.input_shape) - 1:
            tensor = tensor[None]
        display = prep.to_display(tensor[0]) if prep else None
        return display, tensor, None

    def forward_program(self, tensors: Sequence[str]) -> Graph:
        key = ("forward", tuple(tensors))
        if key not in self._programs:
            self._programs[key] = build_forward(self.graph, list(tensors))
        return self._programs[key]

    def activations(self, images: np.ndarray, layer: str | Sequence[str],
                    constants: dict[str, np.ndarray] | None = None):
        """Layer output(s) for a batch of preprocessed images (one array, or a list for a list).

        ``constants`` replaces some of the model's weights for this call only (see
        :meth:`with_parameters`); the model and its programs are not changed."""
        many = not isinstance(layer, str)
        tensors = [self.resolve(l) for l in ([layer] if not many else layer)]
        images = self.check_images(images)
        program, feeds = self.with_parameters(self.forward_program(tensors), constants)
        outs = self.backend.run(program, dict(feeds, **{self.input_name: images}), tensors)
        return outs if many else outs[0]

    def with_parameters(self, program: Graph, constants: dict[str, np.ndarray] | None) -> tuple[Graph, dict]:
        """``program`` with the named constants turned into inputs (fed with the given values),
        and those feeds. The parametrized program is cached, so a sweep over other weights (the
        sanity checks' randomized models) reuses one built program and one backend session."""
        if not constants:
            return program, {}
        names = tuple(sorted(n for n in constants if n in program.constants))
        if not names:
            return program, {}
        key = ("parametrized", id(program), names)
        cached = self._programs.get(key)
        if cached is None or cached[0] is not program:
            shapes, dtypes = dict(program.shapes), dict(program.dtypes)
            for n in names:
                shapes[n] = tuple(program.constants[n].shape)
                dtypes[n] = np.dtype(program.constants[n].dtype)
            parametrized = Graph(nodes=program.nodes, inputs=list(program.inputs) + list(names),
                                 outputs=list(program.outputs), constants=program.constants, shapes=shapes,
                                 dtypes=dtypes, parameter_refs=program.parameter_refs,
                                 name=program.name + "+params", metadata=dict(program.metadata))
            cached = (program, parametrized)
            self._programs[key] = cached
        feeds = {}
        for n in names:
            value = np.asarray(constants[n])
            want = program.constants[n]
            if value.shape != want.shape:
                raise ValueError(f"constant '{n}' has shape {want.shape}, not {value.shape}")
            feeds[n] = np.ascontiguousarray(value, dtype=want.dtype)
        return cached[1], feeds

    def choose_rule(self, layer: str, rule: str = AUTO):
        """The rule ``rule`` stands for at ``layer`` (``auto``: guided backprop where no max-pool
        switch ties the deconvnet to the image) and why; see :mod:`zfprobe.engine.rule_choice`."""
        from zfprobe.engine.rule_choice import choose_rule

        tensor = self.resolve(layer)
        key = ("rule", tensor, rule)
        if key not in self._programs:
            self._programs[key] = choose_rule(self.graph, tensor, rule, layer)
        return self._programs[key]

    def _rule(self, layer: str, rule: str) -> str:
        return self.choose_rule(layer, rule).rule if rule == AUTO else rule

    def deconv_program(self, layer: str, rule: str = DECONVNET, lrn: str = LRN_IDENTITY,
                       single_image: bool = False) -> Graph:
        from zfprobe.engine.deconv import DeconvOptions, build_deconvnet

        tensor = self.resolve(layer)
        options = DeconvOptions(self._rule(layer, rule), lrn)
        key = ("deconv", tensor, options, single_image)
        if key not in self._programs:
            self._programs[key] = build_deconvnet(self.graph, tensor, options, single_image)
        return self._programs[key]

    def project(self, images: np.ndarray, layer: str, seeds: np.ndarray, seed_image: np.ndarray | None = None,
                rule: str = DECONVNET, lrn: str = LRN_IDENTITY, batch_size: int | None = None,
                windowed: bool | None = None, constants: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Project each seed row to pixel space ([K, *input]); see zfprobe.engine.deconv for the contract.

        Rows that keep a single unit take the receptive-field-windowed path (zfprobe.engine.windowed)
        where the network allows it and the cost model expects it to be cheaper than the full
        program (:meth:`projection_path`): the same result, computed only where it can be non-zero.
        ``windowed``: None (default) lets the cost model choose; True takes the windowed path
        wherever the network allows it; False always runs the full program.
        ``constants`` replaces some weights for this call only (see :meth:`with_parameters`).
        """
        from zfprobe.engine.deconv import PROJECTION, SEED, SEED_IMAGE

        images = self.check_images(images)
        seeds = np.ascontiguousarray(seeds, dtype=np.float32)
        tensor = self.resolve(layer)
        rule = self._rule(layer, rule)
        if tuple(seeds.shape[1:]) != tuple(self.graph.shape(tensor)[1:]):
            raise ValueError(f"seeds of shape {seeds.shape} do not match layer {layer} {self.graph.shape(tensor)}")
        k = seeds.shape[0]
        seed_image = np.zeros(k, np.int64) if seed_image is None else np.asarray(seed_image, np.int64)
        if k == 0:
            return np.zeros((0,) + tuple(images.shape[1:]), np.float32)
        chunk = batch_size or self.seed_batch_size(tensor, images.shape[0])
        units = unit_positions(seeds)
        use_windows = windowed if windowed is not None else self.projection_path(layer)["path"] == "windowed"
        if units is not None and use_windows:
            windowed_program = self.windowed_program(layer, rule, lrn, single_image=images.shape[0] == 1)
            if windowed_program is not None:
                windowed_program, weights = self.with_parameters(windowed_program, constants)
                return self._project_windowed(windowed_program, images, seeds, units, seed_image, chunk, weights)
        program, weights = self.with_parameters(self.deconv_program(layer, rule, lrn, single_image=images.shape[0] == 1),
                                                constants)
        results = []
        for start in range(0, k, chunk):
            feeds = {self.input_name: images, SEED: seeds[start:start + chunk], SEED_IMAGE: seed_image[start:start + chunk],
                     **weights}
            results.append(self.backend.run(program, feeds, [PROJECTION])[0])
        return results[0] if len(results) == 1 else np.concatenate(results)

    def predictions(self, images: np.ndarray, k: int = 5, names: list[str] | None = None) -> list[dict] | None:
        """The ``k`` most probable classes of the first image ([{class, name, probability}]), or
        None when the model has no class output. Names: ``names``, the sidecar's ``labels``, or
        the bundled ImageNet names for a 1,000-way output (zfprobe.io.classes)."""
        from zfprobe.io.classes import class_names_for, top_predictions
        from zfprobe.studies.occlusion.options import class_output

        out = class_output(self.graph)
        if out is None:
            return None
        scores = self.activations(np.asarray(images)[:1], out.tensor).reshape(-1)
        given = names if names is not None else (self.preprocessing.labels if self.preprocessing else None)
        return top_predictions(scores, class_names_for(scores.size, given), k)

    def visualize(self, image, layer: str, **options):
        """Project units of one image at ``layer``; see :func:`zfprobe.studies.visualize.compute.visualize`."""
        from zfprobe.studies.visualize.compute import visualize

        return visualize(self, image, layer, **options)

    def occlude(self, image, layer: str, **options):
        """Occlusion sensitivity maps (paper, Fig. 7); see :func:`zfprobe.studies.occlusion.occlude`."""
        from zfprobe.studies.occlusion import occlude

        return occlude(self, image, layer, **options)

    def invariance(self, images, layers, **options):
        """Invariance curves (paper, Fig. 5); see :func:`zfprobe.studies.invariance.compute.invariance`."""
        from zfprobe.studies.invariance.compute import invariance

        return invariance(self, images, layers, **options)

    def correspondence(self, images, parts, layers, **options):
        """Correspondence analysis (paper, Table 1); see :func:`zfprobe.studies.correspondence.compute.correspondence`."""
        from zfprobe.studies.correspondence.compute import correspondence

        return correspondence(self, images, parts, layers, **options)

    def export_deconv(self, layer: str, path: str, rule: str = DECONVNET, lrn: str = LRN_IDENTITY) -> None:
        """Save the deconvnet of ``layer`` as a standalone ONNX model (inputs: image, zf_seed, zf_seed_image)."""
        from zfprobe.adapters.backends.onnx_export import to_onnx
        from zfprobe.io.outputs import write_file_atomically

        write_file_atomically(path, to_onnx(self.deconv_program(layer, self._rule(layer, rule), lrn)).SerializeToString())

    def windowed_program(self, layer: str, rule: str, lrn: str, single_image: bool) -> Graph | None:
        """The windowed deconvnet of ``layer``, or None where the path does not allow windows."""
        from zfprobe.engine.deconv import DeconvOptions
        from zfprobe.engine.windowed import NotWindowable, build_windowed_deconvnet

        tensor = self.resolve(layer)
        options = DeconvOptions(self._rule(layer, rule), lrn)
        key = ("windowed", tensor, options, single_image)
        if key not in self._programs:
            try:
                self._programs[key] = build_windowed_deconvnet(self.graph, tensor, options, single_image)
            except NotWindowable:
                self._programs[key] = None
        return self._programs[key]

    def projection_path(self, layer: str) -> dict:
        """Which program projects unit seeds at ``layer``: ``{"path": "windowed" | "full",
        "windowed_macs", "full_macs", "reason"}``. Multiply-adds per seed are estimated for both
        before either is built (:func:`zfprobe.engine.windowed.projection_costs`); the windowed
        program runs only where it is estimated at most ``WINDOWED_MAX_FRACTION`` of the full one.
        Recorded in ``projection_paths`` (written into manifests)."""
        from zfprobe.engine.windowed import WINDOWED_MAX_FRACTION, NotWindowable, projection_costs

        tensor = self.resolve(layer)
        if tensor not in self.projection_paths:
            try:
                windowed, full = projection_costs(self.graph, tensor)
            except NotWindowable as exc:
                choice = {"path": "full", "windowed_macs": None, "full_macs": None,
                          "reason": f"not windowable at {exc}"}
            else:
                cheaper = windowed <= WINDOWED_MAX_FRACTION * full
                choice = {"path": "windowed" if cheaper else "full", "windowed_macs": windowed, "full_macs": full,
                          "reason": f"estimated windowed / full = {windowed / max(full, 1.0):.2f}"}
            self.projection_paths[tensor] = dict(choice, layer=layer)
        return self.projection_paths[tensor]

    def _project_windowed(self, program: Graph, images: np.ndarray, seeds: np.ndarray, units: np.ndarray,
                          seed_image: np.ndarray, chunk: int, weights: dict | None = None) -> np.ndarray:
        from zfprobe.engine.deconv import SEED_IMAGE
        from zfprobe.engine.windowed import OUTPUT_WINDOW, SEED_WINDOW, WindowPlan

        plan = WindowPlan(program)
        seed_hw = tuple(seeds.shape[2:])
        rows = np.arange(len(seeds))
        window_seeds = seeds[rows, :, units[:, 0], units[:, 1]][:, :, None, None]
        out = []

        def run(sl: slice) -> np.ndarray:
            feeds = {self.input_name: images, SEED_WINDOW: np.ascontiguousarray(window_seeds[sl]),
                     SEED_IMAGE: seed_image[sl], **(weights or {})}
            feeds.update(plan.feeds(units[sl], seed_image[sl], seed_hw))
            return plan.paste(self.backend.run(program, feeds, [OUTPUT_WINDOW])[0], units[sl], tuple(images.shape[1:]))

        if chunk > 1 and len(seeds) > 1 and id(program) not in self._seed_costs:
            # the graph does not give the windows' sizes: measure one seed (with the session's
            # first-run allocations, so on the safe side), then size the batches from it. The
            # measuring run's result is not used: the batches are cut the same way on every call,
            # so a projection does not depend on which call came first (float rounding follows
            # the batch).
            _, grown = peak_growth(lambda: run(slice(0, 1)))
            self._seed_costs[id(program)] = (program, grown)
        cost = self._seed_costs.get(id(program), (None, None))[1]
        if cost:
            chunk = min(chunk, max(1, int(budget_for("projection") // cost)))
        for start in range(0, len(seeds), chunk):
            out.append(run(slice(start, start + chunk)))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def images_per_projection(self, tensor: str, limit: int) -> int:
        """How many images (at most ``limit``) one reverse batch may carry: their forward
        tensors take at most half the projection share, the seeds the rest."""
        per_image = reverse_peak(self.graph, tensor)[0]
        return max(1, min(int(limit), batch_that_fits(2 * per_image, budget_for("projection"))))

    def seed_batch_size(self, tensor: str, n_images: int = 1) -> int:
        """How many seeds fit one reverse batch (with ``n_images`` images) in the projection
        share of the memory budget, from the program's peak live memory (:func:`reverse_peak`)."""
        per_image, per_seed = reverse_peak(self.graph, tensor)
        return batch_that_fits(per_seed, budget_for("projection"), fixed=n_images * per_image)


def reverse_peak(graph: Graph, tensor: str) -> tuple[int, int]:
    """(bytes per image, bytes per seed) the deconvnet of ``tensor`` holds at its peak.

    Per image: the forward tensors of the path (what the reversal reads: switches, rectifier
    inputs), held through the reverse pass. Per seed: the liveness peak of the reverse pass,
    which runs the path's nodes backwards; the signal reaching tensor t has t's shape, lives
    from the reversal of t's first consumer to that of its producer, and each step also holds
    a per-seed copy of what it reads (the gathered switches / saved input)."""
    forward = graph.ancestors([tensor])
    size = lambda t: tensor_bytes(graph, t)  # noqa: E731
    image = graph.inputs[0]
    per_image = size(image) + sum(size(o) for n in forward for o in n.outputs if o)
    steps, saved = [], {}
    for n in reversed(forward):
        variable = graph.variable_inputs(n)
        saved["saved:" + n.name] = max([size(t) for t in variable + [o for o in n.outputs if o]] or [0])
        steps.append((["grad:" + o for o in n.outputs if o], ["grad:" + t for t in variable] + ["saved:" + n.name]))
    per_seed = liveness_peak(steps, lambda t: saved[t] if t in saved else size(t.split(":", 1)[1]),
                             inputs=["grad:" + tensor], keep=["grad:" + image])
    return per_image, per_seed


def unit_positions(seeds: np.ndarray) -> np.ndarray | None:
    """(y, x) of the single non-zero unit of each seed row [K, C, H, W], or None if any row has more."""
    if seeds.ndim != 4:
        return None
    flat = seeds.reshape(len(seeds), -1)
    nonzero = np.count_nonzero(flat, axis=1)
    if np.any(nonzero > 1):
        return None
    idx = np.argmax(flat != 0, axis=1)
    _, y, x = np.unravel_index(idx, seeds.shape[1:])
    return np.stack([y, x], axis=1).astype(np.int64)
