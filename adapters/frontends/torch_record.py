"""Capture by recording: the module's own forward pass, watched, gives the graph and its values.

Why: torch.fx's symbolic trace re-runs the module's Python once with proxies (~45 us per traced
call), and a second pass then runs the traced graph for shapes and values. On the model-zoo nets
at 64 px those two passes cost 4-12x the module's own forward, most of it on calls that are not
arithmetic (timm's norm layers trace into shape checks and ``torch._assert``). Here the module
runs once, for real, under a :class:`torch.overrides.TorchFunctionMode` that sees every torch
function and tensor method it calls, with global module hooks that keep each module whose type
has a converter (``nn.Conv2d``, ``nn.ReLU``, ...) as one call, as the fx tracer's leaf rule does.

The result is the same thing the fx route builds (:func:`record` returns what ``_trace`` +
``_run_once`` of :mod:`zfprobe.adapters.frontends.torch_fx` return): an ``fx.Graph`` in execution
order whose nodes are ``call_module`` / ``call_function`` / ``call_method`` / ``get_attr`` calls,
the static shape of every tensor, the value of everything not computed from the input, and the
trusted modules' inputs and outputs for the check. So the converters, the naming and the check are
shared, and a recorded graph is held to the same standard.

What a recording cannot see is refused, never guessed (:class:`RecordError`; the caller then
tries the fx trace):

- Python that reads an activation's values (``if x.sum() > 0``, ``x.item()``): the branch taken
  for this example would be baked in. Reading its shape is fine: shapes are static here.
- A tensor that no watched call produced and that is neither a parameter, a buffer nor a tensor
  attribute of a module (e.g. computed by a C extension): it might depend on the input.
- A call that writes into an activation and returns nothing (``x[:, 0] = y``).
"""
from __future__ import annotations

import itertools
import operator
import threading
import weakref
from typing import Any

from zfprobe.errors import ZfprobeError


class RecordError(ZfprobeError):
    """The forward pass did something a recording cannot capture exactly (see the module docstring)."""


# Tensor methods that read only an activation's metadata (its static shape, dtype, layout):
# their results are the same for every input of this shape.
_METADATA = frozenset({
    "size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "element_size",
    "__len__", "is_floating_point", "is_complex", "get_device", "storage_offset", "has_names",
    "__format__", "__repr__", "__hash__", "data_ptr", "is_signed", "__get__",
})

# Reflected operators: the watched call is ``self.__rsub__(other)``, the op is ``other - self``.
_REFLECTED = {"__radd__": operator.add, "__rmul__": operator.mul, "__rsub__": operator.sub,
              "__rdiv__": operator.truediv, "__rtruediv__": operator.truediv, "__rmatmul__": operator.matmul}
_DUNDER = {"__getitem__": operator.getitem}


class _Constant:
    """The target of a node holding a tensor the forward read from a plain module attribute."""

    def __init__(self, value):
        self.value = value
        self.__name__ = "constant"

    def __call__(self):
        return self.value


