"""What every fusion pattern needs: the graph under rewrite, its producers and users, scalar
constants, private regions between two tensors, float64 evaluation of pointwise regions, and
the bookkeeping that replaces a chain by one node and rebuilds the graph."""
from __future__ import annotations

from typing import Optional

import numpy as np
from zfprobe.engine.graph import Graph, Node

_POINTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Softplus", "HardSigmoid", "Clip",
              "Relu", "Exp", "Log", "Neg", "Sqrt", "Max", "Min", "Identity", "Reciprocal"}
_RESHAPES = {"Reshape", "Squeeze", "Unsqueeze", "Identity"}
_MAX_REGION = 12
_GRID = np.linspace(-8.0, 8.0, 1601)


def _erf(v):
    """scipy's erf, imported on first use (scipy costs ~0.2 s to import; most graphs have no Erf)."""
    from scipy.special import erf

    return erf(v)


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def _evaluate(node: Node, args: list[np.ndarray]) -> np.ndarray:
    op, a = node.op_type, node.attrs
    x = args[0]
    if op == "Add":
        return args[0] + args[1]
    if op == "Sub":
        return args[0] - args[1]
    if op == "Mul":
        return args[0] * args[1]
    if op == "Div":
        return args[0] / args[1]
    if op == "Pow":
        return np.power(args[0], args[1])
    if op == "Max":
        return np.maximum.reduce(args)
    if op == "Min":
        return np.minimum.reduce(args)
    if op == "Erf":
        return _erf(x)
    if op == "Tanh":
        return np.tanh(x)
    if op == "Sigmoid":
        return _sigmoid(x)
    if op == "Softplus":
        return np.logaddexp(0.0, x)
    if op == "HardSigmoid":
        return np.clip(x * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0.0, 1.0)
    if op == "Clip":
        return np.clip(x, a.get("min", -np.inf), a.get("max", np.inf))
    if op == "Relu":
        return np.maximum(x, 0.0)
    if op == "Exp":
        return np.exp(x)
    if op == "Log":
        return np.log(x)
    if op == "Neg":
        return -x
    if op == "Sqrt":
        return np.sqrt(x)
    if op == "Reciprocal":
        return 1.0 / x
    return x  # Identity


