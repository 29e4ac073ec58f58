"""Each op's spatial geometry rule: how it maps the H and W axes of an NCHW signal to its output.

Receptive fields, the windowed reversal (:mod:`zfprobe.engine.windowed`) and incremental occlusion
(:mod:`zfprobe.studies.occlusion`) all ask one question of an op on a 4-D map: which input positions
does an output position read? They read the answer here, one rule per op, instead of keeping
their own op lists. A rule is one of

* **pointwise**: output (y, x) reads only input (y, x), across any channels (activations,
  BatchNorm, LRN, residual adds, Concat / Split / Gather over channels);
* **window**: per spatial axis an :class:`~zfprobe.ops.geometry.AxisWindow`: Conv, pools,
  constant Pad (a 1-tap window whose begin pad is the pad), a Slice of any positive step (a
  1-tap window of stride ``step`` starting at ``start``: YOLO's Focus) and SpaceToDepth (a
  ``b``-tap window of stride ``b``);
* **none** (the function returns None): the op is global in space or moves positions by a
  rule that is not a sliding window (Resize, ConvTranspose, DepthToSpace: outputs outnumber
  inputs, so the window of a seed would start at a fractional position; reflect / edge / wrap
  Pad, Tile, spatial Gather: far positions are copied; Instance-, Group- and LayerNorm over
  spatial axes: statistics of the whole map). The fast paths then use the exact full program.

Rules for the ops whose reversal lives elsewhere are registered by their own module
(:mod:`zfprobe.ops.layout` registers Slice, Pad and SpaceToDepth); the families declared below
(pointwise ops, sliding windows) live here because their reversals are spread over
:mod:`zfprobe.engine.inverses` and :mod:`zfprobe.ops.activation`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from zfprobe.engine.graph import Graph, Node
from zfprobe.ops.geometry import AxisWindow, axis_windows
from zfprobe.ops.registry import Registry


@dataclass(frozen=True)
class SpatialRule:
    """The geometry of one op node along H and W (its first variable input to its outputs).

    ``windows``: ``(rows, cols)`` windows, or None for a pointwise op. ``pad_value``: what the
    op reads beyond its input's border (0 for Conv and constant Pad, -inf for MaxPool), so that a
    window cut from a larger map, padded with it, gives the same outputs; None when no value
    does (AveragePool excluding pads from its divisor). ``local_attrs``: the attributes to run
    the op with on such a cut window (no padding, no ceil mode, a Slice from 0)."""

    windows: Optional[tuple[AxisWindow, AxisWindow]] = None
    pad_value: Optional[float] = 0.0
    local_attrs: dict = field(default_factory=dict)

    @property
    def pointwise(self) -> bool:
        return self.windows is None


RuleFn = Callable[[Graph, Node], Optional[SpatialRule]]

# ``fn(graph, node) -> SpatialRule | None``, for nodes whose signal tensors are 4-D.
SPATIAL_RULES: Registry = Registry("spatial geometry rule")

POINTWISE = SpatialRule()

# ``fn(graph, node) -> {axis: A}``: ops that act along each axis as a fixed matrix, ``y = A x``
# (Resize, Slice, reflect / edge / wrap Pad, spatial Gather, Tile, Expand). ``A`` is
# ``[n_out, n_in]`` per axis the op changes; the windowed reversal applies sub-blocks of ``A^T``
# per seed, receptive fields read its non-zeros. None: the op is not such a map.
AXIS_MATRICES: Registry = Registry("per-axis matrix rule")

# Ops that act position by position (possibly across channels), declared once for every analysis.
UNARY_OPS = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Identity", "Dropout", "Neg", "Abs", "Exp", "Log", "Sqrt", "Gelu", "Erf",
    "ThresholdedRelu", "Shrink", "Cast", "Floor", "Ceil", "Round", "Sign", "Reciprocal", "Mish", "Swish",
    "Not"})
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min", "Pow", "Sum", "Mean", "Where",
                        "Equal", "Greater", "Less", "And", "Or"})
CHANNEL_OPS = frozenset({"BatchNormalization", "LRN"})
POINTWISE_OPS = UNARY_OPS | BINARY_OPS | CHANNEL_OPS
WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})


def spatial_rule(graph: Graph, node: Node) -> Optional[SpatialRule]:
    """The node's rule, or None when it is not local in space (or its signal is not 4-D)."""
    import zfprobe.engine.inverses  # noqa: F401  (imports every op module, which registers its rules)

    fn = SPATIAL_RULES.get(node.op_type)
    if fn is None:
        return None
    for t in [*graph.variable_inputs(node), *[o for o in node.outputs if o]]:
        if len(graph.shapes.get(t, ())) != 4:
            return None
    return fn(graph, node)


# ``fn(graph, node) -> bool``: is the node pointwise in space when its signals are channels-last
# ([N, H, W, C], between ConvNeXt's Transposes)? Registered per op family (LayerNorm: norm.py).
CHANNELS_LAST_RULES: Registry = Registry("channels-last pointwise rule")


