"""The occlusion engine: the programs of a plan (windowed prefix, suffix) and their execution.

For each batch of square positions the engine cuts each windowed group's input window from the
cached original map (padded with the op's pad value where it leaves the map), pastes the
previous group's new window in, runs the group's ops without padding, and finally pastes the
last window into the cached map and runs the rest of the network on the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zfprobe.errors import OptionError
from zfprobe.engine.graph import Graph, Node
from zfprobe.io.memory import batch_that_fits, budget_for, forward_peak
from zfprobe.studies.occlusion.options import ClassOutput
from zfprobe.studies.occlusion.plan import AxisPlan, LocalOp, choose_end, local_chain, plan_axis

MAX_BATCH = 64


def _window_program(graph: Graph, ops: list[LocalOp], extra: list[str]) -> Graph:
    """The ops of one group run on a cut window: each with its rule's local attributes (no
    padding, no ceil mode, a Slice from the window's start)."""
    nodes = []
    for op in ops:
        node = op.node
        attrs = {**node.attrs, **op.rule.local_attrs}
        nodes.append(Node(node.name, node.op_type, list(node.inputs), list(node.outputs), attrs, node.source))
    used = {i for n in nodes for i in n.inputs if i}
    outputs = [ops[-1].node.outputs[0]] + [t for t in extra if t != ops[-1].node.outputs[0]]
    return Graph(nodes=nodes, inputs=[graph.variable_inputs(ops[0].node)[0]], outputs=outputs, constants={k: v for k, v in graph.constants.items() if k in used},
                 shapes=graph.shapes, dtypes=graph.dtypes, parameter_refs=graph.parameter_refs,
                 name=f"occlusion-window({graph.name}:{ops[0].node.name})")


def _suffix_program(graph: Graph, start: str, skip: set[str], layer: str | None, cls: ClassOutput | None) -> Graph:
    """From tensor ``start`` (the pasted map, or the images) to the layer totals and probabilities."""
    from zfprobe.engine.program import ProgramBuilder

    wanted = ([layer] if layer else []) + ([cls.tensor] if cls else [])
    b = ProgramBuilder(graph, prefix="zf_occ")
    for node in graph.ancestors(wanted):
        if node.name not in skip:
            b.nodes.append(node)
    outputs = []
    if layer:
        rank = len(graph.shape(layer))
        total = b.op("ReduceSum", layer, axes=list(range(2, rank)), keepdims=0) if rank > 2 else \
            b.op("Flatten", layer, axis=1)
        outputs.append(total)
        b.shapes[total] = (1, graph.shape(layer)[1])
    if cls:
        flat = b.op("Flatten", cls.tensor, axis=1)
        prob = b.op("Softmax", flat, axis=1) if cls.softmax else flat
        outputs.append(prob)
        b.shapes[prob] = (1, cls.classes)
    program = b.build([start], outputs, name=f"occlusion-suffix({graph.name}:{start})")
    produced = {o for n in program.nodes for o in n.outputs} | {start}
    for node in program.nodes:
        missing = [t for t in program.variable_inputs(node) if t not in produced]
        if missing:
            raise _NotIncremental(f"node {node.name} also reads {missing[0]}")
    return program


class _NotIncremental(Exception):
    pass


# --------------------------------------------------------------------------------------------
# the engine


@dataclass
class Engine:
    """Computes per-position layer totals and class probabilities for one image."""

    probe: object
    layer: str | None                 # the tensor whose totals are recorded
    cls: ClassOutput | None
    end: int                          # number of chain ops run incrementally
    chain: list[LocalOp]
    rows: AxisPlan | None
    cols: AxisPlan | None
    channels_last: bool = False       # an NHWC image input (plain path only)
    groups: list[list[int]] = field(default_factory=list)
    programs: list[Graph] = field(default_factory=list)
    suffix: Graph | None = None
    layer_in_prefix: int | None = None  # index of the chain op producing the layer (-1: the input)

    @property
    def method(self) -> str:
        return "incremental" if self.end else "plain"


