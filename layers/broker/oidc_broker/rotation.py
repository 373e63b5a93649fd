"""Signing-key rotation: the lifecycle, the plan of due transitions, and the executor that applies them.

  pending --(published >= publication_delay, and the active key is `period` old or a rotation was
             requested)--> active --(in the same transaction)--> retired --(a newer key retired
             after it, and retired >= retention)--> removed (KMS key disabled, deletion scheduled)
  revoke: out of the JWKS at once (an active key's place taken by the pending key at once).

Publish before use: a verifier that fetched the JWKS just before a key entered the ring still has
it `jwks_max_age` later, and each function's key ring cache lags `ring_ttl`; so a pending key may
sign only after `publication_delay`. Keep after retire: tokens signed by a retired key live up to
`max_token_lifetime`, plus the same caches, so it stays published at least `retention`.

`plan` is pure (entries, a time, the lifecycle). `Rotation` applies the plan with the store and
KMS: each change of the ring is one conditional transaction on the ring's version, so two runs at
once cannot both change it, and the loser of a race for the pending key schedules the deletion of
the KMS key it made. Each change also stores the sealed JWKS of the ring as changed, rendered from
the sealed entries only; a run (and the key ring resource at deploy) renders it again when the
stored one is missing, for another version, or not what the entries render. Never leaves the ring
without an active key. Never logs; the shell does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .clouds import Backoff
from .clouds.aws import error_code
from .errors import InvalidRequest, quoted
from .keys import (ACTIVE, JWKS_MAX_AGE, LEGACY_PENDING, PENDING, RETIRED, REVOKED, RING_TTL, KeyEntry, RenderedJwks,
                   Seal, admit, jwks_body, public_entry)
from .validation import MAX_LIFETIME

DAY = 86400
DELETION_WINDOW_DAYS = 30  # KMS's longest waiting period: time to notice a key removed by mistake
STACK_TAG, PURPOSE_TAG = "oidc-broker:stack", "oidc-broker:purpose"
# The states a stored item may be in for each state the plan reads (rings before rotation say `next`).
STORED_STATES = {PENDING: (PENDING, LEGACY_PENDING), ACTIVE: (ACTIVE,), RETIRED: (RETIRED,), REVOKED: (REVOKED,)}
MAX_ROUNDS = 12  # changes one run applies at most (a whole cycle is four); a conflict costs a round
_BUSY = "the key ring kept changing under this run (other runs at the same time); nothing was done: try again"


@dataclass(frozen=True)
class Lifecycle:
    """How long keys live and are published, in seconds; the derived delays follow from the caches."""

    period: int = 90 * DAY  # how long a key signs before the next one takes over
    jwks_max_age: int = JWKS_MAX_AGE  # the JWKS response's Cache-Control max-age
    ring_ttl: int = RING_TTL  # each function's in-memory key ring cache
    max_token_lifetime: int = MAX_LIFETIME
    margin: int = 30  # clock skew and requests in flight (a function's timeout)

    @property
    def publication_delay(self) -> int:
        """How long a pending key is published before it may sign."""
        return self.jwks_max_age + self.ring_ttl + self.margin

    @property
    def retention(self) -> int:
        """How long a retired key stays published at least."""
        return self.max_token_lifetime + self.jwks_max_age + self.ring_ttl + self.margin

    @property
    def cached_for(self) -> int:
        """How long a verifier or a function may still hold a key the ring no longer has."""
        return self.jwks_max_age + self.ring_ttl

    def report(self) -> dict[str, int]:
        return {"period": self.period, "jwks_max_age": self.jwks_max_age, "ring_ttl": self.ring_ttl,
                "publication_delay": self.publication_delay, "retention": self.retention}


@dataclass(frozen=True)
class Step:
    step: str  # create | activate | retire | remove | revoke
    kid: str | None  # None for a key not created yet
    at: int
    from_state: str | None = None
    to_state: str | None = None

    def report(self) -> dict[str, Any]:
        return {"step": self.step, "kid": self.kid, "at": self.at}


# -- the plan (pure) ---------------------------------------------------------------------------------


def _newest(entries: Sequence[KeyEntry], state: str) -> KeyEntry | None:
    found = [e for e in entries if e.state == state]
    return max(found, key=lambda e: (e.created_at, e.kid)) if found else None


def activation_time(entries: Sequence[KeyEntry], lifecycle: Lifecycle, rotate_requested_at: int | None) -> int | None:
    """When the pending key takes over: it is published long enough, and the active key is due
    (its period is over, or a rotation was requested). None without a pending key."""
    pending, active = _newest(entries, PENDING), _newest(entries, ACTIVE)
    if pending is None:
        return None
    ready = pending.since_published + lifecycle.publication_delay
    if active is None:
        return ready
    due = active.since_active + lifecycle.period
    if rotate_requested_at is not None:
        due = min(due, rotate_requested_at)
    return max(ready, due)


def _removable_at(entries: Sequence[KeyEntry], entry: KeyEntry, lifecycle: Lifecycle,
                  rotate_requested_at: int | None) -> int | None:
    """When a retired key may leave the ring: once retired `retention` and a newer key has retired after it."""
    kept = entry.retired_at if entry.retired_at is not None else entry.created_at
    newer = [e for e in entries if e.state == RETIRED and e is not entry and (e.retired_at or 0) > kept]
    if newer:
        return kept + lifecycle.retention
    # Until the active key retires, this is the previous key: kept.
    next_retirement = activation_time(entries, lifecycle, rotate_requested_at)
    if next_retirement is None:
        active = _newest(entries, ACTIVE)
        next_retirement = active.since_active + lifecycle.period if active else None
    return None if next_retirement is None else max(kept + lifecycle.retention, next_retirement)


def outlook(entries: Sequence[KeyEntry], now: int, lifecycle: Lifecycle,
            rotate_requested_at: int | None = None) -> dict[str, Step]:
    """Each key's next step and when it falls due (times may be past: due now)."""
    steps: dict[str, Step] = {}
    activation = activation_time(entries, lifecycle, rotate_requested_at)
    pending, active = _newest(entries, PENDING), _newest(entries, ACTIVE)
    for entry in entries:
        if entry.state == REVOKED:
            steps[entry.kid] = Step("remove", entry.kid, now, REVOKED)
        elif entry is pending and activation is not None:
            steps[entry.kid] = Step("activate", entry.kid, activation, PENDING, ACTIVE)
        elif entry is active:
            at = activation if activation is not None else entry.since_active + lifecycle.period
            steps[entry.kid] = Step("retire", entry.kid, at, ACTIVE, RETIRED)
        elif entry.state == RETIRED:
            at = _removable_at(entries, entry, lifecycle, rotate_requested_at)
            if at is not None:
                steps[entry.kid] = Step("remove", entry.kid, at, RETIRED)
        elif entry.state in (PENDING, ACTIVE):
            # A second key in one of these states (a ring edited by hand): the newest one counts,
            # and this one retires.
            steps[entry.kid] = Step("retire", entry.kid, now, entry.state, RETIRED)
    return steps