def channels_last_pointwise(graph: Graph, node: Node) -> bool:
    """True when ``node`` acts position by position on channels-last 4-D signals."""
    import zfprobe.engine.inverses  # noqa: F401

    fn = CHANNELS_LAST_RULES.get(node.op_type)
    if fn is None or any(len(graph.shapes.get(t, ())) != 4 for t in [*graph.variable_inputs(node), *node.outputs] if t):
        return False
    return bool(fn(graph, node))


@CHANNELS_LAST_RULES.register(*(UNARY_OPS | BINARY_OPS))
def _channels_last_elementwise(graph: Graph, node: Node) -> bool:
    """No broadcasting across H, W (axes 1, 2 of the signal; a constant's dims right-aligned)."""
    out_shape = tuple(graph.shape(node.outputs[0]))
    for t in node.inputs:
        if not t:
            continue
        if graph.is_constant(t):
            shape = graph.constants[t].shape
            if len(shape) > 4 or any(shape[i] != 1 for i in range(len(shape)) if 4 - len(shape) + i in (1, 2)):
                return False
        elif tuple(graph.shape(t)) != out_shape:
            return False
    return True


@CHANNELS_LAST_RULES.register("MatMul")
def _channels_last_matmul(graph: Graph, node: Node) -> bool:
    """A dense layer on the channel axis (ConvNeXt's pointwise convs): x [N, H, W, C] @ W [C, D]."""
    return graph.is_constant(node.inputs[1]) and graph.constants[node.inputs[1]].ndim == 2


def axis_matrices(graph: Graph, node: Node) -> Optional[dict[int, np.ndarray]]:
    """The node's per-axis matrices ``{axis: A [n_out, n_in]}``, or None."""
    import zfprobe.engine.inverses  # noqa: F401

    fn = AXIS_MATRICES.get(node.op_type)
    return None if fn is None else fn(graph, node)


def spatial_extent(graph: Graph, tensor: str) -> tuple[int, ...]:
    """The H, W extent of a constant or signal as it broadcasts against a 4-D map (1 = none)."""
    shape = graph.constants[tensor].shape if graph.is_constant(tensor) else graph.shapes.get(tensor, ())
    tail = tuple(shape[-2:]) if len(shape) >= 2 else tuple(shape) + (1,) * (2 - len(shape))
    if len(shape) == 1:
        tail = (1, shape[0])
    return tail


@SPATIAL_RULES.register(*POINTWISE_OPS)
def _pointwise(graph: Graph, node: Node) -> Optional[SpatialRule]:
    """Pointwise when nothing broadcasts across space: every other signal input has the output's
    shape, and constants have no H / W extent (BatchNorm's are per channel by definition)."""
    out_shape = tuple(graph.shape(node.outputs[0]))
    for t in node.inputs:
        if not t:
            continue
        if graph.is_constant(t):
            if node.op_type in CHANNEL_OPS:
                continue
            if any(d != 1 for d in spatial_extent(graph, t)) or graph.constants[t].ndim > 4:
                return None
        elif tuple(graph.shape(t)) != out_shape:
            return None
    return POINTWISE


@SPATIAL_RULES.register("Concat", "Split")
def _channel_join(graph: Graph, node: Node) -> Optional[SpatialRule]:
    return POINTWISE if int(node.attrs.get("axis", 1)) % 4 == 1 else None


@SPATIAL_RULES.register("Gather")
def _channel_gather(graph: Graph, node: Node) -> Optional[SpatialRule]:
    if int(node.attrs.get("axis", 0)) % 4 == 1 and graph.is_constant(node.inputs[1]) \
            and np.asarray(graph.constants[node.inputs[1]]).ndim == 1:
        return POINTWISE
    return None


@SPATIAL_RULES.register(*WINDOW_OPS)
def _sliding_window(graph: Graph, node: Node) -> Optional[SpatialRule]:
    a = node.attrs
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", None) or len(a.get("kernel_shape", ())) != 2:
        return None
    op = node.op_type
    if op == "Conv" and any(i and not graph.is_constant(i) for i in node.inputs[1:]):
        return None
    attrs = dict(a)
    if op == "AveragePool":
        attrs.pop("dilations", None)  # AveragePool has no dilation before opset 19
    windows = tuple(axis_windows(attrs, 2))
    pad_value: Optional[float] = 0.0
    if op == "MaxPool":
        pad_value = -np.inf
    elif op in ("AveragePool", "LpPool"):
        if a.get("ceil_mode", 0) or (any(a.get("pads") or []) and not a.get("count_include_pad", 0)):
            pad_value = None  # the divisor counts only real pixels: no pad value emulates that
    local = {"pads": [0, 0, 0, 0]}
    if "ceil_mode" in a:
        local["ceil_mode"] = 0
    return SpatialRule(windows, pad_value, local)
