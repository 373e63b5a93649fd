"""Claim conditions: exact values, anchored globs, any-of lists, with strict types.

A condition is compiled once when the configuration loads. Matching is pure:
- a string containing `*` is a glob; `*` matches any run of characters except `/`, `:` and
  control characters, so
  `acme/*` can never match `acme/app/evil` or `acme/app:ref`; the whole value must match;
- a list means any of its entries;
- types are strict: 123 is not "123", True is not 1, a list claim never matches a scalar;
- a missing, null or empty claim never matches, whatever the pattern;
- claims a preset marks case-insensitive compare in ASCII lower case (never Unicode folding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

from .presets import ascii_lower

Scalar = Union[str, int, bool]
GLOB_STAR = "*"
# Neither delimiter nor control character: a glob never matches across "/" or ":" or a newline.
_NOT_DELIMITER = "[^/:\\x00-\\x1f\\x7f]*"


@dataclass(frozen=True)
class Glob:
    pattern: str
    regex: re.Pattern[str]

    def __str__(self) -> str:
        return self.pattern


def glob(pattern: str, case_insensitive: bool = False) -> Glob:
    source = ascii_lower(pattern) if case_insensitive else pattern
    regex = _NOT_DELIMITER.join(re.escape(part) for part in source.split(GLOB_STAR))
    return Glob(pattern, re.compile(regex, re.ASCII | re.DOTALL))


@dataclass(frozen=True)
class Condition:
    claim: str
    alternatives: tuple[Scalar | Glob, ...]
    case_insensitive: bool = False

    def literals(self) -> set[Scalar]:
        """Values named exactly (not through a glob): what counts as naming a value explicitly."""
        return {a for a in self.alternatives if not isinstance(a, Glob)}

    def matches(self, actual: Any) -> bool:
        if actual is None or actual == "" or isinstance(actual, (list, dict, float)):
            return False
        return any(_matches_one(alt, actual, self.case_insensitive) for alt in self.alternatives)

    def describe(self) -> str:
        shown = [repr(a.pattern) if isinstance(a, Glob) else repr(a) for a in self.alternatives]
        return shown[0] if len(shown) == 1 else "any of " + ", ".join(shown)


def _matches_one(expected: Scalar | Glob, actual: Any, case_insensitive: bool) -> bool:
    if isinstance(expected, Glob):
        if not isinstance(actual, str):
            return False
        return expected.regex.fullmatch(ascii_lower(actual) if case_insensitive else actual) is not None
    if type(actual) is not type(expected):
        return False
    if case_insensitive and isinstance(actual, str):
        return ascii_lower(actual) == ascii_lower(expected)
    return actual == expected


def compile_condition(claim: str, value: Any, case_insensitive: bool = False) -> Condition:
    """Compile a rule's claim condition; ValueError says why a value cannot be one."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("an empty list matches nothing")
    alternatives: list[Scalar | Glob] = []
    for v in values:
        if isinstance(v, bool) or isinstance(v, int):
            alternatives.append(v)
        elif isinstance(v, str) and v:
            if v.strip(GLOB_STAR) == "":
                raise ValueError("a pattern of only '*' matches any value; name the value")
            alternatives.append(glob(v, case_insensitive) if GLOB_STAR in v else v)
        else:
            raise ValueError("must be a non-empty string, an integer, a boolean, or a list of them")
    return Condition(claim, tuple(alternatives), case_insensitive)
