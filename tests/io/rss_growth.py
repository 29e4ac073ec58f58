"""Child-process helper for tests/io/test_memory.py: the peak resident-memory growth per batch
item of one onnxruntime run (a batch of N against a batch of 1), printed as JSON with zfprobe's
liveness estimate. Usage: MODEL LAYER forward|reverse N.

The peak is this process's VmHWM (/proc/self/status): ``getrusage``'s ru_maxrss survives exec on
Linux, so in a child of a large process (pytest) it starts at the parent's size."""
import json
import resource
import sys

import numpy as np

import zfprobe
from zfprobe.io.memory import forward_peak
from zfprobe.probe import reverse_peak


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main(model: str, layer: str, kind: str, n: int) -> None:
    probe = zfprobe.load(model)
    tensor = probe.resolve(layer)
    x = np.random.default_rng(0).standard_normal((n,) + tuple(probe.input_shape[1:])).astype(np.float32)
    shape = tuple(probe.graph.shape(tensor))[1:]

    def seeds(k):  # two units per row: the whole (not the windowed) reverse program
        s = np.zeros((k,) + shape, np.float32)
        s.reshape(k, -1)[:, 0] = 1.0
        s.reshape(k, -1)[:, -1] = 1.0
        return s

    if kind == "forward":
        probe.activations(x[:1], layer)
        before = peak_rss()
        probe.activations(x, layer)
        estimate = forward_peak(probe.graph, probe.forward_program([tensor]))
    else:
        probe.project(x[:1], layer, seeds(1), batch_size=1)
        before = peak_rss()
        probe.project(x[:1], layer, seeds(n), batch_size=n)
        estimate = reverse_peak(probe.graph, tensor)[1]
    print(json.dumps({"measured": (peak_rss() - before) / (n - 1), "estimate": estimate}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
