"""The one memory budget (zfprobe/io/memory.py): liveness peaks against a hand computation and
against onnxruntime's measured resident memory, batch sizes from the peak, and ``--memory`` /
``$ZFPROBE_MEMORY`` overriding the default."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zfprobe  # noqa: E402
from zfprobe.engine.graph import Graph, Node  # noqa: E402
from zfprobe.io import memory  # noqa: E402
from zfprobe.io.memory import forward_peak, liveness_peak, memory_budget, parse_memory, set_memory  # noqa: E402
from zfprobe.probe import reverse_peak  # noqa: E402

from study_data import CLI_MODEL  # noqa: E402


def small_graph() -> Graph:
    """x[100] -> a[200] -> b[50]; (a, b) -> c[300] -> d[10] (float32, batch 1)."""
    nodes = [Node("n1", "Relu", ["x"], ["a"]), Node("n2", "Relu", ["a"], ["b"]),
             Node("n3", "Add", ["a", "b"], ["c"]), Node("n4", "Relu", ["c"], ["d"])]
    shapes = {"x": (1, 100), "a": (1, 200), "b": (1, 50), "c": (1, 300), "d": (1, 10)}
    return Graph(nodes, ["x"], ["d"], {}, shapes, {t: np.dtype(np.float32) for t in shapes})


def test_forward_peak_equals_hand_computation():
    # by hand, in float32 values: n1 holds x + a = 300 (x dies); n2 holds a + b = 250; n3 holds
    # a + b + c = 550 (a, b die); n4 holds c + d = 310. Peak 550 values = 2200 bytes, where
    # the sum of all tensors would be 660 values.
    g = small_graph()
    assert forward_peak(g, g) == 2200
    # asking for a as well keeps it to the end: n4 then holds a + c + d = 510 < 550
    assert forward_peak(g, g, ["a", "d"]) == 2200
    assert liveness_peak([(["x"], ["y"])], {"x": 8, "y": 4}.get, inputs=["x"]) == 12


def test_reverse_peak_equals_hand_computation():
    # chain x[100] -> a[200] -> b[50], projecting from b. Per image: x + a + b = 350 values.
    # Reverse, per seed: n2 holds grad b (50) + grad a (200) + its saved copy max(a, b) = 200 ->
    # 450; n1 holds grad a (200) + grad x (100) + saved max(x, a) = 200 -> 500. Peak 500 values.
    shapes = {"x": (1, 100), "a": (1, 200), "b": (1, 50)}
    g = Graph([Node("n1", "Relu", ["x"], ["a"]), Node("n2", "Relu", ["a"], ["b"])], ["x"], ["b"], {}, shapes,
              {t: np.dtype(np.float32) for t in shapes})
    assert reverse_peak(g, "b") == (1400, 2000)


@pytest.mark.parametrize("layer, kind", [("relu3", "forward"), ("relu3", "reverse"), ("relu1", "reverse")])
def test_liveness_peak_within_a_factor_of_measured_onnxruntime_memory(layer, kind):
    """onnxruntime's peak resident growth per batch item on a first batch (a child process,
    getrusage) is within 0.5x-2x of the liveness estimate, and within RUNTIME_FACTOR of it
    from above (so a batch sized by the budget fits)."""
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rss_growth.py")
    out = subprocess.run([sys.executable, helper, str(CLI_MODEL), layer, kind, "513"], capture_output=True,
                         text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = got["measured"] / got["estimate"]
    assert 0.5 <= ratio <= memory.RUNTIME_FACTOR, got


def test_batch_sizes_follow_the_budget_and_its_overrides(monkeypatch):
    from zfprobe.studies.mining.compute import auto_batch_size

    monkeypatch.delenv(memory.ENV, raising=False)
    probe = zfprobe.load(CLI_MODEL)
    assert memory_budget() == memory.DEFAULT_MEMORY
    default = auto_batch_size(probe, ["relu3"]), probe.seed_batch_size(probe.resolve("relu1"), 4)
    monkeypatch.setenv(memory.ENV, "24M")
    assert memory_budget() == 24 * 1024**2
    small = auto_batch_size(probe, ["relu3"]), probe.seed_batch_size(probe.resolve("relu1"), 4)
    set_memory("4G")  # --memory wins over the environment
    try:
        assert memory_budget() == 4 * 1024**3
    finally:
        set_memory(None)
    assert small[0] < default[0] and small[1] < default[1]
    # 24 MiB: the projection share is 12 MiB, of which 1 / RUNTIME_FACTOR for the liveness
    # estimate: 4 images' forward tensors, then as many seeds' reverse peaks as fit
    per_image, per_seed = reverse_peak(probe.graph, probe.resolve("relu1"))
    assert small[1] == min(256, int((12 * 1024**2 / memory.RUNTIME_FACTOR - 4 * per_image) // per_seed))


def test_parse_memory():
    assert parse_memory("2G") == parse_memory("2GiB") == 2 * 1024**3
    assert parse_memory("512m") == 512 * 1024**2
    assert parse_memory("1.5G") == int(1.5 * 1024**3)
    for bad in ("3x", "", "G", "1M"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_efficientnet_lite0_mines_in_batches_not_one():
    """The sum of all intermediates of EfficientNet-Lite0 gave batch 1; its liveness peak is
    about 9 MB an image (hand-checkable: the largest two adjacent maps, 96x112x112 and
    96x56x56 and their neighbours), so the default budget holds batches of several images."""
    import efficientnet_lite0 as eff
    from zfprobe.studies.mining.compute import auto_batch_size

    probe = zfprobe.load(str(eff.onnx_path()))
    layers = ["/_blocks.4/Add", "/_blocks.14/Add", "/ReduceMean"]
    per_image = forward_peak(probe.graph, probe.forward_program([probe.resolve(l) for l in layers]))
    assert 4 * 96 * 112 * 112 <= per_image <= 4 * 4 * 96 * 112 * 112
    assert auto_batch_size(probe, layers) >= 8


def test_bad_memory_option_is_one_clear_line(tmp_path):
    from test_cli import assert_clean_error, run_cli

    r = run_cli("layers", CLI_MODEL, "--memory", "lots")
    assert_clean_error(r, "--memory", "write e.g. 2G")
