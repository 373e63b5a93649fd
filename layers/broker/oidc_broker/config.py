"""Configuration: trusted issuers, spaces, targets and trust rules.

Owns validation of the configuration document and the in-memory cache the functions read it
through. Validation is pure and total: it reports every problem with the file, the path inside
it and the rule broken, and yields a Config only when there are none. It never reads YAML
(the CLI does) and never writes anything.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import presets, subject
from .matching import Condition, Glob, compile_condition

PROVIDERS = ("aws", "azure", "gcp")
KINDS = ("feed", "account")

DEFAULT_LIFETIME = 600
MIN_LIFETIME = 60
MAX_LIFETIME = 3600

# The audience each cloud expects when a target does not name one.
DEFAULT_AUDIENCE = {
    "aws": "sts.amazonaws.com",
    "azure": "api://AzureADTokenExchange",
}

# Per-cloud settings a target may carry, and the check each value must pass.
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_GCP_PROVIDER = re.compile(
    r"projects/\d+/locations/global/workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}"
)
_SERVICE_ACCOUNT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com")
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")

def _seconds_between(low: int, high: int) -> Callable[[object], int | None]:
    def check(value: object) -> int | None:
        seconds = parse_lifetime(value)
        return seconds if seconds is not None and low <= seconds <= high else None

    return check


def _fraction_between(low: float, high: float) -> Callable[[object], float | None]:
    def check(value: object) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if low <= value <= high else None

    return check


def _one_of(*choices: str) -> Callable[[object], str | None]:
    return lambda value: value if value in choices else None


# Each setting's check is a pattern a string must match whole, or a function returning the
# normalised value (None when the value is refused), with the rule a refusal names.
SettingCheck = re.Pattern[str] | Callable[[object], Any]

PROVIDER_SETTINGS: dict[str, dict[str, tuple[SettingCheck, str]]] = {
    "aws": {
        "role_arn": (_ROLE_ARN, "an IAM role ARN"),
        "region": (_REGION, "an AWS region such as us-east-1"),
        # STS allows 900 s up to the role's MaxSessionDuration, at most 12 hours.
        "session_duration": (_seconds_between(900, 43200), "a duration from 900s to 43200s (e.g. 3600, 15m, 12h)"),
        # ECR private (the role's account and region) or ECR Public (public.ecr.aws, us-east-1).
        "registry": (_one_of("ecr", "ecr-public"), "ecr or ecr-public (feed targets only)"),
        # Cached credentials are served until this fraction of their lifetime has passed;
        # 0 never serves from the cache. Half, as docker-credential-ecr-login refreshes.
        "refresh_at": (_fraction_between(0.0, 0.9), "a fraction of the credentials' lifetime from 0 to 0.9"),
    },
    "azure": {
        "tenant_id": (_UUID, "a tenant ID (UUID)"),
        "client_id": (_UUID, "an application (client) ID (UUID)"),
        "registry": (_HOST, "a registry host name"),
    },
    "gcp": {
        "workload_identity_provider": (_GCP_PROVIDER, "projects/N/locations/global/workloadIdentityPools/P/providers/X"),
        "service_account": (_SERVICE_ACCOUNT, "a service account e-mail"),
        "registry": (_HOST, "a registry host name"),
    },
}

# Values a target has when its configuration leaves a setting out (Target.setting reads them).
PROVIDER_DEFAULTS: dict[str, dict[str, Any]] = {
    "aws": {"session_duration": 3600, "refresh_at": 0.5},
}
# Settings that fit only one kind of target.
_SETTING_KINDS = {("aws", "registry"): "feed"}

_DURATION = re.compile(r"(\d+)([smh]?)")
# ASCII only, so a look-alike such as 'ſub' can never name a claim; '/' for CircleCI's claims.
_CLAIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,127}")

DEFAULT_LEEWAY = 60
MAX_LEEWAY = 300
DEFAULT_MAX_TOKEN_AGE = 3600
MAX_TOKEN_AGE = 24 * 3600
# How long the last good key set of a trusted issuer may stand in for a fresh fetch: past it a
# key the issuer has removed must stop being trusted, so the broker refuses instead.
DEFAULT_MAX_KEY_SET_AGE = 3 * 3600
MIN_MAX_KEY_SET_AGE = 15 * 60
MAX_MAX_KEY_SET_AGE = 24 * 3600


class ConfigError(ValueError):
    """The configuration is invalid. `problems` holds (path, rule broken) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {path}: {rule}" for path, rule in problems))


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
    provider: str
    audience: str
    subject_keys: tuple[str, ...]
    lifetime: int
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.space}/{self.name}"

    def setting(self, name: str) -> Any:
        """A provider setting: the configured value, else the provider's default, else None."""
        if name in self.settings:
            return self.settings[name]
        if name == "registry" and self.provider == "aws" and self.kind == "feed":
            return "ecr"
        return PROVIDER_DEFAULTS.get(self.provider, {}).get(name)


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
        return tuple(r for r in self.spaces[target.space].trust if target.name in r.targets)

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
                values = {"space": target.space, target.kind: target.name, **dict(combination)}
                if "*" not in values.values():
                    try:
                        subject.build(target.subject_keys, values, target.provider)
                    except subject.SubjectError:  # too long: never minted
                        continue
                patterns.add(subject.pattern(target.subject_keys, values))
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


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def url_problem(url: object, *, allow_loopback_http: bool) -> str | None:
    """Why `url` cannot be an issuer or key set URL, or None when it can."""
    if not isinstance(url, str) or not url:
        return "must be a URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "must be a URL"
    if parts.scheme == "http" and allow_loopback_http and is_loopback(parts.hostname):
        pass
    elif parts.scheme == "http" and is_loopback(parts.hostname):
        return "http:// is accepted only for loopback hosts in local mode"
    elif parts.scheme != "https":
        return "must start with https://"
    if not parts.hostname or parts.username or parts.password:
        return "must name a host, with no user or password"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must have no query or fragment"
    if url.endswith("/"):
        return "must not end with '/' (verifiers compare issuers byte for byte)"
    return None


