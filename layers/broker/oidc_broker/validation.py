"""Validating a configuration document into a Config: every problem at once, with its path.

Pure and total: it reports every problem with the file, the path inside it and the rule broken,
and yields a Config only when there are none. A target's cloud is looked up in the registry
(clouds.CLOUDS): the cloud's description supplies the target's settings and their checks, its
default audience, its subject limit and its defaults, so nothing here names a cloud. It never
reads YAML (the CLI does) and never writes anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import clouds, presets, subject
from .checks import normalise, parse_lifetime
from .matching import Condition, Glob, compile_condition
from .model import (
    DEFAULT_LEEWAY,
    DEFAULT_MAX_KEY_SET_AGE,
    DEFAULT_MAX_TOKEN_AGE,
    KINDS,
    Config,
    ContextValue,
    Space,
    Target,
    TrustedIssuer,
    TrustRule,
)
from .urls import url_problem

DEFAULT_LIFETIME = 600
MIN_LIFETIME = 60
MAX_LIFETIME = 3600

MAX_LEEWAY = 300
MAX_TOKEN_AGE = 24 * 3600
MIN_MAX_KEY_SET_AGE = 15 * 60
MAX_MAX_KEY_SET_AGE = 24 * 3600

# ASCII only, so a look-alike such as 'ſub' can never name a claim; '/' for CircleCI's claims.
_CLAIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,127}")


class ConfigError(ValueError):
    """The configuration is invalid. `problems` holds (path, rule broken) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {path}: {rule}" for path, rule in problems))


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


# The document's top-level keys; a stored configuration's shared part is all of them but spaces.
TOP_KEYS = frozenset({"issuer", "trusted_issuers", "spaces"})


@dataclass(frozen=True)
class Shared:
    """What every space's rules refer to: the broker's issuer URL and the trusted issuers."""

    issuer: str
    trusted_issuers: Mapping[str, TrustedIssuer]


def parse(document: object, source: str = "<config>", *, allow_loopback_http: bool = False) -> Config:
    """Validate a configuration document (as loaded from YAML or JSON) and build the Config.

    Linear in the document's size: names are checked against sets, rules indexed by target."""
    p = _Problems()
    doc = p.mapping(document, "(top)", {"issuer", "trusted_issuers", "spaces"}, {"issuer", "spaces"})
    issuer, trusted = _parse_shared(p, doc, allow_loopback_http)

    spaces: dict[str, Space] = {}
    space_items = p.items_of(doc.get("spaces"), "spaces")
    if "spaces" in doc and not space_items:
        p.add("spaces", "must list at least one space")
    for i, item in enumerate(space_items):
        space = _parse_space(p, item, f"spaces[{i}]", issuer, trusted, spaces.keys())
        if space is not None:
            spaces[space.name] = space

    if p.items:
        raise ConfigError(source, p.items)
    config = Config(issuer=issuer, trusted_issuers=trusted, spaces=spaces, warnings=tuple(p.warnings))
    _check_across_targets(p, config)
    if p.items:
        raise ConfigError(source, p.items)
    return config


def parse_shared(document: object, source: str = "<config>", *, allow_loopback_http: bool = False) -> Shared:
    """The document's issuer and trusted issuers alone (its `spaces` are parsed one by one, with
    parse_space): how the functions read a stored configuration, a space when a request needs it."""
    p = _Problems()
    doc = p.mapping(document, "(top)", set(TOP_KEYS), {"issuer"})
    issuer, trusted = _parse_shared(p, doc, allow_loopback_http)
    if p.items:
        raise ConfigError(source, p.items)
    return Shared(issuer=issuer, trusted_issuers=trusted)


def parse_space(document: object, index: int, shared: Shared, source: str = "<config>") -> Space:
    """One space of a document (the `index`th of its `spaces`, for the problems' paths) against its
    shared part. The checks across targets (each cloud's check_config) need the whole document:
    parse runs them, before anything is applied."""
    p = _Problems()
    space = _parse_space(p, document, f"spaces[{index}]", shared.issuer, shared.trusted_issuers, ())
    if p.items or space is None:
        raise ConfigError(source, p.items or [(f"spaces[{index}]", "is not a space")])
    return space


def _parse_shared(p: _Problems, doc: dict, allow_loopback_http: bool) -> tuple[Any, dict[str, TrustedIssuer]]:
    issuer = doc.get("issuer")
    if "issuer" in doc and (why := url_problem(issuer, allow_loopback_http=allow_loopback_http)):
        p.add("issuer", why)

    trusted: dict[str, TrustedIssuer] = {}
    urls: set[str] = set()
    for i, item in enumerate(p.items_of(doc.get("trusted_issuers"), "trusted_issuers")):
        path = f"trusted_issuers[{i}]"
        issuer_item = _parse_trusted_issuer(p, item, path, allow_loopback_http)
        if issuer_item is None:
            continue
        if issuer_item.name in trusted:
            p.add(f"{path}.name", f"duplicate trusted issuer name {issuer_item.name!r}")
        elif issuer_item.issuer in urls:
            p.add(f"{path}.issuer", "this issuer URL is already listed")
        else:
            trusted[issuer_item.name] = issuer_item
            urls.add(issuer_item.issuer)
    return issuer, trusted


