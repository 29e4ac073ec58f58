"""Fuse exporters' decompositions back into one canonical node, before any analysis.

Exporters write some layers as chains of primitive ops: torch's ``nn.LocalResponseNorm`` as
Mul / 5-D Reshape / Pad / AveragePool / Reshape / Mul / Add / Pow / Div, GELU as Div / Erf /
Add / Mul / Mul (or its tanh polynomial), SiLU as x * Sigmoid(x), Mish as x * Tanh(Softplus(x)),
Keras' hard-swish as x * Clip(x + 3, 0, 6) / 6, a LayerNorm from tf2onnx or an old opset as
ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div. Each chain computes the same function
as one canonical node, but a reader sees five layers, the paper's LRN rule (identity) and the
receptive-field and window logic do not recognize it. Every front-end runs :func:`fuse` on its
graph, so every analysis and rule sees ``LRN``, ``Gelu``, ``Swish``, ``Mish``, ``HardSwish`` and
``LayerNormalization`` however the model was exported.

Pointwise chains are recognized by what they compute, not by their exact shape: around an
anchor op (Erf, Tanh, Sigmoid, Softplus, HardSigmoid, Clip) the pass takes the region of
scalar pointwise ops between one input ``x`` and one output ``y`` whose intermediate tensors
are used nowhere else, evaluates it in float64 on a grid of inputs and compares it with each
canonical function; exporters' variants (constant order, x / sqrt(2) or x * 0.7071, where the
0.5 is applied) all fuse. LRN and LayerNorm chains, which are not pointwise, are matched
structurally.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from scipy.special import erf as _erf

from zfprobe.engine.graph import Graph, Node

_POINTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Softplus", "HardSigmoid", "Clip",
              "Relu", "Exp", "Log", "Neg", "Sqrt", "Max", "Min", "Identity", "Reciprocal"}
_ANCHORS = {"Erf", "Tanh", "Sigmoid", "Softplus", "HardSigmoid", "Clip"}
_RESHAPES = {"Reshape", "Squeeze", "Unsqueeze", "Identity"}
_MAX_REGION = 12
_GRID = np.linspace(-8.0, 8.0, 1601)


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


# canonical pointwise functions: (op_type, attrs, f)
CANDIDATES: list[tuple[str, dict, Callable[[np.ndarray], np.ndarray]]] = [
    ("Gelu", {"approximate": "none"}, lambda v: 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))),
    ("Gelu", {"approximate": "tanh"},
     lambda v: 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))),
    ("Swish", {"alpha": 1.0}, lambda v: v * _sigmoid(v)),
    ("Mish", {}, lambda v: v * np.tanh(np.logaddexp(0.0, v))),
    ("HardSwish", {}, lambda v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0)),
]


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


class _Fuser:
    def __init__(self, graph: Graph):
        self.g = graph
        self.index = {n.name: i for i, n in enumerate(graph.nodes)}
        self.removed: set[str] = set()
        self.replacements: dict[str, Node] = {}   # name of the node a fused node replaces -> fused node
        self.prefixes: dict[str, list[Node]] = {}  # nodes that go just before a fused node
        self.new_constants: dict[str, np.ndarray] = {}
        self.new_shapes: dict[str, tuple[int, ...]] = {}
        self.outputs = set(graph.outputs)

    # -- helpers ------------------------------------------------------------------------------
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

    # -- pointwise regions --------------------------------------------------------------------
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

    def fuse_pointwise(self) -> None:
        for anchor in list(self.g.nodes):
            if anchor.name in self.removed or anchor.op_type not in _ANCHORS or not anchor.inputs:
                continue
            if self.g.is_constant(anchor.inputs[0]) or anchor.inputs[0] not in self.g.shapes:
                continue
            done = False
            for x in reversed(self.upstream(anchor.inputs[0])):
                for y in reversed(self.downstream(anchor.outputs[0])):
                    nodes = self.region(x, y)
                    if not nodes or len(nodes) < 2 or anchor not in nodes or not self.private(nodes, y):
                        continue
                    if self.g.shapes.get(x) != self.g.shapes.get(y):
                        continue
                    got = self.evaluate(nodes, x, y)
                    for op, attrs, f in CANDIDATES:
                        want = f(_GRID)
                        if np.all(np.isfinite(got)) and np.allclose(got, want, rtol=1e-5, atol=1e-5):
                            last = nodes[-1]
                            self.replace(nodes, Node(last.name, op, [x], [y], dict(attrs), last.source))
                            done = True
                            break
                    if done:
                        break
                if done:
                    break

    # -- torch's LRN --------------------------------------------------------------------------
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

    def fuse_lrn(self) -> None:
        for div in list(self.g.nodes):
            if div.name in self.removed or div.op_type != "Div" or len(div.inputs) != 2:
                continue
            x, den = div.inputs
            if self.g.is_constant(x) or self.g.is_constant(den) or len(self.g.shape(x)) != 4:
                continue
            chain: list[Node] = [div]
            m = self.binary_with_scalar(den, "Pow", chain)
            m = m and (m, self.binary_with_scalar(m[0], "Add", chain))
            if not m or not m[1]:
                continue
            (base, beta), (scaled, k) = m
            m2 = self.binary_with_scalar(scaled, "Mul", chain)
            if not m2:
                continue
            avg_t, alpha = m2
            avg_t = self.through_reshapes(avg_t, chain)
            pool = self.producer(avg_t)
            if pool is None or pool.op_type != "AveragePool" or len(self.g.shape(pool.inputs[0])) != 5:
                continue
            a = pool.attrs
            size = int(a["kernel_shape"][0])
            if (list(a["kernel_shape"][1:]) != [1, 1] or any(s != 1 for s in a["strides"]) or any(a["pads"])
                    or not a.get("count_include_pad") or size % 2 != 1):
                continue
            chain.append(pool)
            pad = self.producer(pool.inputs[0])
            if (pad is None or pad.op_type != "Pad" or pad.attrs.get("mode", "constant") != "constant"
                    or float(pad.attrs.get("value", 0.0)) != 0.0
                    or list(pad.attrs["pads"]) != [0, 0, size // 2, 0, 0, 0, 0, (size - 1) // 2, 0, 0]):
                continue
            chain.append(pad)
            sq_t = self.through_reshapes(pad.inputs[0], chain)
            sq = self.producer(sq_t)
            if sq is None or sq.op_type != "Mul" or sq.inputs != [x, x]:
                continue
            chain.append(sq)
            if not self.private(chain, div.outputs[0]):
                continue
            self.replace(chain, Node(div.name, "LRN", [x], list(div.outputs),
                                     {"size": size, "alpha": alpha, "beta": beta, "bias": k}, div.source))

    # -- LayerNorm ------------------------------------------------------------------------------
    def fuse_layernorm(self) -> None:
        for last in list(self.g.nodes):
            if last.name in self.removed or last.op_type not in ("Div", "Mul") or len(last.inputs) != 2:
                continue
            for d, s in ((last.inputs[0], last.inputs[1]), (last.inputs[1], last.inputs[0])):
                chain = [last]
                if last.op_type == "Mul":
                    rec = self.producer(s)
                    if rec is None or rec.op_type != "Reciprocal":
                        continue
                    chain.append(rec)
                    s = rec.inputs[0]
                sqrt = self.producer(s)
                if sqrt is None or sqrt.op_type != "Sqrt":
                    continue
                chain.append(sqrt)
                m = self.binary_with_scalar(sqrt.inputs[0], "Add", chain)
                if not m:
                    continue
                var_t, eps = m
                var = self.producer(var_t)
                sub = self.producer(d)
                if var is None or var.op_type != "ReduceMean" or sub is None or sub.op_type != "Sub":
                    continue
                chain += [var, sub]
                sq = self.producer(var.inputs[0])
                if sq is None or not ((sq.op_type == "Pow" and sq.inputs[0] == d and self.scalar(sq.inputs[1]) == 2.0)
                                      or (sq.op_type == "Mul" and sq.inputs == [d, d])):
                    continue
                chain.append(sq)
                x, mean_t = sub.inputs
                mean = self.producer(mean_t)
                if mean is None or mean.op_type != "ReduceMean" or mean.inputs[0] != x:
                    continue
                chain.append(mean)
                rank = len(self.g.shape(x))
                axes = sorted(int(a) % rank for a in mean.attrs["axes"])
                if (sorted(int(a) % rank for a in var.attrs["axes"]) != axes or axes != list(range(axes[0], rank))
                        or axes[0] == 0 or not mean.attrs.get("keepdims", 1) or not var.attrs.get("keepdims", 1)):
                    continue
                if not self.private(chain, last.outputs[0]):
                    continue
                norm_shape = tuple(self.g.shape(x)[axes[0]:])
                scale, bias = f"{last.name}/ln_scale", f"{last.name}/ln_bias"
                self.new_constants[scale] = np.ones(norm_shape, np.float32)
                self.new_constants[bias] = np.zeros(norm_shape, np.float32)
                self.replace(chain, Node(last.name, "LayerNormalization", [x, scale, bias], list(last.outputs),
                                         {"axis": axes[0], "epsilon": eps}, last.source))
                break


    # -- torch's PixelUnshuffle ----------------------------------------------------------------
    def fuse_space_to_depth(self) -> None:
        """Reshape [N, C, H/b, b, W/b, b] -> Transpose (block axes and C before H/b, W/b) ->
        Reshape [N, C*b*b, H/b, W/b] (torch's PixelUnshuffle, and SpaceToDepth written out) is
        SpaceToDepth followed by a constant channel permutation (a Gather over channels)."""
        for last in list(self.g.nodes):
            if last.name in self.removed or last.op_type != "Reshape":
                continue
            tr = self.producer(last.inputs[0])
            first = self.producer(tr.inputs[0]) if tr is not None and tr.op_type == "Transpose" else None
            if first is None or first.op_type != "Reshape" or self.g.is_constant(first.inputs[0]):
                continue
            x = first.inputs[0]
            shape, mid, out = (tuple(self.g.shapes.get(t, ())) for t in (x, first.outputs[0], last.outputs[0]))
            perm = list(tr.attrs.get("perm", []))
            if len(shape) != 4 or len(mid) != 6 or len(out) != 4 or sorted(perm) != list(range(6)):
                continue
            n, c, h, w = shape
            b = mid[3]
            if (b < 2 or mid != (n, c, h // b, b, w // b, b) or h % b or w % b or perm[0] != 0
                    or perm[4:] != [2, 4] or out != (n, c * b * b, h // b, w // b)):
                continue
            chain = [last, tr, first]
            if not self.private(chain, last.outputs[0]):
                continue
            # output channel j enumerates the permuted axes perm[1:4] (C: 1, row in block: 3, col: 5)
            sizes = [mid[a] for a in perm[1:4]]
            idx = np.empty(c * b * b, np.int64)
            for j in range(len(idx)):
                digits = dict(zip(perm[1:4], np.unravel_index(j, sizes)))
                idx[j] = (digits[3] * b + digits[5]) * c + digits[1]
            s2d = f"{last.name}/space_to_depth"
            self.new_shapes[s2d] = out
            head = Node(f"{last.name}/SpaceToDepth", "SpaceToDepth", [x], [s2d], {"blocksize": int(b)}, last.source)
            if np.array_equal(idx, np.arange(len(idx))):
                self.replace(chain, Node(last.name, "Identity", [s2d], list(last.outputs), {}, last.source), (head,))
                continue
            index = f"{last.name}/channel_order"
            self.new_constants[index] = idx
            self.replace(chain, Node(last.name, "Gather", [s2d, index], list(last.outputs), {"axis": 1}, last.source),
                         (head,))

    # -- YOLO's Focus ---------------------------------------------------------------------------
    def slice_origin(self, t: str, chain: list[Node]) -> Optional[tuple[str, dict[int, tuple[int, int]]]]:
        """``t`` as Slices of one tensor: (that tensor, {axis: (start, step)}), each axis sliced once
        and to its end; None if anything else is on the way."""
        per_axis: dict[int, tuple[int, int]] = {}
        n = self.producer(t)
        while n is not None and n.op_type == "Slice":
            a = n.attrs
            src_shape = self.g.shapes.get(n.inputs[0], ())
            for start, end, axis, step in zip(a["starts"], a["ends"], a["axes"], a.get("steps") or [1] * len(a["axes"])):
                if axis in per_axis or axis not in (2, 3) or step < 1 or end < src_shape[axis]:
                    return None
                per_axis[axis] = (int(start), int(step))
            chain.append(n)
            t = n.inputs[0]
            n = self.producer(t)
        return (t, per_axis) if chain else None

    def fuse_focus(self) -> None:
        """Concat over channels of the ``s*s`` step-``s`` slices of one map (YOLOv5's Focus:
        x[..., ::2, ::2], x[..., 1::2, ::2], ...) is SpaceToDepth(s) and a channel Gather."""
        for cat in list(self.g.nodes):
            if cat.name in self.removed or cat.op_type != "Concat" or len(cat.inputs) < 4:
                continue
            out_shape = self.g.shapes.get(cat.outputs[0], ())
            if len(out_shape) != 4 or int(cat.attrs.get("axis", 1)) % 4 != 1:
                continue
            chain: list[Node] = []
            parts = [self.slice_origin(t, chain) for t in cat.inputs]
            if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
                continue
            x = parts[0][0]
            shape = self.g.shapes.get(x, ())
            steps = {st for _, axes in parts for _, st in axes.values()}
            if len(shape) != 4 or len(steps) != 1 or any(set(axes) != {2, 3} for _, axes in parts):
                continue
            b = steps.pop()
            offsets = [(axes[2][0], axes[3][0]) for _, axes in parts]
            if (b < 2 or len(parts) != b * b or sorted(offsets) != [(i, j) for i in range(b) for j in range(b)]
                    or shape[2] % b or shape[3] % b):
                continue
            chain = list({n.name: n for n in chain}.values()) + [cat]
            if not self.private(chain, cat.outputs[0]):
                continue
            c = shape[1]
            idx = np.concatenate([(by * b + bx) * c + np.arange(c) for by, bx in offsets]).astype(np.int64)
            s2d, index = f"{cat.name}/space_to_depth", f"{cat.name}/channel_order"
            self.new_shapes[s2d] = (shape[0], c * b * b, shape[2] // b, shape[3] // b)
            self.new_constants[index] = idx
            head = Node(f"{cat.name}/SpaceToDepth", "SpaceToDepth", [x], [s2d], {"blocksize": int(b)}, cat.source)
            self.replace(chain, Node(cat.name, "Gather", [s2d, index], list(cat.outputs), {"axis": 1}, cat.source),
                         (head,))

    # -- tf2onnx's "moments" LayerNorm -----------------------------------------------------------
    def commuted(self, t: str, op: str) -> list[tuple[str, str]]:
        """The (a, b) and (b, a) operand orders of the ``op`` node producing ``t`` (or [])."""
        n = self.producer(t)
        if n is None or n.op_type != op or len(n.inputs) != 2:
            return []
        a, b = n.inputs
        return [(a, b), (b, a)]

    def const_array(self, t: str) -> Optional[np.ndarray]:
        return np.asarray(self.g.constants[t], np.float32) if t and self.g.is_constant(t) else None

    def fuse_moments_layernorm(self) -> None:
        """TensorFlow's LayerNormalization via tf.nn.moments, as tf2onnx writes it:
        ``x * m + (beta - mean * m)`` (or ``+ (-mean) * m`` without beta) with
        ``m = gamma / sqrt(variance + eps)``, ``variance = mean((x - mean)^2)``, both means over
        the same axes. Over a trailing range of axes it is LayerNormalization; over the channels
        of an NCHW map (tf2onnx moves Keras' channels-last LayerNorm there) it is ConvNeXt's
        form: Transpose to channels-last, LayerNormalization over C, Transpose back."""
        for last in list(self.g.nodes):
            if last.name in self.removed or last.op_type != "Add" or len(last.inputs) != 2:
                continue
            found = None
            for scaled_t, shift_t in ((last.inputs[0], last.inputs[1]), (last.inputs[1], last.inputs[0])):
                for x, m_t in self.commuted(scaled_t, "Mul"):
                    found = self.match_moments(last, x, m_t, shift_t, scaled_t)
                    if found:
                        break
                if found:
                    break
            if found:
                chain, x, axes, eps, gamma, beta = found
                self.emit_layernorm(last, chain, x, axes, eps, gamma, beta)

    def match_moments(self, last, x, m_t, shift_t, scaled_t):
        if self.g.is_constant(x):
            return None
        chain = [last, self.producer(scaled_t)]
        # m = rstd * gamma, or rstd alone
        gamma, rstd_t = None, m_t
        m_node = self.producer(m_t)
        if m_node is not None and m_node.op_type == "Mul":
            for a, b in self.commuted(m_t, "Mul"):
                if self.const_array(b) is not None and not self.g.is_constant(a):
                    gamma, rstd_t = self.const_array(b), a
                    chain.append(m_node)
                    break
        rec = self.producer(rstd_t)
        if rec is None or rec.op_type != "Reciprocal":
            return None
        sqrt = self.producer(rec.inputs[0])
        if sqrt is None or sqrt.op_type != "Sqrt":
            return None
        chain += [rec, sqrt]
        m = self.binary_with_scalar(sqrt.inputs[0], "Add", chain)
        if not m:
            return None
        var_t, eps = m
        var = self.producer(var_t)
        if var is None or var.op_type != "ReduceMean":
            return None
        chain.append(var)
        sq = self.producer(var.inputs[0])
        if sq is None or sq.op_type not in ("Mul", "Pow"):
            return None
        d = sq.inputs[0]
        if not ((sq.op_type == "Mul" and sq.inputs == [d, d]) or (sq.op_type == "Pow" and self.scalar(sq.inputs[1]) == 2.0)):
            return None
        chain.append(sq)
        sub = self.producer(d)
        if sub is None or sub.op_type != "Sub" or sub.inputs[0] != x:
            return None
        chain.append(sub)
        mean_t = self.through_reshapes(sub.inputs[1], chain)  # tf2onnx may reshape it in place
        mean = self.producer(mean_t)
        if mean is None or mean.op_type != "ReduceMean" or mean.inputs[0] != x:
            return None
        chain.append(mean)

        def is_mean(t: str) -> bool:
            extra: list[Node] = []
            if self.through_reshapes(t, extra) != mean_t or self.g.shapes.get(t) != self.g.shapes.get(mean_t):
                return False
            chain.extend(extra)
            return True

        def neg_mean_times_m(t: str) -> bool:
            for a, b in self.commuted(t, "Mul"):
                neg = self.producer(a)
                if b == m_t and neg is not None and neg.op_type == "Neg" and is_mean(neg.inputs[0]):
                    chain.extend([self.producer(t), neg])
                    return True
            return False

        # the shift: (-mean) * m, (-mean) * m + beta, or beta - mean * m
        beta = None
        shift = self.producer(shift_t)
        if shift is None:
            return None
        if shift.op_type == "Mul":
            if not neg_mean_times_m(shift_t):
                return None
        elif shift.op_type == "Add":
            for a, b in self.commuted(shift_t, "Add"):
                if self.const_array(b) is not None and neg_mean_times_m(a):
                    beta = self.const_array(b)
                    chain.append(shift)
                    break
            else:
                return None
        elif shift.op_type == "Sub" and self.const_array(shift.inputs[0]) is not None:
            prod = self.producer(shift.inputs[1])
            pair = self.commuted(shift.inputs[1], "Mul")
            if prod is None or not any(b == m_t and is_mean(a) for a, b in pair):
                return None
            beta = self.const_array(shift.inputs[0])
            chain += [shift, prod]
        else:
            return None
        chain = list({n.name: n for n in chain}.values())
        rank = len(self.g.shape(x))
        axes = sorted(int(a) % rank for a in mean.attrs.get("axes", []))
        if not axes or sorted(int(a) % rank for a in var.attrs.get("axes", [])) != axes:
            return None
        if not mean.attrs.get("keepdims", 1) or not var.attrs.get("keepdims", 1):
            return None
        if not self.private(chain, last.outputs[0]):
            return None
        return chain, x, axes, eps, gamma, beta

    def emit_layernorm(self, last, chain, x, axes, eps, gamma, beta) -> None:
        shape = tuple(self.g.shape(x))
        rank = len(shape)
        trailing = axes == list(range(axes[0], rank)) and axes[0] > 0
        channels = axes == [1] and rank >= 3
        if not (trailing or channels):
            return
        norm_shape = tuple(shape[a] for a in axes)

        def per_axis(v, fill):
            if v is None:
                return np.full(norm_shape, fill, np.float32)
            full = np.broadcast_to(v, np.broadcast_shapes(v.shape, (1,) * (rank - v.ndim) + v.shape))
            if full.ndim != rank or any(full.shape[i] not in (1, shape[i]) for i in range(rank)) or \
                    any(full.shape[i] != 1 for i in range(rank) if i not in axes):
                return None
            return np.ascontiguousarray(np.broadcast_to(full, tuple(shape[i] if i in axes else 1 for i in range(rank)))
                                        .reshape(norm_shape), np.float32)

        scale, bias = per_axis(gamma, 1.0), per_axis(beta, 0.0)
        if scale is None or bias is None:
            return
        names = f"{last.name}/ln_scale", f"{last.name}/ln_bias"
        self.new_constants[names[0]], self.new_constants[names[1]] = scale, bias
        attrs = {"axis": axes[0] if trailing else -1, "epsilon": eps}
        if trailing:
            self.replace(chain, Node(last.name, "LayerNormalization", [x, *names], list(last.outputs), attrs, last.source))
            return
        to_last = list(range(rank))
        to_last = [0] + to_last[2:] + [1]
        back = [0, rank - 1] + list(range(1, rank - 1))
        t_in, t_ln = f"{last.name}/channels_last", f"{last.name}/layernorm"
        nhwc = (shape[0], *shape[2:], shape[1])
        self.new_shapes[t_in] = self.new_shapes[t_ln] = nhwc
        before = (Node(f"{last.name}/ToChannelsLast", "Transpose", [x], [t_in], {"perm": to_last}, last.source),
                  Node(f"{last.name}/LayerNorm", "LayerNormalization", [t_in, *names], [t_ln], attrs, last.source))
        self.replace(chain, Node(last.name, "Transpose", [t_ln], list(last.outputs), {"perm": back}, last.source), before)


def fuse(graph: Graph) -> Graph:
    """``graph`` with exporters' decompositions fused into canonical nodes (see module doc);
    the graph itself when there is nothing to fuse. ``metadata["fused"]`` lists what was fused."""
    f = _Fuser(graph)
    f.fuse_lrn()
    f.fuse_layernorm()
    f.fuse_moments_layernorm()
    f.fuse_space_to_depth()
    f.fuse_focus()
    f.fuse_pointwise()
    return f.build()
