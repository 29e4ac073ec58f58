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
        raise OptionError(f"{what} must be a finite number, not {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise OptionError(f"{what} must be in {left}{lo}, {hi}{right}, not {value:g}")
    return value


def number(text: str, what: str, low: float | None = None, high: float | None = None, **open_ends) -> float:
    """``text`` (e.g. from the environment) as a finite number in range."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OptionError(f"{what}='{text}' is not a number") from None
    return in_range(value, what, low, high, **open_ends)


def seed(value: int | None, what: str = "--seed") -> int | None:
    """A random seed: a whole number in [0, 2^32 - 1] (None passes: a command's default)."""
    if value is None:
        return None
    if not 0 <= int(value) <= MAX_SEED:
        raise OptionError(f"{what} must be between 0 and {MAX_SEED}, not {value}")
    return int(value)