def _parse_space(p: _Problems, item: object, path: str, issuer: Any, trusted: Mapping[str, TrustedIssuer],
                 taken: Any) -> Space | None:
    item = p.mapping(item, path, {"name", "targets", "trust"}, {"name"})
    name = item.get("name")
    if "name" not in item or not p.slug(name, f"{path}.name"):
        return None
    if name in taken:
        p.add(f"{path}.name", f"duplicate space name {name!r}")
        return None
    targets = _parse_targets(p, item.get("targets"), f"{path}.targets", name)
    broker_issuer = issuer if isinstance(issuer, str) else ""
    rules = _parse_rules(p, item.get("trust"), f"{path}.trust", name, targets, trusted, broker_issuer)
    return Space(name=name, targets=targets, trust=rules)


def _check_across_targets(p: _Problems, config: Config) -> None:
    """Each cloud's rules across targets, reported at the targets' settings blocks (a valid
    configuration keeps every space and target, in the document's order)."""
    paths = {target.ref: f"spaces[{i}].targets[{j}]"
             for i, space in enumerate(config.spaces.values()) for j, target in enumerate(space.targets.values())}
    for cloud in clouds.CLOUDS.values():
        if cloud.check_config is not None:
            for ref, problem in cloud.check_config(config):
                p.add(f"{paths.get(ref, ref)}.{cloud.name}", problem)


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
    known = {"name", "kind", "provider", "audience", "subject", "lifetime", "refresh", *clouds.CLOUDS}
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
        cloud = clouds.CLOUDS.get(provider) if isinstance(provider, str) else None
        if "provider" in item and cloud is None:
            p.add(f"{tpath}.provider", f"must be one of {', '.join(clouds.CLOUDS)}")
            ok = False
        if not ok or kind not in KINDS or cloud is None:
            continue

        settings = _parse_settings(p, item, tpath, cloud)
        audience = item.get("audience", cloud.default_audience(settings))
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
        limit = cloud.max_subject_bytes
        if subject.shortest_length(keys, {"space": space, kind: name}) > limit:
            p.add(f"{tpath}.subject", f"cannot fit the {limit}-byte subject limit for {provider} targets")
            continue

        lifetime = parse_lifetime(item.get("lifetime", DEFAULT_LIFETIME))
        if lifetime is None or not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
            p.add(f"{tpath}.lifetime", f"must be a duration from {MIN_LIFETIME}s to {MAX_LIFETIME}s (e.g. 600, 10m, 1h)")
            continue
        refresh = item.get("refresh", False)
        if not isinstance(refresh, bool):
            p.add(f"{tpath}.refresh", "must be true or false")
            continue
        target = Target(space, name, kind, provider, audience, keys, lifetime, settings, refresh=refresh,
                        defaults=cloud.defaults(kind), max_subject_bytes=limit)
        if refresh and not float(target.setting("refresh_at")) > 0:
            # With refresh_at 0 nothing is served from the cache: credentials renewed ahead would go unused.
            p.warn(f"{tpath}.refresh", f"has no effect with {provider}.refresh_at 0: the cache serves nothing, so "
                                       "the scheduled refresh leaves this target alone")
        targets[name] = target
    return targets


def _parse_settings(p: _Problems, item: dict, path: str, cloud: clouds.Cloud) -> dict[str, Any]:
    for other in clouds.CLOUDS:
        if other != cloud.name and other in item:
            p.add(f"{path}.{other}", f"settings for {other} on a {cloud.name} target")
    if cloud.name not in item:
        return {}
    block = p.mapping(item[cloud.name], f"{path}.{cloud.name}", set(cloud.settings))
    settings = {}
    for key, value in block.items():
        setting = cloud.settings.get(key)
        if setting is None:
            continue
        normalised = normalise(setting.check, value)
        if normalised is None:
            p.add(f"{path}.{cloud.name}.{key}", f"must be {setting.what}")
        elif item.get("kind") not in setting.kinds:
            p.add(f"{path}.{cloud.name}.{key}", f"applies to {' or '.join(setting.kinds)} targets only")
        else:
            settings[key] = normalised
    return settings


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
    names_seen: set[str] = set()
    for i, item in enumerate(p.items_of(value, path)):
        rpath = f"{path}[{i}]"
        item = p.mapping(item, rpath, known, {"name", "issuer", "claims", "targets"})
        name = item.get("name")
        ok = "name" in item and p.slug(name, f"{rpath}.name")
        if ok and name in names_seen:
            p.add(f"{rpath}.name", f"duplicate trust rule name {name!r} in space {space!r}")
            ok = False
        elif ok:
            names_seen.add(name)
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
            limit = target.max_subject_bytes
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
