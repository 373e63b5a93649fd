"""Callers: verifying a pipeline's own OIDC token and finding the trust rule that admits it.

Owns the decision "is this CI token really from the pipeline a trust rule names?": the issuer
pick (by the token's unverified `iss`, then exact), the signature with the issuer's published
keys, the time claims, and the rule's audience, claims and targets. It fetches key sets only from
configured URLs. It never logs or returns the token, and a refusal names the check that failed.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt

from .config import Config, Target, TrustedIssuer, TrustRule, is_loopback
from .errors import InvalidGrant, InvalidRequest
from .subject import is_slug

# Asymmetric algorithms only, each bound to the key type that may verify it.
ALGORITHMS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}
LEEWAY = 60
MAX_TOKEN_BYTES = 16 * 1024
JWKS_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024
REFRESH_COOLDOWN = 60.0
JWKS_TTL = 600.0
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti")


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


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        raise FetchError(f"{req.full_url} redirected; key sets are fetched only from configured URLs")


def _check_fetch_url(url: str, allow_loopback_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and allow_loopback_http and is_loopback(parts.hostname)):
        return
    raise FetchError(f"refusing to fetch {url}: https only")


class HttpFetcher:
    """GETs a JSON document: configured URLs only, 5 s timeout, size cap, no redirects."""

    def __init__(self, *, allow_loopback_http: bool = False, timeout: float = JWKS_TIMEOUT):
        self._opener = urllib.request.build_opener(NoRedirects())
        self._allow_loopback_http = allow_loopback_http
        self._timeout = timeout

    def __call__(self, url: str) -> dict[str, Any]:
        _check_fetch_url(url, self._allow_loopback_http)
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "oidc-broker"})
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
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


class IssuerKeys:
    """Each trusted issuer's published keys, cached per container.

    On an unknown `kid` the key set is fetched again at most once per issuer per cooldown, so a
    flood of made-up kids cannot become a flood of fetches. The last good key set survives a
    failed fetch; an empty key set is never cached.
    """

    def __init__(self, fetch: Callable[[str], dict[str, Any]], clock: Callable[[], float],
                 cooldown: float = REFRESH_COOLDOWN, ttl: float = JWKS_TTL):
        self._fetch = fetch
        self._clock = clock
        self._cooldown = cooldown
        self._ttl = ttl
        self._sets: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        self._last_attempt: dict[str, float] = {}
        self._lock = threading.Lock()

    def key(self, issuer: TrustedIssuer, kid: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._clock()
            cached = self._sets.get(issuer.issuer)
            if cached and kid in cached[1] and now - cached[0] < self._ttl:
                return cached[1][kid]
            last = self._last_attempt.get(issuer.issuer)
            if last is None or now - last >= self._cooldown:
                self._last_attempt[issuer.issuer] = now
                try:
                    keys = self._load(issuer)
                except FetchError:
                    keys = None
                if keys:
                    self._sets[issuer.issuer] = (now, keys)
                    cached = self._sets[issuer.issuer]
            return cached[1].get(kid) if cached else None

    def _load(self, issuer: TrustedIssuer) -> dict[str, dict[str, Any]]:
        jwks_uri = issuer.jwks_uri
        if jwks_uri is None:
            discovery = self._fetch(issuer.issuer + "/.well-known/openid-configuration")
            if discovery.get("issuer") != issuer.issuer:
                raise FetchError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError("the discovery document has no jwks_uri")
        document = self._fetch(jwks_uri)
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise FetchError("the key set has no keys")
        return {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(token, str) or not token:
        raise InvalidRequest("subject_token is required")
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise InvalidGrant(f"subject_token is larger than {MAX_TOKEN_BYTES} bytes", "token_too_large")
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise InvalidGrant("subject_token is not a signed JWT", "malformed_token") from None
    return header, payload


def _public_key(jwk: dict[str, Any], alg: str) -> Any:
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv) or jwk.get("alg", alg) != alg:
        raise InvalidGrant("subject_token signature is not valid", "bad_signature")
    if jwk.get("use", "sig") != "sig":
        raise InvalidGrant("subject_token signature is not valid", "bad_signature")
    try:
        return jwt.PyJWK(jwk, algorithm=alg).key
    except jwt.PyJWTError:
        raise InvalidGrant("subject_token signature is not valid", "bad_signature") from None


def verify(token: str, config: Config, keys: IssuerKeys, now: float, leeway: int = LEEWAY) -> VerifiedCaller:
    """Verify the caller's token: trusted issuer, signature, time claims. Audience comes per rule."""
    header, unverified = _segments(token)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
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
            issuer=issuer.issuer,
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError:
        raise InvalidGrant("subject_token signature is not valid", "bad_signature") from None
    except jwt.InvalidIssuerError:
        raise InvalidGrant("subject_token issuer is not a trusted issuer", "untrusted_issuer") from None
    except jwt.PyJWTError:
        raise InvalidGrant("subject_token signature is not valid", "bad_signature") from None

    _check_times(claims, now, leeway)
    return VerifiedCaller(issuer=issuer, claims=claims)