class Fuser:
    """A graph being rewritten: patterns (one module each in this package) find chains and
    call :meth:`replace`; :meth:`build` returns the new graph."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.index = {n.name: i for i, n in enumerate(graph.nodes)}
        self.removed: set[str] = set()
        self.replacements: dict[str, Node] = {}   # name of the node a fused node replaces -> fused node
        self.prefixes: dict[str, list[Node]] = {}  # nodes that go just before a fused node
        self.new_constants: dict[str, np.ndarray] = {}
        self.new_shapes: dict[str, tuple[int, ...]] = {}
        self.outputs = set(graph.outputs)

    def producer(self, t: str) -> Optional[Node]:
        n = self.g.producer(t)
        return None if n is None or n.name in self.removed else n

    def scalar(self, t: str) -> Optional[float]:
        if t and self.g.is_constant(t) and self.g.constants[t].size == 1:
            return float(np.asarray(self.g.constants[t]).reshape(-1)[0])
        return None

    def private(self, nodes: list[Node], keep: str) -> bool:
        """Every output of ``nodes`` except ``keep`` is read only inside ``nodes``."""
        names = {n.name for n in nodes}
        for n in nodes:
            for o in n.outputs:
                if o == keep:
                    continue
                if o in self.outputs or any(c.name not in names for c in self.g.consumers(o)):
                    return False
        return True

    def replace(self, nodes: list[Node], fused: Node, before: tuple[Node, ...] = ()) -> None:
        """Put ``fused`` (preceded by the nodes ``before``) where the last of ``nodes`` was."""
        last = max(nodes, key=lambda n: self.index[n.name])
        for n in nodes:
            self.removed.add(n.name)
        self.replacements[last.name] = fused
        if before:
            self.prefixes[last.name] = list(before)

    def build(self) -> Graph:
        if not self.replacements:
            return self.g
        nodes = []
        for n in self.g.nodes:
            if n.name in self.replacements:
                nodes.extend(self.prefixes.get(n.name, []))
                nodes.append(self.replacements[n.name])
            elif n.name not in self.removed:
                nodes.append(n)
        constants = dict(self.g.constants, **self.new_constants)
        used = {i for n in nodes for i in n.inputs if i}
        constants = {k: v for k, v in constants.items() if k in used or k in self.g.parameter_refs}
        produced = {o for n in nodes for o in n.outputs} | set(self.g.inputs)
        metadata = dict(self.g.metadata)
        if "aliases" in metadata:
            metadata["aliases"] = {k: v for k, v in metadata["aliases"].items() if v in produced}
        fused = dict(metadata.get("fused", {}))
        for f in self.replacements.values():
            fused[f.name] = f.op_type
        metadata["fused"] = fused
        shapes, dtypes = self.g.shapes, self.g.dtypes
        if self.new_shapes:
            shapes = dict(shapes, **self.new_shapes)
            dtypes = dict(dtypes, **{t: np.dtype(np.float32) for t in self.new_shapes})
        return Graph(nodes=nodes, inputs=list(self.g.inputs), outputs=list(self.g.outputs), constants=constants,
                     shapes=shapes, dtypes=dtypes, parameter_refs=self.g.parameter_refs,
                     name=self.g.name, metadata=metadata)

    def region(self, x: str, y: str) -> Optional[list[Node]]:
        """The scalar-pointwise nodes between ``x`` and ``y`` (None if anything else is there)."""
        found: dict[str, Node] = {}
        stack, seen = [y], set()
        while stack:
            t = stack.pop()
            if t == x or t in seen:
                continue
            seen.add(t)
            if self.g.is_constant(t):
                if self.g.constants[t].size != 1:
                    return None
                continue
            n = self.producer(t)
            if n is None or n.op_type not in _POINTWISE or len([o for o in n.outputs if o]) != 1:
                return None
            found[n.name] = n
            if len(found) > _MAX_REGION:
                return None
            stack.extend(i for i in n.inputs if i)
        if not any(x in n.inputs for n in found.values()):
            return None
        return sorted(found.values(), key=lambda n: self.index[n.name])

    def evaluate(self, nodes: list[Node], x: str, y: str) -> np.ndarray:
        values = {x: _GRID}
        with np.errstate(all="ignore"):
            for n in nodes:
                args = [values[i] if i in values else np.float64(self.scalar(i)) for i in n.inputs if i]
                values[n.outputs[0]] = np.asarray(_evaluate(n, args), dtype=np.float64)
        return values[y]

    def upstream(self, t: str, depth: int = 5) -> list[str]:
        """Tensors above ``t`` through pointwise ops, nearest first (candidates for x)."""
        order, frontier = [t], [t]
        for _ in range(depth):
            nxt = []
            for u in frontier:
                n = self.producer(u)
                if n is None or n.op_type not in _POINTWISE:
                    continue
                for i in n.inputs:
                    if i and not self.g.is_constant(i) and i not in order:
                        order.append(i)
                        nxt.append(i)
            frontier = nxt
        return order

    def downstream(self, t: str, depth: int = 5) -> list[str]:
        order, frontier = [t], [t]
        for _ in range(depth):
            nxt = []
            for u in frontier:
                for c in self.g.consumers(u):
                    if c.name in self.removed or c.op_type not in _POINTWISE:
                        continue
                    for o in c.outputs:
                        if o and o not in order:
                            order.append(o)
                            nxt.append(o)
            frontier = nxt
        return order

    def through_reshapes(self, t: str, chain: list[Node]) -> str:
        n = self.producer(t)
        while n is not None and n.op_type in _RESHAPES:
            chain.append(n)
            t = n.inputs[0]
            n = self.producer(t)
        return t

    def binary_with_scalar(self, t: str, op: str, chain: list[Node]) -> Optional[tuple[str, float]]:
        n = self.producer(t)
        if n is None or n.op_type != op or len(n.inputs) != 2:
            return None
        a, b = n.inputs
        for var, const in ((a, b), (b, a)):
            if op in ("Pow",) and var != a:
                continue
            v = self.scalar(const)
            if v is not None and not self.g.is_constant(var):
                chain.append(n)
                return var, v
        return None

    def commuted(self, t: str, op: str) -> list[tuple[str, str]]:
        """The (a, b) and (b, a) operand orders of the ``op`` node producing ``t`` (or [])."""
        n = self.producer(t)
        if n is None or n.op_type != op or len(n.inputs) != 2:
            return []
        a, b = n.inputs
        return [(a, b), (b, a)]

    def const_array(self, t: str) -> Optional[np.ndarray]:
        return np.asarray(self.g.constants[t], np.float32) if t and self.g.is_constant(t) else None
