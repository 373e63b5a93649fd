"""Clouds: the one interface every cloud implements, and the one registry of clouds.

A cloud is one module (`aws.py`, `azure.py`, `gcp.py`) holding its description, a `Cloud`:
the settings a target of it carries (each with its check, the rule a refusal names, its default
and the kinds of target it fits; the cache's refresh fraction `refresh_at` among them), its
default audience, its subject length limit, how to describe the cloud-side trust for a target,
and a factory for its exchanger. Configuration, subjects, the cache, the exchange and minting
read a cloud only through its description here, so adding a cloud adds a module and one line
in `_BUILT_IN`, and edits none of them.

An exchanger trades a broker token for a target's short-lived credentials with its cloud. It
owns that cloud's calls, their bounded retries, and turning the cloud's refusals into errors a
user can act on. It never checks callers (minting.py does), never caches (cache.py does), and
never puts a token or a secret into an error, a log line or a repr.

Importing this package imports no SDK: an exchanger factory imports its cloud's SDK when called.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..checks import Check, fraction_between
from ..model import KINDS, Target
from ..subject import MAX_BYTES


@dataclass(frozen=True)
class Credentials:
    """What a caller receives: `fields` (secrets, never in a repr) valid until `expires_at`."""

    fields: Mapping[str, str] = field(repr=False)
    issued_at: int
    expires_at: int

    @property
    def lifetime(self) -> int:
        return self.expires_at - self.issued_at


@dataclass(frozen=True)
class Request:
    """One exchange: the broker token minted for `target`, and who it names."""

    target: Target
    token: str = field(repr=False)
    issuer: str  # the broker's issuer URL, the token's `iss`
    subject: str  # the token's `sub`
    caller: str  # the caller's own subject (or the actor's), for the cloud's audit trail (session names)
    # Another broker token for the same binding, freshly signed (its grant recorded first); the first
    # call returns `token`. For a cloud that must present a new assertion per token request.
    mint: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def fresh_token(self) -> str:
        return self.mint() if self.mint is not None else self.token


class Exchanger(Protocol):
    provider: str  # the name of the cloud this exchanger serves (its Cloud.name)

    def exchange(self, request: Request) -> Credentials: ...

    # Optional: `token_lifetime(target) -> int | None`, the seconds the broker token of an exchange
    # for `target` should live (None: the target's `lifetime`). For a cloud whose credentials last
    # as long as the token it is shown (Google's directly federated tokens, Entra's assertions).


def token_lifetime(exchanger: Exchanger, target: Target) -> int | None:
    """The lifetime `exchanger` asks for the broker token it will present for `target`, or None."""
    choose = getattr(exchanger, "token_lifetime", None)
    return choose(target) if choose is not None else None


class TrustSetupError(ValueError):
    """The cloud-side trust of a target cannot be described: the message says what it lacks."""


@dataclass(frozen=True)
class Setting:
    """One setting a cloud's targets may carry."""

    check: Check  # a pattern the value must match whole, or a function normalising it (None: refused)
    what: str  # what the value must be, as a refusal says it: "must be <what>"
    default: Any = None  # the value a target of a fitting kind has when it leaves the setting out
    kinds: tuple[str, ...] = KINDS  # the kinds of target it fits; on another kind it is refused


def refresh_at(default: float = 0.5) -> Setting:
    """The cache's refresh fraction: cached credentials are served until this fraction of their
    lifetime has passed; 0 never serves from the cache. Half, as docker-credential-ecr-login refreshes."""
    return Setting(fraction_between(0.0, 0.9), "a fraction of the credentials' lifetime from 0 to 0.9", default)


def _no_default_audience(settings: Mapping[str, Any]) -> str | None:
    return None


@dataclass(frozen=True)
class Cloud:
    """What the broker knows of one cloud. Every cloud's settings include `refresh_at` with a default."""

    name: str  # a target's `provider`, its settings block, the route /exchange/<name>
    title: str  # for people: log lines ("<title> exchange refused")
    settings: Mapping[str, Setting]
    # The audience a target gets when it names none, from its settings; None: it must name one.
    default_audience: Callable[[Mapping[str, Any]], str | None] = _no_default_audience
    max_subject_bytes: int = MAX_BYTES
    # (issuer, target, subjects) -> the cloud-side trust a target needs, to print; raises TrustSetupError.
    trust_setup: Callable[[str, Target, list[str]], Any] | None = None
    # session -> the cloud's Exchanger, importing its SDK only when called; None: no exchange yet.
    exchanger: Callable[[Any], Exchanger] | None = None
    # config -> [(target ref, problem)]: a rule across targets (validation reports each at the
    # target's settings), e.g. a cloud-side limit on how many subjects one identity can trust.
    check_config: Callable[[Any], list[tuple[str, str]]] | None = None

    def __post_init__(self) -> None:
        fraction = self.settings.get("refresh_at")
        if fraction is None or fraction.default is None:
            # The cache reads it for every target: a cloud without it would never be cached, silently.
            raise ValueError(f"cloud {self.name!r} must describe a refresh_at setting with a default")

    def defaults(self, kind: str) -> dict[str, Any]:
        """The values a target of `kind` has for the settings it leaves out."""
        return {name: s.default for name, s in self.settings.items() if s.default is not None and kind in s.kinds}


# -- the registry ----------------------------------------------------------------------------

CLOUDS: dict[str, Cloud] = {}


def register(cloud: Cloud) -> Cloud:
    if cloud.name in CLOUDS:
        raise ValueError(f"cloud {cloud.name!r} is registered already")
    CLOUDS[cloud.name] = cloud
    return cloud


def unregister(name: str) -> None:
    CLOUDS.pop(name, None)


@contextlib.contextmanager
def registered(cloud: Cloud) -> Iterator[Cloud]:
    """`cloud` in the registry for the duration of a `with` block (tests)."""
    register(cloud)
    try:
        yield cloud
    finally:
        unregister(cloud.name)


class Retry(Exception):
    """Raised by an attempt that may succeed next time; `error` is what is raised once tries run out."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


@dataclass
class Backoff:
    """Bounded retries with full jitter, for every cloud; sleep and jitter are parameters so tests
    need no time. An attempt asks for another try by raising Retry, or a cloud names the errors
    worth one with `retryable`; anything else is raised at once."""

    attempts: int = 3
    base: float = 0.2
    cap: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2**attempt) * self.jitter()

    def call(self, operation: Callable[[], Any], retryable: Callable[[Exception], bool] = lambda e: False) -> Any:
        for attempt in range(self.attempts):
            try:
                return operation()
            except Exception as e:
                if attempt == self.attempts - 1 or not (isinstance(e, Retry) or retryable(e)):
                    if isinstance(e, Retry):
                        raise e.error from None
                    raise
                self.sleep(self.delay(attempt))
        raise AssertionError("unreachable")


_JWT_LIKE = re.compile(r"eyJ[\w-]*\.[\w-]*\.?[\w-]*")


def cloud_message(message: object, limit: int = 300) -> str:
    """A cloud's error message, safe to show: anything token-shaped removed, length bounded."""
    text = _JWT_LIKE.sub("[token]", str(message or "")).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# The clouds the broker ships with, in the order messages list them. Their modules import no SDK.
from . import aws, azure, gcp  # noqa: E402

_BUILT_IN = (aws.CLOUD, azure.CLOUD, gcp.CLOUD)
for _cloud in _BUILT_IN:
    register(_cloud)
