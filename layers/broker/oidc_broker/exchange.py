"""From a caller's CI token to a target's cloud credentials: authorize, then cache or exchange.

Owns the order every cloud exchange follows, whatever the cloud:
  1. verify the caller and admit it to the target (minting.Broker.authorize) on every request,
     before the cache is read;
  2. a fresh cache entry for the target and subject: record a grant (replay guard and audit
     entry, `token_jti` = `cached:<jti of the exchange that obtained it>`) before it is served;
  3. a miss: mint a broker token (which records the grant first) and let the cloud's exchanger
     trade it; a failed exchange withdraws the grant, so a refused request consumes nothing.
It never talks to a cloud itself and never logs (the handler does).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .cache import Served
from .clouds import Credentials, Exchanger, Request
from .errors import InvalidTarget
from .minting import Authorization, Broker

CACHED_PREFIX = "cached:"


@dataclass(frozen=True)
class Outcome:
    authorization: Authorization
    served: Served

    @property
    def credentials(self) -> Credentials:
        return self.served.credentials


class Exchange:
    def __init__(self, *, broker: Broker, exchanger: Exchanger, cache: Any):
        self._broker = broker
        self._exchanger = exchanger
        self._cache = cache

    def credentials(self, subject_token: str, target_ref: str, issuer: str) -> Outcome:
        auth = self._broker.authorize(subject_token, target_ref, issuer)
        provider = self._exchanger.provider
        if auth.target.provider != provider:
            raise InvalidTarget(
                f"target {auth.target.ref!r} has provider {auth.target.provider}; "
                f"/exchange/{provider} serves {provider} targets only",
                "wrong_provider",
            )

        def fill() -> tuple[Credentials, str]:
            issued = self._broker.mint(auth)
            request = Request(target=auth.target, token=issued.token, issuer=auth.issuer,
                              subject=str(auth.subject), caller=auth.caller.subject)
            try:
                credentials = self._exchanger.exchange(request)
            except BaseException:
                # The broker token obtained nothing: the caller may try again with the same CI token.
                with contextlib.suppress(Exception):
                    self._broker.withdraw(issued)
                raise
            return credentials, issued.claims["jti"]

        served = self._cache.get(auth.target, str(auth.subject), fill)
        if served.from_cache:
            self._broker.record(auth, token_jti=CACHED_PREFIX + served.source, expires_at=served.credentials.expires_at)
        return Outcome(auth, served)
