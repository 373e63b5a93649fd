"""The scheduled credential refresh: which cached credentials to renew before callers need them, and renewing them.

Owns the decision (`plan`: pure, over the configuration, what the cache's entries say of themselves
and a clock) and the run (`Refresher`: each due binding refilled through its cloud's Exchange under
the cache's lease, a few at a time, one failure never stopping the others). It renews targets with
`refresh: true` only, an entry before its `refresh_at` share of lifetime has passed (so callers keep
being served from the cache), and:
  - subjects the configuration fixes (every value from the configuration) always, even before any
    caller came: they are warmed;
  - subjects that take a value from a caller's claim only for values a caller was served recently
    (the entry's `last_used_at`) and a trust rule still admits: never a value it invents.
A failed refresh leaves the entry as it was, served as the cache serves it and never once expired.
It mints as the broker itself (ACTOR_SUBJECT in the token's `act` and in the grant), and never
reads, returns or logs a credential: its report holds targets, subjects, times and reasons.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import subject as subjects
from .cache import fingerprint, refresh_time
from .clouds import rfc3339
from .errors import BrokerError, InvalidRequest, InvalidTarget, ServerError, quoted
from .minting import Actor
from .model import Binding, Config, Target

ACTOR_SUBJECT = "oidc-broker:refresh"  # the token's act.sub, the grant's caller, in cloud session names
ACTOR_RULE = "scheduled-refresh"  # the grant's trust_rule: what the work is
DEFAULT_RATE = 300  # seconds between scheduled runs: the template's RefreshSchedule default, rate(5 minutes)
DEFAULT_SEEN_WITHIN = 24 * 3600
DEFAULT_CONCURRENCY = 4
# No refresh starts with less of the run's time left: about one exchange with its retries.
RESERVE = 15.0

REFRESHED, CURRENT, SKIPPED, FAILED = "refreshed", "current", "skipped", "failed"
OUTCOMES = (REFRESHED, CURRENT, SKIPPED, FAILED)

_RATE = re.compile(r"rate\((\d{1,5}) (minute|minutes|hour|hours|day|days)\)")
_UNIT = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> int | None:
    """The seconds between runs of an EventBridge `rate(...)` expression; None for anything else."""
    m = _RATE.fullmatch(expression.strip()) if isinstance(expression, str) else None
    if not m or int(m.group(1)) < 1:
        return None
    return int(m.group(1)) * _UNIT[m.group(2).rstrip("s")]


@dataclass(frozen=True)
class Policy:
    """How the refresh runs: the function's settings (runtime.refresh_policy)."""

    rate: int = DEFAULT_RATE  # seconds between scheduled runs
    seen_within: int = DEFAULT_SEEN_WITHIN  # a claim-valued subject is renewed while a caller used it this recently
    concurrency: int = DEFAULT_CONCURRENCY  # refreshes at once
    reserve: float = RESERVE

    @property
    def ahead(self) -> int:
        """How long before an entry stops being served it is renewed: two runs, so one failed run
        leaves another before any caller misses the cache."""
        return 2 * self.rate


@dataclass(frozen=True)
class Entry:
    """What a cache entry says of itself (store.cache_entries): no secret."""

    subject: str
    issued_at: int
    expires_at: int
    fingerprint: str
    last_used_at: int | None = None  # when a caller was last served it; None: no caller yet

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Entry:
        used = item.get("last_used_at")
        return cls(str(item["subject"]), int(item["issued_at"]), int(item["expires_at"]),
                   str(item.get("fingerprint", "")), None if used is None else int(used))


@dataclass(frozen=True)
class Decision:
    target: Target
    subject: str
    due: bool
    reason: str
    entry: Entry | None = None
    binding: Binding | None = None  # for a due decision
    kept: bool = True  # a binding the refresher keeps fresh (False: skipped for good, not watched)


def served_until(entry: Entry, target: Target) -> float:
    """When the cache stops serving `entry` (cache.refresh_time), capped at its expiry."""
    return min(refresh_time(entry.issued_at, entry.expires_at, float(target.setting("refresh_at"))), entry.expires_at)


