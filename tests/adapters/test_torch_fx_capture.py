"""The native route's cost: ``zfprobe.attach`` on a live module that torch.fx captures imports
neither ONNX (``onnx``, ``onnxruntime``, ``torch.onnx``: nothing is exported or serialized) nor
the heavy libraries only some studies use (scipy, matplotlib, Pillow). Checked in a fresh
process, through ``sys.modules``."""
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
