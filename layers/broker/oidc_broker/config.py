"""Configuration: trusted issuers, spaces, targets and trust rules.

Owns validation of the configuration document and the in-memory cache the functions read it
through. Validation is pure and total: it reports every problem with the file, the path inside
it and the rule broken, and yields a Config only when there are none. It never reads YAML
(the CLI does) and never writes anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import subject

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

PROVIDER_SETTINGS: dict[str, dict[str, tuple[re.Pattern[str], str]]] = {
    "aws": {
        "role_arn": (_ROLE_ARN, "an IAM role ARN"),
        "region": (_REGION, "an AWS region such as us-east-1"),
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

_DURATION = re.compile(r"(\d+)([smh]?)")
_CLAIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


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


@dataclass(frozen=True)
class Target:
    space: str
    name: str
    kind: str
    provider: str
    audience: str
    subject_keys: tuple[str, ...]
    lifetime: int
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.space}/{self.name}"


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
    claims: Mapping[str, str | int | bool]
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
    parts = urlsplit(url)
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
        item = p.mapping(item, path, {"name", "issuer", "jwks_uri"}, {"name", "issuer"})
        name, url, jwks_uri = item.get("name"), item.get("issuer"), item.get("jwks_uri")
        ok = p.slug(name, f"{path}.name") if "name" in item else False
        if "issuer" in item and (why := url_problem(url, allow_loopback_http=allow_loopback_http)):
            p.add(f"{path}.issuer", why)
            ok = False
        if jwks_uri is not None and (why := url_problem(jwks_uri, allow_loopback_http=allow_loopback_http)):
            p.add(f"{path}.jwks_uri", why)
            ok = False
        if ok and name in trusted:
            p.add(f"{path}.name", f"duplicate trusted issuer name {name!r}")
        elif ok and any(t.issuer == url for t in trusted.values()):
            p.add(f"{path}.issuer", "this issuer URL is already listed")
        elif ok:
            trusted[name] = TrustedIssuer(name=name, issuer=url, jwks_uri=jwks_uri)

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
    return Config(issuer=issuer, trusted_issuers=trusted, spaces=spaces)


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


def _parse_settings(p: _Problems, item: dict, path: str, provider: str) -> dict[str, str]:
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
            pattern, what = rules[key]
            if isinstance(value, str) and pattern.fullmatch(value):
                settings[key] = value
            else:
                p.add(f"{path}.{provider}.{key}", f"must be {what}")
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
        if "issuer" in item and issuer not in trusted:
            p.add(f"{rpath}.issuer", "must name an entry of trusted_issuers")
            ok = False
        audience = item.get("audience", broker_issuer)
        if not isinstance(audience, str) or not audience:
            p.add(f"{rpath}.audience", "must be a non-empty string")
            ok = False

        claims = item.get("claims")
        if "claims" in item:
            if not isinstance(claims, dict) or not claims:
                # A rule with no claim conditions would admit every pipeline of the issuer.
                p.add(f"{rpath}.claims", "must be a mapping with at least one claim condition")
                ok = False
            else:
                for claim, expected in claims.items():
                    if not isinstance(claim, str) or not _CLAIM_NAME.fullmatch(claim):
                        p.add(f"{rpath}.claims", f"{claim!r} is not a claim name")
                        ok = False
                    elif isinstance(expected, str) and expected == "" or not isinstance(expected, (str, int, bool)):
                        p.add(f"{rpath}.claims.{claim}", "must be a non-empty string, a number or a boolean")
                        ok = False

        rule_targets = item.get("targets")
        names: list[str] = []
        if "targets" in item:
            if not isinstance(rule_targets, list) or not rule_targets:
                p.add(f"{rpath}.targets", "must list at least one target of this space")
                ok = False
            else:
                for j, t in enumerate(rule_targets):
                    if t not in targets:
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
            rules.append(TrustRule(space, name, issuer, audience, dict(claims), tuple(names), context))
    return tuple(rules)


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
