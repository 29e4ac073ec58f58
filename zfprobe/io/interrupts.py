"""Interruption handling: SIGTERM behaves like Ctrl-C, critical sections defer both, and what was
saved before an interruption is reported truthfully.

``zfprobe`` turns SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``), so the same
``finally`` / ``except BaseException`` paths that save a mining checkpoint or discard a staging
folder run for ``kill`` as for Ctrl-C. Code that leaves something behind on purpose (a checkpoint)
says so with :func:`note`; the CLI prints those notes instead of a blanket "nothing was written".

:func:`pause` is a test hook: with ``ZFPROBE_PAUSE_AT=<point>`` and ``ZFPROBE_PAUSE_FILE=<path>``
a run creates ``<path>`` when it reaches ``<point>`` and sleeps there, so a test can send a signal
at an exact moment instead of guessing with timers.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

_notes: list[str] = []
_paused: set[str] = set()  # points the test hook has stopped at
_received: list[int] = []  # SIGINT / SIGTERM received by this invocation (see interrupted_by)


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise_terminated(signum, frame):
    _received.append(signum)
    raise Terminated()


def _raise_interrupt(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt()


def install_handlers() -> None:
    """Make SIGTERM raise :class:`Terminated` and SIGINT ``KeyboardInterrupt`` in the main
    thread, both remembered (call once per command, from the CLI)."""
    _received.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        signal.signal(signal.SIGINT, _raise_interrupt)


def interrupted_by() -> KeyboardInterrupt | None:
    """The interruption this invocation received, if any: a library that was importing or
    initializing when it came (onnxruntime) may report it as its own error instead."""
    if not _received:
        return None
    return Terminated() if _received[0] == signal.SIGTERM else KeyboardInterrupt()


def note(message: str) -> None:
    """Record something a run leaves behind on purpose, for the interruption message."""
    _notes.append(message)


def take_notes() -> list[str]:
    notes = list(_notes)
    _notes.clear()
    return notes


@contextmanager
def deferred():
    """Hold SIGINT and SIGTERM until the block ends (a publish is never cut in half by them).

    The handlers are swapped for ones that only record the signal (blocking the signal mask
    would not do: a process-directed signal may land on any of the native libraries' threads);
    a recorded signal is raised when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: (caught.append(signum), _received.append(signum))) for s in held}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if caught:
        raise Terminated() if caught[0] == signal.SIGTERM else KeyboardInterrupt()


def pause(point: str) -> None:
    """Test hook: stop at ``point`` when ``ZFPROBE_PAUSE_AT`` names it (see the module doc)."""
    if os.environ.get("ZFPROBE_PAUSE_AT") != point or point in _paused:
        return
    _paused.add(point)  # once per process: code that runs again after the signal goes on
    flag = os.environ.get("ZFPROBE_PAUSE_FILE")
    if flag:
        with open(flag, "w") as f:
            f.write(str(os.getpid()))
    resume = flag + ".go" if flag else None
    deadline = time.monotonic() + float(os.environ.get("ZFPROBE_PAUSE_SECONDS", "60"))
    # signals that are blocked here (inside ``deferred``) stay pending until the block ends
    while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
        time.sleep(0.02)
