"""The one place command-line values are checked: numbers (finite, in range), seeds, and values
read from the environment. Every command calls these instead of parsing on its own, so a bad
value is always the same one line ``zfprobe: error: ...`` (exit 2) before any work starts."""
from __future__ import annotations

import math

from zfprobe.errors import OptionError

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit


def in_range(value, what: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False):
    """``value`` unchanged when it is None or a finite number within [low, high] (an end is open
    with ``low_open`` / ``high_open``); else an :class:`OptionError` that says the range."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        for v in value:
            in_range(v, what, low, high, low_open=low_open, high_open=high_open)
        return value
    if not math.isfinite(value):
        raise OptionError(f"{what} must be a finite number, not {value}".strip())
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else _fmt(low)
        hi = "inf" if high is None else _fmt(high)
        raise OptionError(f"{what} must be in {left}{lo}, {hi}{right}, not {_fmt(value)}".strip())
    return value


def _fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def number(text: str, what: str, low: float | None = None, high: float | None = None, **open_ends) -> float:
    """``text`` (e.g. from the environment) as a finite number in range."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OptionError(f"{what}='{text}' is not a number") from None
    return in_range(value, what, low, high, **open_ends)


def nonempty(value: str, option: str) -> str:
    """A name option that was given must name something: ``-l ""`` is an error, not the default."""
    if not value.strip():
        raise OptionError(f"{option} is empty; give a name (see `zfprobe layers MODEL`), or leave the option out "
                          "for the default")
    return value


def seed(value: int | None, what: str = "--seed") -> int | None:
    """A random seed: a whole number in [0, 2^32 - 1] (None passes: a command's default)."""
    if value is None:
        return None
    if not 0 <= int(value) <= MAX_SEED:
        raise OptionError(f"{what} must be between 0 and {MAX_SEED}, not {value}")
    return int(value)


# ---------------------------------------------------------------- click parameter types -----
import click  # noqa: E402


class Number(click.ParamType):
    """A finite number in range (``integer``: a whole one); NaN and infinities are refused."""

    def __init__(self, low: float | None = None, high: float | None = None, *, integer: bool = False,
                 low_open: bool = False, high_open: bool = False, nonzero: bool = False):
        self.low, self.high, self.integer = low, high, integer
        self.open_ends = {"low_open": low_open, "high_open": high_open}
        self.nonzero = nonzero
        self.name = "integer" if integer else "float"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and
                             (not self.integer or isinstance(value, int))):
            text = value
        else:
            text = str(value).strip()
        try:
            number = int(text) if self.integer else float(text)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not {'a whole number' if self.integer else 'a number'}", param, ctx)
        try:
            in_range(number, "", self.low, self.high, **self.open_ends)
        except OptionError as exc:
            self.fail(str(exc), param, ctx)
        if self.nonzero and number == 0:
            self.fail("must not be 0", param, ctx)
        return number


class NumberList(click.ParamType):
    """Comma-separated finite numbers, e.g. a per-channel mean ``0.485,0.456,0.406``."""

    name = "numbers"

    def __init__(self, nonzero: bool = False, positive: bool = False):
        self.nonzero, self.positive = nonzero, positive

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        what = param.get_error_hint(ctx).replace("'", "") if param is not None else "value"
        try:
            out = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"cannot read {what} '{value}' as comma-separated numbers", param, ctx)
        for v in out:
            if not math.isfinite(v):
                self.fail(f"{what} must be finite numbers, not {v}", param, ctx)
            if self.nonzero and v == 0:
                self.fail(f"{what} must not be 0 (the input is divided by it)", param, ctx)
            if self.positive and v <= 0:
                self.fail(f"{what} must be greater than 0, not {v:g}", param, ctx)
        return out


class Name(click.ParamType):
    """A name that was given must name something (``-l ""`` is an error, not the default)."""

    name = "name"

    def convert(self, value, param, ctx):
        if not str(value).strip():
            self.fail("is empty; give a name (see `zfprobe layers MODEL`), or leave the option out for the default",
                      param, ctx)
        return value


NAME = Name()
SEED = Number(0, MAX_SEED, integer=True)
FINITE = Number()
COUNT = Number(1, integer=True)     # at least one
FRACTION = Number(0.0, 1.0)


def checked_params(command: click.Command) -> None:
    """The rules every command gets without asking: every float option is finite, every
    ``--seed`` a valid seed, ``--batch-size`` and ``--limit`` at least 1 (commands may give
    stricter types themselves)."""
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        if param.name == "seed" and param.type is click.INT:
            param.type = SEED
        elif param.name in ("batch_size", "limit") and param.type is click.INT:
            param.type = COUNT
        elif param.type is click.FLOAT:
            param.type = FINITE
        elif param.name in ("layer", "layers") and param.type is click.STRING:
            param.type = NAME


def check_preprocessing_options(preset, mean, std, scale, data) -> None:
    """Preprocessing options only say how DATA's images become model input: without DATA they
    would be ignored silently, so they are refused."""
    given = [n for n, v in (("--preset", preset), ("--mean", mean), ("--std", std), ("--scale", scale)) if v is not None]
    if data is None and given:
        raise OptionError(f"{', '.join(given)} only apply to DATA's images, and no DATA was given")


def zfprobe_output(path: str | None, command: str, option: str) -> str | None:
    """``path`` when it is the output folder of ``zfprobe <command>`` (its manifest says so)."""
    import json
    import os

    if path is None:
        return None
    if not os.path.isdir(path):
        raise OptionError(f"{option} '{path}' is not a folder; give the -o folder of a `zfprobe {command}` run")
    try:
        with open(os.path.join(path, "manifest.json"), "rb") as f:
            manifest = json.loads(f.read(64 << 20))
    except FileNotFoundError:
        raise OptionError(f"{option} '{path}' is not a zfprobe output (no manifest.json); give the -o folder of a "
                          f"`zfprobe {command}` run") from None
    except (OSError, ValueError) as exc:
        raise OptionError(f"{option} '{path}': its manifest.json cannot be read ({exc})") from None
    made_by = manifest.get("command") if isinstance(manifest, dict) else None
    if made_by != command:
        raise OptionError(f"{option} '{path}' is {'the output of `zfprobe ' + str(made_by) + '`' if made_by else 'not a zfprobe output'}, "
                          f"not of `zfprobe {command}`")
    return path
