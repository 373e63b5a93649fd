"""Verifying an OIDC ID token as a cloud's token service does, written once for every emulator.

AWS STS, Microsoft Entra and Google's STS all verify a federated token the same way: parse the
JWS, find the issuer's keys by fetching `<iss>/.well-known/openid-configuration` and its
`jwks_uri` over HTTP (never a cached copy handed over by the caller), pick the key named by
`kid`, check the signature, then `iss`, `aud` and the times. Each emulator calls these steps in
its own service's order and maps an `OidcError`'s `check` to its own error codes.

It imports nothing from the broker, on purpose: an emulator that reused the broker's helpers
would pass the broker's bugs. Never part of the Lambda layer.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")  # asymmetric only: a shared secret proves nothing
CLOCK_SKEW = 300
FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024

Fetch = Callable[[str], dict[str, Any]]


class OidcError(Exception):
    """A token that fails one check. `check` names it, so each emulator can answer in its own codes.

    Checks: token (not a JWS with JSON header and claims), algorithm, issuer (`iss` not the one
    expected, or not an https URL), audience, unreachable (discovery or JWKS could not be
    fetched), discovery (the document names another issuer or no jwks_uri), kid (no usable key of
    that id), signature, exp (absent), expired, nbf, iat.
    """

    def __init__(self, check: str, message: str, value: Any = None):
        super().__init__(f"{check}: {message}")
        self.check, self.message = check, message
        self.value = value  # what the token held for this check (alg, kid, exp, ...), for the service's wording


class FetchFailed(Exception):
    pass


def http_fetch(url: str) -> dict[str, Any]:
    """GET a JSON document the way the token services do: 5 s, no redirects, bounded size."""

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            raise FetchFailed(f"{url} redirected")

    opener = urllib.request.build_opener(NoRedirects())
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=FETCH_TIMEOUT) as r:
            body = r.read(MAX_DOCUMENT_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise FetchFailed(f"could not fetch {url}: {getattr(e, 'reason', e)}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchFailed(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise FetchFailed(f"{url} is not JSON") from None
    if not isinstance(document, dict):
        raise FetchFailed(f"{url} is not a JSON object")
    return document


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def secure_issuer(iss: Any) -> bool:
    """An issuer the services fetch keys from: https, or http for a loopback host (local mode), no query."""
    if not isinstance(iss, str):
        return False
    try:
        parts = urlsplit(iss)
        host = parts.hostname
    except ValueError:
        return False
    if parts.query or parts.fragment or not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host))


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@dataclass(frozen=True)
class Unverified:
    """A token's parts as sent; nothing in them is trusted until `verify_signature` passes."""

    raw: str
    header: dict[str, Any]
    claims: dict[str, Any]


def parse(token: str) -> Unverified:
    try:
        head_b64, payload_b64, _ = token.split(".")
        header, claims = _b64json(head_b64), _b64json(payload_b64)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise OidcError("token", "the token could not be parsed") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise OidcError("token", "the token could not be parsed")
    return Unverified(token, header, claims)


def check_algorithm(token: Unverified, algorithms: Iterable[str] = ALGORITHMS) -> None:
    alg = token.header.get("alg")
    if alg not in tuple(algorithms):
        raise OidcError("algorithm", f"the token uses an unsupported algorithm: {alg}", alg)


def matching_audience(claims: dict[str, Any], accepted: Collection[str]) -> str:
    """The first of the token's audiences (`aud`, a string or a list) that is accepted."""
    aud = claims.get("aud")
    for audience in aud if isinstance(aud, list) else [aud]:
        if isinstance(audience, str) and audience in accepted:
            return audience
    raise OidcError("audience", f"the token's audience {aud!r} is not one of {sorted(accepted)}")


def signing_key(iss: str, kid: Any, fetch: Fetch = http_fetch) -> Any:
    """The public key `kid` names in the JWKS that `iss`'s own discovery document points to."""
    try:
        discovery = fetch(iss + "/.well-known/openid-configuration")
        if discovery.get("issuer") != iss or not isinstance(discovery.get("jwks_uri"), str):
            raise OidcError("discovery", f"the discovery document of {iss} names the issuer "
                            f"{discovery.get('issuer')!r} or no jwks_uri", discovery.get("issuer"))
        keys = fetch(discovery["jwks_uri"]).get("keys")
    except FetchFailed as e:
        raise OidcError("unreachable", str(e)) from None
    for jwk in keys if isinstance(keys, list) else []:
        if isinstance(jwk, dict) and jwk.get("kid") == kid:
            try:
                return jwt.PyJWK(jwk).key
            except jwt.PyJWTError:
                break
    raise OidcError("kid", f"the key set of {iss} has no usable key {kid!r}", kid)


def verify_signature(token: Unverified, key: Any) -> None:
    try:
        jwt.decode(token.raw, key, algorithms=[token.header["alg"]],
                   options={"verify_signature": True, "verify_aud": False, "verify_exp": False,
                            "verify_nbf": False, "verify_iat": False, "verify_iss": False})
    except jwt.PyJWTError:
        raise OidcError("signature", "the token's signature could not be verified") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_times(claims: dict[str, Any], now: float, skew: float = CLOCK_SKEW, *, iat: bool = True) -> None:
    """`exp` present and not past, `nbf` and (when `iat`) `iat` not in the future, each with `skew`."""
    exp = claims.get("exp")
    if not _number(exp):
        raise OidcError("exp", "the token has no expiration (exp)")
    if now > exp + skew:
        raise OidcError("expired", f"the token expired at {int(exp)}, it is now {int(now)}", exp)
    nbf = claims.get("nbf")
    if _number(nbf) and nbf > now + skew:
        raise OidcError("nbf", f"the token is not valid before {int(nbf)}, it is now {int(now)}", nbf)
    issued = claims.get("iat")
    if iat and _number(issued) and issued > now + skew:
        raise OidcError("iat", f"the token was issued in the future ({int(issued)}), it is now {int(now)}", issued)


class OidcVerifier:
    """Every check in the common order, for a service that knows which issuer it trusts."""

    def __init__(self, fetch: Fetch = http_fetch, clock: Callable[[], float] = time.time,
                 skew: float = CLOCK_SKEW, algorithms: Iterable[str] = ALGORITHMS):
        self.fetch, self.clock, self.skew, self.algorithms = fetch, clock, skew, tuple(algorithms)

    def verify(self, raw: str, issuer: str, audiences: Collection[str]) -> tuple[dict[str, Any], str]:
        """The verified claims and the audience that matched, or the OidcError of the first failed check."""
        token = parse(raw)
        check_algorithm(token, self.algorithms)
        iss = token.claims.get("iss")
        if iss != issuer or not secure_issuer(iss):
            raise OidcError("issuer", f"the token's issuer {iss!r} is not {issuer!r}", iss)
        audience = matching_audience(token.claims, audiences)
        verify_signature(token, signing_key(iss, token.header.get("kid"), self.fetch))
        check_times(token.claims, self.clock(), self.skew)
        return token.claims, audience
