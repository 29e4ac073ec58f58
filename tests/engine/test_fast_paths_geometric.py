"""The fast paths through issue 9's geometric ops, on the nets of tests/geometric_nets.py.

* Windowed reversal: for unit seeds (corners included, two images) at layers reached through
  ConvTranspose, bilinear / nearest Resize, skip Concat, Focus slicing, PixelUnshuffle
  (SpaceToDepth + channel Gather), reflect Pad and PixelShuffle (DepthToSpace), the windowed
  program must be used (no fallback), equal the full program (1e-5 of its largest value) and
  equal the oracle: torch autograd on the original module with rule-aware rectifiers
  (tests/oracle.py), 1e-4, under all three rules.
* Incremental occlusion: equal to plain onnxruntime on every occluded image (an independent
  computation), with the new ops inside the incremental chain.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zfprobe
from zfprobe.studies.occlusion import build_engine, class_output, local_chain, positions, run_engine

sys.path.insert(0, str(Path(__file__).parents[1]))
import geometric_nets  # noqa: E402
import nets  # noqa: E402
import oracle  # noqa: E402
from test_occlusion import assert_maps_equal, brute_force  # noqa: E402

# net -> module paths of layers whose reversal passes the ops under test
LAYERS = {"unet": ["dec2", "up3"], "fpn_pan": ["s3"], "yolo_focus": ["b2", "fuse"],
          "pixelshuffle_sr": ["body.2", "shuffle"]}


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(5)
    return rng.rand(2, 3, 32, 48).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(LAYERS))
def net(request, images, tmp_path_factory):
    torch.set_num_threads(1)
    module = geometric_nets.build(request.param)
    path = tmp_path_factory.mktemp("fast") / f"{request.param}.onnx"
    friendly = nets.export_onnx(module, torch.from_numpy(images[:1]), path)
    return request.param, module, path, friendly, zfprobe.load(path)


def _corner_seeds(acts):
    k, (h, w) = 6, acts.shape[2:]
    seeds = np.zeros((k,) + acts.shape[1:], np.float32)
    spots = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 2 + 1), (h // 3, 1)]
    for i, (y, x) in enumerate(spots):
        seeds[i, (7 * i) % acts.shape[1], y, x] = 1.0 + i
    return seeds, np.array([0, 1] * 3, np.int64)


def test_windowed_equals_full_and_oracle(net, images):
    name, module, _, friendly, probe = net
    for layer in LAYERS[name]:
        tensor = friendly[layer]
        assert probe.windowed_program(tensor, "deconvnet", "identity", single_image=False) is not None, (name, layer)
        seeds, which = _corner_seeds(probe.activations(images, tensor))
        want = oracle.oracle_from_module(module, images, layer, seeds, which, rule=oracle.RULES)
        for rule in oracle.RULES:
            full = probe.project(images, tensor, seeds, which, rule=rule, windowed=False)
            win = probe.project(images, tensor, seeds, which, rule=rule)
            scale = float(np.abs(full).max())
            assert scale > 0
            assert float(np.abs(win - full).max()) <= 1e-5 * scale, (name, layer, rule)
            assert float(np.abs(win - want[rule]).max()) <= 1e-4 * float(np.abs(want[rule]).max()), (name, layer, rule)


def test_window_is_smaller_than_the_image(net):
    """The windows follow the receptive field through the upsampling ops (a seed near the
    input of the decoder sees a part of the image, not all of it)."""
    name, _, _, friendly, probe = net
    program = probe.windowed_program(friendly[LAYERS[name][0]], "deconvnet", "identity", single_image=True)
    win = program.metadata["image_window"]
    assert win.h * win.w < 32 * 48, (name, win.h, win.w)


def test_incremental_occlusion_equals_plain(net, images):
    name, _, path, friendly, probe = net
    x = images[:1]
    fill = np.array([0.5, -1.0, 2.0], np.float32)
    layer = friendly[LAYERS[name][0]]
    cls = class_output(probe.graph)
    size, stride = 8, 5
    rows, cols = positions(32, size, stride), positions(48, size, stride)
    chain = local_chain(probe.graph)
    assert chain, name
    engine = build_engine(probe, layer, cls, size, rows, cols, "incremental", depth=len(chain))
    totals, probs, _, _ = run_engine(engine, x, fill, size, rows, cols)
    ref = brute_force(path, x, layer, size, stride, fill)
    if cls is None:
        scale = max(1.0, float(np.abs(ref[0]).max()))
        assert np.abs(totals - ref[0]).max() <= 1e-5 * scale
    else:
        assert_maps_equal((totals, probs, rows, cols), ref)
    if name in ("pixelshuffle_sr", "yolo_focus"):  # PixelUnshuffle / Focus, fused, run on windows
        assert [op.node.op_type for op in chain][:2] == ["SpaceToDepth", "Gather"]


def test_incremental_occlusion_through_strided_slice_and_pad(tmp_path):
    """A step-2 Slice (a 1-tap window of stride 2 from the slice's start) and a constant Pad
    inside the incremental chain, every cut of the chain against plain onnxruntime."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.conv2 = nn.Conv2d(6, 6, 3, stride=2)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 10 * 9, 5))

        def forward(self, x):
            y = nn.functional.pad(x[:, :, 1::2, ::2], (2, 1, 1, 2), value=0.25)
            return self.head(torch.relu(self.conv2(torch.relu(self.conv(y)))))

    module = nets._init_(Net(), 3)
    path = tmp_path / "slice_pad.onnx"
    names = nets.export_onnx(module, torch.zeros(1, 3, 40, 38), path)
    probe = zfprobe.load(path)
    ops = [op.node.op_type for op in local_chain(probe.graph)]
    assert ops[:3] == ["Slice", "Slice", "Pad"] and "Conv" in ops, ops
    x = np.random.default_rng(2).standard_normal((1, 3, 40, 38)).astype(np.float32)
    fill = np.array([0.0, 1.0, -2.0], np.float32)
    cls = class_output(probe.graph)
    size, stride = 7, 4
    rows, cols = positions(40, size, stride), positions(38, size, stride)
    ref = brute_force(path, x, names["conv2"], size, stride, fill)
    for depth in range(1, len(ops) + 1):
        engine = build_engine(probe, names["conv2"], cls, size, rows, cols, "incremental", depth=depth)
        totals, probs, _, _ = run_engine(engine, x, fill, size, rows, cols)
        assert_maps_equal((totals, probs, rows, cols), ref)


def test_windowed_through_channels_last_layernorm():
    """ConvNeXt blocks (7x7 depthwise, Transpose, LayerNorm over C, pointwise MatMuls, GELU,
    Transpose, residual Add): the windowed program passes the channels-last part and equals
    the full program and torch autograd."""
    from test_modern_ops import convnext_small

    module = convnext_small()
    images = np.random.RandomState(6).rand(2, 3, 48, 48).astype(np.float32)
    probe = zfprobe.attach(module, images[:1])
    assert "LayerNormalization" in {n.op_type for n in probe.graph.nodes}
    for layer in ("stage1", "down"):
        assert probe.windowed_program(layer, "deconvnet", "identity", single_image=False) is not None, layer
        seeds, which = _corner_seeds(probe.activations(images, layer))
        want = oracle.oracle_from_module(module, images, layer, seeds, which, rule="gradient")
        full = probe.project(images, layer, seeds, which, rule="gradient", windowed=False)
        win = probe.project(images, layer, seeds, which, rule="gradient")
        scale = float(np.abs(want).max())
        assert float(np.abs(win - full).max()) <= 1e-5 * scale, layer
        assert float(np.abs(win - want).max()) <= 1e-4 * scale, layer
