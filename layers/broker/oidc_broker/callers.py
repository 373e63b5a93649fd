"""Callers: verifying a pipeline's own OIDC token and finding the trust rule that admits it.

Owns the decision "is this CI token really from the pipeline a trust rule names?": the issuer
pick (by the token's unverified `iss`, then exact), a strict parse of the token, the signature
with the issuer's published keys (fetched only from configured URLs), the time claims, and each
rule's audience, claims and targets. It never logs or returns the token; a refusal names the
check that failed, and signature failures stay generic.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import jwt

from .config import Config, Target, TrustedIssuer, TrustRule, is_loopback
from .errors import InvalidGrant, InvalidRequest
from .subject import is_slug

# Asymmetric algorithms only, each bound to the key type (and curve) that may verify it.
# Every CI issuer the presets cover signs with RS256.
ALGORITHMS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}
MAX_TOKEN_BYTES = 16 * 1024
JWKS_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 100
REFRESH_COOLDOWN = 60.0
SHARED_RECHECK = 10.0
JWKS_TTL = 600.0
MAX_REDIRECTS = 3
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti")
# The caller's sub travels in the minted token (act.sub), which KMS signs whole (4096 bytes).
MAX_SUB_LENGTH = 1024
GENERIC_SIGNATURE_FAILURE = "subject_token signature is not valid"


@dataclass(frozen=True)
class VerifiedCaller:
    issuer: TrustedIssuer
    claims: dict[str, Any] = field(hash=False)

    @property
    def subject(self) -> str:
        return self.claims["sub"]

    @property
    def jti(self) -> str:
        return self.claims["jti"]


class FetchError(Exception):
    pass


# -- fetching key sets -------------------------------------------------------------------------

def _check_fetch_url(url: str, allow_loopback_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and allow_loopback_http and is_loopback(parts.hostname)):
        return
    raise FetchError(f"refusing to fetch {url}: https only")


class _SameOrigin(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new, old = urlsplit(urljoin(req.full_url, newurl)), urlsplit(req.full_url)
        if (new.scheme, new.hostname, new.port) != (old.scheme, old.hostname, old.port):
            raise FetchError(f"{old.scheme}://{old.netloc} redirected to another host; refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpFetcher:
    """GETs a JSON document: configured URLs only, 5 s timeout, size cap, same-origin redirects."""

    def __init__(self, *, allow_loopback_http: bool = False, timeout: float = JWKS_TIMEOUT):
        self._opener = urllib.request.build_opener(_SameOrigin())
        self._allow_loopback_http = allow_loopback_http
        self._timeout = timeout

    def __call__(self, url: str) -> dict[str, Any]:
        _check_fetch_url(url, self._allow_loopback_http)
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "oidc-broker"})
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
        except FetchError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise FetchError(f"could not fetch {url}: {getattr(e, 'reason', e)}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise FetchError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise FetchError(f"{url} is not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} is not a JSON object")
        return document


class SharedKeySets(Protocol):
    """Key sets shared across containers (the table): (fetched_at, keys) or None."""

    def get_issuer_keys(self, issuer: str) -> tuple[float, list[dict[str, Any]]] | None: ...

    def put_issuer_keys(self, issuer: str, keys: list[dict[str, Any]], fetched_at: float) -> None: ...


class IssuerKeys:
    """Each trusted issuer's published keys, cached per container and shared through the table.

    On an unknown `kid` the key set is fetched again at most once per issuer per cooldown —
    counted across containers through the shared copy — so a flood of made-up kids cannot become
    a flood of fetches. The last good key set survives a failed fetch; an empty key set is never
    cached or shared.
    """

    def __init__(self, fetch: Callable[[str], dict[str, Any]], clock: Callable[[], float],
                 cooldown: float = REFRESH_COOLDOWN, ttl: float = JWKS_TTL, shared: SharedKeySets | None = None):
        self._fetch = fetch
        self._clock = clock
        self._cooldown = cooldown
        self._ttl = ttl
        self._shared = shared
        self._sets: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        self._last_attempt: dict[str, float] = {}
        self._last_shared: dict[str, float] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # key set fetches made by this container (for benchmarks and tests)

    def key(self, issuer: TrustedIssuer, kid: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._clock()
            cached = self._sets.get(issuer.issuer)
            if cached and kid in cached[1] and now - cached[0] < self._ttl:
                return cached[1][kid]
            cached = self._from_shared(issuer, cached, now) or cached
            if cached and kid in cached[1] and now - cached[0] < self._ttl:
                return cached[1][kid]
            last = max(self._last_attempt.get(issuer.issuer, float("-inf")), cached[0] if cached else float("-inf"))
            if now - last >= self._cooldown:
                self._last_attempt[issuer.issuer] = now
                keys = self._try_fetch(issuer, now)
                if keys:
                    cached = self._sets[issuer.issuer] = (now, keys)
            return cached[1].get(kid) if cached else None

    def _from_shared(self, issuer: TrustedIssuer, cached, now: float):
        # Looked at once per SHARED_RECHECK at most, so made-up kids cannot become table reads either.
        if self._shared is None or now - self._last_shared.get(issuer.issuer, float("-inf")) < SHARED_RECHECK:
            return None
        self._last_shared[issuer.issuer] = now
        try:
            item = self._shared.get_issuer_keys(issuer.issuer)
        except Exception:  # the table is an optimisation; the issuer itself is the source
            return None
        if item is None or (cached and item[0] <= cached[0]):
            return None
        keys = _index(item[1])
        if not keys:
            return None
        self._sets[issuer.issuer] = (item[0], keys)
        return self._sets[issuer.issuer]

    def _try_fetch(self, issuer: TrustedIssuer, now: float) -> dict[str, dict[str, Any]] | None:
        self.fetches += 1
        try:
            document = self._load(issuer)
        except FetchError:
            return None
        keys = _index(document)
        if keys and self._shared is not None:
            try:
                self._shared.put_issuer_keys(issuer.issuer, list(keys.values()), now)
            except Exception:  # sharing is best effort
                pass
        return keys

    def _load(self, issuer: TrustedIssuer) -> list[dict[str, Any]]:
        jwks_uri = issuer.jwks_uri
        if jwks_uri is None:
            discovery = self._fetch(issuer.issuer + "/.well-known/openid-configuration")
            if discovery.get("issuer") != issuer.issuer:
                raise FetchError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError("the discovery document has no jwks_uri")
        keys = self._fetch(jwks_uri).get("keys")
        if not isinstance(keys, list):
            raise FetchError("the key set has no keys")
        return keys


def _index(keys: list[Any]) -> dict[str, dict[str, Any]]:
    """Usable keys by kid: asymmetric, with a kid, no private members, at most MAX_KEYS."""
    usable = {}
    for key in keys[:MAX_KEYS]:
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or key.get("kty") not in ("RSA", "EC"):
            continue
        if "d" in key:  # a private key published by mistake is not a key to trust
            continue
        usable[key["kid"]] = key
    return usable


# -- parsing and verifying ---------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _segment(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        reason = "duplicate_member" if "duplicate member" in str(e) else "malformed_token"
        detail = f": {e}" if reason == "duplicate_member" else ""
        raise InvalidGrant(f"subject_token {what} is not a JSON object{detail}", reason) from None
    except binascii.Error:
        raise InvalidGrant(f"subject_token {what} is not base64url", "malformed_token") from None
    if not isinstance(value, dict):
        raise InvalidGrant(f"subject_token {what} is not a JSON object", "malformed_token")
    return value


def parse(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWS compact token, unverified; refuses duplicates and oddities."""
    if not isinstance(token, str) or not token:
        raise InvalidRequest("subject_token is required")
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise InvalidGrant(f"subject_token is larger than {MAX_TOKEN_BYTES} bytes", "token_too_large")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise InvalidGrant("subject_token is not a signed JWT (JWS compact serialization)", "malformed_token")
    return _segment(parts[0], "header"), _segment(parts[1], "payload")


