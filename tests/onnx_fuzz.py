"""Seeded mutations of a real ONNX model, for the fuzz tests (issue 10).

Each mutant is one to three edits of the protobuf (attributes, op types, node order, names,
shapes, element types, opsets, initializers, external-data entries) and/or of its bytes (flips
in the graph structure at the front and the inputs / outputs / opsets at the back, truncation,
non-UTF-8 names). ``mutant(seed)`` is deterministic, so a failing seed can be replayed.
"""
from __future__ import annotations

import random
from pathlib import Path

import onnx
from onnx import TensorProto, helper

MODEL = Path(__file__).resolve().parent.parent / "zfprobe" / "data" / "mnist_cnn.onnx"
_BASE = onnx.load(str(MODEL))
_BYTES = _BASE.SerializeToString()
INTS = [-2, -1, 0, 1, 2, 3, 5, 64, 2**31 - 1, 2**62]
OPS = ["Relu", "Conv", "Add", "Softmax", "LRN", "MaxPool", "Foo", "", "Resize", "Loop", "If", "Identity",
       "Gemm", "Flatten", "BatchNormalization", "ConvTranspose", "Reshape", "Tanh"]
LOCATIONS = ["../outside.bin", "/etc/hostname", "missing.bin", "sub/../../x.bin", "", "a\\..\\..\\b", ".", "/dev/zero"]


def _copy():
    m = onnx.ModelProto()
    m.CopyFrom(_BASE)
    return m


def _attr_ints(m, rng):
    node = rng.choice(list(m.graph.node))
    attrs = [a for a in node.attribute if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
    if not attrs:
        return
    a = rng.choice(attrs)
    if a.type == onnx.AttributeProto.INT:
        a.i = rng.choice(INTS)
    elif a.ints:
        a.ints[rng.randrange(len(a.ints))] = rng.choice(INTS)
        if rng.random() < 0.3:
            a.ints.append(rng.choice(INTS))


def _attr_type(m, rng):
    node = rng.choice(list(m.graph.node))
    if not node.attribute:
        node.attribute.append(helper.make_attribute("axis", "text"))
        return
    a = rng.choice(list(node.attribute))
    name = a.name
    node.attribute.remove(a)
    node.attribute.append(rng.choice([helper.make_attribute(name, "abc"), helper.make_attribute(name, 1.5),
                                      helper.make_attribute(name, [1.0, 2.0]),
                                      helper.make_attribute(name, helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0]))]))


def _drop_node(m, rng):
    nodes = list(m.graph.node)
    del m.graph.node[rng.randrange(len(nodes))]


def _shuffle(m, rng):
    nodes = list(m.graph.node)
    rng.shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def _rewire(m, rng):
    node = rng.choice(list(m.graph.node))
    if node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(["nope", "", node.output[0], "image", "logits"])


def _op_type(m, rng):
    rng.choice(list(m.graph.node)).op_type = rng.choice(OPS)


def _input_dims(m, rng):
    dims = m.graph.input[0].type.tensor_type.shape.dim
    d = dims[rng.randrange(len(dims))]
    choice = rng.random()
    if choice < 0.3:
        d.dim_param = "N"
    else:
        d.dim_value = rng.choice([0, 1, 2, 3, 7, 27, 28, 29, 56, 512])
    if rng.random() < 0.15:
        dims.add().dim_value = 1


def _elem_type(m, rng):
    target = rng.choice([m.graph.input[0], m.graph.output[0]])
    target.type.tensor_type.elem_type = rng.choice([0, 2, 6, 7, 9, 10, 11, 16, 99])


def _opset(m, rng):
    m.opset_import[0].version = rng.choice([1, 6, 7, 9, 11, 13, 17, 21, 99])


def _ir(m, rng):
    m.ir_version = rng.choice([0, 1, 3, 7, 8, 10, 11, 99])


def _initializer(m, rng):
    inits = list(m.graph.initializer)
    t = rng.choice(inits)
    r = rng.random()
    if r < 0.25:
        m.graph.initializer.remove(t)
    elif r < 0.5:
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2, 5, 1000])
    elif r < 0.75:
        t.data_type = rng.choice([0, 2, 7, 10, 11, 8])
    else:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)]


def _external(m, rng):
    t = rng.choice(list(m.graph.initializer))
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", rng.choice(LOCATIONS)), ("offset", str(rng.choice([0, 4, -1, 10**12]))),
                       ("length", str(rng.choice([0, 16, 1000, 10**12, -5])))):
        if rng.random() < 0.9:
            e = t.external_data.add()
            e.key, e.value = key, value


def _names(m, rng):
    node = rng.choice(list(m.graph.node))
    r = rng.random()
    if r < 0.4:
        node.name = rng.choice(list(m.graph.node)).name  # duplicate
    elif r < 0.7:
        node.output[0] = rng.choice([o for n in m.graph.node for o in n.output])  # two producers
    else:
        m.graph.output[0].name = rng.choice(["nope", "relu2", ""])


def _constant(m, rng):
    import math

    dims = [rng.choice([1, 3, 0, 2**20]) for _ in range(rng.randrange(1, 4))]
    n = math.prod(dims)
    value = helper.make_tensor("c", TensorProto.FLOAT, dims, b"\0" * (4 * n if n <= 64 else 16), raw=True)
    node = helper.make_node("Constant", [], ["k"], value=value)
    add = helper.make_node("Add", ["relu2", "k"], ["relu2_plus"])
    m.graph.node.insert(5, node)
    m.graph.node.insert(6, add)


PROTO_MUTATORS = [_attr_ints, _attr_type, _drop_node, _shuffle, _rewire, _op_type, _input_dims, _elem_type,
                  _opset, _ir, _initializer, _external, _names, _constant]


def _flip_bytes(data: bytes, rng) -> bytes:
    b = bytearray(data)
    head = 1800  # nodes are serialized first; inputs, outputs and opsets last
    for _ in range(rng.randrange(1, 12)):
        r = rng.random()
        if r < 0.6:
            i = rng.randrange(min(head, len(b)))
        elif r < 0.9:
            i = len(b) - 1 - rng.randrange(min(300, len(b)))
        else:
            i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
    return bytes(b)


def _non_utf8(data: bytes, rng) -> bytes:
    for name in (b"conv2", b"relu2", b"image", b"pool1", b"logits", b"kernel_shape"):
        if rng.random() < 0.5 and name in data:
            i = data.index(name) + rng.randrange(len(name))
            data = data[:i] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xED])]) + data[i + 1:]
    return data


def mutant(seed: int) -> bytes:
    """The serialized bytes of mutant number ``seed``."""
    rng = random.Random(seed)
    kind = rng.random()
    if kind < 0.65:
        m = _copy()
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            try:
                rng.choice(PROTO_MUTATORS)(m, rng)
            except (IndexError, ValueError):
                pass
        data = m.SerializeToString()
        if rng.random() < 0.1:
            data = _flip_bytes(data, rng)
        return data
    if kind < 0.85:
        return _flip_bytes(_BYTES, rng)
    if kind < 0.95:
        return _non_utf8(_BYTES, rng)
    return _BYTES[: rng.randrange(len(_BYTES))]
