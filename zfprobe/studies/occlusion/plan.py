"""The incremental plan: which early layers run on windows, and where each window lies.

The network's first layers form a chain of spatially local ops; each op's geometry (a sliding
window per axis, or pointwise) is its spatial rule (:mod:`zfprobe.ops.spatial`), the same rule
that receptive fields and the windowed reversal read. Per op and per axis the plan holds the
fixed output-window size, each position's window start, and the input window it reads; a
cost model (multiply-adds of the windows plus copy costs against the full layers) decides how
far the incremental part goes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zfprobe.engine.graph import Graph, Node
from zfprobe.studies.occlusion.options import ClassOutput
from zfprobe.ops.geometry import AxisWindow
from zfprobe.ops.spatial import SpatialRule, spatial_rule


@dataclass
class LocalOp:
    """One op of the local chain and its geometry."""

    node: Node
    rule: SpatialRule
    n_in: tuple[int, int]
    n_out: tuple[int, int]
    channels: int
    macs_per_out: float          # multiply-adds per output spatial position (all channels)

    @property
    def pointwise(self) -> bool:
        return self.rule.pointwise

    @property
    def pad_value(self) -> float:
        return self.rule.pad_value

    def window(self, axis: int) -> AxisWindow:
        """The op's window along ``axis`` (0: rows, 1: cols) as one dense hull of its taps."""
        if self.rule.pointwise:
            return AxisWindow()
        w = self.rule.windows[axis]
        return AxisWindow(w.span, w.stride, 1, w.pad_begin)


def local_op(graph: Graph, node: Node, x: str) -> LocalOp | None:
    """How ``node`` maps a window of its input ``x`` to its output, or None if not local."""
    out = node.outputs[0] if node.outputs else ""
    if not out or len([o for o in node.outputs if o]) != 1 or graph.variable_inputs(node) != [x]:
        return None
    rule = spatial_rule(graph, node)
    if rule is None or rule.pad_value is None:
        return None
    sin, sout = graph.shape(x), graph.shape(out)
    n_in, n_out, c = (sin[2], sin[3]), (sout[2], sout[3]), sout[1]
    if rule.pointwise:
        if n_in != n_out:
            return None
        op = node.op_type
        cost = float(node.attr("size", 1)) if op == "LRN" else 2.0 if op == "BatchNormalization" or len(node.inputs) > 1 else 1.0
        return LocalOp(node, rule, n_in, n_out, c, cost * c)
    area = rule.windows[0].kernel * rule.windows[1].kernel
    if node.op_type == "Conv":
        w = graph.constants[node.inputs[1]].shape
        macs = float(w[0] * w[1] * area)
    else:
        macs = float(c * area)
    return LocalOp(node, rule, n_in, n_out, c, macs)


def local_chain(graph: Graph) -> list[LocalOp]:
    """The longest chain of local ops from the input in which every tensor has one consumer."""
    x = graph.inputs[0]
    chain: list[LocalOp] = []
    while True:
        consumers = graph.consumers(x)
        if len(consumers) != 1 or x in graph.outputs:
            break
        node = consumers[0]
        if node.inputs.count(x) != 1:
            break
        op = local_op(graph, node, x)
        if op is None or node.outputs[0] in graph.outputs:
            break
        chain.append(op)
        x = node.outputs[0]
    return chain