def _public_key(jwk: dict[str, Any], alg: str) -> Any:
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv) or jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
        raise InvalidGrant(GENERIC_SIGNATURE_FAILURE, "bad_signature")
    try:
        return jwt.PyJWK(jwk, algorithm=alg).key
    except jwt.PyJWTError:
        raise InvalidGrant(GENERIC_SIGNATURE_FAILURE, "bad_signature") from None


def verify(token: str, config: Config, keys: IssuerKeys, now: float) -> VerifiedCaller:
    """Verify the caller's token: trusted issuer, signature, time claims. Audience comes per rule."""
    header, unverified = parse(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise InvalidGrant(f"subject_token alg must be one of {', '.join(ALGORITHMS)}", "bad_algorithm")
    if "crit" in header:
        raise InvalidGrant("subject_token has critical header parameters the broker does not understand", "unknown_crit")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidGrant("subject_token header has no kid", "missing_kid")
    iss = unverified.get("iss")
    issuer = config.issuer_for(iss) if isinstance(iss, str) else None
    if issuer is None:
        raise InvalidGrant("subject_token issuer is not a trusted issuer", "untrusted_issuer")

    jwk = keys.key(issuer, kid)
    if jwk is None:
        raise InvalidGrant(f"subject_token kid is not in the key set of issuer {issuer.name!r}", "unknown_kid")
    try:
        claims = jwt.decode(
            token,
            _public_key(jwk, alg),
            algorithms=[alg],
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_iss": False, "verify_sub": False, "verify_jti": False},
        )
    except jwt.PyJWTError:
        raise InvalidGrant(GENERIC_SIGNATURE_FAILURE, "bad_signature") from None
    if claims.get("iss") != issuer.issuer:  # the signed claims, byte for byte
        raise InvalidGrant("subject_token issuer is not a trusted issuer", "untrusted_issuer")
    check_claims(claims, issuer, now)
    return VerifiedCaller(issuer=issuer, claims=claims)


def check_claims(claims: dict[str, Any], issuer: TrustedIssuer, now: float) -> None:
    """The required claims, their types, and the time window with the issuer's leeway."""
    leeway = issuer.leeway
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise InvalidGrant(f"subject_token has no {name} claim", f"missing_{name}")
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise InvalidGrant(f"subject_token {name} must be a finite number", f"invalid_{name}")
    if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 256:
        raise InvalidGrant("subject_token jti must be a non-empty string of at most 256 characters", "invalid_jti")
    if not isinstance(claims["sub"], str) or not claims["sub"] or len(claims["sub"]) > MAX_SUB_LENGTH:
        raise InvalidGrant(f"subject_token sub must be a non-empty string of at most {MAX_SUB_LENGTH} characters", "invalid_sub")
    if claims["exp"] <= now - leeway:
        raise InvalidGrant("subject_token has expired", "expired")
    if claims["iat"] > now + leeway:
        raise InvalidGrant("subject_token was issued in the future (iat)", "issued_in_future")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise InvalidGrant("subject_token is not valid yet (nbf)", "not_yet_valid")
    if now - claims["iat"] > issuer.max_token_age + leeway:
        raise InvalidGrant(f"subject_token is older than {issuer.max_token_age} s (iat)", "too_old")


# -- trust rules -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str  # "issuer", "target", "aud", "claim ref", "event_name value"
    ok: bool
    detail: str


@dataclass(frozen=True)
class RuleReport:
    rule: TrustRule
    checks: tuple[Check, ...]

    @property
    def admits(self) -> bool:
        return all(c.ok for c in self.checks)

    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)


