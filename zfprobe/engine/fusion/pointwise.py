"""Pointwise chains (GELU, its tanh form, SiLU/Swish, Mish, hard-swish) recognized by what they
compute: the private region around an anchor op, evaluated in float64 on a grid, against each
canonical function."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from zfprobe.engine.graph import Node
from zfprobe.engine.fusion.matcher import _GRID, Fuser, _erf, _sigmoid

# The ops a pointwise region is grown around.
_ANCHORS = {"Erf", "Tanh", "Sigmoid", "Softplus", "HardSigmoid", "Clip"}

# canonical pointwise functions: (op_type, attrs, f)
CANDIDATES: list[tuple[str, dict, Callable[[np.ndarray], np.ndarray]]] = [
    ("Gelu", {"approximate": "none"}, lambda v: 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))),
    ("Gelu", {"approximate": "tanh"},
     lambda v: 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))),
    ("Swish", {"alpha": 1.0}, lambda v: v * _sigmoid(v)),
    ("Mish", {}, lambda v: v * np.tanh(np.logaddexp(0.0, v))),
    ("HardSwish", {}, lambda v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0)),
]


def fuse_pointwise(f: Fuser) -> None:
    for anchor in list(f.g.nodes):
        if anchor.name in f.removed or anchor.op_type not in _ANCHORS or not anchor.inputs:
            continue
        if f.g.is_constant(anchor.inputs[0]) or anchor.inputs[0] not in f.g.shapes:
            continue
        done = False
        for x in reversed(f.upstream(anchor.inputs[0])):
            for y in reversed(f.downstream(anchor.outputs[0])):
                nodes = f.region(x, y)
                if not nodes or len(nodes) < 2 or anchor not in nodes or not f.private(nodes, y):
                    continue
                if f.g.shapes.get(x) != f.g.shapes.get(y):
                    continue
                got = f.evaluate(nodes, x, y)
                for op, attrs, fn in CANDIDATES:
                    want = fn(_GRID)
                    if np.all(np.isfinite(got)) and np.allclose(got, want, rtol=1e-5, atol=1e-5):
                        last = nodes[-1]
                        f.replace(nodes, Node(last.name, op, [x], [y], dict(attrs), last.source))
                        done = True
                        break
                if done:
                    break
            if done:
                break
