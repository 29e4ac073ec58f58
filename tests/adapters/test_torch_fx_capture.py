"""The native route: ``zfprobe.attach`` on a live module that torch.fx captures imports neither
ONNX (``onnx``, ``onnxruntime``, ``torch.onnx``: nothing is exported or serialized) nor the heavy
libraries only some studies use (scipy, matplotlib, Pillow), checked in a fresh process through
``sys.modules``; and its one-forward capture check still catches a wrong conversion."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("onnx", "onnxruntime", "scipy", "matplotlib", "PIL", "sklearn", "skimage", "tensorflow", "keras")

_SCRIPT = """
import json, sys
import torch, torch.nn as nn
before = set(sys.modules)
import zfprobe
torch.manual_seed(0)
m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                  nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
probe = zfprobe.attach(m, (3, 16, 16))
new = sorted(set(sys.modules) - before)
print(json.dumps({"frontend": probe.graph.metadata["frontend"], "new": new,
                  "torch_onnx_before": "torch.onnx" in before}))
"""


def test_native_attach_neither_exports_onnx_nor_imports_heavy_libraries():
    run = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["frontend"].startswith("torch.fx"), got["frontend"]
    assert not got["torch_onnx_before"]  # (else the check below would prove nothing)
    heavy = [m for m in got["new"] if m.split(".")[0] in HEAVY or m == "torch.onnx" or m.startswith("torch.onnx.")]
    assert not heavy, heavy


def _block_net(residual: bool = True):
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        """conv -> BN -> ReLU -> max pool -> conv -> BN (plus the pooled map: a residual)."""

        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            z = self.bn2(self.conv2(y))
            return z + y if residual else z

    torch.manual_seed(0)
    return Block().eval()


def test_capture_check_catches_a_wrong_conversion_between_convs(monkeypatch):
    """The check feeds conv / BatchNorm outputs from the module's own run, so a wrong op between
    them must show at the next conv's input: fault injection in the converter table (a max pool
    shifted by its pads, same output shape; a ReLU written as a leaky one)."""
    import pytest
    import torch
    import torch.nn as nn

    from zfprobe.adapters.frontends import torch_fx

    x = torch.rand(1, 3, 16, 16)
    torch_fx.capture_graph(_block_net(), x)  # the right table passes
    torch_fx.capture_graph(_block_net(residual=False), x)
    shifted = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 2, 2], "dilations": [1, 1], "ceil_mode": 0}
    monkeypatch.setitem(torch_fx.CONVERTERS, nn.MaxPool2d, lambda b, call: b.emit("MaxPool", [call.args[0]], shifted))
    with pytest.raises(torch_fx.CaptureError, match="differs from the module's output"):
        torch_fx.capture_graph(_block_net(), x)
    # without the residual, the pooled map reaches the output only through conv2 (fed): its input catches it
    with pytest.raises(torch_fx.CaptureError, match="differs from the module at 'maxpool'"):
        torch_fx.capture_graph(_block_net(residual=False), x)
    monkeypatch.undo()
    monkeypatch.setitem(torch_fx.CONVERTERS, nn.ReLU,
                        lambda b, call: b.emit("LeakyRelu", [call.args[0]], {"alpha": 0.1}))
    with pytest.raises(torch_fx.CaptureError, match="differs from the module"):
        torch_fx.capture_graph(_block_net(), x)