def plan(entries: Sequence[KeyEntry], now: int, lifecycle: Lifecycle,
         rotate_requested_at: int | None = None) -> list[Step]:
    """Every transition due at `now`, in the order to apply them, each as if the ones before it were done.

    An activation retires the active key in the same step (the executor writes both at once). An
    empty ring plans nothing: its first key is the stack's, which the key ring resource registers.
    """
    ring = list(entries)
    steps: list[Step] = []
    if not ring:
        return steps
    for entry in ring:
        if entry.state == REVOKED:
            steps.append(Step("remove", entry.kid, now, REVOKED))
    ring = [e for e in ring if e.state != REVOKED]

    extra = [e for e in ring if e.state in (PENDING, ACTIVE) and e is not _newest(ring, e.state)]
    for entry in extra:
        steps.append(Step("retire", entry.kid, now, entry.state, RETIRED))
    ring = [replace(e, state=RETIRED, retired_at=now) if e in extra else e for e in ring]

    activation = activation_time(ring, lifecycle, rotate_requested_at)
    if activation is not None and activation <= now:
        pending, active = _newest(ring, PENDING), _newest(ring, ACTIVE)
        steps.append(Step("activate", pending.kid, now, PENDING, ACTIVE))
        if active is not None:
            steps.append(Step("retire", active.kid, now, ACTIVE, RETIRED))
        ring = [replace(e, state=ACTIVE, activated_at=now) if e is pending else
                replace(e, state=RETIRED, retired_at=now) if e is active else e for e in ring]
        rotate_requested_at = None

    for entry in ring:
        if entry.state == RETIRED:
            at = _removable_at(ring, entry, lifecycle, rotate_requested_at)
            if at is not None and at <= now:
                steps.append(Step("remove", entry.kid, now, RETIRED))
    ring = [e for e in ring if not any(s.step == "remove" and s.kid == e.kid for s in steps)]

    if _newest(ring, PENDING) is None and _newest(ring, ACTIVE) is not None:
        steps.append(Step("create", None, now, None, PENDING))
    return steps


