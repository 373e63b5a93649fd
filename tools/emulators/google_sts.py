"""A Google STS emulator (`POST /v1/token`) that verifies federated OIDC tokens the way Google does.

Workload identity federation checks, in Google's order, answering with Google's OAuth error
bodies (`{"error", "error_description"}`, HTTP 400):

  request     grant_type token-exchange, subject_token_type jwt (or id_token), requested_token_type
              access_token, an audience `//iam.googleapis.com/projects/N/locations/global/
              workloadIdentityPools/P/providers/X`                        -> invalid_request
  provider    registered and enabled, its pool too                        -> invalid_target
  the token   a JWS with RS256 or ES256 (Google accepts RSA and EC P-256)  -> invalid_grant
  issuer      `iss` equal to the provider's issuerUri                      -> invalid_grant
  audience    in allowedAudiences; none listed: the provider's resource name with or without
              `https:`                                                     -> invalid_grant
  keys        the provider's uploaded jwksJson, else `<iss>/.well-known/openid-configuration` and
              its jwks_uri fetched over HTTP (oidc.py); unreachable or no key of that `kid`:
              "Error connecting to the given credential's issuer."        -> invalid_grant
  signature   "Unable to verify the ID Token signature."                   -> invalid_grant
  times       exp and iat with about a minute of skew ("... is stale to sign-in.")
                                                                          -> invalid_grant
  mapping     attributeMapping: `google.subject` (required) and `attribute.*` from `assertion.<claim>`;
              google.subject at most 127 bytes                             -> unauthorized_client
  condition   attributeCondition, a CEL subset: `assertion.sub == "s"`, `.startsWith("p")`,
              `.matches("re")`, joined with `||` or `&&`                     -> unauthorized_client

On success a federated access token living `min(exp - now, 3600)` of the token presented. Issued
tokens are remembered (`federated`, `principal_of`), so the IAM Credentials and Artifact Registry
emulators can tell who presents one.
Tests may queue faults (`fail_next`: any status and body, or a delay). It imports nothing from the
broker. Never part of the Lambda layer.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import jwt

from .serving import QuietHandler
from . import oidc
from .oidc import OidcError

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AUDIENCE = re.compile(r"//iam\.googleapis\.com/(projects/(\d+)/locations/global/workloadIdentityPools/([a-z0-9-]+))"
                      r"/providers/([a-z0-9-]+)")
ALGORITHMS = ("RS256", "ES256")
SKEW = 60
MAX_LIFETIME = 3600
MAX_SUBJECT_BYTES = 127
INVALID_TARGET = ("The target service indicated by the \"audience\" parameters is invalid. This might either be "
                  "because the pool or provider is disabled or deleted or because it doesn't exist.")


class GoogleStsError(Exception):
    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class Provider:
    """A workload identity pool provider (OIDC), as `gcloud ... providers create-oidc` makes it."""

    name: str  # projects/N/locations/global/workloadIdentityPools/P/providers/X
    issuer_uri: str
    allowed_audiences: list[str] = field(default_factory=list)
    attribute_mapping: dict[str, str] = field(default_factory=lambda: {"google.subject": "assertion.sub"})
    attribute_condition: str | None = None
    jwks_json: str | None = None  # an uploaded key set instead of fetching the issuer's
    disabled: bool = False


@dataclass(frozen=True)
class Federated:
    """Who a federated access token stands for."""

    provider: str
    pool: str  # projects/N/locations/global/workloadIdentityPools/P
    subject: str
    attributes: dict[str, str]
    scopes: tuple[str, ...]
    expires_at: float

    @property
    def principal(self) -> str:
        return f"principal://iam.googleapis.com/{self.pool}/subject/{self.subject}"


# -- attribute conditions: the CEL the broker's trust setup writes ------------------------------------

_TERM = re.compile(r'\s*(assertion\.[A-Za-z_][\w]*|attribute\.[A-Za-z_][\w]*|google\.subject)\s*'
                   r'(==\s*("(?:[^"\\]|\\.)*")|\.startsWith\(\s*("(?:[^"\\]|\\.)*")\s*\)|'
                   r'\.matches\(\s*("(?:[^"\\]|\\.)*")\s*\))\s*')


def condition_holds(condition: str, values: dict[str, Any]) -> bool:
    """A CEL subset: terms `x == "s"`, `x.startsWith("p")`, `x.matches("re")` joined by `||` (any
    `&&` group must hold whole). Anything else is refused: an unknown expression grants nothing."""
    for alternative in condition.split("||"):
        terms = alternative.split("&&")
        if all(_term_holds(t, values) for t in terms):
            return True
    return False


def _term_holds(term: str, values: dict[str, Any]) -> bool:
    m = _TERM.fullmatch(term)
    if not m:
        return False
    value = values.get(m.group(1))
    if not isinstance(value, str):
        return False
    if m.group(3):
        return value == json.loads(m.group(3))
    if m.group(4):
        return value.startswith(json.loads(m.group(4)))
    return re.search(json.loads(m.group(5)), value) is not None


def _map(expression: str, claims: dict[str, Any]) -> Any:
    m = re.fullmatch(r"assertion\.([A-Za-z_][\w]*)", expression.strip())
    return claims.get(m.group(1)) if m else None


# -- verification -----------------------------------------------------------------------------------

class GoogleSts:
    def __init__(self, fetch: oidc.Fetch = oidc.http_fetch, clock: Callable[[], float] = time.time):
        self.fetch = fetch
        self.clock = clock
        self.providers: dict[str, Provider] = {}
        self.issued: dict[str, Federated] = {}
        self._lock = threading.Lock()

    def add_provider(self, provider: Provider) -> Provider:
        self.providers[provider.name] = provider
        return provider

    def federated(self, access_token: str) -> Federated | None:
        """Who a federated token this STS issued stands for, expired or not (its `expires_at` says)."""
        with self._lock:
            return self.issued.get(access_token)

    def principal_of(self, access_token: str) -> Federated | None:
        """Who a federated token stands for, while it is valid."""
        federated = self.federated(access_token)
        return federated if federated and federated.expires_at > self.clock() else None

    def exchange(self, form: dict[str, str]) -> dict[str, Any]:
        if form.get("grant_type") != GRANT_TYPE:
            raise GoogleStsError("unsupported_grant_type", f"Invalid value for grant_type: {form.get('grant_type')}.")
        if form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            raise GoogleStsError("invalid_request", "Invalid value for subject_token_type.")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            raise GoogleStsError("invalid_request", "Invalid value for requested_token_type.")
        audience = form.get("audience", "")
        m = AUDIENCE.fullmatch(audience)
        if not m:
            raise GoogleStsError("invalid_request", "Invalid value for audience.")
        name = audience.removeprefix("//iam.googleapis.com/")
        provider = self.providers.get(name)
        if provider is None or provider.disabled:
            raise GoogleStsError("invalid_target", INVALID_TARGET)
        if not form.get("subject_token"):
            raise GoogleStsError("invalid_request", "Invalid value for subject_token.")

        claims = self._verify(form["subject_token"], provider)
        attributes = self._attributes(provider, claims)
        now = self.clock()
        lifetime = int(min(claims["exp"] - now, MAX_LIFETIME))
        if lifetime <= 0:
            raise GoogleStsError("invalid_grant", f"ID Token issued at {claims.get('iat')} is stale to sign-in.")
        access_token = "ya29.emulated-federated-" + secrets.token_urlsafe(48)
        federated = Federated(provider=name, pool=m.group(1), subject=attributes["google.subject"],
                              attributes=attributes, scopes=tuple(form.get("scope", "").split()), expires_at=now + lifetime)
        with self._lock:
            self.issued[access_token] = federated
        return {"access_token": access_token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer",
                "expires_in": lifetime}

    def _verify(self, raw: str, provider: Provider) -> dict[str, Any]:
        try:
            token = oidc.parse(raw)
        except OidcError:
            raise GoogleStsError("invalid_grant", "Unable to parse the ID Token.") from None
        try:
            oidc.check_algorithm(token, ALGORITHMS)
        except OidcError as e:
            raise GoogleStsError("invalid_grant", f"The ID Token uses an unsupported algorithm: {e.value}.") from None
        claims = token.claims
        iss = claims.get("iss")
        if iss != provider.issuer_uri:
            raise GoogleStsError("invalid_grant", f"The issuer in ID Token {iss} does not match the expected ones: "
                                 f"{provider.issuer_uri}.")
        accepted = provider.allowed_audiences or ["https://iam.googleapis.com/" + provider.name,
                                                  "//iam.googleapis.com/" + provider.name]
        try:
            oidc.matching_audience(claims, accepted)
        except OidcError:
            raise GoogleStsError("invalid_grant", f"The audience in ID Token [{claims.get('aud')}] does not match the "
                                 "expected audience.") from None
        try:
            key = self._key(provider, iss, token.header.get("kid"))
            oidc.verify_signature(token, key)
        except OidcError as e:
            if e.check == "signature":
                raise GoogleStsError("invalid_grant", "Unable to verify the ID Token signature.") from None
            raise GoogleStsError("invalid_grant", "Error connecting to the given credential's issuer.") from None
        now = self.clock()
        try:
            oidc.check_times(claims, now, SKEW)
        except OidcError as e:
            if e.check == "iat":
                raise GoogleStsError("invalid_grant", f"ID Token issued at {claims.get('iat')} is in the future.") from None
            if e.check == "nbf":
                raise GoogleStsError("invalid_grant", "The ID Token is not yet valid.") from None
            raise GoogleStsError("invalid_grant", f"ID Token issued at {claims.get('iat')} is stale to sign-in.") from None
        return claims

    def _key(self, provider: Provider, iss: str, kid: Any) -> Any:
        if provider.jwks_json is None:
            return oidc.signing_key(iss, kid, self.fetch)
        keys = json.loads(provider.jwks_json).get("keys", [])
        for jwk in keys:
            if jwk.get("kid") == kid:
                try:
                    return jwt.PyJWK(jwk).key
                except jwt.PyJWTError:
                    break
        raise OidcError("kid", f"no uploaded key {kid!r}", kid)

    def _attributes(self, provider: Provider, claims: dict[str, Any]) -> dict[str, str]:
        attributes: dict[str, str] = {}
        for target, expression in provider.attribute_mapping.items():
            value = _map(expression, claims)
            if value is None:
                continue
            value = str(value)
            if target == "google.subject" and len(value.encode()) > MAX_SUBJECT_BYTES:
                raise GoogleStsError("unauthorized_client", "The size of mapped attribute exceeds the 127 bytes limit. "
                                     "Either reduce the number of attributes or the attribute size.")
            attributes[target] = value
        if "google.subject" not in attributes:
            raise GoogleStsError("invalid_grant", "The mapped attribute google.subject must not be empty.")
        if provider.attribute_condition is not None:
            values = {f"assertion.{k}": v for k, v in claims.items()}
            values.update({k if k.startswith(("google.", "attribute.")) else f"attribute.{k}": v
                           for k, v in attributes.items()})
            if not condition_holds(provider.attribute_condition, values):
                raise GoogleStsError("unauthorized_client", "The given credential is rejected by the attribute "
                                     "condition.")
        return attributes


# -- the server -------------------------------------------------------------------------------------

@dataclass
class Fault:
    status: int = 503
    body: Any = field(default_factory=lambda: {"error": "temporarily_unavailable", "error_description": "backend"})
    delay: float = 0.0


class GoogleStsEmulator:
    """The HTTP server. `calls` counts token requests; `refusals` the errors answered (for tests)."""

    def __init__(self, sts: GoogleSts, host: str = "127.0.0.1", port: int = 0):
        self.sts = sts
        self.calls = 0
        self.refusals: list[str] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self.token_url = self.url + "/v1/token"

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._faults.extend([fault] * times)

    def start(self) -> GoogleStsEmulator:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="google-sts",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, form: dict[str, str]) -> tuple[int, Any, float]:
        with self._lock:
            self.calls += 1
            fault = self._faults.pop(0) if self._faults else None
        if fault:
            return fault.status, fault.body, fault.delay
        try:
            return 200, self.sts.exchange(form), 0.0
        except GoogleStsError as e:
            with self._lock:
                self.refusals.append(e.error)
            return e.status, e.body(), 0.0


def _handler(emulator: GoogleStsEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.read_body()
            if self.path.split("?")[0] != "/v1/token":
                return self.reply_json(404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}})
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            status, answer, delay = emulator.answer(form)
            if delay:
                time.sleep(delay)
            self.reply_json(status, answer)

    return Handler