def _check_times(claims: dict[str, Any], now: float, leeway: int) -> None:
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise InvalidGrant(f"subject_token has no {name} claim", f"missing_{name}")
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidGrant(f"subject_token {name} must be a number", f"invalid_{name}")
    if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 256:
        raise InvalidGrant("subject_token jti must be a non-empty string", "invalid_jti")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise InvalidGrant("subject_token sub must be a non-empty string", "invalid_sub")
    if claims["exp"] <= now - leeway:
        raise InvalidGrant("subject_token has expired", "expired")
    if claims["iat"] > now + leeway:
        raise InvalidGrant("subject_token was issued in the future (iat)", "issued_in_future")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise InvalidGrant("subject_token is not valid yet (nbf)", "not_yet_valid")


def _audience_ok(aud: Any, expected: str) -> bool:
    if isinstance(aud, str):
        return aud == expected
    return isinstance(aud, list) and expected in aud and all(isinstance(a, str) for a in aud)


def rule_verdict(rule: TrustRule, caller: VerifiedCaller, target: Target) -> str | None:
    """Why `rule` does not admit `caller` to `target`, or None when it does."""
    if rule.issuer != caller.issuer.name:
        return f"trust rule {rule.name!r} is for issuer {rule.issuer!r}"
    if target.name not in rule.targets:
        return f"trust rule {rule.name!r} does not list target {target.name!r}"
    if not _audience_ok(caller.claims.get("aud"), rule.audience):
        return f"trust rule {rule.name!r}: aud does not match the rule's audience"
    for claim, expected in rule.claims.items():
        actual = caller.claims.get(claim)
        # Strict types: 123 is not "123", True is not 1.
        if type(actual) is not type(expected) or actual != expected:
            return f"trust rule {rule.name!r}: claim {claim!r} does not match"
    return None


def admit(config: Config, caller: VerifiedCaller, target: Target) -> TrustRule:
    """The first trust rule of the target's space that admits the caller to the target."""
    verdicts = []
    for rule in config.spaces[target.space].trust:
        why = rule_verdict(rule, caller, target)
        if why is None:
            return rule
        if rule.issuer == caller.issuer.name and target.name in rule.targets:
            verdicts.append(why)
    if not verdicts:
        raise InvalidGrant(
            f"no trust rule admits issuer {caller.issuer.name!r} to target {target.ref!r}", "no_matching_rule"
        )
    raise InvalidGrant("; ".join(verdicts), "rule_mismatch")


def context_values(rule: TrustRule, caller: VerifiedCaller) -> dict[str, str]:
    """Subject values the rule supplies: literals, or verified claims that must be slugs as they are."""
    values: dict[str, str] = {}
    for key, source in rule.context.items():
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
