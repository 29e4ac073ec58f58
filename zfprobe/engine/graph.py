"""zfprobe's framework-neutral graph.

Every front-end (ONNX, PyTorch, Keras) lowers a model into this one structure, and every
analysis and the deconvnet builder read only this structure. The op vocabulary is ONNX's
(opset 17 semantics) because it is the one public, versioned, exactly specified op set that
all three frameworks already map onto; parameter-like inputs that must be static (axes, pads,
slice bounds, clip limits) are folded into ``attrs`` by the front-end, so consumers never have
to evaluate a shape subgraph.

Shapes are static and recorded for batch size 1; axis 0 is always the batch axis, and every
program built from a graph runs with any batch size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np


@dataclass
class Node:
    """One operation: ``outputs = op_type(inputs, **attrs)``.

    ``inputs`` name tensors: either produced by another node, a graph input, or a constant in
    ``Graph.constants``; an empty string marks an absent optional input. ``source`` says where
    the node came from (an ONNX node name, a torch module path, a Keras layer) for messages.
    """

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass
class Graph:
    """A directed acyclic graph of :class:`Node` in topological order.

    ``constants`` holds parameters and folded constants by tensor name. ``shapes`` and
    ``dtypes`` hold the static shape (batch 1) and numpy dtype of every non-constant tensor.
    ``parameter_refs`` maps a constant's name to a native handle (e.g. a torch parameter path)
    so a backend can read live weights instead of the snapshot in ``constants``.
    """

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    parameter_refs: dict[str, Any] = field(default_factory=dict)
    name: str = "model"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        self._producer = {out: node for node in self.nodes for out in node.outputs if out}
        self._consumers: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    self._consumers.setdefault(name, []).append(node)
        self._by_name = {node.name: node for node in self.nodes}

    # -- lookups ---------------------------------------------------------------------------
    def producer(self, tensor: str) -> Node | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[Node]:
        return self._consumers.get(tensor, [])

    def node(self, name: str) -> Node | None:
        return self._by_name.get(name)

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def shape(self, tensor: str) -> tuple[int, ...]:
        if tensor in self.constants:
            return tuple(self.constants[tensor].shape)
        return self.shapes[tensor]

    def variable_inputs(self, node: Node) -> list[str]:
        """The inputs of ``node`` that depend on the graph input (not constants)."""
        return [t for t in node.inputs if t and t not in self.constants]

    # -- traversal -------------------------------------------------------------------------
    def ancestors(self, tensors: Iterable[str]) -> list[Node]:
        """Nodes needed to compute ``tensors``, in topological order."""
        needed: set[str] = set()
        stack = [t for t in tensors]
        while stack:
            t = stack.pop()
            node = self._producer.get(t)
            if node is None or node.name in needed:
                continue
            needed.add(node.name)
            stack.extend(i for i in node.inputs if i)
        return [n for n in self.nodes if n.name in needed]

    def subgraph(self, outputs: list[str]) -> "Graph":
        """The part of the graph that computes ``outputs`` (shares constants, no copies)."""
        nodes = self.ancestors(outputs)
        used = {i for n in nodes for i in n.inputs if i}
        return Graph(
            nodes=nodes,
            inputs=[i for i in self.inputs if i in used or i in outputs],
            outputs=list(outputs),
            constants={k: v for k, v in self.constants.items() if k in used},
            shapes=self.shapes,
            dtypes=self.dtypes,
            parameter_refs=self.parameter_refs,
            name=self.name,
            metadata=self.metadata,
        )


def build_forward(graph: Graph, layers: list[str]) -> Graph:
    """A program that computes only what ``layers`` need (the truncated network). Here, not in
    the deconvnet builder, so that forward-only work does not import every op's inverse rule."""
    sub = graph.subgraph(list(layers))
    sub.name = f"forward({graph.name}:{','.join(layers)})"
    return sub