# -- the key policy of a signing key (pure) ----------------------------------------------------------

KEY_ADMINISTRATION = [
    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Revoke*",
    "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
]


def signing_key_policy(*, account_root: Any, signers: Sequence[Any], readers: Sequence[Any], rotator: Any) -> dict[str, Any]:
    """The key policy of every signing key: the template's SigningKey and each key rotation creates.

    The account administers but cannot use the key (so no IAM policy can grant kms:Sign with it);
    only the minting functions sign, only RS256; the key ring and rotation functions read the
    public key; only the rotation function disables it and schedules its deletion. Principals are
    ARNs (or, in the template, the expressions that give them).
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AccountAdministers", "Effect": "Allow", "Principal": {"AWS": account_root},
             "Action": list(KEY_ADMINISTRATION), "Resource": "*"},
            {"Sid": "MintingFunctionsSign", "Effect": "Allow", "Principal": {"AWS": list(signers)},
             "Action": "kms:Sign", "Resource": "*",
             "Condition": {"StringEquals": {"kms:SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"}}},
            {"Sid": "KeyRingFunctionsReadThePublicKey", "Effect": "Allow", "Principal": {"AWS": list(readers)},
             "Action": "kms:GetPublicKey", "Resource": "*"},
            {"Sid": "RotationFunctionRemovesTheKey", "Effect": "Allow", "Principal": {"AWS": rotator},
             "Action": ["kms:DisableKey", "kms:ScheduleKeyDeletion"], "Resource": "*"},
        ],
    }


def account_root(role_arn: str) -> str:
    """arn:<partition>:iam::<account>:root of the account a role ARN belongs to."""
    parts = role_arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] != "iam" or not parts[4].isdigit():
        raise ValueError(f"not an IAM role ARN: {role_arn!r}")
    return f"arn:{parts[1]}:iam::{parts[4]}:root"


@dataclass(frozen=True)
class NewKeys:
    """What a key rotation creates: its key policy, tags and description."""

    policy: dict[str, Any] | None  # None: the roles are not known (KEY_POLICY_ROTATOR unset)
    stack: str

    def create_key_request(self) -> dict[str, Any]:
        if self.policy is None or not self.stack:
            raise ValueError("cannot create a signing key: KEY_POLICY_ROTATOR and STACK_NAME must name the "
                             "rotation function's role and the stack (the template sets them)")
        return {
            "Description": f"oidc-broker token signing key ({self.stack}); RS256 via RSASSA_PKCS1_V1_5_SHA_256; "
                           "created by key rotation",
            "KeySpec": "RSA_2048",
            "KeyUsage": "SIGN_VERIFY",
            "Policy": json.dumps(self.policy, separators=(",", ":")),
            "Tags": [{"TagKey": STACK_TAG, "TagValue": self.stack}, {"TagKey": PURPOSE_TAG, "TagValue": "signing"}],
            # The policy lockout safety check wants the caller able to PutKeyPolicy on the new key;
            # the rotation role must not be (it could grant itself kms:Sign). The account root
            # keeps kms:Put*, so the key never becomes unmanageable.
            "BypassPolicyLockoutSafetyCheck": True,
        }


# -- the executor ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One run: the steps applied, KMS keys made and left out of the ring (deletion scheduled), and
    the report for the operator."""

    steps: list[Step] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # kids
    conflicts: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    refused: list[tuple[KeyEntry, str]] = field(default_factory=list)
    active_age: int | None = None
    restored_jwks: int | None = None  # the ring version whose JWKS this run stored anew (missing or not the ring's)


