"""PyTorch front-end: a live ``nn.Module`` becomes zfprobe's graph, run by the torch backend.

How (see docs/torch.md):

1. **Trace** the module with torch's TorchScript ONNX exporter (``dynamo=False``, opset 17,
   in memory), on an example input of batch 1, in inference mode (every submodule's
   ``training`` flag is set to False for the trace and restored after, exactly). Tracing
   records the *tensor operations* the forward really executes, however they are written:
   ``nn.ReLU`` modules, ``F.relu``, ``torch.relu``, ``x.relu_()``, ``F.relu(x, inplace=True)``,
   ``nn.ReLU6`` / ``nn.Hardtanh`` (exported as ``Clip``), modules called several times,
   residual ``+``, ``torch.cat``, ``flatten`` / ``view`` / ``reshape``, adaptive and global
   pooling, ``F.max_pool2d``, grouped and depthwise convs, eval-mode BatchNorm. Nothing is
   hooked, patched or monkey-patched, so there is no rectifier "form" to miss.
   BatchNorm is exported as an inference ``BatchNormalization`` node (``TrainingMode.PRESERVE``
   with eval flags, and no constant folding), so nothing is fused into the conv weights and every
   parameter keeps its own name.
2. **Import** that ONNX model with zfprobe's ONNX front-end (:func:`import_onnx`), so the graph
   is exactly the one ``zfprobe.load`` builds for the same export: every analysis works on it
   unchanged.
3. **Bind** it to the module: each constant that *is* a parameter or buffer of the module
   (same name, same shape) gets ``graph.parameter_refs[name] = "dotted.path"``, which the torch
   backend (:mod:`zfprobe.adapters.backends.torch_backend`) reads live at every run; a constant the forward
   computes from parameters (``self.weight * self.gain``) gets a :class:`DerivedConstant`, which
   the backend recomputes from the live parameters at every run. Nodes are renamed
   after the module they come from (``conv5``, ``layer1.0.bn1``, ``layer1.0.Relu_1`` for a
   functional op inside ``layer1.0``), and every module path is an alias of its output.

What it cannot follow stops here, before any computation, with the module path and the op:
an op with no ONNX form (e.g. ``aten::i0``), or Python control flow on tensor values (the trace
would hold only the branch the example took). Ops that exist but have no exact reversal are
reported by the deconvnet builder with the same module path (``node.source``).
"""
from __future__ import annotations

import inspect
import io
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from zfprobe.adapters.frontends.torch_fx import CaptureError, capture_graph, inference_flags  # noqa: F401
from zfprobe.errors import ModelLoadError, ZfprobeError
from zfprobe.engine.graph import Graph
from zfprobe.probe import Probe

OPSET = 17
INPUT_NAME = "input"


class TorchTraceError(ZfprobeError):
    """The module does something the torch front-end cannot turn into a static graph."""


# ------------------------------------------------------------------ module state ------------
def _example_tensor(model, example, device):
    import torch

    if example is None:
        raise ZfprobeError("zfprobe.attach(model, example) needs an example input (a tensor or array "
                           "[1, C, H, W]) or its shape, e.g. (3, 224, 224)")
    if isinstance(example, torch.Tensor):
        x = example.detach()
    elif isinstance(example, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(example))
    elif isinstance(example, (tuple, list, torch.Size)) and all(isinstance(s, (int, np.integer)) for s in example):
        shape = tuple(int(s) for s in example)
        if len(shape) == 3:
            shape = (1,) + shape
        x = torch.zeros(shape)
    else:
        raise ZfprobeError(f"the example must be a tensor, an array or a shape, not {type(example).__name__}")
    if x.dim() < 2:
        raise ZfprobeError(f"the example input has shape {tuple(x.shape)}; give a batch [1, C, H, W] or a shape (C, H, W)")
    if x.shape[0] != 1:
        x = x[:1]
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    return x.to(device).contiguous()


# ------------------------------------------------------------------ tracing -----------------
def _export(model, x, operator_export_type=None) -> tuple[bytes, list]:
    import torch

    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if operator_export_type is not None:
        kwargs["operator_export_type"] = operator_export_type
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), inference_flags(model):
            torch.onnx.export(
                model, (x,), buf, dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=["output"],
                dynamic_axes={INPUT_NAME: {0: "batch"}},
                do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
                export_params=False,  # parameters stay graph inputs named by their paths (see _with_weights)
                **kwargs,
            )
    return buf.getvalue(), list(caught)


def _module_of_line(model, filename: str, lineno: int) -> str:
    """The module path whose ``forward`` contains ``filename:lineno`` ('' for none)."""
    for path, m in model.named_modules():
        fwd = getattr(type(m), "forward", None)
        try:
            src = inspect.getsourcefile(fwd)
            lines, start = inspect.getsourcelines(fwd)
        except (TypeError, OSError):
            continue
        if src and os.path.abspath(src) == os.path.abspath(filename) and start <= lineno < start + len(lines):
            return path or "(the model itself)"
    return ""