def runs_on_gpu(probe) -> bool:
    """Whether the probe's backend computes on a GPU. There, ``auto`` means plain batches: on one
    H200, ZFNet's 625-square map took 0.17-0.18 s plain and 0.49-0.64 s incremental, whose small
    per-window programs and host-side caches cost more than the multiply-adds they save."""
    return str(getattr(probe.backend, "device", "cpu")).startswith("cuda")


def build_engine(probe, layer: str | None, cls: ClassOutput | None, size: int, rows: list[int], cols: list[int],
                 method: str = "auto", channels_last: bool = False, depth: int | None = None) -> Engine:
    """The plan and programs for one geometry, cached on the probe (so backend sessions are reused).

    ``depth`` (tests) fixes how many chain ops run incrementally instead of the cost model."""
    key = ("occlusion", layer, cls, size, tuple(rows), tuple(cols), method, channels_last, depth)
    cache = getattr(probe, "_programs", None)
    if cache is not None and key in cache:
        return cache[key]
    if method == "auto" and runs_on_gpu(probe):
        method = "plain"
    engine = _build_engine(probe, layer, cls, size, rows, cols, "plain" if channels_last else method, depth)
    engine.channels_last = channels_last
    if cache is not None:
        cache[key] = engine
    return engine


def _build_engine(probe, layer, cls, size, rows, cols, method, depth=None) -> Engine:
    graph: Graph = probe.graph
    chain = local_chain(graph) if method != "plain" else []
    rplan = plan_axis(chain, 0, rows, size) if chain else None
    cplan = plan_axis(chain, 1, cols, size) if chain else None
    end = 0
    if chain:
        end = choose_end(graph, chain, rplan, cplan, layer, cls)
        if method == "incremental" and end == 0:
            end = 1
        if depth is not None:
            end = min(depth, len(chain))
    while True:
        try:
            return _assemble(probe, layer, cls, chain, rplan, cplan, end)
        except _NotIncremental as exc:
            if end == 0:
                raise OptionError(f"occlusion needs a model whose outputs depend on its image input only ({exc})") from None
            end -= 1


def _assemble(probe, layer, cls, chain, rplan, cplan, end) -> Engine:
    graph: Graph = probe.graph
    engine = Engine(probe, layer, cls, end, chain, rplan, cplan)
    prefix = chain[:end]
    skip = {op.node.name for op in prefix}
    chain_out = {op.node.outputs[0]: i for i, op in enumerate(prefix)}
    if layer is not None and (layer in chain_out or (layer == graph.inputs[0] and end)):
        engine.layer_in_prefix = chain_out.get(layer, -1)
    cache = getattr(probe, "_programs", {})  # programs do not depend on the geometry: shared
    # groups: a windowed op and the point-wise ops after it (leading point-wise ops form a group)
    for i, op in enumerate(prefix):
        if not engine.groups or not op.pointwise:
            engine.groups.append([i])
        else:
            engine.groups[-1].append(i)
    for group in engine.groups:
        ops = [prefix[i] for i in group]
        extra = [layer] if engine.layer_in_prefix is not None and engine.layer_in_prefix in group else []
        key = ("occlusion-window", tuple(op.node.name for op in ops), tuple(extra))
        if key not in cache:
            cache[key] = _window_program(graph, ops, extra)
        engine.programs.append(cache[key])
    start = prefix[-1].node.outputs[0] if prefix else graph.inputs[0]
    suffix_layer = layer if engine.layer_in_prefix is None else None
    if suffix_layer is None and cls is None:
        return engine  # the layer lies in the windowed part and no class maps are wanted
    key = ("occlusion-suffix", start, frozenset(skip), suffix_layer, cls)
    if key not in cache:  # shared by every geometry, so the backend's session is built once
        cache[key] = _suffix_program(graph, start, skip, suffix_layer, cls)
    engine.suffix = cache[key]
    return engine


def _batch_size(graph: Graph, program: Graph, budget: int) -> int:
    """Positions per batch: the program's peak live memory per position (zfprobe.io.memory) in ``budget``."""
    return batch_that_fits(forward_peak(graph, program), budget, cap=MAX_BATCH)