@dataclass(frozen=True)
class _Ring:
    entries: list[KeyEntry]
    refused: list[tuple[KeyEntry, str]]
    version: int
    rotate_requested_at: int | None
    jwks: RenderedJwks | None = None


def changed(entries: Sequence[KeyEntry], put: Sequence[tuple[KeyEntry, Any]] = (),
            delete: Sequence[tuple[str, Any]] = ()) -> list[KeyEntry]:
    """The entries once `put` and `delete` (as Store.change_key_ring takes them) are applied."""
    replacing = {entry.kid: entry for entry, _ in put}
    gone = {kid for kid, _ in delete}
    kept = [replacing.pop(e.kid, e) for e in entries if e.kid not in gone]
    return kept + [e for kid, e in replacing.items() if kid not in gone]


def sealed_jwks(seal: Seal, entries: Sequence[KeyEntry], version: int) -> RenderedJwks:
    """The JWKS of `entries` (admitted ones only) as `version`, sealed."""
    rendered = RenderedJwks.of(entries, version)
    return replace(rendered, seal=seal.make(rendered))


def renders_current(stored: RenderedJwks | None, version: int, entries: Sequence[KeyEntry], seal: Seal) -> bool:
    """Whether the stored JWKS is the one to serve for the ring at `version` with these (admitted) entries."""
    return (stored is not None and stored.version == version and stored.body == jwks_body(entries)
            and seal.verifies(stored))


