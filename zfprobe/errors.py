"""Errors a user can act on.

Each carries a one-line message that says what is wrong and what to do; the CLI prints it and
exits non-zero instead of showing a traceback. Internal bugs stay ordinary exceptions.
"""
from __future__ import annotations

import difflib


class ZfprobeError(Exception):
    """Base class: a problem with the user's input, model or options."""

    exit_code = 2


class ModelLoadError(ZfprobeError):
    """The model file is missing, corrupt, or not a model zfprobe can read."""


class UnsupportedOpError(ZfprobeError):
    """A node on the path from the input to the probed layer cannot be inverted."""

    def __init__(self, node_name: str, op_type: str, hint: str, source: str = ""):
        where = f" ({source})" if source and source != node_name else ""
        super().__init__(
            f"node '{node_name}'{where} of op type {op_type} cannot be inverted by the deconvnet: {hint}"
        )
        self.node_name = node_name
        self.op_type = op_type


class LayerNotFoundError(ZfprobeError):
    def __init__(self, name: str, candidates: list[str]):
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.4)
        if not close:
            lowered = name.lower()
            close = [c for c in candidates if lowered in c.lower()][:3]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(
            f"layer '{name}' does not exist{hint} (run `zfprobe layers MODEL` to list them)"
        )


class ChannelError(ZfprobeError):
    """A channel or unit index outside the layer."""


class ImageError(ZfprobeError):
    """An image that cannot be read or does not fit the model."""


class OptionError(ZfprobeError):
    """An option value that makes no sense (negative stride, unknown rule, ...)."""


class DynamicInputSizeError(ZfprobeError):
    """The model's input has free dimensions and no size was given (the CLI then takes the
    image's size when it has an image)."""


class OutputError(ZfprobeError):
    """The output cannot be written (not writable, read-only, disk full, locked by another run)."""


class UntrustedFileError(ZfprobeError):
    """A model or data file that tries to reach outside its folder or hide what it is."""
