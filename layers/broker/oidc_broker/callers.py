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
import http.client
import json
import math
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .model import Config, Target, TrustedIssuer, TrustRule
from .urls import is_loopback
from .errors import InvalidGrant, InvalidRequest, Throttled, quoted
from .presets import ascii_lower
from .subject import is_slug
from .tokens import encoded_length

# Asymmetric algorithms only, each bound to the key type (and curve) that may verify it.
# Every CI issuer the presets cover signs with RS256.
ALGORITHMS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}
MAX_TOKEN_BYTES = 16 * 1024
# Discovery and key set together: well under the Lambda timeout (10 s) and STS's patience (~5 s).
FETCH_DEADLINE = 3.0
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 100
REFRESH_COOLDOWN = 60.0
SHARED_RECHECK = 10.0
JWKS_TTL = 600.0
MAX_REDIRECTS = 3
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti")
# The caller's sub travels in the minted token (act.sub), which KMS signs whole (4096 bytes):
# bounded as the minted token serializes it (JSON, ASCII-escaped), not in characters.
MAX_SUB_BYTES = 1024
# The caller's jti keys its grants in the table.
MAX_JTI_BYTES = 256
# Time claims are seconds since 1970 before the year 2286; anything else is refused before it is
# compared, converted to a float or stored (DynamoDB numbers hold 38 digits).
MAX_TIME = 10**10
# CI tokens nest a few levels deep; deeper JSON is refused before anything walks or compares it.
MAX_JSON_DEPTH = 32
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
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

class Deadline:
    """The moment a key set fetch gives up: what is left of it bounds every wait on the network."""

    def __init__(self, seconds: float, timer: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._timer = timer
        self._end = timer() + seconds

    def remaining(self) -> float:
        left = self._end - self._timer()
        if left <= 0:
            # A TimeoutError, like a socket's own, so every layer of urllib passes it through.
            raise TimeoutError(f"gave up after {self.seconds:g} s")
        return left


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


class _DeadlineReads:
    """Mixed into a socket class: each read waits only for what is left of the deadline.

    A socket timeout alone bounds one read, so a server trickling a byte at a time could hold
    a fetch for as long as it likes.
    """

    deadline: Deadline

    def recv_into(self, buffer, *args):
        self.settimeout(self.deadline.remaining())
        return super().recv_into(buffer, *args)


class _Socket(_DeadlineReads, socket.socket):
    pass


class _TlsSocket(_DeadlineReads, ssl.SSLSocket):
    pass


class _DeadlineConnection:
    """Mixed into an HTTP(S) connection: connecting, the TLS handshake and every read end at the deadline."""

    def __init__(self, *args, deadline: Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self):
        self.timeout = self.deadline.remaining()
        super().connect()
        if not isinstance(self.sock, _DeadlineReads):  # plain HTTP; TLS sockets come from the context
            self.sock = _Socket(fileno=self.sock.detach())
        self.sock.settimeout(self.deadline.remaining())
        self.sock.deadline = self.deadline


class _HttpConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _HttpsConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(_HttpConnection, req, deadline=self._deadline)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext):
        super().__init__(context=context)
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(_HttpsConnection, req, context=self._context, deadline=self._deadline)


class HttpFetcher:
    """GETs a JSON document: configured URLs only, within a deadline, size cap, same-origin redirects.

    The deadline covers connecting, the TLS handshake, redirects and every read; a caller passes
    one Deadline to several fetches to bound them together.
    """

    def __init__(self, *, allow_loopback_http: bool = False, timeout: float = FETCH_DEADLINE):
        self._allow_loopback_http = allow_loopback_http
        self._timeout = timeout  # the deadline of a fetch that is given none
        self._context: ssl.SSLContext | None = None

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:  # made on first use: loading the CA store is a cold start cost
            context = ssl.create_default_context()
            context.sslsocket_class = _TlsSocket
            self._context = context
        return self._context

    def __call__(self, url: str, deadline: Deadline | None = None) -> dict[str, Any]:
        _check_fetch_url(url, self._allow_loopback_http)
        deadline = deadline or Deadline(self._timeout)
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "oidc-broker"})
        try:
            handlers = [_SameOrigin(), _HttpHandler(deadline)]
            if urlsplit(url).scheme == "https":
                handlers.append(_HttpsHandler(deadline, self._tls()))
            opener = urllib.request.build_opener(*handlers)
            with opener.open(request, timeout=deadline.remaining()) as response:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
        except FetchError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            raise FetchError(f"could not fetch {url}: {getattr(e, 'reason', e)}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise FetchError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise FetchError(f"{url} is not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} is not a JSON object")
        return document