def record(model, x, leaves, trusted: tuple):
    """``(root, graph, active, values, kept, output)`` from one forward of ``model`` on ``x``
    (see :func:`zfprobe.adapters.frontends.torch_fx._run_once` for what each is). ``leaves``: the
    module types recorded as one call (those with a converter); ``trusted``: the module types whose
    calls' inputs and outputs are kept for the check."""
    import torch
    import torch.fx as fx
    import torch.nn.modules.module as module_hooks
    from torch.overrides import TorchFunctionMode

    graph = fx.Graph()
    paths = first_paths(model.named_modules())
    named = first_paths(itertools.chain(model.named_parameters(), model.named_buffers()))
    attributes: list[set[int]] = []  # ids of the modules' plain tensor attributes, collected when first needed

    tensors: dict[int, tuple] = {}  # id(tensor) -> (weak reference, the node that made it last)
    attr_nodes: dict[str, Any] = {}
    active: set = set()
    values: dict = {}
    kept: dict = {}
    watchers: dict[int, list] = {}  # id(tensor) -> the kept entries holding it: (node, slot)
    scope: list[str] = []
    frames: list[bool] = []  # per running module: is it a converted (leaf) call
    inside_leaf = [0]

    def remember(t, node) -> None:
        tensors[id(t)] = (weakref.ref(t), node)

    def node_of(t):
        entry = tensors.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        path = named.get(id(t))
        if path is not None:
            node = attr_nodes.get(path)
            if node is None:
                node = attr_nodes[path] = graph.create_node("get_attr", path, name=path)
                values[node] = t
            return node
        if not attributes:
            attributes.append({id(v) for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)})
        if id(t) in attributes[0]:
            node = graph.create_node("call_function", _Constant(t), (), {}, name="constant")
            values[node] = t
            remember(t, node)
            return node
        raise RecordError("the forward uses a tensor that no watched torch call made (a C extension, or a "
                          "value kept from an earlier call?)")

    def as_args(v):
        return fx.node.map_aggregate(v, lambda a: node_of(a) if isinstance(a, torch.Tensor) else a)

    def add(op: str, target, args: tuple, kwargs: dict, result, label: str = "op"):
        # a name given: fx's own (target -> snake case) costs ~10 us a node
        node = graph.create_node(op, target, args, kwargs, name=target if op == "call_module" else label)
        if scope:
            node.meta["nn_module_stack"] = {scope[-1]: scope[-1]}
        is_active = any(a in active for a in node.all_input_nodes)
        if is_active:
            active.add(node)
        pieces = note_result(node, result)
        if isinstance(result, torch.Tensor):
            remember(result, node)
        elif pieces:
            for i, r in enumerate(result):  # as fx does: one getitem node per piece
                piece = graph.create_node("call_function", operator.getitem, (node, i), {}, name="getitem")
                note_result(piece, r)
                piece.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
                if is_active:
                    active.add(piece)
                else:
                    values[piece] = r
                remember(r, piece)
        if not is_active or not holds_tensor(result):
            values[node] = result
        return node

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if watchers and args and _writes_in_place(name, args, kwargs):
                protect(args[0])
            result = func(*args, **kwargs)
            if inside_leaf[0]:
                return result
            if not holds_tensor(result):
                if name not in _METADATA and any(_is_active(a) for a in _flat_tensors((args, kwargs))):
                    raise RecordError(f"the forward calls {name or func} on an activation and uses a Python "
                                      f"value from it (data-dependent control flow or an in-place write)")
                return result
            if name == "__get__":  # a tensor-valued property (x.T, x.data, ...)
                add("call_function", getattr, (as_args(args[0]), func.__self__.__name__), {}, result, "getattr")
            elif name in _REFLECTED:
                target = _REFLECTED[name]
                add("call_function", target, (as_args(args[1]), as_args(args[0])), as_args(kwargs), result,
                    target.__name__)
            elif name in _DUNDER:
                add("call_function", _DUNDER[name], as_args(tuple(args)), as_args(kwargs), result, "getitem")
            elif _is_tensor_method(func, name):
                add("call_method", name, as_args(tuple(args)), as_args(kwargs), result, name)
            else:
                add("call_function", func, as_args(tuple(args)), as_args(kwargs), result, name or "op")
            return result

    def _is_active(t) -> bool:
        entry = tensors.get(id(t))
        return entry is not None and entry[0]() is t and entry[1] in active

    def protect(t) -> None:
        """Before ``t`` is written in place: the kept entries holding it get a copy."""
        slots = watchers.pop(id(t), None) if isinstance(t, torch.Tensor) else None
        if slots:
            copy = t.clone()
            for node, slot in slots:
                entry = kept[node]
                if entry[slot] is t:
                    entry[slot], entry[slot + 2] = copy, copy._version

    quiet = torch._C.DisableTorchFunction  # the hooks' own tensor reads (shape, version, copies) unwatched

    owner = threading.get_ident()  # the hooks are global; the mode is per thread: other threads' modules pass

    def before(module, args):
        if threading.get_ident() != owner:
            return None
        if watchers and args and getattr(module, "inplace", False) is True:
            with quiet():
                protect(args[0])
        leaf = not inside_leaf[0] and type(module) in leaves
        frames.append(leaf)
        if leaf:
            inside_leaf[0] = 1
        elif not inside_leaf[0]:
            scope.append(paths.get(id(module), ""))

    def after(module, args, kwargs, output):
        if threading.get_ident() != owner:
            return None
        leaf = frames.pop()
        if not leaf:
            if not inside_leaf[0]:
                scope.pop()
            return None
        path = paths.get(id(module))
        if path is None:
            raise RecordError(f"the forward calls a {type(module).__name__} that is not a submodule of the model")
        inside_leaf[0] = 0
        inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
        with quiet():  # the bookkeeping's own tensor calls are not the model's
            node = add("call_module", path, as_args(tuple(args)), as_args(dict(kwargs or {})), output)
            if node in active and isinstance(module, trusted) and isinstance(output, torch.Tensor) and inp is not None:
                # no copies now: one is made only before a call writes the tensor in place (protect)
                kept[node] = [inp, output, inp._version, output._version]
                for slot, t in ((0, inp), (1, output)):
                    watchers.setdefault(id(t), []).append((node, slot))
        return None

    placeholder = graph.placeholder("x")
    placeholder.meta["zf_shapes"] = tuple(x.shape)
    placeholder.meta["zf_dtype"] = x.dtype
    active.add(placeholder)
    remember(x, placeholder)

    handles = [module_hooks.register_module_forward_pre_hook(before),
               module_hooks.register_module_forward_hook(after, with_kwargs=True)]
    try:
        with torch.no_grad(), Watch():
            out = model(x)
        graph.output(as_args(out))
    finally:
        for h in handles:
            h.remove()
    # the check feeds a trusted call's output and compares its input (torch_fx._verify); one that a
    # write protect() did not foresee changed since (its version moved) is recomputed there instead
    kept = {n: (i, o) for n, (i, o, vi, vo) in kept.items() if i._version == vi and o._version == vo}
    return model, graph, active, values, kept, out


