"""``--memory`` on every command: the one memory budget (zfprobe.io.memory) for this run.

Added by the command group to each command it registers, so no command lists it itself."""
from __future__ import annotations

import functools

import click

from zfprobe.errors import OptionError
from zfprobe.io.memory import DEFAULT_MEMORY, ENV, describe, set_memory

HELP = (f"Memory the run's arrays may take, e.g. 2G or 800M; batches (mining, projections, occlusion, "
        f"features, the report's pictures) are sized to fit [default: ${ENV}, else {describe(DEFAULT_MEMORY)}].")


def add_memory_option(cmd: click.Command) -> None:
    """Give ``cmd`` a ``--memory`` option that sets the budget for the command's run."""
    if cmd.callback is None or any(p.name == "memory" for p in cmd.params):
        return
    cmd.params.append(click.Option(["--memory"], metavar="SIZE", help=HELP))
    callback = cmd.callback

    @functools.wraps(callback)
    def with_budget(*args, memory=None, **kwargs):
        try:
            set_memory(memory)
        except ValueError as exc:
            raise OptionError(f"--memory: {exc}") from None
        try:
            return callback(*args, **kwargs)
        finally:
            set_memory(None)

    cmd.callback = with_budget
