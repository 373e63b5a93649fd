"""Subjects: the `key:value` strings a cloud trust policy matches on.

Owns the subject keys, their fixed order, the slug rule for values and the length limits.
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

# Google maps the subject to `google.subject`, which holds at most 127 bytes.
MAX_SUBJECT_BYTES = {"gcp": 127}
DEFAULT_MAX_SUBJECT_BYTES = 255


class SubjectError(ValueError):
    """A subject cannot be built: names the key and the rule it broke."""


def is_slug(value: object) -> bool:
    return isinstance(value, str) and SLUG.fullmatch(value) is not None


def max_subject_bytes(provider: str) -> int:
    return MAX_SUBJECT_BYTES.get(provider, DEFAULT_MAX_SUBJECT_BYTES)


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


def build(keys: tuple[str, ...], values: dict[str, str], provider: str) -> Subject:
    """Build the subject for `keys` from `values`; every chosen key needs a slug value."""
    parts = []
    for key in keys:
        value = values.get(key)
        if value is None or value == "":
            raise SubjectError(f"subject key {key!r} has no value")
        if not is_slug(value):
            raise SubjectError(f"subject value for {key!r} is not a slug ([a-z0-9][a-z0-9-]{{0,62}})")
        parts.append((key, value))
    subject = Subject(tuple(parts))
    limit = max_subject_bytes(provider)
    size = len(str(subject).encode())
    if size > limit:
        raise SubjectError(f"subject is {size} bytes; {provider} targets allow at most {limit}")
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