def _flat_tensors(v) -> list:
    import torch

    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (tuple, list)):
        return [t for a in v for t in _flat_tensors(a)]
    if isinstance(v, dict):
        return [t for a in v.values() for t in _flat_tensors(a)]
    return []


_IN_PLACE_OPERATORS = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__setitem__"})


def _writes_in_place(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a call may write its first argument (``x.relu_()``, ``x += y``, ``F.relu(x, True)``,
    ``inplace=True``); a false alarm costs one copy."""
    return ((name.endswith("_") and not name.endswith("__")) or name in _IN_PLACE_OPERATORS
            or kwargs.get("inplace") is True or any(a is True for a in args[1:]))


def _is_tensor_method(func, name: str) -> bool:
    import torch

    return bool(name) and (getattr(torch.Tensor, name, None) is func or getattr(torch._C.TensorBase, name, None) is func)


def first_paths(named) -> dict[int, str]:
    """``id(object) -> its first path`` from ``(path, object)`` pairs (``named_parameters()``, ...):
    the name torch's own ``remove_duplicate`` listing gives a shared object."""
    paths: dict[int, str] = {}
    for path, obj in named:
        paths.setdefault(id(obj), path)
    return paths


def note_result(node, result) -> bool:
    """Records the static shape(s) of a node's tensor output(s) in its meta (``zf_shapes``, and
    ``zf_dtype`` for one tensor); True where the result is a tuple / list of tensors."""
    import torch

    if isinstance(result, torch.Tensor):
        node.meta["zf_shapes"] = tuple(result.shape)
        node.meta["zf_dtype"] = result.dtype
    elif isinstance(result, (tuple, list)) and result and all(isinstance(r, torch.Tensor) for r in result):
        node.meta["zf_shapes"] = [tuple(r.shape) for r in result]
        return True
    return False


def holds_tensor(v) -> bool:
    import torch

    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (tuple, list)):
        return any(holds_tensor(a) for a in v)
    return False
