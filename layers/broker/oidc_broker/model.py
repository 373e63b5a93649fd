"""The configuration's data model: trusted issuers, spaces, targets, trust rules, bindings.

Plain frozen records and the questions they answer about themselves (which target a ref names,
which rules admit to it, which subjects it can be minted). It knows no cloud: what a cloud adds
to a target (its settings' defaults, its subject limit) is filled in by validation from the
cloud's description. It never reads, validates or writes a document (validation.py does).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import presets, subject
from .matching import Condition, Glob

KINDS = ("feed", "account")

DEFAULT_LEEWAY = 60
DEFAULT_MAX_TOKEN_AGE = 3600
# How long the last good key set of a trusted issuer may stand in for a fresh fetch: past it a
# key the issuer has removed must stop being trusted, so the broker refuses instead.
DEFAULT_MAX_KEY_SET_AGE = 3 * 3600


@dataclass(frozen=True)
class TrustedIssuer:
    name: str
    issuer: str
    jwks_uri: str | None = None
    preset: presets.Preset = presets.GENERIC
    leeway: int = DEFAULT_LEEWAY  # seconds allowed on exp, nbf and iat
    max_token_age: int = DEFAULT_MAX_TOKEN_AGE  # a token older than this (by iat) is refused
    max_key_set_age: int = DEFAULT_MAX_KEY_SET_AGE  # the last good key set is trusted this long
    # The issuer serves one organisation only (self-hosted): rules need not pin a tenant ID.
    single_tenant: bool = False


@dataclass(frozen=True)
class Target:
    space: str
    name: str
    kind: str
    provider: str  # the name of the target's cloud in the registry (clouds.CLOUDS)
    audience: str
    subject_keys: tuple[str, ...]
    lifetime: int
    settings: Mapping[str, Any] = field(default_factory=dict)  # as configured, normalised
    # Keep its cached credentials fresh on a schedule (refresh.py), so callers never wait on its cloud.
    refresh: bool = False
    # From the cloud's description for this kind of target (validation fills them in); derived
    # from provider and kind, so they take no part in equality.
    defaults: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    max_subject_bytes: int = field(default=subject.MAX_BYTES, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.space}/{self.name}"

    def setting(self, name: str) -> Any:
        """A cloud setting: the configured value, else the cloud's default for this kind, else None."""
        if name in self.settings:
            return self.settings[name]
        return self.defaults.get(name)

    @property
    def fixed_values(self) -> dict[str, str]:
        """The subject values the configuration itself supplies: the space, and the target under its kind."""
        return {"space": self.space, self.kind: self.name}

    def subject_for(self, context: Mapping[str, str]) -> subject.Subject:
        """This target's subject with the context values a trust rule supplied; SubjectError if it cannot be built."""
        return subject.build(self.subject_keys, {**self.fixed_values, **context}, self.max_subject_bytes,
                             limited_by=f"{self.provider} targets")


@dataclass(frozen=True)
class Binding:
    """A target and one subject minted for it: what a cloud authorizes, so what credentials are
    obtained for and cached under. Credentials of one binding are never served for another."""

    target: Target
    subject: subject.Subject

    @property
    def key(self) -> tuple[str, str]:
        return self.target.ref, str(self.subject)


@dataclass(frozen=True)
class ContextValue:
    """A subject value a trust rule supplies: a literal slug, or the value of a verified claim."""

    literal: str | None = None
    claim: str | None = None


@dataclass(frozen=True)
class TrustRule:
    space: str
    name: str
    issuer: str  # a TrustedIssuer name
    audience: str
    claims: Mapping[str, Condition]
    targets: tuple[str, ...]
    context: Mapping[str, ContextValue]


@dataclass(frozen=True)
class Space:
    name: str
    targets: Mapping[str, Target]
    trust: tuple[TrustRule, ...]
    # The rules naming each target, in the document's order: a mint looks at its target's rules only.
    _by_target: Mapping[str, tuple[TrustRule, ...]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_target: dict[str, list[TrustRule]] = {}
        for rule in self.trust:
            for name in dict.fromkeys(rule.targets):
                by_target.setdefault(name, []).append(rule)
        object.__setattr__(self, "_by_target", {name: tuple(rules) for name, rules in by_target.items()})

    def rules_for(self, target_name: str) -> tuple[TrustRule, ...]:
        """The trust rules that name the target, in the order the document lists them."""
        return self._by_target.get(target_name, ())


@dataclass(frozen=True)
class Config:
    issuer: str
    trusted_issuers: Mapping[str, TrustedIssuer]
    spaces: Mapping[str, Space]
    # (path, advice) pairs: allowed, but worth an administrator's look
    warnings: tuple[tuple[str, str], ...] = ()

    def issuer_named(self, name: str) -> TrustedIssuer:
        return self.trusted_issuers[name]

    def issuer_for(self, iss: str) -> TrustedIssuer | None:
        """The trusted issuer whose URL equals `iss` exactly, byte for byte."""
        for trusted in self.trusted_issuers.values():
            if trusted.issuer == iss:
                return trusted
        return None

    def target(self, ref: str) -> Target | None:
        space_name, sep, target_name = ref.partition("/")
        space = self.spaces.get(space_name) if sep else None
        return space.targets.get(target_name) if space else None

    def rules_for(self, target: Target) -> tuple[TrustRule, ...]:
        return self.spaces[target.space].rules_for(target.name)

    def subject_patterns(self, target: Target) -> list[str]:
        """Every subject the broker can mint for `target`, exactly: `*` only for a value a caller's
        claim chooses (a context claim its rule leaves unpinned or matches with a glob)."""
        patterns = set()
        for rule in self.rules_for(target):
            choices: list[list[tuple[str, str]]] = []
            for key in target.subject_keys:
                source = rule.context.get(key)
                if source is not None:
                    choices.append([(key, v) for v in _context_choices(rule, source)])
            for combination in itertools.product(*choices):
                context = dict(combination)
                if "*" not in context.values():
                    try:
                        target.subject_for(context)
                    except subject.SubjectError:  # too long: never minted
                        continue
                patterns.add(subject.pattern(target.subject_keys, {**target.fixed_values, **context}))
        return sorted(patterns)


def _context_choices(rule: TrustRule, source: ContextValue) -> list[str]:
    """The values a context source can give a subject: its literal; for a claim the rule pins with
    exact values, those that can be minted (slugs as the token must carry them); else '*'."""
    if source.literal is not None:
        return [source.literal]
    condition = rule.claims.get(source.claim)
    if condition is None or any(isinstance(a, Glob) for a in condition.alternatives):
        return ["*"]
    # A case-insensitive match admits any spelling, but only the lower-case one is a slug.
    spelled = (presets.ascii_lower(a) if condition.case_insensitive else a
               for a in condition.alternatives if isinstance(a, str))
    return sorted({v for v in spelled if subject.is_slug(v)})