def _torch_dir() -> str:
    import torch

    return os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _control_flow_error(model, caught: list) -> TorchTraceError | None:
    torch_dir = _torch_dir()
    for w in caught:
        message = str(w.message)
        if os.path.abspath(w.filename).startswith(torch_dir):  # torch's own guards (numel() == 0, ...)
            continue
        if w.category.__name__ == "TracerWarning" and "Python boolean" in message:
            where = _module_of_line(model, w.filename, w.lineno)
            mod = f"module '{where}'" if where else "the model"
            return TorchTraceError(
                f"{mod} branches on tensor values at {w.filename}:{w.lineno} (Python control flow on a "
                "tensor, op 'bool(tensor)'): zfprobe's traced graph would hold only the branch this example took. "
                "Rewrite it with torch.where, or pass strict=False to accept the traced branch")
    return None


def _unsupported_op_error(model, x, exc: Exception) -> TorchTraceError:
    """Re-trace letting unknown ops through, to name the module path of each one."""
    import onnx
    import torch

    found = []
    try:
        data, _ = _export(model, x, torch.onnx.OperatorExportTypes.ONNX_FALLTHROUGH)
        proto = onnx.load_from_string(data)
        module_paths = {name for name, _ in model.named_modules() if name}
        for node in proto.graph.node:
            if node.domain not in ("", "ai.onnx"):
                path, op = scope_of(node.name, module_paths)
                found.append(f"module '{path or '(top level)'}' op '{node.domain}::{node.op_type}'")
    except Exception:  # the diagnosis itself failed: report the exporter's own message
        pass
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = "; ".join(found) if found else "location unknown"
    return TorchTraceError(f"zfprobe cannot follow this model: {first} ({where}). Replace that operation "
                           "(or wrap it in a module with an ONNX symbolic), or probe a model without it")


