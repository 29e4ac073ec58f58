"""The linear / geometric ops of issue 9 in single-op ONNX graphs, on every backend.

Two independent oracles, both onnxruntime running the ORIGINAL single-op model:
- forward: zfprobe's value of the op's output (computed by the onnxruntime, torch or TensorFlow
  backend from zfprobe's canonical node) equals onnxruntime's output of the model;
- reversal: the adjoint identity <A v, y> = <v, A^T y>, with A v = f(v) - f(0) from onnxruntime
  and A^T y from zfprobe's reversed network (the dot-product test of tests/engine/test_adjoints.py).
Tolerances: forward 1e-5 relative to the output scale; adjoint 1e-5 relative (float32).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import zfprobe
from zfprobe.adapters.frontends.onnx_import import import_onnx
from zfprobe.probe import Probe

RNG = np.random.RandomState(0)


def _model(nodes, in_shape, inits, opset=17):
    graph = helper.make_graph(nodes, "single_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 13 else 8
    return model


def _f32(*values):
    return np.array(values, np.float32)


def _i64(*values):
    return np.array(values, np.int64)


S = (1, 3, 6, 8)
CASES = {}
for ctm in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"):
    for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        CASES[f"resize_nearest_{ctm}_{nm}"] = ([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest",
                                              coordinate_transformation_mode=ctm, nearest_mode=nm)],
                                              S, {"sc": _f32(1, 1, 1.7, 2.5)}, 17)
for ctm in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
    CASES[f"resize_linear_{ctm}"] = ([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear",
                                     coordinate_transformation_mode=ctm)], S, {"sc": _f32(1, 1, 2, 0.6)}, 17)
CASES["resize_linear_sizes"] = ([helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="linear")], S,
                                {"sz": _i64(1, 3, 13, 5)}, 17)
CASES["resize_nearest_sizes_down"] = ([helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest")], S,
                                      {"sz": _i64(1, 3, 4, 3)}, 17)
CASES["resize_cubic"] = ([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic")], S, {"sc": _f32(1, 1, 2, 1.5)}, 17)
CASES["resize_cubic_exclude"] = ([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic", cubic_coeff_a=-0.5,
                                  exclude_outside=1, coordinate_transformation_mode="align_corners")], S,
                                 {"sc": _f32(1, 1, 2, 1.5)}, 17)
CASES["resize_opset10"] = ([helper.make_node("Resize", ["x", "sc"], ["y"], mode="nearest")], S, {"sc": _f32(1, 1, 2, 3)}, 10)
CASES["resize_opset10_linear"] = ([helper.make_node("Resize", ["x", "sc"], ["y"], mode="linear")], S, {"sc": _f32(1, 1, 2, 2)}, 10)
CASES["upsample9_nearest"] = ([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="nearest")], S, {"sc": _f32(1, 1, 2, 2)}, 9)
CASES["upsample9_linear"] = ([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="linear")], S, {"sc": _f32(1, 1, 2, 3)}, 9)
CASES["resize_axes_opset18"] = ([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", axes=[3, 2])], S,
                                {"sc": _f32(1.5, 2)}, 18)
CASES["resize_channels"] = ([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")], S, {"sc": _f32(1, 2, 1, 1)}, 17)

W = {"w": RNG.randn(3, 4, 3, 3).astype(np.float32), "b": RNG.randn(4).astype(np.float32)}
WG = {"w": RNG.randn(4, 3, 3, 3).astype(np.float32)}
for name, attrs, wts, shape in [
    ("convT_s2_p1", dict(strides=[2, 2], pads=[1, 1, 1, 1]), W, S),
    ("convT_s2_outpad", dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), W, S),
    ("convT_s3_asym", dict(strides=[3, 2], pads=[0, 2, 1, 0], output_padding=[2, 1]), W, S),
    ("convT_dilated", dict(dilations=[2, 3], strides=[2, 1], pads=[1, 1, 2, 0]), W, S),
    ("convT_groups", dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1]), WG, (1, 4, 5, 6)),
    ("convT_same_upper", dict(strides=[2, 2], auto_pad="SAME_UPPER"), W, S),
    ("convT_output_shape", dict(strides=[2, 2], output_shape=[12, 15]), W, S),
]:
    ins = ["x", "w", "b"] if "b" in wts else ["x", "w"]
    CASES[name] = ([helper.make_node("ConvTranspose", ins, ["y"], **attrs)], shape, wts, 17)

CASES["slice_focus"] = ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], S,
                        {"st": _i64(1, 0), "en": _i64(1 << 30, 1 << 30), "ax": _i64(2, 3), "sp": _i64(2, 2)}, 17)
CASES["slice_step3_channels"] = ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], (1, 7, 4, 5),
                                 {"st": _i64(1), "en": _i64(7), "ax": _i64(1), "sp": _i64(3)}, 17)
CASES["slice_reverse"] = ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], S,
                          {"st": _i64(-1, 6), "en": _i64(-(1 << 30), 1), "ax": _i64(3, 2), "sp": _i64(-1, -2)}, 17)
CASES["space_to_depth"] = ([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)], S, {}, 17)
CASES["depth_to_space_dcr"] = ([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="DCR")], (1, 8, 3, 4), {}, 17)
CASES["depth_to_space_crd"] = ([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")], (1, 8, 3, 4), {}, 17)
for mode in ("reflect", "edge", "wrap"):
    CASES[f"pad_{mode}"] = ([helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)], S, {"p": _i64(0, 0, 2, 3, 0, 0, 3, 1)}, 17)
CASES["pad_reflect_opset9"] = ([helper.make_node("Pad", ["x"], ["y"], mode="reflect", pads=[0, 0, 1, 2, 0, 0, 2, 1])], S, {}, 9)
CASES["gather_channels"] = ([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], S, {"i": _i64(2, 0, 2, -1)}, 17)
CASES["gather_scalar_w"] = ([helper.make_node("Gather", ["x", "i"], ["y"], axis=3)], S, {"i": np.array(5, np.int64)}, 17)
CASES["gather_2d_h"] = ([helper.make_node("Gather", ["x", "i"], ["y"], axis=2)], S, {"i": _i64(0, 5, 5, 1).reshape(2, 2)}, 17)
CASES["tile"] = ([helper.make_node("Tile", ["x", "r"], ["y"])], S, {"r": _i64(1, 2, 1, 3)}, 17)
CASES["expand"] = ([helper.make_node("Expand", ["x", "s"], ["y"])], (1, 3, 1, 8), {"s": _i64(1, 3, 5, 8)}, 17)

BACKENDS = ("onnxruntime", "torch", "tensorflow")
# One case per op family runs on TensorFlow in the default (CI) set; the rest with --runslow.
TF_FAST = {"resize_nearest_half_pixel_round_prefer_floor", "resize_linear_align_corners", "resize_cubic", "upsample9_nearest",
           "convT_s3_asym", "slice_focus", "slice_reverse", "space_to_depth", "depth_to_space_crd", "pad_edge",
           "pad_reflect", "gather_channels", "tile", "expand"}


def _matrix():
    for case in sorted(CASES):
        for backend in BACKENDS:
            marks = [pytest.mark.slow] if backend == "tensorflow" and case not in TF_FAST else []
            yield pytest.param(case, backend, marks=marks, id=f"{case}-{backend}")


def _probe(path, backend: str) -> Probe:
    if backend == "tensorflow":
        from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

        return Probe(import_onnx(path), TensorFlowBackend("cpu"), source=str(path))
    return zfprobe.load(path, backend=None if backend == "onnxruntime" else backend)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("linear_ops")
    paths = {}
    for name, (nodes, shape, inits, opset) in CASES.items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(_model(nodes, shape, inits, opset), str(paths[name]))
    return paths


@pytest.mark.parametrize("case,backend", list(_matrix()))
def test_forward_and_adjoint(saved, case, backend):
    path = saved[case]
    shape = CASES[case][1]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f = lambda v: sess.run(None, {"x": v})[0]  # noqa: E731
    v = RNG.randn(*shape).astype(np.float32)
    probe = _probe(path, backend)
    want = f(v)
    got = probe.activations(v, "y")
    got = got["y"] if isinstance(got, dict) else got
    assert got.shape == want.shape, (case, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * (np.abs(want).max() + 1))

    zero = np.zeros(shape, np.float32)
    av = want - f(zero)
    y = RNG.randn(*av.shape).astype(np.float32)
    at_y = probe.project(zero, "y", y[None] if y.shape[0] != 1 else y, rule="gradient")[0]
    lhs, rhs = float((av.astype(np.float64) * y).sum()), float((v.astype(np.float64) * at_y).sum())
    assert np.abs(at_y).max() > 0
    scale = np.abs(av).sum() * np.abs(y).max() + 1e-12
    assert abs(lhs - rhs) <= 1e-5 * scale, (case, backend, lhs, rhs)