class Rotation:
    """Applies the plan to the ring (store) and its KMS keys; every action answers with a report.

    `status` changes nothing; `run` (the schedule) applies what is due; `rotate` requests a
    rotation, applied at once when the pending key is published long enough; `revoke` removes a
    key at once. Only sealed entries count, and every entry this writes is sealed.
    """

    def __init__(self, store: Any, kms: Any, seal: Seal, lifecycle: Lifecycle, clock: Callable[[], float],
                 new_keys: NewKeys, backoff: Backoff | None = None):
        self._store = store
        self._kms = kms
        self._seal = seal
        self.lifecycle = lifecycle
        self._clock = clock
        self._new_keys = new_keys
        # A new key's policy takes a moment to reach every KMS host: GetPublicKey may not find it yet.
        self._backoff = backoff or Backoff(attempts=5, base=0.25, cap=2.0)

    def now(self) -> int:
        return int(self._clock())

    # -- actions ------------------------------------------------------------------------------
    def status(self) -> Outcome:
        return self._finish(Outcome())

    def run(self) -> Outcome:
        outcome = Outcome()
        self._apply_due(outcome)
        return self._finish(outcome)

    def rotate(self) -> Outcome:
        """Request a rotation now; it takes effect once the pending key is published long enough."""
        outcome = Outcome()
        for _ in range(MAX_ROUNDS):
            ring = self._load()
            if ring.rotate_requested_at is not None:
                break
            if self._change(ring, self.now()):
                break
            outcome.conflicts += 1
        else:
            raise RuntimeError(_BUSY)
        self._apply_due(outcome)
        return self._finish(outcome)

    def revoke(self, kid: str) -> Outcome:
        """Take a key out of the ring at once; an active key's place goes to the pending key at once."""
        outcome = Outcome()
        for _ in range(MAX_ROUNDS):
            ring = self._load()
            entry = next((e for e in ring.entries if e.kid == kid), None)
            if entry is None:
                raise InvalidRequest(f"no key {quoted(kid)} in the key ring; `oidc-broker keys list` shows its keys",
                                     "unknown_kid")
            if entry.state == REVOKED:
                break
            now = self.now()
            revoked = replace(entry, state=REVOKED, retired_at=entry.retired_at or now)
            put = [(revoked, STORED_STATES[entry.state])]
            pending = None
            if entry.state == ACTIVE:
                pending = _newest(ring.entries, PENDING)
                if pending is None:
                    # Never without an active key: make the successor first, then look again.
                    self._create(ring, outcome)
                    continue
                put.append((replace(pending, state=ACTIVE, activated_at=now), STORED_STATES[PENDING]))
            requested = None if pending is not None else ring.rotate_requested_at
            if self._change(ring, requested, put=put):
                outcome.steps.append(Step("revoke", kid, now, entry.state, REVOKED))
                if pending is not None:
                    outcome.steps.append(Step("activate", pending.kid, now, PENDING, ACTIVE))
                break
            outcome.conflicts += 1
        else:
            raise RuntimeError(_BUSY)
        self._apply_due(outcome)
        return self._finish(outcome, revoked=kid)

    # -- applying the plan ----------------------------------------------------------------------
    def _apply_due(self, outcome: Outcome) -> None:
        for _ in range(MAX_ROUNDS):
            ring = self._load()
            steps = plan(ring.entries, self.now(), self.lifecycle, ring.rotate_requested_at)
            if not steps:
                if renders_current(ring.jwks, ring.version, ring.entries, self._seal):
                    return
                # A ring from before the JWKS was stored with it, or one changed around this code.
                if self._change(ring, ring.rotate_requested_at):
                    outcome.restored_jwks = ring.version + 1
                else:
                    outcome.conflicts += 1
                continue
            first = steps[0]
            if first.step == "create":
                applied = self._create(ring, outcome)
            elif first.step == "remove":
                applied = self._remove(ring, first, outcome)
            else:  # activate (with the retire it brings) or a lone retire
                together = [first] + ([steps[1]] if first.step == "activate" and len(steps) > 1
                                      and steps[1].step == "retire" else [])
                applied = self._transition(ring, together, outcome)
            if not applied:
                outcome.conflicts += 1

    def _transition(self, ring: _Ring, steps: list[Step], outcome: Outcome) -> bool:
        by_kid = {e.kid: e for e in ring.entries}
        put = []
        for step in steps:
            entry = by_kid[step.kid]
            changed = (replace(entry, state=ACTIVE, activated_at=step.at) if step.to_state == ACTIVE
                       else replace(entry, state=RETIRED, retired_at=step.at))
            put.append((changed, STORED_STATES[entry.state]))
        activates = any(s.step == "activate" for s in steps)
        requested = None if activates else ring.rotate_requested_at
        if not self._change(ring, requested, put=put):
            return False
        outcome.steps.extend(steps)
        return True

    def _remove(self, ring: _Ring, step: Step, outcome: Outcome) -> bool:
        entry = next(e for e in ring.entries if e.kid == step.kid)
        # The KMS key first: should the run stop half way, the entry is still there to retry, and
        # a removed entry never leaves an enabled key behind.
        self._retire_kms_key(entry.key_arn)
        if not self._change(ring, ring.rotate_requested_at, delete=[(entry.kid, STORED_STATES[entry.state])]):
            return False
        outcome.steps.append(step)
        return True

    def _create(self, ring: _Ring, outcome: Outcome) -> bool:
        key_arn = self._kms.create_key(**self._new_keys.create_key_request())["KeyMetadata"]["Arn"]
        now = self.now()
        try:
            entry = self._backoff.call(lambda: public_entry(self._kms, key_arn, PENDING, now),
                                       retryable=lambda e: error_code(e) == "NotFoundException")
            entry = replace(entry, seal=self._seal.make(entry))
            added = self._change(ring, ring.rotate_requested_at, put=[(entry, ())])
        except Exception:
            self._retire_kms_key(key_arn)
            raise
        if not added:
            # Another run changed the ring first (and made its own pending key): this key is an orphan.
            self._retire_kms_key(key_arn)
            outcome.orphans.append(entry.kid)
            return False
        outcome.steps.append(Step("create", entry.kid, now, None, PENDING))
        return True

    def _retire_kms_key(self, key_arn: str) -> None:
        """Disable a key and schedule its deletion (the longest waiting period); done before is done."""
        key_id = key_arn.rsplit("/", 1)[-1]
        for operation in (lambda: self._kms.disable_key(KeyId=key_id),
                          lambda: self._kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=DELETION_WINDOW_DAYS)):
            try:
                operation()
            except Exception as e:
                # Pending deletion already (a run that stopped half way), or gone.
                if error_code(e) not in ("KMSInvalidStateException", "NotFoundException"):
                    raise

    def _change(self, ring: _Ring, rotate_requested_at: int | None, *, put=(), delete=()) -> bool:
        """One change of the ring as read, with the sealed JWKS it renders once changed; True when applied."""
        jwks = sealed_jwks(self._seal, changed(ring.entries, put, delete), ring.version + 1)
        return self._store.change_key_ring(ring.version, rotate_requested_at, jwks=jwks, put=put, delete=delete)

    def _load(self) -> _Ring:
        state = self._store.key_ring_state()
        entries, refused = admit((KeyEntry.from_item(item) for item in state.keys), self._seal)
        jwks = None if state.jwks is None else RenderedJwks.from_item(state.jwks)
        return _Ring(entries, refused, state.version, state.rotate_requested_at, jwks)

    # -- the report ------------------------------------------------------------------------------
    def _finish(self, outcome: Outcome, *, revoked: str | None = None) -> Outcome:
        ring = self._load()
        now = self.now()
        outcome.refused = ring.refused
        steps = outlook(ring.entries, now, self.lifecycle, ring.rotate_requested_at)
        active = _newest(ring.entries, ACTIVE)
        outcome.active_age = None if active is None else max(0, now - active.since_active)
        effective = activation_time(ring.entries, self.lifecycle, ring.rotate_requested_at) \
            if ring.rotate_requested_at is not None else None
        outcome.report = {
            "keys": [_key_report(e, steps.get(e.kid)) for e in _in_order(ring.entries)],
            "steps": [s.report() for s in outcome.steps],
            "rotate_requested_at": ring.rotate_requested_at,
            "effective_at": effective,
            "lifecycle": self.lifecycle.report(),
            "notices": self._notices(ring, outcome, now, effective, revoked),
        }
        return outcome

    def _notices(self, ring: _Ring, outcome: Outcome, now: int, effective: int | None, revoked: str | None) -> list[str]:
        life, notices = self.lifecycle, []
        pending = _newest(ring.entries, PENDING)
        if effective is not None and pending is not None:
            notices.append(f"rotation requested: {pending.kid} becomes the signing key at {effective} (epoch seconds), "
                           f"once it has been published {life.publication_delay}s (JWKS max-age {life.jwks_max_age}s "
                           f"+ key ring cache {life.ring_ttl}s + margin {life.margin}s: publish before use)")
        if revoked is not None:
            notices.append(f"verifiers may keep the revoked key {revoked} cached for up to {life.cached_for}s "
                           f"(JWKS max-age {life.jwks_max_age}s + key ring cache {life.ring_ttl}s)")
            notices.append("Google providers holding an uploaded JWKS must be updated now: `oidc-broker keys jwks` "
                           "prints the new one")
            taken_over = [s for s in outcome.steps if s.step == "activate"]
            if taken_over:
                successor = next((e for e in ring.entries if e.kid == taken_over[-1].kid), None)
                notices.append(f"{taken_over[-1].kid} signs now, at once (emergency): a verifier that fetched the JWKS "
                               f"before it was published may refuse its tokens until it fetches again")
                if successor is not None and now - successor.since_published < life.publication_delay:
                    notices.append(f"its publication delay ({life.publication_delay}s) had not passed")
                notices.append(f"token requests may fail for up to {life.ring_ttl}s, until every function's key "
                               "ring cache has the new signing key")
        for entry, reason in ring.refused:
            notices.append(f"key ring entry {entry.kid} is not sealed by this stack ({reason}): neither published "
                           "nor used; only the key ring and rotation functions write the ring")
        if pending is None and _newest(ring.entries, ACTIVE) is not None:
            notices.append("no pending key yet: the next scheduled run publishes one")
        if _newest(ring.entries, ACTIVE) is None:
            notices.append("the key ring has no active key: deploy the stack (its key ring resource registers the "
                           "stack's signing key)")
        if outcome.orphans:
            notices.append(f"another run changed the key ring at the same time; the keys this run made and did not "
                           f"use ({', '.join(outcome.orphans)}) are disabled and scheduled for deletion")
        return notices