def affected(op: LocalOp, axis: int, lo: int, hi: int) -> tuple[int, int]:
    """Output index range of ``op`` that reads input indices ``lo..hi`` (inclusive)."""
    window = op.window(axis)
    first, end = window.outputs_reading(lo, hi + 1, op.n_out[axis])
    if end > first:
        return first, end - 1
    # no output reads these inputs (stride > kernel): the empty range just after them
    k, s, p, n = window.kernel, window.stride, window.pad_begin, op.n_out[axis]
    return max(0, -((-(lo + p - k + 1)) // s)), min(n - 1, (hi + p) // s)


@dataclass
class AxisPlan:
    """Per op: the fixed output window size and, per position, its start; the input window."""

    out_size: list[int]
    out_start: list[np.ndarray]
    in_size: list[int]
    in_start: list[np.ndarray]


def plan_axis(chain: list[LocalOp], axis: int, starts: Sequence[int], size: int) -> AxisPlan:
    lo = np.asarray(starts, np.int64)
    hi = lo + size - 1
    plan = AxisPlan([], [], [], [])
    for op in chain:
        pairs = [affected(op, axis, int(a), int(b)) for a, b in zip(lo, hi)]
        lo = np.array([p[0] for p in pairs], np.int64)
        hi = np.array([p[1] for p in pairs], np.int64)
        psize = int((hi - lo + 1).max())
        start = np.minimum(lo, op.n_out[axis] - psize)
        plan.out_size.append(psize)
        plan.out_start.append(start)
        window = op.window(axis)
        in_lo, in_hi = window.input_span(0, psize)
        plan.in_size.append(in_hi - in_lo)
        plan.in_start.append(np.array([window.first_tap(int(o)) for o in start], np.int64))
    return plan


def cost(chain: list[LocalOp], rows: AxisPlan, cols: AxisPlan, end: int, suffix_macs: float,
          full_macs: Sequence[float]) -> float:
    """Estimated work per position (multiply-add equivalents) when ``end`` ops run incrementally."""
    cost = suffix_macs + sum(full_macs[end:])
    for i in range(end):
        op = chain[i]
        cost += rows.out_size[i] * cols.out_size[i] * op.macs_per_out
        if not op.pointwise:  # a window cut from the cache, with the previous window pasted in
            cin = chain[i - 1].channels if i else 1
            cost += 4.0 * rows.in_size[i] * cols.in_size[i] * max(cin, 1) + 2e5
    if end:
        last = chain[end - 1]
        cost += 2.0 * last.n_out[0] * last.n_out[1] * last.channels  # the paste into the cached map
    return cost


def choose_end(graph: Graph, chain: list[LocalOp], rows: AxisPlan, cols: AxisPlan, layer: str | None,
                cls: ClassOutput | None) -> int:
    wanted = ([layer] if layer else []) + ([cls.tensor] if cls else [])
    chain_names = {op.node.name for op in chain}
    suffix_macs = 0.0
    for node in graph.ancestors(wanted):
        if node.name in chain_names:
            continue
        suffix_macs += node_macs(graph, node)
    needed = {n.name for n in graph.ancestors(wanted)}
    full = [op.n_out[0] * op.n_out[1] * op.macs_per_out if op.node.name in needed else 0.0 for op in chain]
    best, best_cost = 0, cost(chain, rows, cols, 0, suffix_macs, full)
    for end in range(1, len(chain) + 1):
        if chain[end - 1].node.name not in needed:
            break
        c = cost(chain, rows, cols, end, suffix_macs, full)
        if c < best_cost * 0.98:
            best, best_cost = end, c
    return best


def multiply_adds(engine) -> tuple[float, float]:
    """Multiply-adds per occluded position of the plain plan (the whole network) and of the
    engine's incremental plan (its first ``end`` local ops on windows only), without the
    bookkeeping; their ratio is the ideal speed-up of incremental inference."""
    graph: Graph = engine.probe.graph
    wanted = ([engine.layer] if engine.layer else []) + ([engine.cls.tensor] if engine.cls else [])
    needed = graph.ancestors(wanted)
    chain_names = {op.node.name for op in engine.chain}
    suffix = sum(node_macs(graph, n) for n in needed if n.name not in chain_names)
    names = {n.name for n in needed}
    full = [op.n_out[0] * op.n_out[1] * op.macs_per_out if op.node.name in names else 0.0 for op in engine.chain]
    plain = suffix + sum(full)
    incremental = suffix + sum(full[engine.end:])
    for i in range(engine.end):
        incremental += engine.rows.out_size[i] * engine.cols.out_size[i] * engine.chain[i].macs_per_out
    return plain, incremental


def node_macs(graph: Graph, node: Node) -> float:
    out = node.outputs[0] if node.outputs else ""
    size = float(np.prod(graph.shapes.get(out, (1,))[1:])) if out in graph.shapes else 0.0
    if node.op_type == "Conv" and graph.is_constant(node.inputs[1]):
        w = graph.constants[node.inputs[1]].shape
        return size * float(np.prod(w[1:]))
    if node.op_type in ("Gemm", "MatMul") and len(node.inputs) > 1 and graph.is_constant(node.inputs[1]):
        w = graph.constants[node.inputs[1]].shape
        return float(np.prod(w)) * (size / max(1, min(w)) if node.op_type == "MatMul" else 1.0)
    return size * 2.0
