"""Op families, one module each (``zfprobe/ops/<family>.py``): everything zfprobe knows about
those ops side by side (reversal, invertibility check, geometry). Each module registers its
rules into the shared tables when imported; importing this package imports all of them, so a new
op family is one new file here."""
from __future__ import annotations

import importlib
import pkgutil


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
