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

from zfprobe.engine.fusion.layernorm import fuse_layernorm, fuse_moments_layernorm
from zfprobe.engine.fusion.lrn import fuse_lrn
from zfprobe.engine.fusion.matcher import Fuser
from zfprobe.engine.fusion.pointwise import fuse_pointwise
from zfprobe.engine.fusion.space_to_depth import fuse_focus, fuse_space_to_depth
from zfprobe.engine.graph import Graph

# The patterns in the order they run: structural ones first, so that the pointwise pass does not
# take part of an LRN or LayerNorm chain for an activation.
PATTERNS = (fuse_lrn, fuse_layernorm, fuse_moments_layernorm, fuse_space_to_depth, fuse_focus, fuse_pointwise)


def fuse(graph: Graph) -> Graph:
    """``graph`` with exporters' decompositions fused into canonical nodes (see module doc);
    the graph itself when there is nothing to fuse. ``metadata["fused"]`` lists what was fused."""
    f = Fuser(graph)
    for pattern in PATTERNS:
        pattern(f)
    return f.build()
