"""A small builder for programs: new graphs made of canonical zfprobe ops.

The deconvnet builder writes its reversed network with this, and so can any later analysis
that needs a custom computation run by whichever backend executes the model.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from zfprobe.engine.graph import Graph, Node


class ProgramBuilder:
    """Collects nodes with unique names; constants are shared with the source graph by name."""

    def __init__(self, base: Graph, prefix: str = "zf"):
        self.base = base
        self.prefix = prefix
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = dict(base.constants)
        self.shapes: dict[str, tuple[int, ...]] = dict(base.shapes)
        self.dtypes = dict(base.dtypes)
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        safe = "".join(ch if ch.isalnum() or ch in "_" else "_" for ch in hint)[-40:]
        return f"{self.prefix}/{self._count}_{safe}"

    def add(self, op_type: str, inputs: list[str], attrs: dict[str, Any] | None = None,
            n_outputs: int = 1, hint: str = "", outputs: list[str] | None = None,
            source: str = "") -> list[str]:
        name = self.fresh(hint or op_type)
        outs = outputs or [f"{name}:{i}" for i in range(n_outputs)]
        self.nodes.append(Node(name, op_type, list(inputs), outs, dict(attrs or {}), source or name))
        return outs

    def op(self, op_type: str, *inputs: str, hint: str = "", **attrs: Any) -> str:
        """Add a single-output op and return its output tensor name."""
        return self.add(op_type, list(inputs), attrs, hint=hint)[0]

    def const(self, value: Any, hint: str = "const", dtype: Any = np.float32) -> str:
        name = self.fresh(hint)
        self.constants[name] = np.asarray(value, dtype=dtype)
        return name

    def build(self, inputs: list[str], outputs: list[str], name: str, metadata: dict | None = None) -> Graph:
        used = {i for n in self.nodes for i in n.inputs if i}
        return Graph(
            nodes=self.nodes,
            inputs=inputs,
            outputs=outputs,
            constants={k: v for k, v in self.constants.items() if k in used},
            shapes=self.shapes,
            dtypes=self.dtypes,
            parameter_refs=self.base.parameter_refs,
            name=name,
            metadata=dict(metadata or {}),
        )


class Decomposition:
    """Writes one node's default decomposition: canonical nodes named under the node's name, the
    last one writing the node's own output, and the constants they need."""

    def __init__(self, node: Node):
        self.node = node
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}

    def _name(self, hint: str) -> str:
        return f"{self.node.name}/{len(self.nodes) + len(self.constants)}_{hint}"

    def op(self, op_type: str, *inputs: str, last: bool = False, **attrs: Any) -> str:
        """Add a node; ``last=True`` makes it write the decomposed node's output."""
        name = self._name(op_type)
        out = self.node.outputs[0] if last else name
        self.nodes.append(Node(name, op_type, list(inputs), [out], attrs, self.node.source or self.node.name))
        return out

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        name = self._name("const")
        self.constants[name] = np.asarray(value, dtype=dtype)
        return name

    def result(self) -> tuple[list[Node], dict[str, np.ndarray]]:
        return self.nodes, self.constants