def renew_at(entry: Entry, target: Target, ahead: int) -> float:
    """When the refresher renews `entry`: `ahead` before it stops being served, but never in the
    first half of the time it is served (short-lived credentials would be renewed on every run)."""
    until = served_until(entry, target)
    return until - min(ahead, max(until - entry.issued_at, 0) / 2)


def fixed_subjects(config: Config, target: Target) -> list[str]:
    """The subjects of `target` the configuration alone determines: of each trust rule whose
    context gives every subject key a literal value. Those are renewed before any caller came."""
    found: dict[str, None] = {}
    for rule in config.rules_for(target):
        context = {}
        for key in target.subject_keys:
            source = rule.context.get(key)
            if source is not None:
                context[key] = source.literal
        if any(value is None for value in context.values()):
            continue  # a value comes from the caller's claim
        try:
            found[str(target.subject_for(context))] = None
        except subjects.SubjectError:
            continue
    return list(found)


def admitted(subject: str, patterns: Iterable[str]) -> bool:
    """Whether a trust rule can still mint `subject`: it matches one of the target's subject patterns
    (Config.subject_patterns; `*` stands for one claim-given value)."""
    parts = subject.split(":")
    for pattern in patterns:
        expected = pattern.split(":")
        if len(expected) == len(parts) and all(e in ("*", p) for e, p in zip(expected, parts)):
            return True
    return False


def refreshable(config: Config) -> list[Target]:
    """The targets with `refresh: true` whose credentials the cache serves (refresh_at above 0)."""
    return [t for space in config.spaces.values() for t in space.targets.values()
            if t.refresh and float(t.setting("refresh_at")) > 0]


def select(config: Config, refs: Iterable[str] | None) -> list[Target]:
    """The targets a run renews: every refreshable one, or those named (each must be refreshable)."""
    if refs is None:
        return refreshable(config)
    names = ", ".join(t.ref for t in refreshable(config)) or "none"
    chosen: list[Target] = []
    for ref in refs:
        target = config.target(ref)
        if target is None:
            raise InvalidTarget(f"{quoted(ref)} is not a <space>/<target> of the applied configuration; "
                                f"targets with refresh: true: {names}", "unknown_target")
        if target not in refreshable(config):
            raise InvalidTarget(f"target {ref!r} is not refreshed: it needs refresh: true and a refresh_at above 0; "
                                f"targets with refresh: true: {names}", "not_refreshable")
        if target not in chosen:
            chosen.append(target)
    return chosen


def plan(config: Config, entries: Mapping[str, Iterable[Entry]], now: float, policy: Policy, *,
         targets: Iterable[Target] | None = None, force: bool = False) -> list[Decision]:
    """What to renew now, per refreshable target (or `targets`) and subject, with the reason.

    `entries` are the cache's entries by target ref. `force` renews every binding the refresher
    keeps, fresh or not (never a subject no caller used recently)."""
    decisions: list[Decision] = []
    for target in refreshable(config) if targets is None else targets:
        known = {e.subject: e for e in entries.get(target.ref, ())}
        fixed = fixed_subjects(config, target)
        for subject in fixed:
            decisions.append(_decide(target, subject, known.get(subject), now, policy, force))
        patterns = config.subject_patterns(target)
        for subject, entry in sorted(known.items()):
            if subject in fixed:
                continue
            if not admitted(subject, patterns):
                decisions.append(Decision(target, subject, False, "no trust rule admits this subject now",
                                          entry, kept=False))
            elif entry.last_used_at is None or entry.last_used_at < now - policy.seen_within:
                seen = "no caller was served it" if entry.last_used_at is None else \
                    f"last served to a caller at {rfc3339(entry.last_used_at)}"
                decisions.append(Decision(target, subject, False, f"not used recently: {seen}", entry, kept=False))
            else:
                decisions.append(_decide(target, subject, entry, now, policy, force))
    return decisions


