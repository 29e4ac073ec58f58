"""External data is confined wherever a tensor can hide (issue 25): inside a model's local
functions and in a Constant's ``sparse_value`` as well as in initializers. A location outside the
model's folder is refused with one line before onnx or onnxruntime sees the model; one inside it
is read by zfprobe, byte for byte."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clirun import judge, run


def external(name: str, array: np.ndarray, location: str) -> TensorProto:
    t = numpy_helper.from_array(array, name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def model_with(kind: str, location: str) -> onnx.ModelProto:
    """x [1, 1, 4, 4] -> Relu(x) + C, where C is a 1-element constant kept in external data,
    inside a local function (``function``) or as a Constant's sparse value (``sparse``)."""
    c = np.array([0.5], np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    opset = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    functions = []
    if kind == "function":
        const = helper.make_node("Constant", [], ["c"], value=external("cval", c, location))
        add = helper.make_node("Add", ["r", "c"], ["out"])
        relu = helper.make_node("Relu", ["inp"], ["r"])
        functions.append(helper.make_function("local", "ReluPlus", ["inp"], ["out"], [relu, const, add], opset[:1]))
        nodes = [helper.make_node("ReluPlus", ["x"], ["y"], domain="local")]
    else:
        values = external("sval", c, location)
        indices = numpy_helper.from_array(np.array([0], np.int64), "sidx")
        sparse = helper.make_sparse_tensor(values, indices, [1])
        nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Constant", [], ["c"], sparse_value=sparse),
                 helper.make_node("Add", ["r", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=opset, functions=functions)


@pytest.mark.parametrize("kind", ["function", "sparse"])
@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin", "link.bin"])
def test_escaping_locations_are_refused(tmp_path, kind, location):
    from zfprobe.adapters.frontends.onnx_import import load_onnx_model
    from zfprobe.errors import UntrustedFileError

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    secret = tmp_path / "outside.bin"
    secret.write_bytes(np.array([7.0], np.float32).tobytes())
    (folder / "link.bin").symlink_to(secret)
    path = folder / "m.onnx"
    onnx.save(model_with(kind, location), path)
    with pytest.raises(UntrustedFileError):
        load_onnx_model(str(path))
    r = run("layers", path)  # and on the command line: one line, exit 2
    assert judge(r, expect_error=True) is None, r.stderr
    assert "external data" in r.stderr


@pytest.mark.parametrize("kind", ["function", "sparse"])
def test_locations_inside_the_folder_are_read_by_zfprobe(tmp_path, kind):
    from zfprobe.adapters.frontends.onnx_external import model_tensors
    from zfprobe.adapters.frontends.onnx_import import load_onnx_model

    path = tmp_path / "m.onnx"
    (tmp_path / "c.bin").write_bytes(np.array([0.5], np.float32).tobytes())
    onnx.save(model_with(kind, "c.bin"), path)
    model = load_onnx_model(str(path))
    tensors = [t for t in model_tensors(model) if t.name in ("cval", "sval")]
    assert len(tensors) == 1 and tensors[0].data_location == TensorProto.DEFAULT
    assert numpy_helper.to_array(tensors[0]).tolist() == [0.5]
