"""ONNX front-end: an ONNX file (any opset from 9 on) becomes a :class:`zfprobe.engine.graph.Graph`.

How: onnxruntime runs the model once on a zero input with every intermediate tensor exposed.
That single run gives the static shape of every tensor and the value of every constant
subgraph (``Constant`` nodes, ``ConstantOfShape``, ``Shape -> Gather -> Concat`` chains), so
the importer never re-implements ONNX shape inference. Then each remaining node is normalized
to opset-17 semantics with its static parameters folded into attributes, via the table
``NORMALIZERS`` keyed by op type (the opset decides which form the parameters came in).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from zfprobe.errors import DynamicInputSizeError, ModelLoadError, ZfprobeError
from zfprobe.engine.fusion import fuse
from zfprobe.engine.graph import Graph, Node
from zfprobe.ops.geometry import NOTSET, explicit_pads
from zfprobe.ops.onnx_semantics import numpy_dtype
from zfprobe.ops.registry import ONNX_NORMALIZERS
import zfprobe.engine.inverses  # noqa: F401,E402  (imports the op modules, which register their normalizers)

# Ops whose outputs depend on nothing but constants and static shapes are folded.
SHAPE_OPS = {"Shape", "Size"}
NONDETERMINISTIC_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def load_onnx_model(path: str | os.PathLike):
    """Read and sanity-check an ONNX file, with errors a user can act on."""
    import onnx
    from google.protobuf.message import DecodeError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"model file '{path}' does not exist")
    try:
        model = onnx.load(path, load_external_data=False)  # external data: checked below, never by onnx
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"'{path}' is not a readable ONNX model (corrupt or truncated file, or another format): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    except Exception as exc:  # protobuf raises a variety of errors on garbage input
        raise ModelLoadError(f"'{path}' is not a readable ONNX model: {type(exc).__name__}") from None
    if not model.graph.node or not model.graph.input:
        raise ModelLoadError(f"'{path}' holds no ONNX graph (no nodes or no inputs); is it an ONNX model?")
    from zfprobe.adapters.frontends.onnx_external import inline_external_data

    _check_text(model, path)
    _sort_nodes(model.graph, path)
    inline_external_data(model, path)
    return model


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _check_text(model, path: str) -> None:
    """Every name must be UTF-8 text. Protobuf decodes string fields only when they are read, and
    then either raises or (repeated fields) hands back bytes; both mean a corrupt file."""
    def texts(*values):
        for v in values:
            if not isinstance(v, str):
                raise UnicodeDecodeError("utf-8", bytes(v), 0, 1, "not text")

    try:
        texts(model.producer_name, model.producer_version, model.domain, *[o.domain for o in model.opset_import],
              *[x for p in model.metadata_props for x in (p.key, p.value)])
        for g in _graphs(model.graph):
            texts(g.name)
            for n in g.node:
                texts(n.name, n.op_type, n.domain, *n.input, *n.output, *[a.name for a in n.attribute])
                for a in n.attribute:
                    if a.type == a.STRING:
                        a.s.decode()
                    for v in a.strings:
                        v.decode()
            for vi in (*g.input, *g.output, *g.value_info):
                texts(vi.name, *[d.dim_param for d in vi.type.tensor_type.shape.dim])
            for t in g.initializer:
                texts(t.name, *[x for e in t.external_data for x in (e.key, e.value)])
    except UnicodeDecodeError:
        raise ModelLoadError(f"'{path}' holds a name or string that is not UTF-8 text; the file is corrupt") from None


def _sort_nodes(graph, path: str) -> None:
    """Put the nodes in dependency order (ONNX requires it; some exporters and editors do not)."""
    produced_by = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                produced_by.setdefault(out, i)
    order, state = [], [0] * len(graph.node)  # 0 new, 1 visiting, 2 done
    for start in range(len(graph.node)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                order.append(i)
                continue
            if state[i] == 2:
                continue
            if state[i] == 1:
                raise ModelLoadError(f"'{path}': the graph has a cycle through node '{graph.node[i].name}'")
            state[i] = 1
            stack.append((i, True))
            for t in graph.node[i].input:
                j = produced_by.get(t)
                if j is not None and j != i:
                    if state[j] == 1:
                        raise ModelLoadError(f"'{path}': the graph has a cycle through node '{graph.node[j].name}'")
                    if state[j] == 0:
                        stack.append((j, False))
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        copies = []
        for n in nodes:
            c = type(n)()
            c.CopyFrom(n)
            copies.append(c)
        del graph.node[:]
        graph.node.extend(copies)


def attrs_of(node_proto) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node_proto.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif hasattr(value, "dims"):  # TensorProto
            value = onnx.numpy_helper.to_array(value)
        out[a.name] = value
    return out


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _free_inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _fixed_input_shape(value_info, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if input_shape is not None:
        shape = tuple(input_shape)
        if len(shape) == 2 and len(declared) == 4:  # an image size H x W: keep the declared channels
            h, w = shape
            if declared[3] is not None and declared[1] is None:  # NHWC
                shape = (h, w, declared[3])
            else:
                shape = (declared[1] or 3, h, w)
        shape = tuple(int(s) for s in shape)
        if len(shape) == len(declared) - 1:
            shape = (1,) + shape
        if len(shape) != len(declared):
            raise ZfprobeError(
                f"input shape {tuple(input_shape)} does not match the model input "
                f"'{value_info.name}' of rank {len(declared)}"
            )
        for want, have in zip(declared[1:], shape[1:]):
            if want is not None and want != have:
                raise ZfprobeError(
                    f"input shape {tuple(shape)} conflicts with the model's fixed input shape {declared}"
                )
        return (1,) + shape[1:]
    if any(d is None for d in declared[1:]):
        raise DynamicInputSizeError(
            f"the model input '{value_info.name}' has unknown dimensions {declared}; "
            "give the input size (e.g. --input-size 224x224)"
        )
    return (1,) + tuple(declared[1:])


def _probe_run(model, input_name: str, shape: tuple[int, ...], elem_type: int) -> dict[str, np.ndarray]:
    """Run the model once on zeros with every tensor exposed; returns name -> value."""
    import onnx

    from zfprobe.adapters.backends.onnxruntime_backend import quiet_onnxruntime

    ort = quiet_onnxruntime()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    # Fix the input shape so ORT computes static shapes.
    for vi in g.input:
        if vi.name == input_name:
            dims = vi.type.tensor_type.shape.dim
            for d, s in zip(dims, shape):
                d.ClearField("dim_param")
                d.dim_value = s
    existing = {o.name for o in g.output}
    types = _element_types(model)
    for node in g.node:
        for out in node.output:
            if out and out not in existing:
                vi = g.output.add()
                vi.name = out
                if out in types and types[out]:
                    vi.type.tensor_type.elem_type = types[out]
                existing.add(out)
    if probe.ir_version > 10:
        probe.ir_version = 10
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).splitlines()[0]
        raise ModelLoadError(f"onnxruntime cannot load this model: {msg}") from None
    dtype = numpy_dtype(elem_type, np.float32)
    feeds = {input_name: np.zeros(shape, dtype=dtype)}
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, feeds)
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot run this model on a {shape} input: {str(exc).splitlines()[0]}") from None
    return dict(zip(names, values))


def _element_types(model) -> dict[str, int]:
    """Element type of every tensor, by ONNX type inference on a copy without weight data
    (initializers become typed inputs), so large models are not serialized twice."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    declared = {i.name for i in g.input}
    for init in model.graph.initializer:
        if init.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:
        return {}
    return {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}


