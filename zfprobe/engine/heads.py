"""The classifier head of a graph: the last fully connected layer before the output.

Transfer's from-scratch comparison resizes it to the new classes, and ablation's
``--retrain-head`` replaces it by a softmax trained on its input (the penultimate features). A
head is a ``Gemm`` (optionally followed by ``Softmax``, ``Identity``, ``Flatten``) or a
``MatMul`` + bias ``Add`` pair (Keras ``Dense``), found by walking back from the graph output.
"""
from __future__ import annotations

from dataclasses import dataclass

from zfprobe.errors import OptionError
from zfprobe.engine.graph import Graph

PASS_THROUGH = ("Softmax", "LogSoftmax", "Identity", "Flatten", "Dropout")


@dataclass(frozen=True)
class Head:
    """``features``: the head's input tensor; ``logits``: its output (before any softmax);
    ``weight`` / ``bias``: constant names; ``weight_out_first``: weight is [classes, D]."""

    node: str
    features: str
    logits: str
    weight: str
    bias: str | None
    weight_out_first: bool
    softmax_after: bool


def find_head(graph: Graph) -> Head:
    tensor = graph.outputs[0]
    softmax = False
    while True:
        node = graph.producer(tensor)
        if node is None:
            break
        if node.op_type in PASS_THROUGH:
            softmax = softmax or node.op_type in ("Softmax", "LogSoftmax")
            tensor = graph.variable_inputs(node)[0]
            continue
        if node.op_type == "Gemm" and len(node.inputs) > 1 and graph.is_constant(node.inputs[1]) \
                and not node.attr("transA", 0):
            bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] and graph.is_constant(node.inputs[2]) else None
            return Head(node.name, node.inputs[0], tensor, node.inputs[1], bias, bool(node.attr("transB", 0)), softmax)
        if node.op_type == "Add":
            consts = [i for i in node.inputs if graph.is_constant(i)]
            var = graph.variable_inputs(node)
            mm = graph.producer(var[0]) if len(var) == 1 and len(consts) == 1 else None
            if mm is not None and mm.op_type == "MatMul" and graph.is_constant(mm.inputs[1]) \
                    and len(graph.shape(mm.inputs[1])) == 2:
                return Head(mm.name, mm.inputs[0], tensor, mm.inputs[1], consts[0], False, softmax)
        if node.op_type == "MatMul" and graph.is_constant(node.inputs[1]) and len(graph.shape(node.inputs[1])) == 2:
            return Head(node.name, node.inputs[0], tensor, node.inputs[1], None, False, softmax)
        break
    raise OptionError(f"cannot find the model's classifier (a fully connected layer before the output "
                      f"'{graph.outputs[0]}'); this needs a model that ends with one")
