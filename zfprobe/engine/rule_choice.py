"""Which reversal rule to use when the user does not say (``rule="auto"``), and why.

The deconvnet rule (Zeiler & Fergus) rectifies the signal at every ReLU and ignores the forward
pass there; what ties its projection to the image are the max-pool *switches* (and the few ops
whose reversal reads forward values: a ReLU6's ceiling, x * sigmoid(x), ...). On a path from the
seed to the input without a max-pool switch, the deconvnet projection of a unit is therefore the
same picture for every image (up to the seed's value), or depends on the image only through
those few ops. Guided backprop masks by the forward activation at each rectifier as well, so it
always depends on the image: it is the default for such paths. Paths with a switch keep the
paper's deconvnet. Where the path holds no rectifier at all, the three rules are one and the same
computation. See docs/methods.md, "Which rule by default".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfprobe.engine.graph import Graph, Node
from zfprobe.engine.rules import AUTO, DECONVNET, GUIDED, RULES

SWITCH_OPS = frozenset({"MaxPool", "GlobalMaxPool"})
# Reversals that read no forward value under the deconvnet rule (fixed linear maps, or the
# rectification of the signal itself): a path made only of these gives image-independent projections.
IMAGE_FREE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "AveragePool", "GlobalAveragePool",
    "ReduceMean", "ReduceSum", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Add", "Sum", "Sub",
    "Concat", "Split", "Slice", "Pad", "Gather", "Tile", "Expand", "DepthToSpace", "SpaceToDepth", "Resize",
    "Dropout", "Identity", "Cast", "Neg", "Relu", "LeakyRelu", "PRelu", "LRN",
})


def is_rectifier(node: Node) -> bool:
    """Ops whose reversal follows the rule: ReLU, Clip with lower bound 0 (ReLU6), LeakyReLU, PReLU."""
    if node.op_type in ("Relu", "LeakyRelu", "PRelu"):
        return True
    return node.op_type == "Clip" and node.attrs.get("min", -np.inf) == 0.0


def _reads_forward(graph: Graph, node: Node) -> bool:
    """Whether the deconvnet reversal of ``node`` uses a value of the forward pass."""
    if node.op_type in SWITCH_OPS:
        return True
    if node.op_type == "Clip":
        lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
        return bool(np.isfinite(hi)) or lo != 0.0
    if node.op_type in ("Mul", "Div"):
        return len(graph.variable_inputs(node)) > 1
    return node.op_type not in IMAGE_FREE_OPS


@dataclass(frozen=True)
class RuleChoice:
    """The rule a run uses and one line saying why (printed by the CLI, kept in manifests)."""

    rule: str
    requested: str
    reason: str
    switches: int          # max-pool switches on the path
    rectifiers: int        # rectifiers on the path (0: the three rules are identical)
    image_free_deconvnet: bool  # the deconvnet projection does not depend on the image at all

    @property
    def rules_identical(self) -> bool:
        return self.rectifiers == 0

    def to_dict(self) -> dict:
        return {"rule": self.rule, "requested": self.requested, "reason": self.reason, "max_pool_switches": self.switches,
                "rectifiers": self.rectifiers, "rules_identical": self.rules_identical,
                "deconvnet_independent_of_image": self.image_free_deconvnet}


def analyse_path(graph: Graph, tensor: str) -> tuple[int, int, list[str]]:
    """(switches, rectifiers, op types other than switches whose deconvnet reversal reads the
    forward pass) on the path from ``tensor`` back to the input."""
    from zfprobe.engine.deconv import path_nodes

    switches = rectifiers = 0
    readers: list[str] = []
    for node in path_nodes(graph, tensor):
        switches += node.op_type in SWITCH_OPS
        rectifiers += is_rectifier(node)
        if node.op_type not in SWITCH_OPS and _reads_forward(graph, node):
            label = "ReLU6 ceiling" if node.op_type == "Clip" and node.attrs.get("min", -np.inf) == 0.0 else node.op_type
            if label not in readers:
                readers.append(label)
    return switches, rectifiers, readers


def choose_rule(graph: Graph, tensor: str, requested: str = AUTO, layer: str | None = None) -> RuleChoice:
    """Resolve ``requested`` (a rule name, or ``auto``) for the seed tensor ``tensor``."""
    from zfprobe.errors import OptionError

    if requested != AUTO and requested not in RULES:
        raise OptionError(f"unknown rule '{requested}'; choose one of {', '.join((AUTO,) + RULES)}")
    name = layer or tensor
    switches, rectifiers, readers = analyse_path(graph, tensor)
    image_free = switches == 0 and not readers
    if switches:
        rule = DECONVNET if requested == AUTO else requested
        reason = (f"{switches} max-pool switch(es) between {name} and the input carry the image: the paper's "
                  "deconvnet rule")
    else:
        rule = GUIDED if requested == AUTO else requested
        if rectifiers == 0:
            reason = f"no max-pool switch between {name} and the input"
        else:
            how = ("does not depend on the image at all" if image_free else
                   f"depends on the image only through the {', '.join(readers)}")
            reason = (f"no max-pool switch between {name} and the input, so the deconvnet projection of a unit {how}: "
                      + ("guided backprop by default (--rule deconvnet for the paper's rule)" if requested == AUTO
                         else f"rule {requested} as asked"))
    if rectifiers == 0:
        reason += ("; no rectifier on that path either: deconvnet, gradient and guided backprop are the same "
                   "computation here")
    return RuleChoice(rule, requested, reason, switches, rectifiers, image_free)
