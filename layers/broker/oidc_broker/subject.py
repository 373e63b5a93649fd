"""Subjects: the `key:value` strings a cloud trust policy matches on.

Owns the subject keys, their fixed order, the slug rule for values and the length check (each
cloud states its own limit in its description; a function here takes the limit it is given).
Pure: no I/O, no clock. It never rewrites a value; a value that is not a slug is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The fixed order of subject keys. Every subject renders its chosen keys in this order, so the
# same target always yields the same shape whatever order the configuration lists them in.
KEY_ORDER: tuple[str, ...] = ("space", "project", "runbook", "tenant", "environment", "feed", "account", "type")

# Keys whose value the configuration always supplies: the space, and the target under its kind.
TARGET_KINDS: frozenset[str] = frozenset({"feed", "account"})
# Keys a trust rule supplies through its `context` (a literal or a verified caller claim).
CONTEXT_KEYS: frozenset[str] = frozenset({"project", "runbook", "tenant", "environment", "type"})

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

# The longest subject any target allows; a cloud may allow fewer (its description says so).
MAX_BYTES = 255


class SubjectError(ValueError):
    """A subject cannot be built: names the key and the rule it broke."""


def is_slug(value: object) -> bool:
    return isinstance(value, str) and SLUG.fullmatch(value) is not None


def default_keys(kind: str) -> tuple[str, ...]:
    return ("space", kind)


def check_keys(keys: tuple[str, ...] | list[str], kind: str) -> None:
    """Refuse a key list that is not a subset of KEY_ORDER, in order, with the space and the target."""
    unknown = [k for k in keys if k not in KEY_ORDER]
    if unknown:
        raise SubjectError(f"unknown subject key {unknown[0]!r}; keys are {', '.join(KEY_ORDER)}")
    if len(set(keys)) != len(keys):
        raise SubjectError("a subject key is listed twice")
    if list(keys) != sorted(keys, key=KEY_ORDER.index):
        raise SubjectError(f"subject keys must follow the order {', '.join(KEY_ORDER)}")
    other = (TARGET_KINDS - {kind}) & set(keys)
    if other:
        raise SubjectError(f"subject key {sorted(other)[0]!r} does not fit a {kind} target")
    # Without the space and the target, two targets would share a subject and a trust policy
    # written for one would admit the other.
    for required in ("space", kind):
        if required not in keys:
            raise SubjectError(f"subject keys must include {required!r}")


@dataclass(frozen=True)
class Subject:
    parts: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return ":".join(f"{k}:{v}" for k, v in self.parts)

    def claims(self) -> dict[str, str]:
        """One claim per subject part, so a relying party can map them individually."""
        return dict(self.parts)

    @classmethod
    def parse(cls, text: str, max_bytes: int = MAX_BYTES) -> Subject:
        """The subject `text` renders, refusing anything `build` would not produce: keys in order,
        the space and exactly one target kind among them, slug values, at most `max_bytes`."""
        parts = text.split(":") if isinstance(text, str) and text else []
        if len(parts) % 2 or not parts:
            raise SubjectError("a subject is key:value pairs joined by ':'")
        keys = tuple(parts[::2])
        kinds = TARGET_KINDS & set(keys)
        if len(kinds) != 1:
            raise SubjectError(f"a subject names exactly one of {', '.join(sorted(TARGET_KINDS))}")
        check_keys(keys, next(iter(kinds)))
        built = build(keys, dict(zip(keys, parts[1::2])), max_bytes)
        if str(built) != text:  # a key given twice, or a value holding a separator
            raise SubjectError("not a subject the broker builds")
        return built


def build(keys: tuple[str, ...], values: dict[str, str], max_bytes: int = MAX_BYTES, *,
          limited_by: str = "targets") -> Subject:
    """Build the subject for `keys` from `values`; every chosen key needs a slug value, and the
    whole at most `max_bytes` (the limit of the target's cloud; `limited_by` names it in a refusal)."""
    parts = []
    for key in keys:
        value = values.get(key)
        if value is None or value == "":
            raise SubjectError(f"subject key {key!r} has no value")
        if not is_slug(value):
            raise SubjectError(f"subject value for {key!r} is not a slug ([a-z0-9][a-z0-9-]{{0,62}})")
        parts.append((key, value))
    subject = Subject(tuple(parts))
    size = len(str(subject).encode())
    if size > max_bytes:
        raise SubjectError(f"subject is {size} bytes; {limited_by} allow at most {max_bytes}")
    return subject


def pattern(keys: tuple[str, ...], values: dict[str, str]) -> str:
    """The subject with `*` for each value not known in advance (taken from a caller's claim)."""
    return ":".join(f"{k}:{values.get(k, '*')}" for k in keys)


def shortest_length(keys: tuple[str, ...], fixed: dict[str, str]) -> int:
    """The shortest subject `keys` can yield when `fixed` values are known (others at least 1 byte).

    Configuration is refused when even this exceeds the limit; the whole subject is checked again
    at mint time, once the caller's claims are known.
    """
    parts = [len(key) + 1 + (len(fixed[key]) if key in fixed else 1) for key in keys]
    return sum(parts) + max(len(keys) - 1, 0)
