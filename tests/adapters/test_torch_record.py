"""Capture by recording one forward (adapters/frontends/torch_record.py).

The recorded graph must be the graph torch.fx's symbolic trace gives (same canonical nodes, names,
attributes and constants: the converters are shared, so any difference is the recording's); what a
recording cannot see exactly (Python reading an activation's values, a tensor no watched call
made) must be refused, and then the fx trace takes over; the global module hooks must be gone
afterwards, also after a failure. Exactness against the autograd oracle is tests/adapters/test_zoo.py's
(every corpus net goes through this route there)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.modules.module as module_hooks

import zoo_nets
from zfprobe.adapters.frontends import torch_fx
from zfprobe.adapters.frontends.torch_record import RecordError, record


def _symbolic(model, x):
    torch_fx._ensure_table()
    with torch_fx.inference_flags(model):
        root, graph = torch_fx._trace(model)
        active, values, kept, out = torch_fx._run_once(root, graph, x)
    return torch_fx._convert(model, x, root, graph, active, values, kept, out, how=torch_fx.TRACED)


def _recorded(model, x):
    torch_fx._ensure_table()
    with torch_fx.inference_flags(model):
        rec = _record(model, x)
    return torch_fx._convert(model, x, *rec, how=torch_fx.RECORDED)


def _record(model, x):
    torch_fx._ensure_table()
    return record(model, x, torch_fx.CONVERTERS, torch_fx._trusted_types())


def _hooks():
    return len(module_hooks._global_forward_pre_hooks), len(module_hooks._global_forward_hooks)


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "mobilenet_v3_small", "shufflenet_v2_x0_5",
                                  "efficientnet_b0", "repvgg_a0", "convnext_tiny"])
def test_recorded_graph_is_the_symbolic_trace_graph(name):
    model, x = zoo_nets.build(name), zoo_nets.example(name)
    got, want = _recorded(model, x), _symbolic(model, x)
    assert got.metadata["frontend"] == torch_fx.RECORDED and want.metadata["frontend"] == torch_fx.TRACED
    assert [(n.op_type, n.name, n.attrs) for n in got.nodes] == [(n.op_type, n.name, n.attrs) for n in want.nodes]
    assert got.outputs == want.outputs and got.metadata["aliases"] == want.metadata["aliases"]
    assert sorted(got.constants) == sorted(want.constants)
    for k, v in want.constants.items():
        np.testing.assert_array_equal(got.constants[k], v, err_msg=k)
    assert {k: repr(v) for k, v in got.parameter_refs.items()} == {k: repr(v) for k, v in want.parameter_refs.items()}
    assert got.shapes == want.shapes


class _Conv(nn.Module):
    """A conv, then what each subclass's forward does with its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)


class _Branchy(_Conv):
    """Python reads the activation's values: the recording would bake this example's branch in."""

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y) if y.mean() > 0 else -y


class _Item(_Conv):
    def forward(self, x):
        y = self.conv(x)
        return y * float(y.max().item())


class _Write(_Conv):
    """An in-place write into an activation that returns nothing."""

    def forward(self, x):
        y = self.conv(x)
        y[:, 0] = 0.0
        return y


@pytest.mark.parametrize("module, why", [(_Branchy, "__bool__"), (_Item, "item"), (_Write, "__setitem__")])
def test_recording_refuses_python_that_reads_activation_values(module, why):
    torch.manual_seed(0)
    model, x = module().eval(), torch.rand(1, 3, 12, 12)
    before = _hooks()
    with pytest.raises(RecordError, match=why):
        with torch_fx.inference_flags(model):
            _record(model, x)
    assert _hooks() == before
    with pytest.raises(torch_fx.CaptureError):  # nor can fx trace them: the caller takes the ONNX route
        torch_fx.capture_graph(model, x)


class _ListHeld(_Conv):
    """A constant tensor held where a recording cannot tell it from a value made elsewhere."""

    def __init__(self):
        super().__init__()
        self.held = [torch.linspace(0.5, 2.0, 4).reshape(1, 4, 1, 1)]

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.held[0]


def test_an_unknown_tensor_is_refused_and_the_fx_trace_takes_over():
    torch.manual_seed(0)
    model, x = _ListHeld().eval(), torch.rand(1, 3, 12, 12)
    with pytest.raises(RecordError, match="no watched torch call made"):
        with torch_fx.inference_flags(model):
            _record(model, x)
    graph = torch_fx.capture_graph(model, x)
    assert graph.metadata["frontend"] == torch_fx.TRACED


class _Attribute(_Conv):
    """A plain tensor attribute (neither parameter nor buffer) and a reflected operator."""

    def __init__(self):
        super().__init__()
        self.scale = torch.linspace(0.5, 2.0, 4).reshape(1, 4, 1, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return 1.0 - y * self.scale


def test_tensor_attributes_and_reflected_operators_are_recorded():
    from zfprobe.adapters.backends.torch_backend import TorchBackend

    torch.manual_seed(0)
    model, x = _Attribute().eval(), torch.rand(1, 3, 12, 12)
    graph = torch_fx.capture_graph(model, x)
    assert graph.metadata["frontend"] == torch_fx.RECORDED
    assert [n.op_type for n in graph.nodes][-2:] == ["Mul", "Sub"]
    x2 = torch.rand(1, 3, 12, 12)  # another input: nothing of the example is baked in
    got = TorchBackend(model).run(graph, {graph.inputs[0]: x2.numpy()})[0]
    with torch.no_grad():
        want = model(x2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


class _KeywordCall(_Conv):
    def forward(self, x):
        return self.conv(input=x)


def test_a_converter_that_meets_unexpected_arguments_is_a_capture_error_not_a_crash():
    torch.manual_seed(0)
    model, x = _KeywordCall().eval(), torch.rand(1, 3, 12, 12)
    before = _hooks()
    with pytest.raises(torch_fx.CaptureError, match="Conv2d"):
        torch_fx.capture_graph(model, x)
    assert _hooks() == before


def test_hooks_are_removed_after_a_recording_that_fails_inside_the_forward():
    class Fails(_Conv):
        def forward(self, x):
            raise ValueError("boom")

    before = _hooks()
    with pytest.raises(ValueError, match="boom"):
        _record(Fails().eval(), torch.rand(1, 3, 12, 12))
    assert _hooks() == before


def test_modules_run_by_another_thread_during_a_recording_are_not_recorded():
    """The module hooks are process-wide; a module another thread runs meanwhile is not the model's."""
    import threading

    started, finished = threading.Event(), threading.Event()
    other = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()).eval()

    class Waits(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 4, 3), nn.ReLU()

        def forward(self, x):
            y = self.conv(x)
            started.set()
            assert finished.wait(30)  # the other thread's module runs while this forward is recorded
            return self.relu(y)

    def run_other():
        assert started.wait(30)
        with torch.no_grad():
            other(torch.rand(1, 3, 4, 4))
        finished.set()

    torch.manual_seed(0)
    thread = threading.Thread(target=run_other)
    thread.start()
    graph = torch_fx.capture_graph(Waits().eval(), torch.rand(1, 3, 12, 12))
    thread.join(30)
    assert graph.metadata["frontend"] == torch_fx.RECORDED
    assert [n.name for n in graph.nodes] == ["conv", "relu"]
