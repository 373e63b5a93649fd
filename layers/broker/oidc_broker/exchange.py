"""From a caller's CI token to a target's cloud credentials: authorize, then cache or exchange.

Owns the order every cloud exchange follows, whatever the cloud:
  1. verify the caller and admit it to the target (minting.Broker.authorize) on every request,
     before the cache is read;
  2. a fresh cache entry for the binding (target and subject): record a grant (replay guard and
     audit entry, `token_jti` = `cached:<jti of the exchange that obtained it>`) before it is served;
  3. a miss: mint a broker token (which records the grant first) and let the cloud's exchanger
     trade it; a failed exchange withdraws the grant, so a refused request consumes nothing.
     An exchanger that needs another token within one exchange (a cloud that refuses an assertion past
     its time window, so each token request presents a fresh one) calls `Request.mint`: each
     further token is signed with a grant of its own (the caller's jti + `#<n>`), recorded before
     it is signed and withdrawn with the first if the exchange fails.
`refill` is step 3 alone for a binding and an actor, with no caller (a scheduled refresh).
It never talks to a cloud itself and never logs (the handler does).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cache import Fill, Served
from .clouds import Credentials, Exchanger, Request, token_lifetime
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
        served = self._cache.get(auth.binding, self._fill(issuer, auth.binding, auth.actor,
                                                          lambda lifetime: self._broker.mint(auth, lifetime=lifetime)))
        if served.from_cache:
            self._broker.record(auth, token_jti=CACHED_PREFIX + served.source, expires_at=served.credentials.expires_at)
        return Outcome(auth, served)

    def refill(self, binding: Binding, issuer: str, actor: Actor, *, replacing: int | None = None) -> Served:
        """New credentials for `binding`, stored in the cache under its lease, for `actor` (no caller):
        a token is signed and its grant recorded as for a caller, and withdrawn if the cloud refuses.
        `replacing`: the issued_at of the entry to replace (cache.CredentialCache.refill)."""
        return self._cache.refill(binding, self._fill(issuer, binding, actor,
                                                      lambda lifetime: self._broker.sign(issuer, binding, actor,
                                                                                     lifetime=lifetime)),
                                  replacing=replacing)

    def _fill(self, issuer: str, binding: Binding, actor: Actor, sign: Callable[[int | None], Issued | Signed]) -> Fill:
        """What the cache calls on a miss: sign (recording the grant), then exchange; `actor`'s subject
        names the caller (or actor) in the cloud's audit trail. The token lives as long as the exchanger asks
        (clouds.token_lifetime), else the target's lifetime."""
        def fill() -> tuple[Credentials, str]:
            lifetime = token_lifetime(self._exchanger, binding.target)
            signed = sign(lifetime)
            tokens: list[Issued | Signed] = [signed]
            handed: list[bool] = []

            def mint() -> str:
                # The first call gets the token just signed; each later one a new token, its own grant first.
                if not handed:
                    handed.append(True)
                    return signed.token
                again = dataclasses.replace(actor, jti=f"{actor.jti}#{len(tokens)}")
                tokens.append(self._broker.sign(issuer, binding, again, lifetime=lifetime))
                return tokens[-1].token

            request = Request(target=binding.target, token=signed.token, issuer=issuer,
                              subject=str(binding.subject), caller=actor.subject, mint=mint)
            try:
                credentials = self._exchanger.exchange(request)
            except BaseException:
                # The broker tokens obtained nothing: the caller may try again with the same CI token.
                for token in tokens:
                    with contextlib.suppress(Exception):
                        self._broker.withdraw(token)
                raise
            return credentials, signed.claims["jti"]

        return fill
