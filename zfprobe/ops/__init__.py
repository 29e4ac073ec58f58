"""Op families, one module each (``zfprobe/ops/<family>.py``): everything zfprobe knows about
those ops side by side (reversal, invertibility check, geometry). Each module registers its
rules into the shared tables when imported; :func:`import_all` (called once by
:mod:`zfprobe.engine.inverses` when the op table is built) imports all of them, so a new op family is one
new file here. Helper modules that register nothing (``geometry``) may be imported on their own,
before the op table exists; so may ``onnx_semantics``, the ONNX conventions kernels must match."""
from __future__ import annotations

import importlib
import pkgutil


def import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
