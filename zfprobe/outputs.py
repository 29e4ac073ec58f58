"""Atomic output: a run's files appear all together or not at all.

Files are first written into a staging folder beside the destination; only when every file is
complete are they moved into place, each with an atomic ``os.replace``. A run that fails before
``commit`` leaves the destination exactly as it was (earlier results included).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np


class OutputStage:
    """Collects a run's output files, then publishes them into ``destination`` at once."""

    def __init__(self, destination: str):
        self.destination = os.path.abspath(destination)
        parent = os.path.dirname(self.destination) or "."
        os.makedirs(parent, exist_ok=True)
        self._staging = tempfile.mkdtemp(prefix=".zfprobe-staging-", dir=parent)
        self.files: list[str] = []

    def path(self, relative: str) -> str:
        full = os.path.join(self._staging, relative)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        self.files.append(relative)
        return full

    def write_png(self, relative: str, image: np.ndarray) -> str:
        from PIL import Image

        Image.fromarray(image).save(self.path(relative), format="PNG")
        return relative

    def write_json(self, relative: str, data: Any) -> str:
        with open(self.path(relative), "w") as f:
            json.dump(data, f, indent=2, default=_jsonable)
            f.write("\n")
        return relative

    def write_bytes(self, relative: str, data: bytes) -> str:
        with open(self.path(relative), "wb") as f:
            f.write(data)
        return relative

    def commit(self) -> list[str]:
        """Move every staged file into the destination; returns their final paths."""
        os.makedirs(self.destination, exist_ok=True)
        final = []
        for rel in self.files:
            target = os.path.join(self.destination, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(self._staging, rel), target)
            final.append(target)
        self.discard()
        return final

    def discard(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> "OutputStage":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_file_atomically(path: str, data: bytes) -> None:
    """Write one file so that readers see the old content or the new, never a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".zfprobe-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