def trace_to_onnx(model, x, strict: bool = True) -> bytes:
    """The module traced to an in-memory ONNX model (bytes); raises :class:`TorchTraceError`."""
    try:
        data, caught = _export(model, x)
    except ZfprobeError:
        raise
    except Exception as exc:
        if type(exc).__name__ in ("UnsupportedOperatorError", "SymbolicValueError") or "not supported" in str(exc):
            raise _unsupported_op_error(model, x, exc) from None
        raise TorchTraceError(f"torch could not trace this model on an input of shape {tuple(x.shape)}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if strict:
        err = _control_flow_error(model, caught)
        if err is not None:
            raise err
    return data


def _named_tensors(model) -> dict:
    named = {}
    for name, t in model.named_parameters(remove_duplicate=False):
        named.setdefault(name, t)
    for name, t in model.named_buffers(remove_duplicate=False):
        named.setdefault(name, t)
    return named


def _with_weights(data: bytes, model):
    """The traced proto with each parameter / buffer input turned into an initializer of the same
    name (a snapshot, for the importer's shapes; the torch backend reads the live tensor).

    Tracing with ``export_params=False`` halves the export time of large models and avoids the
    exporter's de-duplication of equal initializers (which turns e.g. a fresh BatchNorm's
    ``running_var`` into an ``Identity`` of its ``weight``)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    named = _named_tensors(model)
    keep = []
    for vi in proto.graph.input:
        t = named.get(vi.name)
        if vi.name == INPUT_NAME or t is None:
            keep.append(vi)
            continue
        t = t.detach()
        if t.is_floating_point():
            t = t.float()
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(t.cpu().numpy()), vi.name))
    unknown = [vi.name for vi in keep if vi.name != INPUT_NAME]
    if unknown:
        raise TorchTraceError(f"the traced model reads tensors that are neither its input nor a parameter or "
                              f"buffer: {', '.join(unknown[:5])}; zfprobe probes models with one image input")
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    proto.ir_version = min(proto.ir_version, 8)
    return proto


# ------------------------------------------------------------------ naming ------------------
def scope_of(onnx_node_name: str, module_paths: set[str]) -> tuple[str, str]:
    """``"/layer1/layer1.0/conv1/Conv"`` -> (``"layer1.0.conv1"``, ``"Conv"``).

    The exporter names nodes by module scope; a module called a second time gets a suffixed
    scope (``relu_1``), kept as is (then the path names that call, not a module)."""
    parts = onnx_node_name.strip("/").split("/")
    scope, op = parts[:-1], parts[-1]
    path = ""
    for seg in scope:
        path = _join_scope(path, seg, module_paths)
    return path, op


def _join_scope(path: str, seg: str, module_paths: set[str]) -> str:
    """One scope segment onto a module path. Segments come as full paths (``layer1.0``), as
    attribute names (``conv1``), or relative to the enclosing container (``expand.0`` under
    ``blocks.0.expand``)."""
    if seg in module_paths and (not path or seg.startswith(path + ".")):
        return seg
    if not path:
        return seg
    if f"{path}.{seg}" in module_paths:
        return f"{path}.{seg}"
    parts = seg.split(".")
    for i in range(len(parts) - 1, 0, -1):  # overlap: path ends with the segment's head
        head, tail = ".".join(parts[:i]), ".".join(parts[i:])
        if (path == head or path.endswith("." + head)) and f"{path}.{tail}" in module_paths:
            return f"{path}.{tail}"
    return f"{path}.{seg}"


def name_nodes(graph: Graph, module_paths: set[str], leaf_paths: set[str]) -> dict[str, str]:
    """Rename nodes after their modules; returns aliases (module path -> its output tensor).

    A node is named by its module path when it is the last node of a leaf module's scope
    (``conv5``), else ``<path>.<Op>`` (``layer1.0.Relu_1``; top level: ``Relu_1``). The ONNX node
    name stays in ``node.source`` (so the ONNX path's names work as aliases too)."""
    last_in_scope: dict[str, int] = {}
    scopes = []
    for i, node in enumerate(graph.nodes):
        if not node.source.startswith("/"):
            scopes.append(("", node.name))
            continue
        path, op = scope_of(node.source, module_paths)
        scopes.append((path, op))
        if path:
            segs = path.split(".")
            for k in range(1, len(segs) + 1):
                last_in_scope[".".join(segs[:k])] = i
    taken: set[str] = set()
    aliases: dict[str, str] = {}
    for i, (node, (path, op)) in enumerate(zip(graph.nodes, scopes)):
        if path and path in leaf_paths and last_in_scope.get(path) == i:
            name = path
        elif path:
            name = f"{path}.{op}"
        else:
            name = op
        base, k = name, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        node.name = name
        out = next((o for o in node.outputs if o), None)
        if out is not None and path:
            aliases[f"{path}.{op}"] = out
    for p, i in last_in_scope.items():
        out = next((o for o in graph.nodes[i].outputs if o), None)
        if out is not None:
            aliases.setdefault(p, out)
    graph.reindex()
    return aliases


class DerivedConstant:
    """A ``parameter_refs`` handle for a constant the forward *computes* from parameters (e.g.
    ``self.weight * self.gain`` or ``self.w.t()``), which the importer folded into a value: the
    folded ONNX nodes (raw ONNX forms), the parameters they read (graph name -> module path) and
    the constant they produce. The torch backend re-runs them on the live parameters each run."""

    def __init__(self, output: str, nodes: list, params: dict[str, str]):
        self.output, self.nodes, self.params = output, nodes, params

    def __repr__(self) -> str:
        ops = ", ".join(n.op_type for n in self.nodes)
        return f"DerivedConstant({self.output!r} <- [{ops}] <- {sorted(self.params.values())})"


def derived_constants(proto, graph: Graph, param_names: set[str]) -> dict[str, DerivedConstant]:
    """Handles for the graph constants that the importer folded from parameters (see above)."""
    from zfprobe.adapters.frontends.onnx_import import NONDETERMINISTIC_OPS, SHAPE_OPS, attrs_of
    from zfprobe.engine.graph import Node

    consts = {i.name for i in proto.graph.initializer}
    folded, producer = [], {}
    for idx, node in enumerate(proto.graph.node):
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or node.op_type in SHAPE_OPS or (
                node.op_type not in NONDETERMINISTIC_OPS and all(i in consts for i in ins)):
            consts.update(o for o in node.output if o)
            folded.append(node)
            for o in node.output:
                producer[o] = (idx, node)
    from_params = set(param_names)
    for node in folded:
        if any(i in from_params for i in node.input):
            from_params.update(o for o in node.output if o)
    handles = {}
    for target in graph.constants:
        if target in param_names or target not in from_params:
            continue
        needed: dict[int, object] = {}
        stack, ok = [target], True
        while stack:
            t = stack.pop()
            if t in producer:
                if producer[t][0] not in needed:
                    idx, node = producer[t]
                    needed[idx] = node
                    stack.extend(i for i in node.input if i)
            elif t not in param_names:  # reads an activation (e.g. a Shape of it): keep the snapshot
                ok = False
                break
        if not ok:
            continue
        nodes = [Node(n.name or f"derived_{i}", n.op_type, list(n.input), list(n.output), attrs_of(n), n.name)
                 for i, n in sorted(needed.items())]
        params = {i: i for n in nodes for i in n.inputs if i in param_names}
        handles[target] = DerivedConstant(target, nodes, params)
    return handles


def bind_parameters(graph: Graph, model) -> dict[str, str]:
    """``parameter_refs``: each graph constant that is a parameter or buffer of ``model``."""
    refs = {}
    named = _named_tensors(model)
    for const, value in graph.constants.items():
        t = named.get(const)
        if t is not None and tuple(t.shape) == tuple(np.shape(value)):
            refs[const] = const
    return refs


# ------------------------------------------------------------------ entry point -------------
CAPTURES = ("auto", "fx", "onnx")


class CaptureFallbackWarning(UserWarning):
    """Native (torch.fx) capture failed; the module was captured through the ONNX route."""


def torch_to_graph(model, example, strict: bool = True, capture: str = "auto") -> Graph:
    """The zfprobe graph of a live ``nn.Module``.

    ``capture``: ``"auto"`` (default) builds it natively from torch.fx
    (:mod:`zfprobe.adapters.frontends.torch_fx`) and falls back to the ONNX route (see the module
    docstring) only where that fails, saying so in one warning line; ``"fx"`` refuses instead
    of falling back; ``"onnx"`` takes the ONNX route directly."""
    import torch.nn as nn

    from zfprobe.adapters.backends.torch_backend import module_device

    if not isinstance(model, nn.Module):
        raise ZfprobeError(f"expected a torch nn.Module, got {type(model).__name__}")
    if capture not in CAPTURES:
        raise ZfprobeError(f"capture must be one of {', '.join(CAPTURES)}, not {capture!r}")
    x = _example_tensor(model, example, module_device(model))
    if capture != "onnx":
        try:
            graph = capture_graph(model, x)
        except CaptureError as exc:
            if capture == "fx":
                raise
            warnings.warn(f"zfprobe: native torch capture failed ({exc}); using the slower ONNX route",
                          CaptureFallbackWarning, stacklevel=3)
        else:
            graph.metadata = dict(graph.metadata, module=type(model).__qualname__)
            return graph
    return _onnx_route(model, x, strict)


def _onnx_route(model, x, strict: bool) -> Graph:
    from zfprobe.adapters.frontends.onnx_import import import_onnx
    import onnx

    proto = _with_weights(trace_to_onnx(model, x, strict=strict), model)
    with tempfile.TemporaryDirectory(prefix="zfprobe_torch_") as tmp:
        path = os.path.join(tmp, f"{type(model).__name__}.onnx")
        onnx.save(proto, path)
        try:
            graph = import_onnx(path, tuple(x.shape))
        except ModelLoadError as exc:
            raise TorchTraceError(f"the traced model could not be read back: {exc}") from None
    module_paths = {name for name, _ in model.named_modules() if name}
    leaf_paths = {name for name, m in model.named_modules() if name and not any(True for _ in m.children())}
    aliases = name_nodes(graph, module_paths, leaf_paths)
    graph.parameter_refs = bind_parameters(graph, model)
    graph.parameter_refs.update(derived_constants(proto, graph, set(_named_tensors(model))))
    graph.name = type(model).__name__
    graph.metadata = dict(graph.metadata, format="torch", module=type(model).__qualname__, aliases=aliases,
                          frontend="torch.onnx.export(dynamo=False, opset 17) + zfprobe ONNX importer")
    return graph


def attach(model, example=None, device=None, strict: bool = True, preprocessing=None, capture: str = "auto",
           **options) -> Probe:
    """A :class:`~zfprobe.probe.Probe` on a live torch module, run by the torch backend.

    ``example``: an input tensor / array ``[1, C, H, W]`` or its shape ``(C, H, W)``.
    ``device``: where the deconvnet runs (default: the module's own device).
    ``strict``: refuse modules whose forward branches on tensor values (default True; torch.fx
    cannot trace such a branch, so the ONNX route, which checks it, takes over).
    ``capture``: ``"auto"``, ``"fx"`` or ``"onnx"`` (see :func:`torch_to_graph`).
    ``preprocessing``: a :class:`~zfprobe.io.preprocess.Preprocessing` for image files (default:
    from the input shape, pixels scaled to [0, 1]).
    """
    from zfprobe.adapters.backends.torch_backend import TorchBackend
    from zfprobe.io.preprocess import default_preprocessing

    if options:
        raise TypeError(f"unknown option(s) for a torch model: {', '.join(sorted(options))}")
    graph = torch_to_graph(model, example, strict=strict, capture=capture)
    shape = graph.shape(graph.inputs[0])
    prep = preprocessing
    if prep is None and len(shape) == 4:
        prep = default_preprocessing(shape)
    return Probe(graph, TorchBackend(model, device), source=f"torch:{type(model).__qualname__}", preprocessing=prep)