def _audience_ok(aud: Any, expected: str) -> bool:
    if isinstance(aud, str):
        return aud == expected
    return isinstance(aud, list) and expected in aud and all(isinstance(a, str) for a in aud)


def evaluate(rule: TrustRule, issuer: TrustedIssuer, claims: dict[str, Any], target: Target) -> RuleReport:
    """Every check of one rule against one caller and target, in order, each with its verdict."""
    checks = [
        Check("issuer", rule.issuer == issuer.name, f"rule is for issuer {rule.issuer!r}"),
        Check("target", target.name in rule.targets, f"rule lists {', '.join(rule.targets)}"),
        Check("aud", _audience_ok(claims.get("aud"), rule.audience), f"rule expects {rule.audience!r}"),
    ]
    for claim, condition in rule.claims.items():
        checks.append(Check(f"claim {claim}", condition.matches(claims.get(claim)), f"rule expects {condition.describe()}"))
    for claim, values in issuer.preset.dangerous.items():
        actual = claims.get(claim)
        if isinstance(actual, (str, bool)) and actual in values:
            named = claim in rule.claims and actual in rule.claims[claim].literals()
            checks.append(Check(f"{claim} value", named, f"{actual!r} is refused unless the rule names it"))
    return RuleReport(rule, tuple(checks))


def explain(config: Config, caller: VerifiedCaller, target: Target) -> list[RuleReport]:
    """Each rule of the target's space, judged against the caller (for `oidc-broker explain`)."""
    return [evaluate(rule, caller.issuer, caller.claims, target) for rule in config.spaces[target.space].trust]


def admit(config: Config, caller: VerifiedCaller, target: Target) -> TrustRule:
    """The first trust rule of the target's space that admits the caller to the target."""
    candidates = []
    for report in explain(config, caller, target):
        if report.admits:
            return report.rule
        if report.rule.issuer == caller.issuer.name and target.name in report.rule.targets:
            candidates.append(report)
    if not candidates:
        raise InvalidGrant(f"no trust rule admits issuer {caller.issuer.name!r} to target {target.ref!r}", "no_matching_rule")
    reasons = []
    for report in candidates:
        failed = report.first_failure()
        if failed.name.startswith("claim "):
            what = f"claim {failed.name[6:]!r} does not match"
        elif failed.name == "aud":
            what = "aud does not match the rule's audience"
        else:
            what = failed.detail
        reasons.append(f"trust rule {report.rule.name!r}: {what}")
    first = candidates[0].first_failure().name
    reason = "audience_mismatch" if first == "aud" else "dangerous_event" if first.endswith("value") else "claim_mismatch"
    raise InvalidGrant("; ".join(reasons), reason)


def context_values(rule: TrustRule, caller: VerifiedCaller, target: Target) -> dict[str, str]:
    """Subject values the rule supplies for the target's keys: literals, or verified claims that
    must be slugs as they are."""
    values: dict[str, str] = {}
    for key, source in rule.context.items():
        if key not in target.subject_keys:
            continue
        if source.literal is not None:
            values[key] = source.literal
            continue
        value = caller.claims.get(source.claim)
        if value is None or value == "":
            raise InvalidGrant(f"claim {source.claim!r} for subject key {key!r} is missing or empty", "missing_context")
        if not is_slug(value):
            raise InvalidGrant(f"claim {source.claim!r} for subject key {key!r} is not a slug", "invalid_context")
        values[key] = value
    return values

