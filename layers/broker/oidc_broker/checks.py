"""Setting checks: durations, fractions, choices and patterns, the small rules a value must pass.

Generic: each cloud's description (clouds/) and the configuration's own fields use them; none of
them knows which setting or which cloud it checks. A check returns the normalised value, or None
when the value is refused; the rule a refusal names is the caller's to write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# A pattern a string must match whole, or a function returning the normalised value (None: refused).
Check = re.Pattern[str] | Callable[[object], Any]

_DURATION = re.compile(r"(\d+)([smh]?)")


def parse_lifetime(value: object) -> int | None:
    """Seconds from an integer or a duration such as 90, "15m", "1h"; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    return None


def seconds_between(low: int, high: int) -> Callable[[object], int | None]:
    def check(value: object) -> int | None:
        seconds = parse_lifetime(value)
        return seconds if seconds is not None and low <= seconds <= high else None

    return check


def fraction_between(low: float, high: float) -> Callable[[object], float | None]:
    def check(value: object) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if low <= value <= high else None

    return check


def one_of(*choices: str) -> Callable[[object], str | None]:
    return lambda value: value if value in choices else None


def normalise(check: Check, value: object) -> Any:
    """The value `check` accepts it as, or None when it refuses it."""
    if isinstance(check, re.Pattern):
        return value if isinstance(value, str) and check.fullmatch(value) else None
    return check(value)
