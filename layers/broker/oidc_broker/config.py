"""Configuration, the public entry: parse a document, and the cache the functions read it through.

The parts live in their own modules: the data model (model.py: issuers, spaces, targets, rules;
knows no cloud), validation (validation.py: parse, ConfigError), the generic setting checks
(checks.py) and the URL policy (urls.py). Their public names are importable from here, as the
CLI, local mode, the functions and the tests use them. Nothing here names a cloud; each cloud
describes its own settings and defaults in clouds/.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .checks import parse_lifetime
from .errors import ServerError
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
    Shared,
    parse,
    parse_shared,
    parse_space,
)

__all__ = [
    "DEFAULT_LEEWAY", "DEFAULT_LIFETIME", "DEFAULT_MAX_KEY_SET_AGE", "DEFAULT_MAX_TOKEN_AGE", "KINDS", "MAX_LEEWAY",
    "MAX_LIFETIME", "MAX_MAX_KEY_SET_AGE", "MAX_TOKEN_AGE", "MIN_LIFETIME", "MIN_MAX_KEY_SET_AGE",
    "Binding", "Config", "ConfigCache", "ConfigError", "ContextValue", "Space", "Target", "TrustRule", "TrustedIssuer",
    "StoredConfig", "is_loopback", "parse", "parse_lifetime", "parse_space", "parse_shared", "url_problem",
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


class StoredConfig:
    """The applied configuration as the functions read it from the table (store.py, configstore.py).

    Each call reads the pointer (one GetItem): an unchanged digest returns the Config already
    built. When it moved, the manifest is read, and each space is read and parsed when a request
    first names it; a space whose blob did not change keeps its parsed form, so a reload costs
    what changed, and a mint reads one space however many there are. The checks across targets
    ran when the configuration was applied (parse); here each part is validated again on its own,
    and one that fails is the broker's fault (invalid_config), logged with its problems.
    """

    def __init__(self, store: Any, *, allow_loopback_http: bool = False):
        self._items = store.configuration
        self._allow_loopback_http = allow_loopback_http
        self._sha: str | None = None
        self._config: Config | None = None
        self._shared: tuple[str, Shared] | None = None
        self._spaces: dict[str, Space] = {}  # by blob sha, under the current shared part

    def __call__(self) -> Config:
        from .configstore import CorruptBlob

        pointer = self._items.pointer()
        if pointer is None:
            raise ServerError("no configuration has been applied (oidc-broker apply FILE)", "no_config")
        if self._config is not None and pointer.sha256 == self._sha:
            return self._config
        try:
            if pointer.document is not None:
                config = parse(pointer.document, pointer.source, allow_loopback_http=self._allow_loopback_http)
            else:
                config = self._build(pointer)
        except ConfigError as e:
            raise _invalid(e) from e
        except CorruptBlob as e:
            raise _unreadable(pointer.source, e) from e
        self._sha, self._config = pointer.sha256, config
        return config

    def _build(self, pointer: Any) -> Config:
        manifest = self._items.manifest(pointer)
        if self._shared is None or self._shared[0] != manifest.shared.sha:
            document = self._items.blobs([manifest.shared])[manifest.shared.sha]
            self._shared = (manifest.shared.sha, parse_shared(document, pointer.source,
                                                              allow_loopback_http=self._allow_loopback_http))
            self._spaces = {}
        shared = self._shared[1]
        current = {ref.sha for _, ref in manifest.spaces}
        self._spaces = {sha: space for sha, space in self._spaces.items() if sha in current}
        spaces = _LazySpaces(manifest.spaces, lambda index, ref: self._space(index, ref, shared, pointer.source))
        return Config(issuer=shared.issuer, trusted_issuers=shared.trusted_issuers, spaces=spaces)

    def _space(self, index: int, ref: Any, shared: Shared, source: str) -> Space:
        from .configstore import CorruptBlob

        space = self._spaces.get(ref.sha)
        if space is None:
            try:
                space = parse_space(self._items.blobs([ref])[ref.sha], index, shared, source)
            except ConfigError as e:
                raise _invalid(e) from e
            except CorruptBlob as e:
                raise _unreadable(source, e) from e
            self._spaces[ref.sha] = space
        return space


class _LazySpaces(Mapping):
    """A configuration's spaces by name, each read and parsed the first time it is looked up."""

    def __init__(self, spaces: tuple[tuple[str, Any], ...], load: Callable[[int, Any], Space]):
        self._refs = {name: (index, ref) for index, (name, ref) in enumerate(spaces)}
        self._load = load
        self._loaded: dict[str, Space] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Space:
        space = self._loaded.get(name)
        if space is None:
            index, ref = self._refs[name]
            with self._lock:
                space = self._loaded.get(name)
                if space is None:
                    space = self._loaded[name] = self._load(index, ref)
        return space

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, name: object) -> bool:
        return name in self._refs


def _invalid(e: ConfigError) -> ServerError:
    # The operator reads what is wrong in the log; the caller learns only that it is the broker's fault.
    return ServerError("the applied configuration is invalid", "invalid_config",
                         log={"config_source": e.source, "config_problems": [f"{p}: {r}" for p, r in e.problems][:50]})


def _unreadable(source: str, e: Exception) -> ServerError:
    return ServerError("the applied configuration cannot be read", "invalid_config",
                       log={"config_source": source, "config_problems": [str(e)]})
