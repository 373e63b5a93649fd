"""Minting: from a verified caller and a requested target to a signed broker token.

The one path every credential takes (the token endpoint and each cloud exchange call it):
`authorize` verifies the caller, resolves the target, finds the trust rule and builds the subject,
with no side effect; `mint` records the grant (replay guard and audit entry, before anything is
signed) and signs; `issue` is both. Nothing is signed for a caller whose grant could not be
recorded, and a grant whose token could not be signed is withdrawn. `record` writes the grant for
credentials served from the cache without minting; `withdraw` undoes the grant of a token that
obtained nothing from its cloud.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import callers, observe, subject, tokens
from .config import Config, Target, TrustRule
from .errors import BrokerError, InvalidGrant, InvalidTarget, ServerError
from .keys import KeyRing
from .store import AlreadyUsed, Grant

# How long past the caller token's last usable moment (plus leeway) its grant is kept as a replay guard.
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
    grant: Grant | None = field(default=None, repr=False)

    @property
    def expires_in(self) -> int:
        return self.claims["exp"] - self.claims["iat"]


@dataclass(frozen=True)
class Authorization:
    """A caller verified and admitted to a target, and the subject it gets: nothing recorded yet."""

    issuer: str  # the broker's issuer URL
    caller: callers.VerifiedCaller
    target: Target
    rule: TrustRule
    subject: subject.Subject


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
    ):
        self._config = config
        self._caller_keys = caller_keys
        self._key_ring = key_ring
        self._signer = signer
        self._store = store
        self._clock = clock

    def issue(self, subject_token: str, audience: str, issuer: str) -> Issued:
        """Mint a token for `audience` (<space>/<target>) to the caller `subject_token` proves."""
        return self.mint(self.authorize(subject_token, audience, issuer))

    def authorize(self, subject_token: str, audience: str, issuer: str) -> Authorization:
        """Verify the caller, admit it to the target, build the subject. Records and signs nothing."""
        config = self._config()
        if config.issuer != issuer:
            raise ServerError("the broker's configuration names another issuer than this deployment", "issuer_mismatch",
                              log={"configured_issuer": config.issuer, "deployment_issuer": issuer})
        now = self._clock()
        caller = callers.verify(subject_token, config, self._caller_keys, now)
        try:
            target = config.target(audience)
            if target is None:
                raise InvalidTarget(f"audience {audience!r} is not a known <space>/<target>", "unknown_target")
            rule = callers.admit(config, caller, target)
            values = {"space": target.space, target.kind: target.name, **callers.context_values(rule, caller, target)}
            try:
                subj = subject.build(target.subject_keys, values, target.provider)
            except subject.SubjectError as e:
                raise InvalidGrant(str(e), "invalid_subject") from None
        except BrokerError as e:
            e.caller = observe.caller_keys(caller)
            raise
        return Authorization(issuer=issuer, caller=caller, target=target, rule=rule, subject=subj)

    def mint(self, auth: Authorization) -> Issued:
        """Record the grant (replay guard and audit entry), then sign; a failed signature withdraws it."""
        key = self._key_ring.signing_key()
        if key is None:
            raise ServerError("the key ring has no active signing key", "no_signing_key")
        issued_at = int(self._clock())
        caller, target, rule = auth.caller, auth.target, auth.rule
        actor = tokens.Caller(issuer=caller.issuer.issuer, subject=caller.subject)
        body = tokens.claims(issuer=auth.issuer, target=target, subject=auth.subject, caller=actor, now=issued_at,
                             jti=str(uuid.uuid4()))
        try:
            message = tokens.signing_input(tokens.header(key.kid), body)
        except tokens.TooLarge as e:
            # The caller's sub (act.sub) is what varies between the tokens of one target.
            error = InvalidGrant(f"the broker token for this caller would be {e.size} bytes to sign; KMS signs at most "
                                 f"{tokens.MAX_SIGNING_INPUT}: the caller's sub is too long for target {target.ref!r}",
                                 "minted_token_too_large")
            error.caller = observe.caller_keys(caller)
            raise error from None

        grant = self._grant(auth, token_jti=body["jti"], issued_at=issued_at, expires_at=body["exp"])
        self._record(grant)
        try:
            signature = self._signer.sign(key.key_arn, message)
        except Exception:
            self._store.withdraw_grant(grant)
            raise
        return Issued(tokens.assemble(message, signature), body, target, rule, caller, grant)

    def record(self, auth: Authorization, *, token_jti: str, expires_at: int) -> Grant:
        """Record a grant for credentials served without minting (a cache hit): replay guard and audit entry."""
        grant = self._grant(auth, token_jti=token_jti, issued_at=int(self._clock()), expires_at=expires_at)
        self._record(grant)
        return grant

    def withdraw(self, issued: Issued) -> None:
        """Undo the grant of a token that obtained nothing, so the caller token stays usable."""
        if issued.grant is not None:
            self._store.withdraw_grant(issued.grant)

    def _grant(self, auth: Authorization, *, token_jti: str, issued_at: int, expires_at: int) -> Grant:
        caller = auth.caller
        # The caller token is refused past exp or past iat + max_token_age (each plus leeway), whichever
        # comes first: its replay guard need not outlive that, whatever exp the caller wrote.
        usable_until = min(int(caller.claims["exp"]), int(caller.claims["iat"]) + caller.issuer.max_token_age)
        return Grant(
            caller_issuer=caller.issuer.issuer,
            caller_subject=caller.subject,
            caller_jti=caller.jti,
            trust_rule=auth.rule.name,
            target=auth.target.ref,
            subject=str(auth.subject),
            audience=auth.target.audience,
            token_jti=token_jti,
            issued_at=issued_at,
            token_expires_at=int(expires_at),
            keep_until=max(usable_until + caller.issuer.leeway + REPLAY_MARGIN, issued_at + AUDIT_RETENTION),
        )

    def _record(self, grant: Grant) -> None:
        try:
            self._store.record_grant(grant)
        except AlreadyUsed:
            raise InvalidGrant(f"subject_token was already used for target {grant.target!r}", "replayed") from None