def parse_lifetime(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    return None


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []

    def warn(self, path: str, advice: str) -> None:
        self.warnings.append((path, advice))

    def add(self, path: str, rule: str) -> None:
        self.items.append((path, rule))

    def mapping(self, value: object, path: str, known: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            self.add(path, "must be a mapping")
            return {}
        for key in value:
            if key not in known:
                self.add(f"{path}.{key}", f"unknown key; expected one of {', '.join(sorted(known))}")
        for key in sorted(required - value.keys()):
            self.add(f"{path}.{key}", "is required")
        return value

    def slug(self, value: object, path: str) -> bool:
        if not subject.is_slug(value):
            self.add(path, "must be a slug: lowercase letters, digits and '-', 1-63 characters, starting alphanumeric")
            return False
        return True

    def items_of(self, value: object, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.add(path, "must be a list")
            return []
        return value


def parse(document: object, source: str = "<config>", *, allow_loopback_http: bool = False) -> Config:
    """Validate a configuration document (as loaded from YAML or JSON) and build the Config."""
    p = _Problems()
    doc = p.mapping(document, "(top)", {"issuer", "trusted_issuers", "spaces"}, {"issuer", "spaces"})

    issuer = doc.get("issuer")
    if "issuer" in doc and (why := url_problem(issuer, allow_loopback_http=allow_loopback_http)):
        p.add("issuer", why)

    trusted: dict[str, TrustedIssuer] = {}
    for i, item in enumerate(p.items_of(doc.get("trusted_issuers"), "trusted_issuers")):
        path = f"trusted_issuers[{i}]"
        issuer_item = _parse_trusted_issuer(p, item, path, allow_loopback_http)
        if issuer_item is None:
            continue
        if issuer_item.name in trusted:
            p.add(f"{path}.name", f"duplicate trusted issuer name {issuer_item.name!r}")
        elif any(t.issuer == issuer_item.issuer for t in trusted.values()):
            p.add(f"{path}.issuer", "this issuer URL is already listed")
        else:
            trusted[issuer_item.name] = issuer_item

    spaces: dict[str, Space] = {}
    space_items = p.items_of(doc.get("spaces"), "spaces")
    if "spaces" in doc and not space_items:
        p.add("spaces", "must list at least one space")
    for i, item in enumerate(space_items):
        path = f"spaces[{i}]"
        item = p.mapping(item, path, {"name", "targets", "trust"}, {"name"})
        name = item.get("name")
        if "name" not in item or not p.slug(name, f"{path}.name"):
            continue
        if name in spaces:
            p.add(f"{path}.name", f"duplicate space name {name!r}")
            continue
        targets = _parse_targets(p, item.get("targets"), f"{path}.targets", name)
        broker_issuer = issuer if isinstance(issuer, str) else ""
        rules = _parse_rules(p, item.get("trust"), f"{path}.trust", name, targets, trusted, broker_issuer)
        spaces[name] = Space(name=name, targets=targets, trust=rules)

    if p.items:
        raise ConfigError(source, p.items)
    return Config(issuer=issuer, trusted_issuers=trusted, spaces=spaces, warnings=tuple(p.warnings))


def _seconds(p: _Problems, item: dict, key: str, path: str, default: int, low: int, high: int) -> int | None:
    value = parse_lifetime(item.get(key, default))
    if value is None or not low <= value <= high:
        p.add(f"{path}.{key}", f"must be a duration from {low}s to {high}s (e.g. 60, 5m, 1h)")
        return None
    return value


def _parse_trusted_issuer(p: _Problems, item: object, path: str, allow_loopback_http: bool) -> TrustedIssuer | None:
    known = {"name", "issuer", "jwks_uri", "preset", "leeway", "max_token_age", "max_key_set_age", "single_tenant"}
    item = p.mapping(item, path, known, {"name", "issuer"})
    name, url, jwks_uri = item.get("name"), item.get("issuer"), item.get("jwks_uri")
    ok = (p.slug(name, f"{path}.name") if "name" in item else False) and "issuer" in item
    if "issuer" in item and (why := url_problem(url, allow_loopback_http=allow_loopback_http)):
        p.add(f"{path}.issuer", why)
        ok = False
    if jwks_uri is not None and (why := url_problem(jwks_uri, allow_loopback_http=allow_loopback_http)):
        p.add(f"{path}.jwks_uri", why)
        ok = False
    preset_name = item.get("preset")
    if preset_name is not None and (not isinstance(preset_name, str) or preset_name not in presets.PRESETS):
        p.add(f"{path}.preset", f"must be one of {', '.join(presets.PRESETS)}")
        ok = False
    leeway = _seconds(p, item, "leeway", path, DEFAULT_LEEWAY, 0, MAX_LEEWAY)
    max_age = _seconds(p, item, "max_token_age", path, DEFAULT_MAX_TOKEN_AGE, 60, MAX_TOKEN_AGE)
    key_set_age = _seconds(p, item, "max_key_set_age", path, DEFAULT_MAX_KEY_SET_AGE, MIN_MAX_KEY_SET_AGE,
                           MAX_MAX_KEY_SET_AGE)
    single_tenant = item.get("single_tenant", False)
    if not isinstance(single_tenant, bool):
        p.add(f"{path}.single_tenant", "must be true or false")
        ok = False
    if not ok or leeway is None or max_age is None or key_set_age is None:
        return None
    preset = presets.PRESETS[preset_name] if preset_name else presets.for_issuer(url)
    return TrustedIssuer(name, url, jwks_uri, preset, leeway, max_age, key_set_age, single_tenant)


def _parse_targets(p: _Problems, value: object, path: str, space: str) -> dict[str, Target]:
    known = {"name", "kind", "provider", "audience", "subject", "lifetime", *PROVIDERS}
    targets: dict[str, Target] = {}
    for i, item in enumerate(p.items_of(value, path)):
        tpath = f"{path}[{i}]"
        item = p.mapping(item, tpath, known, {"name", "kind", "provider"})
        name, kind, provider = item.get("name"), item.get("kind"), item.get("provider")
        ok = "name" in item and p.slug(name, f"{tpath}.name")
        if ok and name in targets:
            p.add(f"{tpath}.name", f"duplicate target name {name!r} in space {space!r}")
            ok = False
        if "kind" in item and kind not in KINDS:
            p.add(f"{tpath}.kind", f"must be one of {', '.join(KINDS)}")
            ok = False
        if "provider" in item and provider not in PROVIDERS:
            p.add(f"{tpath}.provider", f"must be one of {', '.join(PROVIDERS)}")
            ok = False
        if not ok or kind not in KINDS or provider not in PROVIDERS:
            continue

        settings = _parse_settings(p, item, tpath, provider)
        audience = item.get("audience", _default_audience(provider, settings))
        if not isinstance(audience, str) or not audience or len(audience) > 512:
            p.add(f"{tpath}.audience", "is required for this provider" if audience is None else "must be a non-empty string")
            continue

        keys = item.get("subject", list(subject.default_keys(kind)))
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            p.add(f"{tpath}.subject", "must be a list of subject keys")
            continue
        try:
            subject.check_keys(keys, kind)
        except subject.SubjectError as e:
            p.add(f"{tpath}.subject", str(e))
            continue
        keys = tuple(keys)
        limit = subject.max_subject_bytes(provider)
        if subject.shortest_length(keys, {"space": space, kind: name}) > limit:
            p.add(f"{tpath}.subject", f"cannot fit the {limit}-byte subject limit for {provider} targets")
            continue

        lifetime = parse_lifetime(item.get("lifetime", DEFAULT_LIFETIME))
        if lifetime is None or not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
            p.add(f"{tpath}.lifetime", f"must be a duration from {MIN_LIFETIME}s to {MAX_LIFETIME}s (e.g. 600, 10m, 1h)")
            continue
        targets[name] = Target(space, name, kind, provider, audience, keys, lifetime, settings)
    return targets


def _parse_settings(p: _Problems, item: dict, path: str, provider: str) -> dict[str, Any]:
    for other in PROVIDERS:
        if other != provider and other in item:
            p.add(f"{path}.{other}", f"settings for {other} on a {provider} target")
    if provider not in item:
        return {}
    rules = PROVIDER_SETTINGS[provider]
    block = p.mapping(item[provider], f"{path}.{provider}", set(rules))
    settings = {}
    for key, value in block.items():
        if key in rules:
            check, what = rules[key]
            if isinstance(check, re.Pattern):
                normalised = value if isinstance(value, str) and check.fullmatch(value) else None
            else:
                normalised = check(value)
            kind = _SETTING_KINDS.get((provider, key))
            if normalised is None:
                p.add(f"{path}.{provider}.{key}", f"must be {what}")
            elif kind is not None and item.get("kind") != kind:
                p.add(f"{path}.{provider}.{key}", f"applies to {kind} targets only")
            else:
                settings[key] = normalised
    return settings


def _default_audience(provider: str, settings: Mapping[str, str]) -> str | None:
    if provider == "gcp" and "workload_identity_provider" in settings:
        # Google accepts the provider's full resource name as the audience when no
        # allowedAudiences are set on the provider.
        return "https://iam.googleapis.com/" + settings["workload_identity_provider"]
    return DEFAULT_AUDIENCE.get(provider)


def _parse_rules(
    p: _Problems,
    value: object,
    path: str,
    space: str,
    targets: Mapping[str, Target],
    trusted: Mapping[str, TrustedIssuer],
    broker_issuer: str,
) -> tuple[TrustRule, ...]:
    known = {"name", "issuer", "audience", "claims", "targets", "context"}
    rules: list[TrustRule] = []
    for i, item in enumerate(p.items_of(value, path)):
        rpath = f"{path}[{i}]"
        item = p.mapping(item, rpath, known, {"name", "issuer", "claims", "targets"})
        name = item.get("name")
        ok = "name" in item and p.slug(name, f"{rpath}.name")
        if ok and any(r.name == name for r in rules):
            p.add(f"{rpath}.name", f"duplicate trust rule name {name!r} in space {space!r}")
            ok = False
        issuer = item.get("issuer")
        if not isinstance(issuer, str):
            issuer = None
        if "issuer" in item and issuer not in trusted:
            p.add(f"{rpath}.issuer", "must name an entry of trusted_issuers")
            ok = False
        audience = item.get("audience", broker_issuer)
        if not isinstance(audience, str) or not audience:
            p.add(f"{rpath}.audience", "must be a non-empty string")
            ok = False

        conditions = _parse_conditions(p, item, rpath, trusted.get(issuer))
        if conditions is None:
            ok = False

        rule_targets = item.get("targets")
        names: list[str] = []
        if "targets" in item:
            if not isinstance(rule_targets, list) or not rule_targets:
                p.add(f"{rpath}.targets", "must list at least one target of this space")
                ok = False
            else:
                for j, t in enumerate(rule_targets):
                    if not isinstance(t, str) or t not in targets:
                        p.add(f"{rpath}.targets[{j}]", f"{t!r} is not a target of space {space!r}")
                        ok = False
                    else:
                        names.append(t)

        context = _parse_context(p, item.get("context", {}), f"{rpath}.context")
        if context is None:
            continue
        for t in names:
            target = targets[t]
            needed = [k for k in target.subject_keys if k in subject.CONTEXT_KEYS and k not in context]
            if needed:
                p.add(f"{rpath}.context", f"target {t!r} needs a value for subject key {needed[0]!r}")
                ok = False
                continue
            fixed = {"space": space, target.kind: target.name}
            fixed.update({k: v.literal for k, v in context.items() if v.literal is not None})
            limit = subject.max_subject_bytes(target.provider)
            if subject.shortest_length(target.subject_keys, fixed) > limit:
                p.add(f"{rpath}.context", f"target {t!r}: the subject cannot fit {limit} bytes")
                ok = False
        if ok:
            rules.append(TrustRule(space, name, issuer, audience, conditions, tuple(names), context))
    return tuple(rules)


def _parse_conditions(p: _Problems, item: dict, path: str, issuer: TrustedIssuer | None) -> dict[str, Condition] | None:
    if "claims" not in item:
        return None
    claims = item["claims"]
    if not isinstance(claims, dict) or not claims:
        # A rule with no claim conditions would admit every pipeline of the issuer.
        p.add(f"{path}.claims", "must be a mapping with at least one claim condition")
        return None
    preset = issuer.preset if issuer else presets.GENERIC
    conditions: dict[str, Condition] = {}
    for claim, expected in claims.items():
        cpath = f"{path}.claims.{claim}"
        if not isinstance(claim, str) or not _CLAIM_NAME.fullmatch(claim):
            p.add(f"{path}.claims", f"{claim!r} is not a claim name (ASCII letters, digits, '_', '.', '/', '-')")
            continue
        if claim in ("iss", "aud", "exp", "nbf", "iat", "jti"):
            p.add(cpath, "is checked by the broker itself; use the rule's issuer and audience")
            continue
        try:
            conditions[claim] = compile_condition(claim, expected, claim in preset.case_insensitive)
        except ValueError as e:
            p.add(cpath, str(e))
            continue
        if claim in preset.strings and any(not isinstance(a, (str, Glob)) for a in conditions[claim].alternatives):
            p.add(cpath, f"{preset.title} sends {claim} as a string: quote the value")
        if preset.claims and claim not in preset.claims:
            p.warn(cpath, f"{preset.title} tokens carry no {claim!r} claim; this rule can never match")
    if len(conditions) != len(claims):
        return None
    if preset.tenant and not issuer.single_tenant and not _pins_tenant(conditions, preset):
        p.add(f"{path}.claims", _unpinned(preset))
    for claim, condition in conditions.items():
        for glob_ in (a for a in condition.alternatives if isinstance(a, Glob)):
            if advice := _glob_advice(preset, claim, glob_.pattern):
                p.warn(f"{path}.claims.{claim}", advice)
    for claim in conditions:
        id_claim = preset.id_for.get(claim)
        if id_claim and id_claim not in conditions:
            p.warn(f"{path}.claims.{claim}", f"matches a name that can change hands; also match {id_claim!r}, its immutable ID")
    if preset.user_controlled and set(conditions) <= preset.user_controlled:
        p.warn(f"{path}.claims", "matches only values the pipeline's author chooses; add a repository or project ID")
    return conditions


def _pins_tenant(conditions: Mapping[str, Condition], preset: presets.Preset) -> bool:
    """Whether a rule admits one tenant of a shared issuer only: a tenant ID claim matched with
    exact values, or (GitHub) a `sub` whose every alternative is in the immutable subject form."""
    for claim in preset.tenant & conditions.keys():
        if not any(isinstance(a, Glob) for a in conditions[claim].alternatives):
            return True
    sub = conditions.get("sub")
    if sub is not None and preset.tenant_subject is not None:
        texts = [a.pattern if isinstance(a, Glob) else a for a in sub.alternatives]
        return all(isinstance(t, str) and preset.tenant_subject.fullmatch(t) for t in texts)
    return False


def _unpinned(preset: presets.Preset) -> str:
    ids = " or ".join(repr(c) for c in sorted(preset.tenant))
    subject_form = f" (or sub in the immutable form {preset.tenant_subject_form!r})" if preset.tenant_subject else ""
    return (f"pins no tenant, so it admits any {preset.title} customer's pipelines (they share this issuer); "
            f"match {ids} with exact values{subject_form}, or set single_tenant: true on a trusted "
            f"issuer that serves one organisation only")


def _glob_advice(preset: presets.Preset, claim: str, pattern: str) -> str | None:
    """Why a glob does not mean what it seems to, when its last '*' stands where the claim's
    values usually hold '/' or ':' (the preset's spans of that claim); None when it does."""
    for span in preset.spans.get(claim, ()):
        if span.where.fullmatch(pattern):
            head = pattern[:-1]
            return (f"'*' never matches '/' or ':', so {pattern!r} matches {head + span.short!r} "
                    f"but not {head + span.long!r}; {span.instead}")
    return None


def _parse_context(p: _Problems, value: object, path: str) -> dict[str, ContextValue] | None:
    if not isinstance(value, dict):
        p.add(path, "must be a mapping of subject key to a slug or {claim: NAME}")
        return None
    context: dict[str, ContextValue] = {}
    for key, source in value.items():
        kpath = f"{path}.{key}"
        if key not in subject.CONTEXT_KEYS:
            p.add(kpath, f"context keys are {', '.join(sorted(subject.CONTEXT_KEYS))}")
            return None
        if isinstance(source, dict):
            source = p.mapping(source, kpath, {"claim"}, {"claim"})
            claim = source.get("claim")
            if not isinstance(claim, str) or not _CLAIM_NAME.fullmatch(claim):
                p.add(f"{kpath}.claim", "must be a claim name")
                return None
            context[key] = ContextValue(claim=claim)
        elif p.slug(source, kpath):
            context[key] = ContextValue(literal=source)
        else:
            return None
    return context


class ConfigCache:
    """The configuration as the functions see it: loaded from the store, kept `ttl` seconds."""

    def __init__(self, load: Callable[[], Any], clock: Callable[[], float], ttl: float = 30.0):
        self._load = load
        self._clock = clock
        self._ttl = ttl
        self._value: Config | None = None
        self._loaded_at = 0.0

    def get(self) -> Config:
        now = self._clock()
        if self._value is None or now - self._loaded_at >= self._ttl:
            self._value = self._load()
            self._loaded_at = now
        return self._value
