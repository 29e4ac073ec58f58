"""zfprobe's command line (installed as ``zfprobe.cli``).

Importing it installs one thing at once, before the commands' heavy imports: a Ctrl-C that lands
while Python is still importing them (the first few hundred milliseconds) prints one line
instead of a ``KeyboardInterrupt`` traceback. After that the click group handles interrupts.
"""
from __future__ import annotations

import sys


def _one_line_interrupt(kind, value, tb, _previous=sys.excepthook):
    if isinstance(kind, type) and issubclass(kind, KeyboardInterrupt):
        try:
            sys.stderr.write("zfprobe: interrupted; no output was written\n")
        except (OSError, ValueError):
            pass
        return
    _previous(kind, value, tb)


if sys.excepthook is sys.__excepthook__:
    sys.excepthook = _one_line_interrupt
