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

from . import callers, subject, tokens
from .errors import BrokerError, InvalidGrant, InvalidTarget, ServerError
from .keys import KeyRing
from .model import Binding, Config, Target, TrustRule
from .store import AlreadyUsed, Grant
from .validation import MAX_LIFETIME, MIN_LIFETIME

# How long past the caller token's last usable moment (plus leeway) its grant is kept as a replay guard.
REPLAY_MARGIN = 300
AUDIT_RETENTION = 90 * 24 * 3600
TOO_LARGE = "minted_token_too_large"


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
class Signed:
    """A token signed for a binding, and the grant recorded for it before it was signed."""

    token: str
    claims: dict[str, Any]
    grant: Grant = field(repr=False)


@dataclass(frozen=True)
class Actor:
    """Who a token is minted for: named in its `act` claim and recorded in its grant. A verified
    caller (Authorization.actor), or the broker's own work, which has none (a scheduled refresh)."""

    issuer: str
    subject: str
    jti: str  # the grant's key with the target: a caller token's jti (the replay guard), or a fresh id
    trust_rule: str  # the rule that admitted the caller, or what the work is
    usable_until: int = 0  # the caller token's last usable moment, leeway included: its grant outlives it


@dataclass(frozen=True)
class Authorization:
    """A caller verified and admitted to a target, and the subject it gets: nothing recorded yet."""

    issuer: str  # the broker's issuer URL
    caller: callers.VerifiedCaller
    target: Target
    rule: TrustRule
    subject: subject.Subject

    @property
    def binding(self) -> Binding:
        return Binding(self.target, self.subject)

    @property
    def actor(self) -> Actor:
        caller = self.caller
        # The caller token is refused past exp or past iat + max_token_age (each plus leeway), whichever
        # comes first: its replay guard need not outlive that, whatever exp the caller wrote.
        usable_until = min(int(caller.claims["exp"]), int(caller.claims["iat"]) + caller.issuer.max_token_age)
        return Actor(issuer=caller.issuer.issuer, subject=caller.subject, jti=caller.jti, trust_rule=self.rule.name,
                     usable_until=usable_until + caller.issuer.leeway)


class Broker:
    def __init__(
        self,
        *,
        config: Callable[[], Config],
        issuer_keys: callers.IssuerKeys,
        key_ring: KeyRing,
        signer: Signer,
        store: Any,
        clock: Callable[[], float],
    ):
        self._config = config
        self._issuer_keys = issuer_keys
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
        caller = callers.verify(subject_token, config, self._issuer_keys, now)
        try:
            target = config.target(audience)
            if target is None:
                raise InvalidTarget(f"audience {audience!r} is not a known <space>/<target>", "unknown_target")
            rule = callers.admit(config, caller, target)
            try:
                subj = target.subject_for(callers.context_values(rule, caller, target))
            except subject.SubjectError as e:
                raise InvalidGrant(str(e), "invalid_subject") from None
        except BrokerError as e:
            e.caller = caller
            raise
        return Authorization(issuer=issuer, caller=caller, target=target, rule=rule, subject=subj)

    def mint(self, auth: Authorization, *, lifetime: int | None = None) -> Issued:
        """Record the grant (replay guard and audit entry), then sign; a failed signature withdraws it."""
        try:
            signed = self.sign(auth.issuer, auth.binding, auth.actor, lifetime=lifetime)
        except InvalidGrant as e:
            if e.reason == TOO_LARGE:
                e.caller = auth.caller
            raise
        return Issued(signed.token, signed.claims, auth.target, auth.rule, auth.caller, signed.grant)

    def sign(self, issuer: str, binding: Binding, actor: Actor, *, lifetime: int | None = None) -> Signed:
        """A token for `binding` naming `actor`, with no caller to verify: the grant is recorded first
        (AlreadyUsed: refused as replayed), then KMS signs; a failed signature withdraws the grant.

        `issuer` is the broker's issuer URL. The binding must come from the applied configuration:
        nothing here checks that a trust rule admits the actor (authorize does, for callers).
        `lifetime` replaces the target's (an exchanger's choice), within the bounds a target's has.
        """
        if lifetime is not None and not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
            raise ServerError(f"a broker token cannot live {lifetime}s: from {MIN_LIFETIME}s to {MAX_LIFETIME}s",
                              "invalid_token_lifetime")
        key = self._key_ring.signing_key()
        if key is None:
            raise ServerError("the key ring has no active signing key", "no_signing_key")
        issued_at = int(self._clock())
        target = binding.target
        body = tokens.claims(issuer=issuer, target=target, subject=binding.subject,
                             caller=tokens.Caller(issuer=actor.issuer, subject=actor.subject), now=issued_at,
                             jti=str(uuid.uuid4()), lifetime=lifetime)
        try:
            message = tokens.signing_input(tokens.header(key.kid), body)
        except tokens.TooLarge as e:
            # The caller's sub (act.sub) is what varies between the tokens of one target.
            raise InvalidGrant(f"the broker token for this caller would be {e.size} bytes to sign; KMS signs at most "
                               f"{tokens.MAX_SIGNING_INPUT}: the caller's sub is too long for target {target.ref!r}",
                               TOO_LARGE) from None

        grant = self._grant(actor, binding, token_jti=body["jti"], issued_at=issued_at, expires_at=body["exp"])
        self._record(grant)
        try:
            signature = self._signer.sign(key.key_arn, message)
        except Exception:
            self._store.withdraw_grant(grant)
            raise
        return Signed(tokens.assemble(message, signature), body, grant)

    def record(self, auth: Authorization, *, token_jti: str, expires_at: int) -> Grant:
        """Record a grant for credentials served without minting (a cache hit): replay guard and audit entry."""
        grant = self._grant(auth.actor, auth.binding, token_jti=token_jti, issued_at=int(self._clock()),
                            expires_at=expires_at)
        self._record(grant)
        return grant

    def withdraw(self, issued: Issued | Signed) -> None:
        """Undo the grant of a token that obtained nothing, so the caller token stays usable."""
        if issued.grant is not None:
            self._store.withdraw_grant(issued.grant)

    def _grant(self, actor: Actor, binding: Binding, *, token_jti: str, issued_at: int, expires_at: int) -> Grant:
        return Grant(
            caller_issuer=actor.issuer,
            caller_subject=actor.subject,
            caller_jti=actor.jti,
            trust_rule=actor.trust_rule,
            target=binding.target.ref,
            subject=str(binding.subject),
            audience=binding.target.audience,
            token_jti=token_jti,
            issued_at=issued_at,
            token_expires_at=int(expires_at),
            keep_until=max(actor.usable_until + REPLAY_MARGIN, issued_at + AUDIT_RETENTION),
        )

    def _record(self, grant: Grant) -> None:
        try:
            self._store.record_grant(grant)
        except AlreadyUsed:
            raise InvalidGrant(f"subject_token was already used for target {grant.target!r}", "replayed") from None
