"""zfprobe program -> ONNX model (opset 17).

Canonical zfprobe nodes keep static parameters as attributes; ONNX 13+ wants several of them as
constant inputs. ``TO_INPUTS`` says which attributes move to inputs, in which order, so the
emitted model is plain ONNX that onnxruntime (or any other runtime) executes as is. Canonical
ops outside ONNX opset 17 (zfprobe's Unpool, its fused activations, newer ONNX ops) are written
as their default decompositions (:func:`zfprobe.engine.inverses.decompose`).
"""
from __future__ import annotations

import numpy as np

from zfprobe.engine.graph import Graph
from zfprobe.ops.onnx_semantics import onnx_code
from zfprobe.engine.inverses import decompose

OPSET = 17
IR_VERSION = 8

_I64 = np.int64
# op -> list of (attribute name, dtype, default) turned into trailing inputs, in input order.
TO_INPUTS = {
    "Reshape": [("shape", _I64, None)],
    "Squeeze": [("axes", _I64, None)],
    "Unsqueeze": [("axes", _I64, None)],
    "Slice": [("starts", _I64, None), ("ends", _I64, None), ("axes", _I64, None), ("steps", _I64, None)],
    "Pad": [("pads", _I64, None), ("value", np.float32, 0.0)],
    "Clip": [("min", np.float32, None), ("max", np.float32, None)],
    "Split": [("split", _I64, None)],
    "ReduceSum": [("axes", _I64, None)],
    "Expand": [("shape", _I64, None)],
    "Tile": [("repeats", _I64, None)],
}
_DROP_ATTRS = {"Softmax": {"legacy_flatten"}, "Pad": {"value"}}


def _value_info(name: str, dtype, rank: int, batch_name: str):
    import onnx

    dims = [batch_name] + [None] * (rank - 1) if rank else []
    return onnx.helper.make_tensor_value_info(name, onnx_code(dtype), dims)


def to_onnx(program: Graph, batch_names: dict[str, str] | None = None):
    """Emit ``program`` as an ``onnx.ModelProto`` that passes ``onnx.checker``."""
    import onnx
    from onnx import helper, numpy_helper

    program = decompose(program)  # zfprobe's own ops (Unpool, fused activations, ...) as standard ONNX
    batch_names = batch_names or {}
    nodes, initializers = [], []
    used_consts = set()
    counter = [0]

    def const_input(value, dtype) -> str:
        counter[0] += 1
        name = f"zf_attr/{counter[0]}"
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    for node in program.nodes:
        if node.op_type == "Resize":
            nodes.extend(_resize_as_matmuls(program, node, const_input))
            continue
        attrs = dict(node.attrs)
        inputs = list(node.inputs)
        for key, dtype, default in TO_INPUTS.get(node.op_type, []):
            value = attrs.pop(key, default)
            if node.op_type == "Pad" and key == "value":  # the pad value takes the data's type
                dtype = program.dtypes.get(node.inputs[0], np.dtype(np.float32))
            if value is None or (isinstance(value, float) and not np.isfinite(value)):
                inputs.append("")
            else:
                inputs.append(const_input(value, dtype))
        while inputs and inputs[-1] == "":
            inputs.pop()
        for key in _DROP_ATTRS.get(node.op_type, ()):
            attrs.pop(key, None)
        if node.op_type == "ConstantOfShape":
            attrs["value"] = numpy_helper.from_array(np.array([attrs.get("value", 0.0)], dtype=np.float32))
        attrs = {k: v for k, v in attrs.items() if v is not None}
        nodes.append(helper.make_node(node.op_type, inputs, node.outputs, name=node.name, **attrs))
        used_consts.update(i for i in node.inputs if i in program.constants)

    for name in sorted(used_consts):
        initializers.append(numpy_helper.from_array(np.array(program.constants[name], order="C"), name))  # keeps 0-d

    inputs = [_value_info(t, program.dtypes.get(t, np.float32), len(program.shapes[t]), batch_names.get(t, f"N_{i}"))
              for i, t in enumerate(program.inputs)]
    outputs = [_value_info(t, program.dtypes.get(t, np.float32), len(program.shapes[t]), batch_names.get(t, f"B_{i}"))
               for i, t in enumerate(program.outputs)]
    graph = helper.make_graph(nodes, _safe_name(program.name), inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zfprobe")
    model.ir_version = IR_VERSION
    for key, value in program.metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"zfprobe.{key}", str(value)
    onnx.checker.check_model(model)
    return model


def _resize_as_matmuls(program: Graph, node, const_input) -> list:
    """A canonical Resize as one MatMul per resized axis with the matrices of
    :func:`zfprobe.ops.resize.resize_matrices` (the same numbers the other backends use; the
    canonical node keeps no ONNX ``sizes`` input, whose batch entry would be fixed)."""
    from onnx import helper

    from zfprobe.ops.resize import resize_matrices

    in_shape, out_shape = program.shape(node.inputs[0]), program.shape(node.outputs[0])
    rank = len(in_shape)
    mats = sorted(resize_matrices(node.attrs, in_shape, out_shape).items())
    out, cur = [], node.inputs[0]
    if not mats:
        return [helper.make_node("Identity", [cur], node.outputs, name=node.name)]
    for k, (axis, a) in enumerate(mats):
        last = k == len(mats) - 1
        dst = node.outputs[0] if last else f"{node.name}/axis{axis}"
        lead = (1,) * (rank - 2)
        if axis == rank - 2:
            w = const_input(a.reshape(lead + a.shape), np.float32)
            out.append(helper.make_node("MatMul", [w, cur], [dst], name=f"{node.name}/mm{axis}"))
        elif axis == rank - 1:
            w = const_input(np.ascontiguousarray(a.T).reshape(lead + a.T.shape), np.float32)
            out.append(helper.make_node("MatMul", [cur, w], [dst], name=f"{node.name}/mm{axis}"))
        else:
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            w = const_input(np.ascontiguousarray(a.T).reshape(lead + a.T.shape), np.float32)
            t1, t2 = f"{node.name}/t{axis}", f"{node.name}/m{axis}"
            out.append(helper.make_node("Transpose", [cur], [t1], perm=perm, name=t1))
            out.append(helper.make_node("MatMul", [t1, w], [t2], name=t2))
            out.append(helper.make_node("Transpose", [t2], [dst], perm=perm, name=f"{node.name}/back{axis}"))
        cur = dst
    return out


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-.:()," else "_" for ch in name)[:200]