# ---------------------------------------------------------------------------------------------
# Normalizers: ONNX node (any opset) -> zfprobe Node with opset-17 semantics and static attrs.
# ---------------------------------------------------------------------------------------------

NORMALIZERS: dict[str, Callable[["_Ctx", Node], Node]] = {}


def normalizer(*op_types: str):
    """Register how nodes of ``op_types`` are brought to zfprobe's canonical form."""

    def register(fn):
        for op in op_types:
            NORMALIZERS[op] = fn
        return fn

    return register


class _Ctx:
    def __init__(self, opset: int, values: dict[str, np.ndarray], constants: dict[str, np.ndarray]):
        self.opset = opset
        self.values = values
        self.constants = constants

    def shape(self, tensor: str) -> tuple[int, ...]:
        return tuple(self.values[tensor].shape)

    def const(self, tensor: str) -> np.ndarray | None:
        if not tensor:
            return None
        return self.constants.get(tensor)


def _explicit_pads(node: Node, spatial_in: tuple[int, ...], kernel: list[int], strides: list[int],
                   dilations: list[int]) -> list[int]:
    return explicit_pads(node.attrs.pop("auto_pad", NOTSET), node.attrs.get("pads"), spatial_in, kernel, strides,
                         dilations)


@normalizer("Conv")
def _conv(ctx: _Ctx, node: Node) -> Node:
    w_shape = ctx.shape(node.inputs[1]) if node.inputs[1] in ctx.values else ctx.constants[node.inputs[1]].shape
    kernel = list(node.attrs.get("kernel_shape", w_shape[2:]))
    nd = len(kernel)
    strides = list(node.attrs.get("strides", [1] * nd))
    dilations = list(node.attrs.get("dilations", [1] * nd))
    pads = _explicit_pads(node, ctx.shape(node.inputs[0])[2:], kernel, strides, dilations)
    node.attrs.update(kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads,
                      group=int(node.attrs.get("group", 1)))
    return node