def _decide(target: Target, subject: str, entry: Entry | None, now: float, policy: Policy, force: bool) -> Decision:
    try:
        binding = Binding(target, subjects.Subject.parse(subject, target.max_subject_bytes))
    except subjects.SubjectError:
        return Decision(target, subject, False, "not a subject the broker builds", entry, kept=False)
    if force:
        return Decision(target, subject, True, "forced", entry, binding)
    if entry is None:
        return Decision(target, subject, True, "no credentials cached", entry, binding)
    if entry.fingerprint != fingerprint(target):
        return Decision(target, subject, True, "the target's settings changed", entry, binding)
    due = renew_at(entry, target, policy.ahead)
    if now >= due:
        return Decision(target, subject, True, f"served from the cache until {rfc3339(served_until(entry, target))}",
                        entry, binding)
    return Decision(target, subject, False, f"fresh: renewed from {rfc3339(due)}", entry)


# -- a run ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    """One binding's outcome: no credential, only what happened and when the cached ones expire."""

    target: str
    subject: str
    outcome: str  # refreshed | current (another filler renewed it meanwhile) | skipped | failed
    reason: str
    expires_at: int | None = None  # of the credentials cached after the run (a failure keeps the last good ones)
    served_until: int | None = None  # when the cache stops serving them
    kept: bool = True
    error: BaseException | None = field(default=None, repr=False, compare=False)  # an unexpected failure, for the log

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "subject": self.subject, "outcome": self.outcome, "reason": self.reason,
                "expires_at": self.expires_at, "served_until": self.served_until}


@dataclass(frozen=True)
class Report:
    started_at: float
    finished_at: float
    results: tuple[Result, ...]

    def counts(self) -> dict[str, int]:
        return {outcome: sum(r.outcome == outcome for r in self.results) for outcome in OUTCOMES}

    def min_served_remaining(self) -> int | None:
        """The fewest seconds any kept binding is still served from the cache after the run (0: none
        cached, or past its refresh share); None with no binding to keep."""
        kept = [r for r in self.results if r.kept]
        if not kept:
            return None
        return min(max(0, int((r.served_until or 0) - self.finished_at)) for r in kept)

    def to_dict(self) -> dict[str, Any]:
        return {"started_at": int(self.started_at), "finished_at": int(self.finished_at), "counts": self.counts(),
                "min_served_remaining": self.min_served_remaining(),
                "results": [r.to_dict() for r in self.results]}


@dataclass(frozen=True)
class RunRequest:
    """What an invocation asks: every refreshable target and what is due (the schedule's event), or
    named targets, optionally every kept binding of them whatever its freshness (`force`)."""

    targets: tuple[str, ...] | None = None
    force: bool = False


def run_request(event: Any) -> RunRequest:
    """The request an event makes: EventBridge's scheduled event or `{}` (everything due), or
    `{"targets": ["<space>/<target>", ...], "force": true|false}` (`oidc-broker refresh`)."""
    if not isinstance(event, dict):
        raise InvalidRequest("the event must be a JSON object")
    if event.get("detail-type") == "Scheduled Event":
        return RunRequest()
    unknown = sorted(set(event) - {"targets", "force"})
    if unknown:
        raise InvalidRequest(f"unknown key {quoted(unknown[0])}; the event takes targets and force")
    targets = event.get("targets")
    if targets is not None and (not isinstance(targets, list) or not targets or len(targets) > 100 or not all(
            isinstance(t, str) and 0 < len(t) <= 200 and t.isprintable() for t in targets)):
        raise InvalidRequest("targets must be a list of <space>/<target>")
    force = event.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest("force must be true or false")
    return RunRequest(tuple(targets) if targets is not None else None, force)


Renewer = Callable[[str], Any]  # cloud name -> its Exchange (exchange.Exchange.refill)


