"""Ablation (paper Table 3): remove parts of a network and measure what the accuracy loses.

Edits are made on a copy of the :class:`~zfprobe.engine.graph.Graph`, never on the model file, and only
by inserting or rewiring canonical ops, so the edited graph runs on every backend (onnxruntime
through the ONNX export; torch with a live module's live weights):

* **layer**: the layer's consumers read the layer's input instead (``identity``) where the shapes
  agree; otherwise, or with ``zero``, its output is multiplied by 0; ``mean`` puts the layer's
  dataset mean activation (per channel and position) in its place.
* **channels**: the chosen channels are multiplied by 0 (``zero``) or replaced by their dataset
  mean (``mean``: ``x * keep + mean * (1 - keep)``, mean per channel and position).
* **branch**: a residual branch is skipped: the ``Add`` it feeds keeps only its other input.

Metrics on a labelled set: top-1 and top-5 accuracy and the mean cross-entropy loss (from the
output's probabilities when the model ends with a Softmax, else from a log-softmax of its
logits). Per-channel importance ablates each channel of a layer alone; when every path from the
input to the output crosses the layer, the layer's activations are computed once per batch and
only the rest of the network is rerun for each channel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zfprobe.errors import OptionError
from zfprobe.engine.graph import Graph, Node

MODES = ("zero", "mean", "identity")


@dataclass(frozen=True)
class Edit:
    """``kind`` layer / channels / branch; ``layer`` the tensor name the user gave."""

    kind: str
    layer: str
    channels: tuple[int, ...] = ()
    mode: str = "zero"

    def describe(self) -> str:
        if self.kind == "channels":
            return f"{self.layer} channels {_ranges(self.channels)} ({self.mode})"
        if self.kind == "branch":
            return f"branch {self.layer} skipped"
        return f"layer {self.layer} ({self.mode})"


@dataclass
class Metrics:
    top1: float
    top5: float
    loss: float
    n: int
    k: int = 5

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "images": self.n, "top_k": self.k}


@dataclass
class AblationResult:
    edits: list[Edit]
    intact: Metrics
    ablated: Metrics
    applied: list[str]                       # what was done, in words (identity or zero, ...)
    retrained: dict | None = None            # {"intact": acc, "ablated": acc, "train": n, "test": n}
    seconds: float = 0.0

    def _repr_html_(self) -> str:
        """Jupyter: the table and the comparison plot the CLI writes, drawn in memory."""
        from zfprobe.io.inline import block, img_tag, markdown_html
        from zfprobe.studies.ablation.render import comparison_plot, markdown_table

        what = "; ".join(self.applied)
        return block(f"ablation: {what}", markdown_html(markdown_table(self)),
                     img_tag(comparison_plot(self, what), "ablation.png"))


@dataclass
class Importance:
    layer: str
    mode: str
    drop_top1: np.ndarray   # [C] accuracy lost when channel c alone is ablated
    drop_loss: np.ndarray   # [C] loss gained
    intact: Metrics
    shortcut: bool          # the layer was a cut: only the rest of the network was rerun
    seconds: float = 0.0

    def _repr_png_(self) -> bytes:
        """Jupyter: the accuracy lost per channel (the CLI's importance.png), drawn in memory."""
        from zfprobe.studies.ablation.render import importance_plot

        return importance_plot(self, f"{self.layer}: accuracy lost per channel ({self.mode})")

    def ranking(self) -> np.ndarray:
        """Channels by importance: largest top-1 drop first, then largest loss increase."""
        return np.lexsort((-self.drop_loss, -self.drop_top1))


# ------------------------------------------------------------------ graph edits -------------
def copy_graph(graph: Graph) -> Graph:
    """A copy whose nodes and tables can be edited; constant arrays are shared, not copied."""
    nodes = [Node(n.name, n.op_type, list(n.inputs), list(n.outputs), dict(n.attrs), n.source) for n in graph.nodes]
    return Graph(nodes, list(graph.inputs), list(graph.outputs), dict(graph.constants), dict(graph.shapes),
                 dict(graph.dtypes), dict(graph.parameter_refs), graph.name, dict(graph.metadata))


def check_ablatable(graph: Graph, tensor: str, layer: str) -> Node:
    node = graph.producer(tensor)
    if tensor in graph.outputs:
        raise OptionError(f"layer '{layer}' is the model's output; ablating it leaves nothing to measure "
                          "(pick a layer before the output)")
    if node is None:
        raise OptionError(f"layer '{layer}' is the model's input, not a layer that can be ablated")
    if not graph.consumers(tensor):
        raise OptionError(f"nothing reads layer '{layer}'; ablating it changes nothing")
    return node


def _indexed(g: Graph) -> Graph:
    """The same graph with its producer / consumer tables rebuilt after an edit."""
    return Graph(g.nodes, g.inputs, g.outputs, g.constants, g.shapes, g.dtypes, g.parameter_refs, g.name, g.metadata)


def _rewire(graph: Graph, old: str, new: str, skip: Node | None = None) -> None:
    for node in graph.nodes:
        if node is skip:
            continue
        node.inputs = [new if t == old else t for t in node.inputs]


def _insert_after(graph: Graph, producer: Node, nodes: list[Node]) -> None:
    at = graph.nodes.index(producer) + 1
    graph.nodes[at:at] = nodes


def _mask_edit(graph: Graph, tensor: str, keep: np.ndarray, fill: np.ndarray | None, tag: str) -> None:
    """Replace ``tensor`` by ``tensor * keep (+ fill)`` for all its consumers."""
    producer = graph.producer(tensor)
    shape = graph.shape(tensor)
    out = f"{tensor}/zf_ablated{tag}"
    mask_name = f"{out}/keep"
    graph.constants[mask_name] = keep.astype(np.float32)
    masked = out if fill is None else f"{out}/masked"
    nodes = [Node(f"zf_ablate{tag}/{tensor}/mul", "Mul", [tensor, mask_name], [masked])]
    graph.shapes[masked] = shape
    graph.dtypes[masked] = graph.dtypes.get(tensor, np.dtype(np.float32))
    if fill is not None:
        fill_name = f"{out}/fill"
        graph.constants[fill_name] = fill.astype(np.float32)
        nodes.append(Node(f"zf_ablate{tag}/{tensor}/add", "Add", [masked, fill_name], [out]))
    graph.shapes[out] = shape
    graph.dtypes[out] = graph.dtypes.get(tensor, np.dtype(np.float32))
    _rewire(graph, tensor, out)
    _insert_after(graph, producer, nodes)


def apply_edits(graph: Graph, edits: Sequence[Edit], resolve, means: dict[str, np.ndarray] | None = None) -> tuple[Graph, list[str]]:
    """The edited copy of ``graph`` and, per edit, what was done. ``resolve(layer) -> tensor``;
    ``means[tensor]``: the dataset mean activation [*shape without batch] (``mean`` mode)."""
    edited = copy_graph(graph)
    applied = []
    for i, edit in enumerate(edits):
        tensor = resolve(edit.layer)
        node = check_ablatable(edited, tensor, edit.layer)
        shape = tuple(edited.shape(tensor))
        tag = f"_{i}"
        if edit.kind == "branch":
            adds = [c for c in edited.consumers(tensor) if c.op_type in ("Add", "Sum")]
            if not adds:
                raise OptionError(f"'{edit.layer}' does not feed a residual Add; --branch takes the last layer of a "
                                  "residual branch (the input of the Add that joins it to the skip path)")
            for add in adds:
                others = [t for t in add.inputs if t and t != tensor]
                if len(others) != 1 or tuple(edited.shape(others[0])) != tuple(edited.shape(add.outputs[0])):
                    raise OptionError(f"the Add '{add.name}' that '{edit.layer}' feeds has no skip input of the same shape")
                add.op_type, add.inputs, add.attrs = "Identity", [others[0]], {}
            edited = _indexed(edited)
            applied.append(f"branch {edit.layer} skipped")
            continue
        if edit.kind == "layer":
            inputs = edited.variable_inputs(node)
            mode = edit.mode
            if mode == "identity":
                if len(inputs) == 1 and tuple(edited.shape(inputs[0])) == shape and len([o for o in node.outputs if o]) == 1:
                    _rewire(edited, tensor, inputs[0])
                    edited = _indexed(edited)
                    applied.append(f"layer {edit.layer} replaced by identity")
                    continue
                mode = "zero"
                why = "shapes differ" if len(inputs) == 1 else "it has several inputs"
                applied.append(f"layer {edit.layer} zeroed (identity impossible: {why})")
            else:
                applied.append(f"layer {edit.layer} set to {'zero' if mode == 'zero' else 'its dataset mean'}")
            keep = np.zeros((1,) + shape[1:], np.float32)
            fill = None if mode == "zero" else _mean_of(means, tensor, edit.layer)[None]
            _mask_edit(edited, tensor, keep, fill, tag)
            edited = _indexed(edited)
            continue
        if len(shape) < 2:
            raise OptionError(f"layer '{edit.layer}' has no channels")
        bad = [c for c in edit.channels if not 0 <= c < shape[1]]
        if bad:
            raise OptionError(f"channel {bad[0]} is out of range: layer '{edit.layer}' has {shape[1]} channels")
        if edit.mode not in ("zero", "mean"):
            raise OptionError("channels are ablated with --mode zero or mean")
        keep = np.ones((1,) + shape[1:], np.float32)
        keep[:, list(edit.channels)] = 0
        fill = None
        if edit.mode == "mean":
            fill = (1 - keep) * _mean_of(means, tensor, edit.layer)[None]
        _mask_edit(edited, tensor, keep, fill, tag)
        edited = _indexed(edited)
        applied.append(f"{edit.layer} channels {_ranges(edit.channels)} set to "
                       f"{'zero' if edit.mode == 'zero' else 'their dataset mean'}")
    return edited, applied


def _mean_of(means, tensor: str, layer: str) -> np.ndarray:
    if not means or tensor not in means:
        raise OptionError(f"mode 'mean' needs the dataset mean of '{layer}' (computed from the data)")
    return means[tensor]


def _ranges(channels: Sequence[int]) -> str:
    out, chans = [], sorted(channels)
    i = 0
    while i < len(chans):
        j = i
        while j + 1 < len(chans) and chans[j + 1] == chans[j] + 1:
            j += 1
        out.append(str(chans[i]) if i == j else f"{chans[i]}-{chans[j]}")
        i = j + 1
    return ",".join(out)


# ------------------------------------------------------------------ metrics ----------------
class Scorer:
    """Streaming top-1 / top-k / cross-entropy from output rows and true labels."""

    def __init__(self, probabilities: bool, k: int = 5):
        self.probabilities, self.k = probabilities, k
        self.n = self.top1 = self.topk = 0
        self.loss = 0.0

    def add(self, out: np.ndarray, labels: np.ndarray) -> None:
        out = out.reshape(len(out), -1).astype(np.float64)
        if self.probabilities:
            logp = np.log(np.clip(out, 1e-12, None))
        else:
            shifted = out - out.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        k = min(self.k, out.shape[1])
        rows = np.arange(len(labels))
        true = out[rows, labels]
        rank = (out > true[:, None]).sum(axis=1)  # ties count for the label
        self.top1 += int((rank == 0).sum())
        self.topk += int((rank < k).sum())
        self.loss += float(-logp[rows, labels].sum())
        self.n += len(labels)

    def metrics(self) -> Metrics:
        n = max(self.n, 1)
        return Metrics(self.top1 / n, self.topk / n, self.loss / n, self.n, self.k)


def output_is_probability(graph: Graph) -> bool:
    node = graph.producer(graph.outputs[0])
    while node is not None and node.op_type in ("Identity", "Flatten", "Reshape"):
        node = graph.producer(graph.variable_inputs(node)[0])
    return node is not None and node.op_type == "Softmax"


def check_labels(labelled, n_outputs: int) -> None:
    if not labelled.numeric:
        raise OptionError("ablation compares the model's own predictions with the labels, so labels must be the "
                          "model's class indices (integers); these are names")
    bad = labelled.labels[(labelled.labels < 0) | (labelled.labels >= n_outputs)]
    if len(bad):
        raise OptionError(f"label {int(bad[0])} is not a class of the model, which has {n_outputs} outputs (0..{n_outputs - 1})")


def _batches(labelled, batch_size: int, progress: bool, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=len(labelled), desc=desc, unit="img", disable=not progress, leave=False,
               dynamic_ncols=True)
    try:
        for batch in labelled.dataset.batches(batch_size):
            if len(batch.indices):
                yield np.ascontiguousarray(batch.tensors, np.float32), labelled.labels[batch.indices], bar
            bar.update(len(batch.indices) + len(batch.skipped))
    finally:
        bar.close()


def evaluate(probe, graph: Graph, labelled, batch_size: int = 64, progress: bool = False, desc: str = "evaluating") -> Metrics:
    """Metrics of ``graph`` (the intact or an edited copy of ``probe.graph``) on ``labelled``."""
    from zfprobe.engine.deconv import build_forward

    out = graph.outputs[0]
    program = build_forward(graph, [out])
    scorer = Scorer(output_is_probability(graph))
    for images, labels, _ in _batches(labelled, batch_size, progress, desc):
        scorer.add(probe.backend.run(program, {probe.input_name: images}, [out])[0], labels)
    if scorer.n == 0:  # every image unreadable: an accuracy of 0 of 0 images would be a made-up number
        from zfprobe.io.datasets import DatasetError

        raise DatasetError(f"none of the {len(labelled)} labelled image(s) could be read; nothing to measure")
    return scorer.metrics()


def dataset_means(probe, labelled, tensors: Sequence[str], batch_size: int = 64, progress: bool = False) -> dict[str, np.ndarray]:
    """Mean activation of each tensor over the dataset ([*shape], per channel and position), streamed."""
    from zfprobe.engine.deconv import build_forward

    program = build_forward(probe.graph, list(tensors))
    sums = {t: np.zeros(probe.graph.shape(t)[1:], np.float64) for t in tensors}
    n = 0
    for images, _, _ in _batches(labelled, batch_size, progress, "means"):
        for t, a in zip(tensors, probe.backend.run(program, {probe.input_name: images}, list(tensors))):
            sums[t] += a.sum(axis=0)
        n += len(images)
    return {t: (s / max(n, 1)).astype(np.float32) for t, s in sums.items()}


def ablate(probe, labelled, edits: Sequence[Edit], batch_size: int = 64, progress: bool = False) -> AblationResult:
    """Intact vs edited network on ``labelled``: top-1, top-5, loss."""
    t0 = time.perf_counter()
    if not edits:
        raise OptionError("say what to ablate: --layer, --channels or --branch")
    n_out = int(np.prod(probe.graph.shape(probe.graph.outputs[0])[1:]))
    check_labels(labelled, n_out)
    for e in edits:
        check_ablatable(probe.graph, probe.resolve(e.layer), e.layer)
    needs_mean = sorted({probe.resolve(e.layer) for e in edits if e.mode == "mean" and e.kind != "branch"})
    means = dataset_means(probe, labelled, needs_mean, batch_size, progress) if needs_mean else None
    edited, applied = apply_edits(probe.graph, edits, probe.resolve, means)
    intact = evaluate(probe, probe.graph, labelled, batch_size, progress, "intact")
    ablated = evaluate(probe, edited, labelled, batch_size, progress, "ablated")
    return AblationResult(list(edits), intact, ablated, applied, None, time.perf_counter() - t0)


def tail_program(graph: Graph, tensor: str) -> Graph | None:
    """The network from ``tensor`` to the output as a program with input ``tensor``, or None
    when some path reaches the output without crossing ``tensor`` (a skip around it)."""
    out = graph.outputs[0]
    before = {n.name for n in graph.ancestors([tensor])}
    nodes = [n for n in graph.ancestors([out]) if n.name not in before]
    produced = {o for n in nodes for o in n.outputs}
    for n in nodes:
        for t in n.inputs:
            if t and t != tensor and t not in produced and not graph.is_constant(t):
                return None
    used = {t for n in nodes for t in n.inputs if t}
    return Graph(nodes, [tensor], [out], {k: v for k, v in graph.constants.items() if k in used}, graph.shapes,
                 graph.dtypes, graph.parameter_refs, graph.name, graph.metadata)


def channel_importance(probe, labelled, layer: str, mode: str = "zero", batch_size: int = 32,
                       progress: bool = False) -> Importance:
    """The accuracy (and loss) each channel of ``layer`` costs when it alone is ablated."""
    from zfprobe.engine.deconv import build_forward

    t0 = time.perf_counter()
    if mode not in ("zero", "mean"):
        raise OptionError("per-channel importance ablates channels with --mode zero or mean")
    graph = probe.graph
    tensor = probe.resolve(layer)
    check_ablatable(graph, tensor, layer)
    n_out = int(np.prod(graph.shape(graph.outputs[0])[1:]))
    check_labels(labelled, n_out)
    shape = tuple(graph.shape(tensor))
    if len(shape) < 2:
        raise OptionError(f"layer '{layer}' has no channels")
    channels = shape[1]
    means = dataset_means(probe, labelled, [tensor], batch_size, progress)[tensor] if mode == "mean" else None
    prob = output_is_probability(graph)
    intact = Scorer(prob)
    per = [Scorer(prob) for _ in range(channels)]
    tail = tail_program(graph, tensor)
    out = graph.outputs[0]
    if tail is not None:
        head = build_forward(graph, [tensor, out])
        chunk = max(1, min(channels, 2048 // max(1, batch_size)))
        for images, labels, bar in _batches(labelled, batch_size, progress, f"importance {layer}"):
            acts, logits = probe.backend.run(head, {probe.input_name: images}, [tensor, out])
            intact.add(logits, labels)
            for lo in range(0, channels, chunk):
                cs = range(lo, min(lo + chunk, channels))
                stacked = np.repeat(acts[None], len(cs), axis=0)  # [c, B, C, ...]
                for j, c in enumerate(cs):
                    stacked[j, :, c] = 0 if means is None else means[c]
                res = probe.backend.run(tail, {tensor: stacked.reshape((-1,) + acts.shape[1:])}, [out])[0]
                res = res.reshape((len(cs), len(images)) + res.shape[1:])
                for j, c in enumerate(cs):
                    per[c].add(res[j], labels)
    else:
        intact_m = evaluate(probe, graph, labelled, batch_size, False)
        intact.top1, intact.topk, intact.loss, intact.n = (intact_m.top1 * intact_m.n, intact_m.top5 * intact_m.n,
                                                           intact_m.loss * intact_m.n, intact_m.n)
        full = {tensor: means} if means is not None else None
        for c in range(channels):
            edited, _ = apply_edits(graph, [Edit("channels", layer, (c,), mode)], probe.resolve, full)
            m = evaluate(probe, edited, labelled, batch_size, False)
            per[c].top1, per[c].topk, per[c].loss, per[c].n = m.top1 * m.n, m.top5 * m.n, m.loss * m.n, m.n
    base = intact.metrics()
    drops = np.array([base.top1 - s.metrics().top1 for s in per])
    loss_up = np.array([s.metrics().loss - base.loss for s in per])
    return Importance(layer, mode, drops, loss_up, base, tail is not None, time.perf_counter() - t0)


def retrain_head(probe, labelled, edited: Graph, seed: int = 0, train_fraction: float = 0.5,
                 batch_size: int = 64, progress: bool = False) -> dict:
    """Retrain the softmax on the penultimate features of the intact and the edited network
    (as the paper retrains after removing layers); accuracy on a held-out stratified part."""
    from zfprobe.engine.deconv import build_forward
    from zfprobe.engine.heads import find_head
    from zfprobe.studies.transfer.compute import fit_softmax

    head = find_head(probe.graph)
    feats = {}
    for name, graph in (("intact", probe.graph), ("ablated", edited)):
        program = build_forward(graph, [head.features])
        rows = []
        for images, _, _ in _batches(labelled, batch_size, progress, f"features ({name})"):
            a = probe.backend.run(program, {probe.input_name: images}, [head.features])[0]
            rows.append(a.reshape(len(a), -1))
        feats[name] = np.concatenate(rows)
    labels = labelled.labels
    rng = np.random.default_rng(seed)
    train = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.extend(idx[: max(1, int(round(train_fraction * len(idx))))])
    train = np.sort(np.asarray(train))
    test = np.setdiff1d(np.arange(len(labels)), train)
    if len(test) == 0:
        raise OptionError("too few images to hold some out for testing the retrained softmax")
    out = {"train": int(len(train)), "test": int(len(test)), "seed": seed, "features": head.features}
    for name, x in feats.items():
        model, c = fit_softmax(x[train], labels[train], seed)
        out[name] = float(np.mean(model.predict(x[test]) == labels[test]))
        out[f"{name}_C"] = c
    return out