@normalizer("MaxPool", "AveragePool", "LpPool")
def _pool(ctx: _Ctx, node: Node) -> Node:
    kernel = list(node.attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(node.attrs.get("strides", [1] * nd))
    dilations = list(node.attrs.get("dilations", [1] * nd))
    pads = _explicit_pads(node, ctx.shape(node.inputs[0])[2:], kernel, strides, dilations)
    node.attrs.update(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                      ceil_mode=int(node.attrs.get("ceil_mode", 0)))
    if node.op_type == "AveragePool":
        node.attrs["count_include_pad"] = int(node.attrs.get("count_include_pad", 0))
        node.attrs.pop("dilations")  # AveragePool gained dilations only in opset 19
    if node.op_type == "MaxPool":
        node.outputs = node.outputs[:1]
        node.attrs.pop("storage_order", None)
    return node


@normalizer("BatchNormalization")
def _batchnorm(ctx: _Ctx, node: Node) -> Node:
    node.attrs = {"epsilon": float(node.attrs.get("epsilon", 1e-5))}
    node.outputs = node.outputs[:1]
    return node


@normalizer("Dropout")
def _dropout(ctx: _Ctx, node: Node) -> Node:
    return Node(node.name, "Identity", node.inputs[:1], node.outputs[:1], {}, node.source)


@normalizer("Reshape")
def _reshape(ctx: _Ctx, node: Node) -> Node:
    out_shape = ctx.shape(node.outputs[0])
    node.inputs = node.inputs[:1]
    node.attrs = {"shape": [-1] + list(out_shape[1:])}
    return node


@normalizer("Flatten")
def _flatten(ctx: _Ctx, node: Node) -> Node:
    node.attrs = {"axis": int(node.attrs.get("axis", 1))}
    return node


@normalizer("Squeeze", "Unsqueeze")
def _squeeze(ctx: _Ctx, node: Node) -> Node:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ctx.const(node.inputs[1]).tolist()
    rank = len(ctx.shape(node.inputs[0])) if node.op_type == "Squeeze" else len(ctx.shape(node.outputs[0]))
    if axes is None:  # Squeeze without axes: all size-1 axes except batch (batch is symbolic later)
        axes = [i for i, s in enumerate(ctx.shape(node.inputs[0])) if s == 1 and i > 0]
    node.inputs = node.inputs[:1]
    node.attrs = {"axes": sorted(int(a) % rank for a in axes)}
    return node


@normalizer("Slice")
def _slice(ctx: _Ctx, node: Node) -> Node:
    in_shape = ctx.shape(node.inputs[0])
    if ctx.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ctx.const(node.inputs[1]).tolist(), ctx.const(node.inputs[2]).tolist()
        axes = ctx.const(node.inputs[3]).tolist() if len(node.inputs) > 3 and node.inputs[3] else list(range(len(starts)))
        steps = ctx.const(node.inputs[4]).tolist() if len(node.inputs) > 4 and node.inputs[4] else [1] * len(starts)
    norm_starts, norm_ends, norm_axes, norm_steps = [], [], [], []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % len(in_shape)
        # Python slice semantics give the clamped bounds ONNX defines.
        s2, e2, st2 = slice(int(s), int(e), int(st)).indices(in_shape[a])
        if st2 < 0 and e2 < 0:  # "before index 0": -1 would read as the last index in ONNX
            e2 = -in_shape[a] - 1
        norm_starts.append(s2)
        norm_ends.append(e2)
        norm_axes.append(a)
        norm_steps.append(st2)
    node.inputs = node.inputs[:1]
    node.attrs = {"starts": norm_starts, "ends": norm_ends, "axes": norm_axes, "steps": norm_steps}
    return node


@normalizer("Pad")
def _pad(ctx: _Ctx, node: Node) -> Node:
    mode = node.attrs.get("mode", "constant")
    if ctx.opset < 11:
        pads = list(node.attrs.get("pads", node.attrs.get("paddings", [])))
        value = float(node.attrs.get("value", 0.0))
    else:
        pads = ctx.const(node.inputs[1]).tolist()
        cv = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
        value = float(cv.reshape(-1)[0]) if cv is not None and cv.size else 0.0
        if len(node.inputs) > 3 and node.inputs[3]:
            axes = [int(a) % len(ctx.shape(node.inputs[0])) for a in ctx.const(node.inputs[3]).tolist()]
            rank = len(ctx.shape(node.inputs[0]))
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
    node.inputs = node.inputs[:1]
    node.attrs = {"pads": [int(p) for p in pads], "mode": mode, "value": value}
    return node


@normalizer("Clip")
def _clip(ctx: _Ctx, node: Node) -> Node:
    if ctx.opset < 11:
        lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    else:
        lo_c = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
        hi_c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
        lo = float(lo_c.reshape(-1)[0]) if lo_c is not None else -np.inf
        hi = float(hi_c.reshape(-1)[0]) if hi_c is not None else np.inf
    node.inputs = node.inputs[:1]
    node.attrs = {"min": float(lo), "max": float(hi)}
    return node


@normalizer("Split")
def _split(ctx: _Ctx, node: Node) -> Node:
    axis = int(node.attrs.get("axis", 0)) % len(ctx.shape(node.inputs[0]))
    sizes = [ctx.shape(o)[axis] for o in node.outputs]
    node.inputs = node.inputs[:1]
    node.attrs = {"axis": axis, "split": sizes}
    return node


@normalizer("Concat")
def _concat(ctx: _Ctx, node: Node) -> Node:
    node.attrs = {"axis": int(node.attrs["axis"]) % len(ctx.shape(node.outputs[0]))}
    return node


@normalizer("ReduceMean", "ReduceSum", "ReduceMax")
def _reduce(ctx: _Ctx, node: Node) -> Node:
    rank = len(ctx.shape(node.inputs[0]))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ctx.const(node.inputs[1]).tolist()
    if axes is None:
        axes = list(range(rank))
    node.inputs = node.inputs[:1]
    node.attrs = {"axes": sorted(int(a) % rank for a in axes), "keepdims": int(node.attrs.get("keepdims", 1))}
    return node


@normalizer("Softmax", "LogSoftmax")
def _softmax(ctx: _Ctx, node: Node) -> Node:
    rank = len(ctx.shape(node.inputs[0]))
    axis = int(node.attrs.get("axis", -1 if ctx.opset >= 13 else 1)) % rank
    if ctx.opset < 13 and axis != rank - 1 and any(s != 1 for s in ctx.shape(node.inputs[0])[axis + 1:]):
        node.attrs = {"axis": axis, "legacy_flatten": 1}
    else:
        node.attrs = {"axis": axis}
    return node


@normalizer("Transpose")
def _transpose(ctx: _Ctx, node: Node) -> Node:
    rank = len(ctx.shape(node.inputs[0]))
    node.attrs = {"perm": list(node.attrs.get("perm", list(reversed(range(rank)))))}
    return node


@normalizer("Gemm")
def _gemm(ctx: _Ctx, node: Node) -> Node:
    node.attrs = {
        "alpha": float(node.attrs.get("alpha", 1.0)), "beta": float(node.attrs.get("beta", 1.0)),
        "transA": int(node.attrs.get("transA", 0)), "transB": int(node.attrs.get("transB", 0)),
    }
    return node


@normalizer("GroupNormalization")
def _groupnorm(ctx: _Ctx, node: Node) -> Node:
    """Canonical form: per-channel scale and bias (opset 21); opset 18-20 give them per group."""
    groups = int(node.attrs["num_groups"])
    channels = ctx.shape(node.inputs[0])[1]
    node.attrs = {"num_groups": groups, "epsilon": float(node.attrs.get("epsilon", 1e-5))}
    if ctx.opset < 21:
        for i in (1, 2):
            value = ctx.const(node.inputs[i])
            if value is not None and value.shape[0] == groups and groups != channels:
                name = f"{node.inputs[i]}/per_channel"
                ctx.constants[name] = np.repeat(value, channels // groups)
                node.inputs[i] = name
    return node


@normalizer("Cast")
def _cast(ctx: _Ctx, node: Node) -> Node:
    return node


def _implicit_inputs(node_proto) -> list[str]:
    """Outer-scope tensors that the subgraphs of ``node_proto`` (If / Loop / Scan branches) read.

    They are inputs of the node as much as its declared ones: a node is constant only when
    these are constant too (torch's LRN export reads the data through an ``If`` branch)."""
    import onnx

    found: list[str] = []
    for attr in node_proto.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                for t in list(n.input) + _implicit_inputs(n):
                    if t and t not in local and t not in found:
                        found.append(t)
                local.update(n.output)
    return found


def _constant_tensors(model) -> set[str]:
    """Tensors that depend on nothing but constants and static shapes (folded at import)."""
    const = {i.name for i in model.graph.initializer}
    for proto in model.graph.node:
        ins = list(proto.input) + _implicit_inputs(proto)
        if (proto.op_type == "Constant" or proto.op_type in SHAPE_OPS
                or (proto.op_type not in NONDETERMINISTIC_OPS and all((not i) or i in const for i in ins))):
            const.update(o for o in proto.output if o)
    return const


def _inline_static_ifs(model, values: dict[str, np.ndarray]):
    """A copy of ``model`` where every ``If`` whose condition is static (a function of shapes
    and constants, known from the probe run) is replaced by the nodes of the branch it takes,
    and the list of those nodes; None if there is none. Exporters emit such Ifs for rank checks
    (torch's LRN)."""
    import onnx

    const = _constant_tensors(model)
    ifs = [n for n in model.graph.node if n.op_type == "If" and n.input[0] in const and n.input[0] in values
           and not all(o in const for o in n.output)]
    if not ifs:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {}
    for n in ifs:
        cond = bool(np.asarray(values[n.input[0]]).reshape(-1)[0])
        taken[n.name or n.output[0]] = next(a.g for a in n.attribute if a.name == ("then_branch" if cond else "else_branch"))
    nodes, inlined = [], []
    for n in out.graph.node:
        key = n.name or (n.output[0] if n.output else "")
        if n.op_type != "If" or key not in taken:
            nodes.append(n)
            continue
        branch = taken[key]
        out.graph.initializer.extend(branch.initializer)
        rename = {o.name: outer for o, outer in zip(branch.output, n.output)}
        for inner in branch.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            for i, t in enumerate(copy.output):
                if t in rename:
                    copy.output[i] = rename[t]
            nodes.append(copy)
            inlined.append(copy)
        for o in branch.output:  # a branch that returns an outer tensor unchanged
            if o.name not in {t for inner in branch.node for t in inner.output}:
                nodes.append(onnx.helper.make_node("Identity", [o.name], [rename[o.name]], name=f"{key}/passthrough"))
                inlined.append(nodes[-1])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, inlined


def _run_nodes(model, nodes: list, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of ``nodes`` (inlined branches), computed by onnxruntime from the known values
    of what they read: a small model instead of a second run of the whole network."""
    import onnx

    from zfprobe.adapters.backends.onnxruntime_backend import quiet_onnxruntime

    ort = quiet_onnxruntime()
    inits = {i.name: i for i in model.graph.initializer}
    produced = {o for n in nodes for o in n.output}
    reads = [t for n in nodes for t in list(n.input) + _implicit_inputs(n) if t and t not in produced]
    g = onnx.helper.make_graph(list(nodes), "inlined", [], [])
    for t in dict.fromkeys(reads):
        if t in inits:
            g.initializer.append(inits[t])
        else:
            v = np.asarray(values[t])
            g.input.append(onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
    for o in dict.fromkeys(produced):
        vi = g.output.add()
        vi.name = o
    small = onnx.helper.make_model(g, opset_imports=list(model.opset_import))
    small.ir_version = min(model.ir_version, 10)
    inferred = onnx.shape_inference.infer_shapes(small)
    types = {vi.name: vi.type for vi in inferred.graph.value_info}
    for vi in small.graph.output:
        if vi.name in types:
            vi.type.CopyFrom(types[vi.name])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(small.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: values[i.name] for i in small.graph.input}
    names = [o.name for o in small.graph.output]
    return dict(zip(names, sess.run(names, feeds)))


def import_onnx(path: str | os.PathLike, input_shape: tuple[int, ...] | None = None,
                fuse_decompositions: bool = True) -> Graph:
    """Read an ONNX file into zfprobe's graph (see the module docstring for how)."""
    import onnx

    model = load_onnx_model(path)
    opset = _opset(model)
    free = _free_inputs(model)
    if len(free) != 1:
        names = ", ".join(i.name for i in free)
        raise ModelLoadError(f"zfprobe probes models with one image input; this one has {len(free)}: {names}")
    inp = free[0]
    shape = _fixed_input_shape(inp, input_shape)
    elem = inp.type.tensor_type.elem_type
    values = _probe_run(model, inp.name, shape, elem)
    inlined = _inline_static_ifs(model, values)
    if inlined is not None:
        model, new_nodes = inlined
        values.update(_run_nodes(model, new_nodes, values))
    values.setdefault(inp.name, np.zeros(shape, dtype=numpy_dtype(elem, np.float32)))

    constants: dict[str, np.ndarray] = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes: list[Node] = []
    used_names: set[str] = set()
    for idx, proto in enumerate(model.graph.node):
        if proto.domain not in ("", "ai.onnx"):
            raise ModelLoadError(f"node '{proto.name or idx}' uses the custom domain '{proto.domain}' ({proto.op_type}), which zfprobe cannot read")
        ins = [i for i in proto.input]
        is_const = (
            proto.op_type == "Constant"
            or proto.op_type in SHAPE_OPS
            or (proto.op_type not in NONDETERMINISTIC_OPS
                and all((not i) or i in constants for i in ins + _implicit_inputs(proto)))
        )
        if is_const:
            for out in proto.output:
                if out in values:
                    constants[out] = values[out]
            continue
        name = proto.name or (proto.output[0] if proto.output else f"{proto.op_type}_{idx}")
        base, k = name, 1
        while name in used_names:
            name, k = f"{base}_{k}", k + 1
        used_names.add(name)
        nodes.append(Node(name, proto.op_type, ins, list(proto.output), attrs_of(proto), source=proto.name or name))

    ctx = _Ctx(opset, values, constants)
    normalized = []
    for node in nodes:
        fn = NORMALIZERS.get(node.op_type) or ONNX_NORMALIZERS.get(node.op_type)
        normalized.append(fn(ctx, node) if fn else node)

    live_tensors = {inp.name} | {o for n in normalized for o in n.outputs if o}
    shapes = {t: tuple(values[t].shape) for t in live_tensors if t in values}
    shapes[inp.name] = shape
    dtypes = {t: values[t].dtype for t in live_tensors if t in values}
    dtypes[inp.name] = np.dtype(numpy_dtype(elem, np.float32))
    used = {i for n in normalized for i in n.inputs if i}
    outputs = [o.name for o in model.graph.output if o.name in live_tensors]
    graph = Graph(
        nodes=normalized,
        inputs=[inp.name],
        outputs=outputs,
        constants={k: v for k, v in constants.items() if k in used},
        shapes=shapes,
        dtypes=dtypes,
        name=os.path.basename(os.fspath(path)),
        metadata={"format": "onnx", "opset": opset, "producer": model.producer_name,
                  "doc": {p.key: p.value for p in model.metadata_props}},
    )
    # fuse_decompositions=False keeps exporters' chains as they are (tests compare rules op by op)
    return fuse(graph) if fuse_decompositions else graph
