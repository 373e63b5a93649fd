"""Minting: from a verified caller and a requested target to a signed broker token.

The one path every credential takes (the token endpoint and each cloud exchange call it):
verify the caller, resolve the target, find the trust rule, build the subject, record the grant
(replay guard and audit entry, before anything is signed), sign. Nothing is signed for a caller
whose grant could not be recorded, and a grant whose token could not be signed is withdrawn.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import callers, subject, tokens
from .config import Config, Target, TrustRule
from .errors import InvalidGrant, InvalidTarget, ServerError
from .keys import KeyRing
from .store import AlreadyUsed, Grant

# How long past the caller token's exp (plus leeway) its grant is kept as a replay guard.
REPLAY_MARGIN = 300
AUDIT_RETENTION = 90 * 24 * 3600


class Signer(Protocol):
    def sign(self, key_arn: str, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Issued:
    token: str
    claims: dict[str, Any]
    target: Target
    rule: TrustRule
    caller: callers.VerifiedCaller

    @property
    def expires_in(self) -> int:
        return self.claims["exp"] - self.claims["iat"]


class Broker:
    def __init__(
        self,
        *,
        config: Callable[[], Config],
        caller_keys: callers.IssuerKeys,
        key_ring: KeyRing,
        signer: Signer,
        store: Any,
        clock: Callable[[], float],
        leeway: int = callers.LEEWAY,
    ):
        self._config = config
        self._caller_keys = caller_keys
        self._key_ring = key_ring
        self._signer = signer
        self._store = store
        self._clock = clock
        self._leeway = leeway

    def issue(self, subject_token: str, audience: str, issuer: str) -> Issued:
        """Mint a token for `audience` (<space>/<target>) to the caller `subject_token` proves."""
        config = self._config()
        if config.issuer != issuer:
            raise ServerError("the broker's configuration names another issuer than this deployment", "issuer_mismatch")
        now = self._clock()
        caller = callers.verify(subject_token, config, self._caller_keys, now, self._leeway)
        target = config.target(audience)
        if target is None:
            raise InvalidTarget(f"audience {audience!r} is not a known <space>/<target>", "unknown_target")
        rule = callers.admit(config, caller, target)
        values = {"space": target.space, target.kind: target.name, **callers.context_values(rule, caller)}
        try:
            subj = subject.build(target.subject_keys, values, target.provider)
        except subject.SubjectError as e:
            raise InvalidGrant(str(e), "invalid_subject") from None

        key = self._key_ring.signing_key()
        if key is None:
            raise ServerError("the key ring has no active signing key", "no_signing_key")
        issued_at = int(now)
        actor = tokens.Caller(issuer=caller.issuer.issuer, subject=caller.subject, rule=rule.name)
        body = tokens.claims(issuer=issuer, target=target, subject=subj, caller=actor, now=issued_at, jti=str(uuid.uuid4()))
        message = tokens.signing_input(tokens.header(key.kid), body)

        grant = Grant(
            caller_issuer=caller.issuer.issuer,
            caller_subject=caller.subject,
            caller_jti=caller.jti,
            trust_rule=rule.name,
            target=target.ref,
            subject=body["sub"],
            audience=target.audience,
            token_jti=body["jti"],
            issued_at=issued_at,
            token_expires_at=body["exp"],
            keep_until=max(int(caller.claims["exp"]) + self._leeway + REPLAY_MARGIN, issued_at + AUDIT_RETENTION),
        )
        try:
            self._store.record_grant(grant)
        except AlreadyUsed:
            raise InvalidGrant(f"subject_token was already used for target {target.ref!r}", "replayed") from None
        try:
            signature = self._signer.sign(key.key_arn, message)
        except Exception:
            self._store.withdraw_grant(grant)
            raise
        return Issued(tokens.assemble(message, signature), body, target, rule, caller)