def _in_order(entries: Sequence[KeyEntry]) -> list[KeyEntry]:
    order = {PENDING: 0, ACTIVE: 1, RETIRED: 2, REVOKED: 3}
    return sorted(entries, key=lambda e: (order.get(e.state, 4), -e.created_at, e.kid))


def _key_report(entry: KeyEntry, step: Step | None) -> dict[str, Any]:
    return {"kid": entry.kid, "state": entry.state, "created_at": entry.created_at,
            "published_at": entry.since_published, "activated_at": entry.activated_at,
            "retired_at": entry.retired_at, "next": None if step is None else {"step": step.step, "at": step.at}}


# -- the stack's own key (the key ring custom resource) ----------------------------------------------


def register_stack_key(store: Any, kms: Any, seal: Seal, key_arn: str, now: int) -> tuple[KeyEntry | None, str]:
    """Put the stack's signing key into the ring, sealed; (its entry or None, what was done).

    - an empty ring: the key becomes active ("registered");
    - the key is in the ring: its entry is sealed if it is not yet ("sealed"; rings from before the
      seal), else left alone ("unchanged");
    - the ring has other keys but not this one: a key that rotation has removed is never put back
      ("rotated_out"); a new stack key (the template's key replaced) joins as pending ("registered").
    Only ever seals the fields it reads from KMS itself, so a planted entry never gets a seal here.
    Whatever it does, the ring's stored JWKS is then current (rings from before it was stored).
    """
    for _ in range(MAX_ROUNDS):
        state = store.key_ring_state()
        entries = [KeyEntry.from_item(item) for item in state.keys]
        admitted, _ = admit(entries, seal)
        mine = next((e for e in entries if e.key_arn == key_arn), None)
        if mine is not None:
            true = public_entry(kms, key_arn, mine.state, mine.created_at)
            if true.kid != mine.kid or true.jwk != mine.jwk:
                raise ValueError(f"the key ring entry {mine.kid} names the stack's key with another public key")
            sealed = replace(mine, seal=seal.make(mine))
            entry, done, put = ((mine, "unchanged", []) if sealed.seal == mine.seal else
                                (sealed, "sealed", [(sealed, STORED_STATES[mine.state])]))
        elif entries and not _is_usable(kms, key_arn):
            entry, done, put = None, "rotated_out", []
        else:
            has_active = any(e.state == ACTIVE for e in entries)
            entry = public_entry(kms, key_arn, PENDING if has_active else ACTIVE, now)
            entry = replace(entry, seal=seal.make(entry))
            done, put = "registered", [(entry, ())]
        stored = None if state.jwks is None else RenderedJwks.from_item(state.jwks)
        if not put and renders_current(stored, state.version, admitted, seal):
            return entry, done
        jwks = sealed_jwks(seal, changed(admitted, put), state.version + 1)
        if store.change_key_ring(state.version, state.rotate_requested_at, jwks=jwks, put=put):
            return entry, done
    raise RuntimeError("the key ring kept changing while the stack's key was registered")


def _is_usable(kms: Any, key_arn: str) -> bool:
    try:
        kms.get_public_key(KeyId=key_arn)
    except Exception as e:
        if error_code(e) in ("DisabledException", "KMSInvalidStateException", "NotFoundException"):
            return False
        raise
    return True
