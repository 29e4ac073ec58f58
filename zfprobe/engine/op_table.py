"""The op table's registers: which reversal (``INVERSES``) and which invertibility check
(``CHECKS``) belong to each forward op type, and the decorators that fill them.

They live apart from the reversals themselves so that an op family (``zfprobe/ops/<family>.py``)
imports only this small module; :mod:`zfprobe.engine.inverses` registers the core ops and imports
every family, so importing it gives the whole table.
"""
from __future__ import annotations

from typing import Callable, Optional

from zfprobe.engine.graph import Graph, Node

Signal = Optional[str]
InverseFn = Callable[["InverseContext", Node, list[Signal]], list[Signal]]  # noqa: F821 (engine.inverses)

INVERSES: dict[str, InverseFn] = {}
CHECKS: dict[str, Callable[[Graph, Node], Optional[str]]] = {}


def inverse(*op_types: str):
    """Register the reversal of ``op_types``."""

    def register(fn: InverseFn) -> InverseFn:
        for op in op_types:
            INVERSES[op] = fn
        return fn

    return register


def check(*op_types: str):
    """Register a condition that makes a node of ``op_types`` impossible to invert (its reason, or None)."""

    def register(fn):
        for op in op_types:
            CHECKS[op] = fn
        return fn

    return register
