"""Configuration, the public entry: parse a document, and the cache the functions read it through.

The parts live in their own modules: the data model (model.py: issuers, spaces, targets, rules;
knows no cloud), validation (validation.py: parse, ConfigError), the generic setting checks
(checks.py) and the URL policy (urls.py). Their public names are importable from here, as the
CLI, local mode, the functions and the tests use them. Nothing here names a cloud; each cloud
describes its own settings and defaults in clouds/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checks import parse_lifetime
from .model import (
    DEFAULT_LEEWAY,
    DEFAULT_MAX_KEY_SET_AGE,
    DEFAULT_MAX_TOKEN_AGE,
    KINDS,
    Binding,
    Config,
    ContextValue,
    Space,
    Target,
    TrustedIssuer,
    TrustRule,
)
from .urls import is_loopback, url_problem
from .validation import (
    DEFAULT_LIFETIME,
    MAX_LEEWAY,
    MAX_LIFETIME,
    MAX_MAX_KEY_SET_AGE,
    MAX_TOKEN_AGE,
    MIN_LIFETIME,
    MIN_MAX_KEY_SET_AGE,
    ConfigError,
    parse,
)

__all__ = [
    "DEFAULT_LEEWAY", "DEFAULT_LIFETIME", "DEFAULT_MAX_KEY_SET_AGE", "DEFAULT_MAX_TOKEN_AGE", "KINDS", "MAX_LEEWAY",
    "MAX_LIFETIME", "MAX_MAX_KEY_SET_AGE", "MAX_TOKEN_AGE", "MIN_LIFETIME", "MIN_MAX_KEY_SET_AGE",
    "Binding", "Config", "ConfigCache", "ConfigError", "ContextValue", "Space", "Target", "TrustRule", "TrustedIssuer",
    "is_loopback", "parse", "parse_lifetime", "url_problem",
]


class ConfigCache:
    """The configuration as the functions see it: loaded from the store, kept `ttl` seconds."""

    def __init__(self, load: Callable[[], Any], clock: Callable[[], float], ttl: float = 30.0):
        self._load = load
        self._clock = clock
        self._ttl = ttl
        self._value: Config | None = None
        self._loaded_at = 0.0

    def get(self) -> Config:
        now = self._clock()
        if self._value is None or now - self._loaded_at >= self._ttl:
            self._value = self._load()
            self._loaded_at = now
        return self._value