class SharedKeySets(Protocol):
    """Key sets shared across containers (the table): (fetched_at, keys) or None."""

    def get_issuer_keys(self, issuer: str) -> tuple[float, list[dict[str, Any]]] | None: ...

    def put_issuer_keys(self, issuer: str, keys: list[dict[str, Any]], fetched_at: float, max_age: float) -> None: ...


@dataclass
class _KeySet:
    """One issuer's key set as this container knows it, and how the last fetch of it went."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float = -math.inf  # when the issuer served `keys` (to us or to another container)
    attempted_at: float = -math.inf
    error: str | None = None  # why the last fetch failed; None once the issuer answered again
    shared_read_at: float = -math.inf


class IssuerKeys:
    """Each trusted issuer's published keys, cached per container and shared through the table.

    On an unknown `kid` the key set is fetched again at most once per issuer per cooldown —
    counted across containers through the shared copy — so a flood of made-up kids cannot become
    a flood of fetches. The last good key set survives a failed fetch for the issuer's
    max_key_set_age, counted from when the issuer served it; past that, or with no set at all, or
    with a kid the failed refetch might have brought, the caller gets a 503, never a guess. An
    empty key set is never cached or shared. One issuer's fetch never waits on another's.
    """

    def __init__(self, fetch: Callable[[str, Deadline], dict[str, Any]], clock: Callable[[], float],
                 cooldown: float = REFRESH_COOLDOWN, ttl: float = JWKS_TTL, shared: SharedKeySets | None = None,
                 deadline: float = FETCH_DEADLINE):
        self._fetch = fetch
        self._clock = clock
        self._cooldown = cooldown
        self._ttl = ttl
        self._shared = shared
        self._deadline = deadline
        self._sets: dict[str, _KeySet] = {}
        self._guard = threading.Lock()  # only for _sets and the counter; fetches hold the issuer's lock
        self.fetches = 0  # key set fetches made by this container (for benchmarks and tests)

    def key(self, issuer: TrustedIssuer, kid: str) -> dict[str, Any] | None:
        """The issuer's key `kid`, or None if the issuer's current key set has no such key.

        Throttled (503 with Retry-After) when the issuer's keys cannot be had to judge `kid`.
        """
        with self._guard:
            known = self._sets.setdefault(issuer.issuer, _KeySet())
        with known.lock:
            now = self._clock()
            if kid in known.keys and now - known.fetched_at < self._ttl:
                return known.keys[kid]
            self._from_shared(issuer, known, now)
            if kid in known.keys and now - known.fetched_at < self._ttl:
                return known.keys[kid]
            if now - max(known.attempted_at, known.fetched_at) >= self._cooldown:
                self._refresh(issuer, known, now)
            if now - known.fetched_at >= issuer.max_key_set_age:
                raise self._unavailable(issuer, known, now)
            if kid in known.keys:
                return known.keys[kid]
            if known.error is not None:  # a new key and a made-up kid look alike until the issuer answers
                raise self._unavailable(issuer, known, now)
            return None

    def _unavailable(self, issuer: TrustedIssuer, known: _KeySet, now: float) -> Throttled:
        age = now - known.fetched_at
        if math.isinf(age):
            what = "cannot be fetched"
        elif age >= issuer.max_key_set_age:
            what = f"could not be refreshed for {int(age)} s, longer than the broker trusts a key set"
        else:
            what = "does not have the token's kid and cannot be fetched again"
        retry_after = math.ceil(max(known.attempted_at, known.fetched_at) + self._cooldown - now)
        return Throttled(
            f"the key set of issuer {issuer.issuer!r} {what}; try again later", "issuer_unavailable",
            max(1, retry_after),
            log={"trusted_issuer": issuer.name, "issuer_url": issuer.issuer, "fetch_error": known.error,
                 "key_set_age": None if math.isinf(age) else int(age)},
        )

    def _from_shared(self, issuer: TrustedIssuer, known: _KeySet, now: float) -> None:
        # Looked at once per SHARED_RECHECK at most, so made-up kids cannot become table reads either.
        if self._shared is None or now - known.shared_read_at < SHARED_RECHECK:
            return
        known.shared_read_at = now
        try:
            item = self._shared.get_issuer_keys(issuer.issuer)
        except Exception:  # the table is an optimisation; the issuer itself is the source
            return
        if item is None or not isinstance(item[1], list):
            return
        fetched_at = item[0]
        # A copy the issuer served longer ago than its max age is no evidence, whatever the table holds.
        if fetched_at <= known.fetched_at or now - fetched_at >= issuer.max_key_set_age:
            return
        keys = _index(item[1])
        if not keys:
            return
        known.keys, known.fetched_at = keys, fetched_at
        if fetched_at >= known.attempted_at:  # the issuer answered another container after our failed try
            known.error = None

    def _refresh(self, issuer: TrustedIssuer, known: _KeySet, now: float) -> None:
        known.attempted_at = now
        with self._guard:
            self.fetches += 1
        try:
            keys = _index(self._load(issuer))
            if not keys:
                raise FetchError("the key set has no usable keys")
        except FetchError as e:
            known.error = str(e)
            return
        known.keys, known.fetched_at, known.error = keys, now, None
        if self._shared is not None:
            try:
                self._shared.put_issuer_keys(issuer.issuer, list(keys.values()), now, issuer.max_key_set_age)
            except Exception:  # sharing is best effort
                pass

    def _load(self, issuer: TrustedIssuer) -> list[dict[str, Any]]:
        deadline = Deadline(self._deadline)  # discovery and key set together
        jwks_uri = issuer.jwks_uri
        if jwks_uri is None:
            discovery = self._fetch(issuer.issuer + "/.well-known/openid-configuration", deadline)
            if discovery.get("issuer") != issuer.issuer:
                raise FetchError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError("the discovery document has no jwks_uri")
        keys = self._fetch(jwks_uri, deadline).get("keys")
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
            raise ValueError(f"duplicate member {quoted(key)}")
        result[key] = value
    return result


def _unsafe_json(value: Any) -> str | None:
    """What makes a decoded JSON value unsafe to handle, or None: too deep, or a string that is not
    Unicode (a lone surrogate from a `\\ud800` escape cannot be encoded, logged or stored)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "has a string that is not valid Unicode"
    return None


