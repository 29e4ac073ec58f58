"""Tables keyed by op type that refuse a second entry for the same op, so two modules can never
silently disagree about one op (the last import winning)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class DuplicateOpError(RuntimeError):
    """Two modules registered the same op in one table (a programming error, not a user error)."""


class Registry(dict, Generic[T]):
    """``{op_type: rule}``; :meth:`register` is a decorator for one or more op types."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def __setitem__(self, op_type: str, rule: T) -> None:
        if op_type in self:
            raise DuplicateOpError(f"{self.what} for '{op_type}' is registered twice")
        super().__setitem__(op_type, rule)

    def register(self, *op_types: str) -> Callable[[T], T]:
        def add(rule: T) -> T:
            for op in op_types:
                self[op] = rule
            return rule

        return add


# How an ONNX node of any opset becomes zfprobe's canonical node: ``fn(ctx, node) -> node``, where
# ``ctx`` offers ``opset``, ``shape(tensor)`` (static, batch 1) and ``const(tensor)`` (a constant's
# value or None). Read by the ONNX front-end for op types it has no normalizer of its own for.
ONNX_NORMALIZERS: Registry = Registry("ONNX normalizer")

# Canonical ops that only zfprobe defines (no ONNX op has their semantics), each with its default
# decomposition into standard canonical ops: ``fn(node) -> (nodes, constants)``. A backend with a
# kernel of its own runs the op; the others, and the ONNX exporter (so onnxruntime and
# ``zfprobe export-deconv``), run the decomposition (:func:`zfprobe.engine.inverses.decompose`).
DECOMPOSITIONS: Registry = Registry("default decomposition")
