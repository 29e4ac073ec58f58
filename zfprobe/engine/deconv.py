"""The deconvnet builder: from a graph and a layer, the reversed network down to the input.

The result is one program (a :class:`~zfprobe.engine.graph.Graph`) that any backend runs:

    inputs : the model's image input  [N, ...]       (the images, preprocessed)
             ``zf_seed``               [K, *layer]    (what to project, one row per seed)
             ``zf_seed_image``         [K] int64      (which of the N images each seed belongs to)
    output : ``zf_projection``         [K, *image]    (each seed projected to pixel space)

It runs the forward pass once for the N images, keeping what the reversed layers need (max-pool
switches, rectifier inputs), then sends all K seeds down in one batch. Each node's reversal comes
from the table in :mod:`zfprobe.engine.inverses`; every node is checked before anything is built, so a
node that cannot be inverted stops the user before any computation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfprobe.errors import OptionError, UnsupportedOpError
from zfprobe.engine.graph import Graph, Node, build_forward  # noqa: F401  (build_forward re-exported)
from zfprobe.engine.inverses import INVERSES, InverseContext, check_invertible
from zfprobe.engine.program import ProgramBuilder

from zfprobe.engine.rules import DECONVNET, LRN_IDENTITY, LRN_MODES, RULES  # noqa: F401  (RULES re-exported)

SEED = "zf_seed"
SEED_IMAGE = "zf_seed_image"
PROJECTION = "zf_projection"


@dataclass(frozen=True)
class DeconvOptions:
    """How rectifiers and LRN are reversed (see docs/methods.md)."""

    rule: str = DECONVNET
    lrn: str = LRN_IDENTITY
    # The seed sits past the probed layer's own upper clip (a ReLU6 / Clip(0, m) output), as the
    # paper seeds a feature map after its rectifier: the unit's ceiling does not mask its own seed
    # (a unit at 6.0 would otherwise project to exactly zero under every rule). docs/methods.md.
    seed_past_ceiling: bool = True

    def __post_init__(self):
        if self.rule not in RULES:
            raise OptionError(f"unknown rule '{self.rule}'; choose one of {', '.join(RULES)}")
        if self.lrn not in LRN_MODES:
            raise OptionError(f"unknown LRN mode '{self.lrn}'; choose one of {', '.join(LRN_MODES)}")


def path_nodes(graph: Graph, layer: str) -> list[Node]:
    """The nodes between the input and ``layer`` that a signal from ``layer`` passes back through."""
    return [n for n in graph.ancestors([layer]) if graph.variable_inputs(n)]


def check_path(graph: Graph, layer: str) -> None:
    """Raise :class:`UnsupportedOpError` for the first node on the path that cannot be inverted."""
    for node in path_nodes(graph, layer):
        problem = check_invertible(graph, node)
        if problem:
            raise UnsupportedOpError(node.name, node.op_type, problem, node.source)


def build_deconvnet(graph: Graph, layer: str, options: DeconvOptions = DeconvOptions(),
                    single_image: bool = False) -> Graph:
    """Build the program that projects seeds at ``layer`` to the input (see module docstring).

    ``single_image=True`` builds the variant for N = 1: forward tensors broadcast against the K
    seeds instead of being copied per seed, which saves memory and time.
    """
    check_path(graph, layer)
    image = graph.inputs[0]
    b = ProgramBuilder(graph)
    b.shapes[SEED] = graph.shape(layer)
    b.shapes[SEED_IMAGE] = (1,)
    b.dtypes[SEED] = np.dtype(np.float32)
    b.dtypes[SEED_IMAGE] = np.dtype(np.int64)
    ctx = InverseContext(b, graph, options, SEED_IMAGE, single_image)
    ctx.seed_tensor = layer

    forward = graph.ancestors([layer])
    for node in forward:
        ctx.emit_forward(node)

    grads: dict[str, list[str]] = {layer: [SEED]}
    for node in reversed(forward):
        out_grads = [ctx.sum(grads.pop(o, [])) for o in node.outputs]
        if all(g is None for g in out_grads):
            continue
        in_grads = INVERSES[node.op_type](ctx, node, out_grads)
        for tensor, g in zip(node.inputs, in_grads):
            if g is not None and tensor and not graph.is_constant(tensor):
                grads.setdefault(tensor, []).append(g)

    final = ctx.sum(grads.get(image, []))
    if final is None:  # the layer does not depend on the input at all
        final = ctx.zeros_like_seed(graph.shape(image))
    b.add("Identity", [final], outputs=[PROJECTION])
    b.shapes[PROJECTION] = graph.shape(image)
    return b.build(
        inputs=[image, SEED, SEED_IMAGE],
        outputs=[PROJECTION],
        name=f"deconv({graph.name}:{layer}:{options.rule})",
        metadata={"layer": layer, "rule": options.rule, "lrn": options.lrn, "image_input": image,
                  "single_image": single_image},
    )