def _segment(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise InvalidGrant(f"subject_token {what} is not UTF-8", "malformed_token") from None
    except RecursionError:  # not a ValueError: JSON nested deeper than the interpreter's stack
        raise InvalidGrant(f"subject_token {what} is nested deeper than {MAX_JSON_DEPTH} levels", "malformed_token") from None
    except binascii.Error:
        raise InvalidGrant(f"subject_token {what} is not base64url", "malformed_token") from None
    except ValueError as e:
        reason = "duplicate_member" if "duplicate member" in str(e) else "malformed_token"
        detail = f": {e}" if reason == "duplicate_member" else ""
        raise InvalidGrant(f"subject_token {what} is not a JSON object{detail}", reason) from None
    if not isinstance(value, dict):
        raise InvalidGrant(f"subject_token {what} is not a JSON object", "malformed_token")
    problem = _unsafe_json(value)
    if problem:
        raise InvalidGrant(f"subject_token {what} {problem}", "malformed_token")
    return value


def parse(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWS compact token, unverified; refuses duplicates and oddities."""
    if not isinstance(token, str) or not token:
        raise InvalidRequest("subject_token is required")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidGrant(f"subject_token is larger than {MAX_TOKEN_BYTES} bytes", "token_too_large")
    parts = token.split(".")
    # Base64url only: no character of a JWS compact token may be non-ASCII, padding or dropped unread.
    if len(parts) != 3 or not all(parts[:2]) or not all(_BASE64URL.fullmatch(part) for part in parts):
        raise InvalidGrant("subject_token is not a signed JWT (JWS compact serialization)", "malformed_token")
    return _segment(parts[0], "header"), _segment(parts[1], "payload")


MIN_RSA_BITS = 2048
# Constructed public keys by (issuer, kid, JWK): a warm verification builds none; key sets rotate.
MAX_CACHED_KEYS = 64
_public_keys: dict[tuple[str, str, str], Any] = {}


def _unsigned(value: Any, size: int | None = None) -> int:
    """A JWK integer member: base64url of its unsigned big-endian bytes, minimal (no leading zero
    octet), and exactly `size` bytes where the key type fixes it."""
    if not isinstance(value, str) or not value or not _BASE64URL.fullmatch(value) or len(value) % 4 == 1:
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if size is not None and len(raw) != size:
        raise ValueError("wrong length")
    if size is None and raw[0] == 0:
        raise ValueError("leading zero octet")
    return int.from_bytes(raw, "big")


def _build_key(jwk: dict[str, Any], kty: str) -> Any:
    if kty == "RSA":
        n, e = _unsigned(jwk.get("n")), _unsigned(jwk.get("e"))
        if n.bit_length() < MIN_RSA_BITS or e < 3 or e % 2 == 0:
            raise ValueError("weak RSA key")
        return rsa.RSAPublicNumbers(e, n).public_key()
    x, y = _unsigned(jwk.get("x"), 32), _unsigned(jwk.get("y"), 32)
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()  # ValueError off the curve


def _public_key(issuer: str, jwk: dict[str, Any], alg: str) -> Any:
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv) or jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
        raise InvalidGrant(GENERIC_SIGNATURE_FAILURE, "bad_signature")
    cache_key = (issuer, jwk["kid"], json.dumps(jwk, sort_keys=True))
    key = _public_keys.get(cache_key)
    if key is None:
        try:
            key = _build_key(jwk, kty)
        except (ValueError, TypeError, binascii.Error):
            raise InvalidGrant(GENERIC_SIGNATURE_FAILURE, "bad_signature") from None
        if len(_public_keys) >= MAX_CACHED_KEYS:
            _public_keys.pop(next(iter(_public_keys)))
        _public_keys[cache_key] = key
    return key


def _check_signature(token: str, key: Any, alg: str) -> None:
    """RS256 (RSASSA-PKCS1-v1_5) or ES256 (ECDSA P-256, the JWS raw r||s form) over the token's
    `header.payload` exactly as received."""
    signing_input, _, encoded = token.rpartition(".")
    try:
        if len(encoded) % 4 == 1:
            raise ValueError("not base64url")
        signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if alg == "RS256":
            if len(signature) != (key.key_size + 7) // 8:
                raise ValueError("wrong length")
            key.verify(signature, signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(signature) != 64:  # a DER signature is not a JWS signature
                raise ValueError("wrong length")
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error):
        raise InvalidGrant(GENERIC_SIGNATURE_FAILURE, "bad_signature") from None


def verify(token: str, config: Config, keys: IssuerKeys, now: float) -> VerifiedCaller:
    """Verify the caller's token: trusted issuer, signature, time claims. Audience comes per rule."""
    header, claims = parse(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise InvalidGrant(f"subject_token alg must be one of {', '.join(ALGORITHMS)}", "bad_algorithm")
    if "crit" in header:
        raise InvalidGrant("subject_token has critical header parameters the broker does not understand", "unknown_crit")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidGrant("subject_token header has no kid", "missing_kid")
    iss = claims.get("iss")
    issuer = config.issuer_for(iss) if isinstance(iss, str) else None
    if issuer is None:
        raise InvalidGrant("subject_token issuer is not a trusted issuer", "untrusted_issuer")

    jwk = keys.key(issuer, kid)
    if jwk is None:
        # Named by its URL, the token's own iss: a refusal never reveals the configured name.
        raise InvalidGrant(f"subject_token kid is not in the key set of issuer {issuer.issuer!r}", "unknown_kid")
    _check_signature(token, _public_key(issuer.issuer, jwk, alg), alg)
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
        # Compared as they are (never converted): NaN compares false, 10**400 overflows a float.
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIME):
            raise InvalidGrant(f"subject_token {name} must be a finite number of seconds from 0 to {MAX_TIME}",
                               f"invalid_{name}")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti.encode()) > MAX_JTI_BYTES:
        raise InvalidGrant(f"subject_token jti must be a non-empty string of at most {MAX_JTI_BYTES} bytes (UTF-8)", "invalid_jti")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or encoded_length(sub) - 2 > MAX_SUB_BYTES:
        raise InvalidGrant(f"subject_token sub must be a non-empty string of at most {MAX_SUB_BYTES} bytes as JSON "
                           "(a non-ASCII character counts 6 or 12)", "invalid_sub")
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


# How a pipeline asks its CI for a token with the broker's audience: the fix for the first refusal
# most users meet (the audience is the public issuer URL, so naming it reveals nothing).
AUDIENCE_HOWTO = ("; request the CI token for that audience: GitHub Actions `core.getIDToken('{issuer}')` or "
                  "`$ACTIONS_ID_TOKEN_REQUEST_URL&audience={issuer}` (with `permissions: id-token: write`), "
                  "GitLab CI `id_tokens: {{OIDC_BROKER_ID_TOKEN: {{aud: '{issuer}'}}}}`; `oidc-broker login` does "
                  "this itself")


def _audience_ok(aud: Any, expected: str) -> bool:
    if isinstance(aud, str):
        return aud == expected
    return isinstance(aud, list) and expected in aud and all(isinstance(a, str) for a in aud)


def _same(a: Any, b: Any) -> bool:
    """Equal in type and value; strings in ASCII lower case (a case trick must not hide a value)."""
    if type(a) is not type(b):
        return False
    return ascii_lower(a) == ascii_lower(b) if isinstance(a, str) else a == b


def _dangerous_in(actual: Any, values: frozenset[Any]) -> list[Any]:
    """The dangerous values a claim holds, as a scalar or inside a list."""
    held = actual if isinstance(actual, list) else [actual]
    return [v for v in held if isinstance(v, (str, bool)) and any(_same(v, d) for d in values)]


def evaluate(rule: TrustRule, issuer: TrustedIssuer, claims: dict[str, Any], target: Target) -> RuleReport:
    """Every check of one rule against one caller and target, in order, each with its verdict."""
    checks = [
        Check("issuer", rule.issuer == issuer.name, f"rule is for issuer {rule.issuer!r}"),
        Check("target", target.name in rule.targets, f"rule lists {', '.join(rule.targets)}"),
        Check("aud", _audience_ok(claims.get("aud"), rule.audience), f"rule expects {rule.audience!r}"),
    ]
    # Tenant IDs first: a stranger's refusal then names the tenant, not how far it got past it.
    tenant = issuer.preset.tenant | ({"sub"} if issuer.preset.tenant_subject else set())
    ordered = sorted(rule.claims.items(), key=lambda item: item[0] not in tenant)
    for claim, condition in ordered:
        checks.append(Check(f"claim {claim}", condition.matches(claims.get(claim)), f"rule expects {condition.describe()}"))
    for claim, values in issuer.preset.dangerous.items():
        found = _dangerous_in(claims.get(claim), values)
        if found:
            literals = rule.claims[claim].literals() if claim in rule.claims else set()
            named = all(any(_same(v, lit) for lit in literals) for v in found)
            shown = found[0] if len(found) == 1 else found
            checks.append(Check(f"{claim} value", named, f"{shown!r} is refused unless the rule names it"))
    return RuleReport(rule, tuple(checks))


def explain(config: Config, caller: VerifiedCaller, target: Target) -> list[RuleReport]:
    """Each rule of the target's space, judged against the caller (for `oidc-broker explain`)."""
    return [evaluate(rule, caller.issuer, caller.claims, target) for rule in config.spaces[target.space].trust]


def admit(config: Config, caller: VerifiedCaller, target: Target) -> TrustRule:
    """The first trust rule of the target's space that admits the caller to the target.

    A refusal names the check that failed for the first rule of the caller's issuer and target,
    but no rule name, configured value or trusted-issuer name, so a caller cannot map the rules by
    probing; the full verdict per rule goes to the operator's log (and `oidc-broker explain`).
    """
    candidates = []
    # Only the rules naming the target can admit to it (the space's index, in the document's order).
    for rule in config.rules_for(target):
        report = evaluate(rule, caller.issuer, caller.claims, target)
        if report.admits:
            return report.rule
        if report.rule.issuer == caller.issuer.name:
            candidates.append(report)
    if not candidates:
        raise InvalidGrant(f"no trust rule admits tokens of issuer {caller.issuer.issuer!r} to target {target.ref!r}",
                           "no_matching_rule", log={"trusted_issuer": caller.issuer.name})
    log = {"trust_rules": [{"rule": r.rule.name, "check": r.first_failure().name, "detail": r.first_failure().detail}
                           for r in candidates]}
    failed, rule = candidates[0].first_failure(), candidates[0].rule
    if failed.name == "aud":
        # The broker's own issuer is public (discovery); any other configured audience is not.
        why = (f"tokens for this broker must have aud {config.issuer!r}{AUDIENCE_HOWTO.format(issuer=config.issuer)}"
               if rule.audience == config.issuer
               else f"not the audience the trust rules for target {target.ref!r} expect")
        raise InvalidGrant(f"aud does not match: {why}", "audience_mismatch", log=log)
    if failed.name.endswith(" value"):
        raise InvalidGrant(f"{failed.name[:-6]} {failed.detail}", "dangerous_event", log=log)
    raise InvalidGrant(f"claim {failed.name[6:]!r} does not match any trust rule for target {target.ref!r}",
                       "claim_mismatch", log=log)


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

