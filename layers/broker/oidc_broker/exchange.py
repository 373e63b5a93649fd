"""From a caller's CI token to a target's cloud credentials: authorize, then cache or exchange.

Owns the order every cloud exchange follows, whatever the cloud:
  1. verify the caller and admit it to the target (minting.Broker.authorize) on every request,
     before the cache is read;
  2. a fresh cache entry for the binding (target and subject): record a grant (replay guard and
     audit entry, `token_jti` = `cached:<jti of the exchange that obtained it>`) before it is served;
  3. a miss: mint a broker token (which records the grant first) and let the cloud's exchanger
     trade it; a failed exchange withdraws the grant, so a refused request consumes nothing.
`refill` is step 3 alone for a binding and an actor, with no caller (a scheduled refresh).
It never talks to a cloud itself and never logs (the handler does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cache import Fill, Served
from .clouds import Credentials, Exchanger, Request
from .errors import InvalidTarget
from .minting import Actor, Authorization, Broker, Issued, Signed
from .model import Binding

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
        cloud = self._exchanger.provider
        if auth.target.provider != cloud:
            raise InvalidTarget(
                f"target {auth.target.ref!r} has provider {auth.target.provider}; "
                f"/exchange/{cloud} serves {cloud} targets only",
                "wrong_provider",
            )
        served = self._cache.get(auth.binding, self._fill(issuer, auth.binding, auth.caller.subject,
                                                          lambda: self._broker.mint(auth)))
        if served.from_cache:
            self._broker.record(auth, token_jti=CACHED_PREFIX + served.source, expires_at=served.credentials.expires_at)
        return Outcome(auth, served)

    def refill(self, binding: Binding, issuer: str, actor: Actor) -> Served:
        """New credentials for `binding`, stored in the cache under its lease, for `actor` (no caller):
        a token is signed and its grant recorded as for a caller, and withdrawn if the cloud refuses."""
        return self._cache.refill(binding, self._fill(issuer, binding, actor.subject,
                                                      lambda: self._broker.sign(issuer, binding, actor)))

    def _fill(self, issuer: str, binding: Binding, who: str, sign: Callable[[], Issued | Signed]) -> Fill:
        """What the cache calls on a miss: sign (recording the grant), then exchange; `who` names the
        caller (or actor) in the cloud's audit trail."""
        def fill() -> tuple[Credentials, str]:
            signed = sign()
            request = Request(target=binding.target, token=signed.token, issuer=issuer,
                              subject=str(binding.subject), caller=who)
            try:
                credentials = self._exchanger.exchange(request)
            except BaseException:
                # The broker token obtained nothing: the caller may try again with the same CI token.
                with contextlib.suppress(Exception):
                    self._broker.withdraw(signed)
                raise
            return credentials, signed.claims["jti"]

        return fill
