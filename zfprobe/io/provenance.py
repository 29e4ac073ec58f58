"""What every manifest says about the model a run used: its file, hash, input and backend.

One place, so that every command's ``manifest.json`` describes the model the same way and a
reader (or ``zfprobe report``) can match results to the exact file.
"""
from __future__ import annotations

import hashlib
import os

# The release, written into every manifest; ``zfprobe.__version__`` is this value.
__version__ = "0.1.0"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_sha256(probe) -> str | None:
    """The SHA-256 of the probe's model file, or None for a live model (no file)."""
    source = getattr(probe, "source", "") or ""
    return file_sha256(source) if source and os.path.isfile(source) else None


def model_manifest(probe) -> dict:
    """The ``model`` entry of a manifest."""
    return {"path": probe.source, "sha256": model_sha256(probe),
            "input": probe.input_name, "input_shape": list(probe.input_shape),
            "backend": getattr(probe.backend, "name", type(probe.backend).__name__),
            "device": getattr(probe.backend, "device", "cpu"),
            # which projection program ran per layer (windowed or full) and the cost estimates
            "projection_paths": list(getattr(probe, "projection_paths", {}).values())}