def _pad_for(cache: np.ndarray, r_start: np.ndarray, c_start: np.ndarray, h: int, w: int, value: float):
    top = max(0, -int(r_start.min()))
    left = max(0, -int(c_start.min()))
    bottom = max(0, int(r_start.max()) + h - cache.shape[1])
    right = max(0, int(c_start.max()) + w - cache.shape[2])
    padded = np.pad(cache, ((0, 0), (top, bottom), (left, right)), constant_values=value) if top + bottom + left + right \
        else cache
    return padded, (top, left)


def run_engine(engine: Engine, image: np.ndarray, fill: np.ndarray, size: int, rows: list[int], cols: list[int],
               memory_budget: int | None = None, progress: bool = False):
    """Per-position layer totals [nr, nc, C] and probabilities [nr, nc, K] (each or None), and the
    same two for the unoccluded image ([C] and [K])."""
    probe = engine.probe
    graph: Graph = probe.graph
    backend = probe.backend
    prefix = engine.chain[:engine.end]
    x = np.ascontiguousarray(image[0], dtype=np.float32)        # [C, H, W] ([H, W, C] if channels_last)
    # caches of the original image: the input of every group, the layer, the prefix end
    group_inputs = [graph.variable_inputs(prefix[g[0]].node)[0] for g in engine.groups]
    wanted = [t for t in group_inputs if t != graph.inputs[0]]
    end_tensor = prefix[-1].node.outputs[0] if prefix else None
    if end_tensor:
        wanted.append(end_tensor)
    if engine.layer_in_prefix is not None and engine.layer not in wanted and engine.layer != graph.inputs[0]:
        wanted.append(engine.layer)
    cache = {graph.inputs[0]: x}
    if wanted:
        wanted = list(dict.fromkeys(wanted))
        for t, v in zip(wanted, probe.activations(image, wanted)):
            cache[t] = v[0]
    padded = []
    for g, t in zip(engine.groups, group_inputs):
        op = prefix[g[0]]
        i = g[0]
        padded.append(_pad_for(cache[t], engine.rows.in_start[i], engine.cols.in_start[i],
                               engine.rows.in_size[i], engine.cols.in_size[i], op.pad_value))
    layer_total0 = None
    if engine.layer_in_prefix is not None:
        lmap = cache[engine.layer].astype(np.float64)
        layer_total0 = lmap.reshape(lmap.shape[0], -1).sum(1)
        lcum = np.pad(lmap.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))  # integral image
    # the unoccluded image, through the same suffix program
    base_totals, base_probs = layer_total0, None
    if engine.suffix is not None:
        base_in = cache[end_tensor] if prefix else x
        outs = backend.run(engine.suffix, {engine.suffix.inputs[0]: base_in[None]}, engine.suffix.outputs)
        k = 0
        if engine.layer is not None and engine.layer_in_prefix is None:
            base_totals, k = outs[0][0].astype(np.float64), 1
        base_probs = outs[k][0] if engine.cls is not None else None

    nr, nc = len(rows), len(cols)
    grid = [(a, b) for a in range(nr) for b in range(nc)]
    totals = probs = None
    memory_budget = budget_for("occlusion") if memory_budget is None else memory_budget
    batch = min(_batch_size(graph, p, memory_budget) for p in ([engine.suffix] if engine.suffix else engine.programs))
    rows_a, cols_a = np.asarray(rows), np.asarray(cols)
    channels = x.shape[2] if engine.channels_last else x.shape[0]
    fill_patch = np.broadcast_to(fill.astype(np.float32)[:, None, None], (channels, size, size))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(grid), unit="pos", desc="occlusion", leave=False)
    for s0 in range(0, len(grid), batch):
        part = grid[s0:s0 + batch]
        ir = np.array([p[0] for p in part])
        ic = np.array([p[1] for p in part])
        B = len(part)
        # the previous window: starts, and the values [B, C, h, w]
        prev_r, prev_c = rows_a[ir], cols_a[ic]
        prev = np.broadcast_to(fill_patch, (B,) + fill_patch.shape)
        layer_tot = None
        if engine.layer_in_prefix == -1:
            layer_tot = _window_totals(layer_total0, lcum, prev, prev_r, prev_c)
        for gi, group in enumerate(engine.groups):
            i = group[0]
            r0, c0 = engine.rows.in_start[i][ir], engine.cols.in_start[i][ic]
            h, w = engine.rows.in_size[i], engine.cols.in_size[i]
            if prefix[i].pointwise and gi > 0:
                inp = np.ascontiguousarray(prev)
            else:
                pad_arr, (mr, mc) = padded[gi]
                inp = np.empty((B, pad_arr.shape[0], h, w), np.float32)
                ph, pw = prev.shape[2], prev.shape[3]
                dr, dc = prev_r - r0, prev_c - c0
                for b in range(B):
                    rr, cc = r0[b] + mr, c0[b] + mc
                    inp[b] = pad_arr[:, rr:rr + h, cc:cc + w]
                    # the part of the previous window inside this input window
                    ra, ca = max(0, -dr[b]), max(0, -dc[b])
                    rb, cb = min(ph, h - dr[b]), min(pw, w - dc[b])
                    if ra < rb and ca < cb:
                        inp[b, :, dr[b] + ra:dr[b] + rb, dc[b] + ca:dc[b] + cb] = prev[b, :, ra:rb, ca:cb]
            program = engine.programs[gi]
            outs = backend.run(program, {program.inputs[0]: inp}, program.outputs)
            last = group[-1]
            prev = outs[0]
            prev_r, prev_c = engine.rows.out_start[last][ir], engine.cols.out_start[last][ic]
            if engine.layer_in_prefix is not None and engine.layer_in_prefix in group:
                k = group.index(engine.layer_in_prefix)
                lpatch = outs[0] if group[k] == last else outs[1]
                layer_tot = _window_totals(layer_total0, lcum, lpatch, engine.rows.out_start[group[k]][ir],
                                           engine.cols.out_start[group[k]][ic])
        if engine.suffix is None:
            totals = totals if totals is not None else np.zeros((nr, nc, layer_tot.shape[1]), np.float64)
            totals[ir, ic] = layer_tot
            if bar is not None:
                bar.update(B)
            continue
        # the full input of the suffix: the cached map (or image) with the last window pasted in
        base = cache[prefix[-1].node.outputs[0]] if prefix else x
        full = np.empty((B,) + base.shape, np.float32)
        full[:] = base
        ph, pw = prev.shape[2], prev.shape[3]
        for b in range(B):
            if engine.channels_last:
                full[b, prev_r[b]:prev_r[b] + ph, prev_c[b]:prev_c[b] + pw, :] = prev[b].transpose(1, 2, 0)
            else:
                full[b, :, prev_r[b]:prev_r[b] + ph, prev_c[b]:prev_c[b] + pw] = prev[b]
        outs = backend.run(engine.suffix, {engine.suffix.inputs[0]: full}, engine.suffix.outputs)
        k = 0
        if engine.layer is not None and engine.layer_in_prefix is None:
            layer_tot = outs[0]
            k = 1
        if layer_tot is not None:
            if totals is None:
                totals = np.zeros((nr, nc, layer_tot.shape[1]), np.float64)
            totals[ir, ic] = layer_tot
        if engine.cls is not None:
            if probs is None:
                probs = np.zeros((nr, nc, outs[k].shape[1]), np.float32)
            probs[ir, ic] = outs[k]
        if bar is not None:
            bar.update(B)
    if bar is not None:
        bar.close()
    return totals, probs, base_totals, base_probs


def _window_totals(total0: np.ndarray, cum: np.ndarray, patch: np.ndarray, r0: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """Per position: the original per-channel total minus the window's original sum plus the new one."""
    h, w = patch.shape[2], patch.shape[3]
    r1, c1 = r0 + h, c0 + w
    orig = cum[:, r1, c1] - cum[:, r0, c1] - cum[:, r1, c0] + cum[:, r0, c0]     # [C, B]
    new = patch.astype(np.float64).reshape(patch.shape[0], patch.shape[1], -1).sum(2)  # [B, C]
    return total0[None, :] - orig.T + new