class Refresher:
    """Runs a refresh over the ports it is given: the applied configuration, the deployment's issuer,
    the cache's entries of a target (store.cache_entries) and each cloud's Exchange."""

    def __init__(self, *, config: Callable[[], Config], issuer: Callable[[], str],
                 entries: Callable[[str], list[dict[str, Any]]], exchange_for: Renewer,
                 clock: Callable[[], float], policy: Policy = Policy()):
        self._config = config
        self._issuer = issuer
        self._entries = entries
        self._exchange_for = exchange_for
        self._clock = clock
        self.policy = policy

    def run(self, request: RunRequest = RunRequest(), *, time_left: Callable[[], float] = lambda: math.inf) -> Report:
        """Renew what is due (or everything kept, forced) of the request's targets; `time_left` is the
        run's remaining seconds (Lambda's context): no refresh starts within `policy.reserve` of the end.
        Raises a BrokerError only for what stops the whole run (unknown target, the configuration)."""
        started = self._clock()
        config = self._config()
        issuer = self._issuer()
        if config.issuer != issuer:
            raise ServerError("the broker's configuration names another issuer than this deployment", "issuer_mismatch",
                              log={"configured_issuer": config.issuer, "deployment_issuer": issuer})
        steps: list[Decision | Result] = []  # in target order: a decision, or a target that could not be read
        for target in select(config, request.targets):
            try:
                entries = [Entry.from_item(item) for item in self._entries(target.ref)]
            except Exception as e:  # this target's partition cannot be read: the others still can
                steps.append(_unreadable(target, e))
                continue
            steps.extend(plan(config, {target.ref: entries}, started, self.policy, targets=[target],
                              force=request.force))

        due = [d for d in steps if isinstance(d, Decision) and d.due]
        renewed: dict[int, Result] = {}
        if due:
            with ThreadPoolExecutor(max_workers=max(1, min(self.policy.concurrency, len(due))),
                                    thread_name_prefix="refresh") as pool:
                done = pool.map(lambda d: self._renew(d, issuer, request.force, time_left), due)
                renewed = {id(decision): result for decision, result in zip(due, done)}
        results = [step if isinstance(step, Result) else renewed.get(id(step)) or _skipped(step) for step in steps]
        return Report(started, self._clock(), tuple(results))

    def _renew(self, decision: Decision, issuer: str, force: bool, time_left: Callable[[], float]) -> Result:
        target, entry = decision.target, decision.entry
        if time_left() < self.policy.reserve:
            return _with_entry(target, decision.subject, SKIPPED, "no time left in this run; the next run renews it",
                               entry)
        actor = Actor(issuer=issuer, subject=ACTOR_SUBJECT, jti=f"refresh-{uuid.uuid4()}", trust_rule=ACTOR_RULE)
        replacing = None if force else (entry.issued_at if entry is not None else 0)
        try:
            served = self._exchange_for(target.provider).refill(decision.binding, issuer, actor, replacing=replacing)
        except BrokerError as e:
            return _with_entry(target, decision.subject, FAILED, f"{e.reason}: {e.description}", entry)
        except Exception as e:
            return _with_entry(target, decision.subject, FAILED, f"unexpected {type(e).__name__}", entry, error=e)
        credentials = served.credentials
        until = int(min(refresh_time(credentials.issued_at, credentials.expires_at,
                                     float(target.setting("refresh_at"))), credentials.expires_at))
        if served.not_stored:
            # Obtained but not cached: callers are no better off than before.
            return _with_entry(target, decision.subject, FAILED, f"obtained but not cached: {served.not_stored}", entry)
        if served.from_cache:
            return Result(target.ref, decision.subject, CURRENT, "renewed meanwhile by another request",
                          credentials.expires_at, until)
        return Result(target.ref, decision.subject, REFRESHED, decision.reason, credentials.expires_at, until)


def _with_entry(target: Target, subject: str, outcome: str, reason: str, entry: Entry | None, *,
                error: BaseException | None = None, kept: bool = True) -> Result:
    """A result that leaves the entry as it was: its times, if the cache still serves it for this target."""
    if entry is None or entry.fingerprint != fingerprint(target):
        return Result(target.ref, subject, outcome, reason, kept=kept, error=error)
    return Result(target.ref, subject, outcome, reason, entry.expires_at, int(served_until(entry, target)), kept=kept,
                  error=error)


def _skipped(decision: Decision) -> Result:
    return _with_entry(decision.target, decision.subject, SKIPPED, decision.reason, decision.entry, kept=decision.kept)


def _unreadable(target: Target, error: Exception) -> Result:
    """The target whose entries could not be read: one failure (the error itself goes to the log)."""
    return Result(target.ref, "*", FAILED, f"the cache's entries could not be read ({type(error).__name__})",
                  error=error)
