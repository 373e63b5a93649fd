"""Cloud exchanges: the one interface every cloud implements, one module per cloud.

An exchanger trades a broker token for a target's short-lived credentials with one cloud
(`aws.py`; Azure and Google Cloud each add one module and one function). It owns that cloud's
calls, their bounded retries, and turning the cloud's refusals into errors a user can act on.
It never checks callers (minting.py does), never caches (cache.py does), and never puts a token
or a secret into an error, a log line or a repr.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Target


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
    caller: str  # the caller's own subject, for the cloud's audit trail (session names)


class Exchanger(Protocol):
    provider: str  # the config.PROVIDERS name this exchanger serves

    def exchange(self, request: Request) -> Credentials: ...


_JWT_LIKE = re.compile(r"eyJ[\w-]*\.[\w-]*\.?[\w-]*")


def cloud_message(message: object, limit: int = 300) -> str:
    """A cloud's error message, safe to show: anything token-shaped removed, length bounded."""
    text = _JWT_LIKE.sub("[token]", str(message or "")).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
