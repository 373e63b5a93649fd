"""A Microsoft Entra ID token endpoint emulator that verifies client assertions as Entra does.

It speaks `POST /<tenant>/oauth2/v2.0/token` (grant_type=client_credentials with a JWT client
assertion, as azure-identity's ClientAssertionCredential sends it) over HTTPS — azure-identity
refuses an http:// authority — with a CA made at start (`TestCA`). It checks, in this order,
answering with Entra's JSON error body (`error`, `error_description` "AADSTS<code>: …",
`error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`):

  request        grant_type, client_assertion_type jwt-bearer, client_id, scope  -> 900144 / 90014
  the token      a JWS with an RSA algorithm (Entra refuses ES256)              -> 50027 / 5002738
  identity       the app (tenant, client_id) exists                               -> 700016
  federated      its federated credentials (propagated: `visible_after`), none  -> 70021
  credential     one whose issuer is `iss` exactly                                -> 700211
                 ... whose audiences hold `aud`                                   -> 700212
                 ... whose subject is `sub` exactly (case-sensitive)              -> 700213, or
                     7002138 when it differs only in letter case
  keys           the issuer's discovery and JWKS over HTTP (oidc.py), `kid`      -> 50166 / 700027
  signature      verified with that key                                           -> 700027
  time           exp, nbf and iat within Entra's window                           -> 700024

On success it issues an access token for the scope, recorded in `issued` so the ACR emulator
accepts only what Entra issued. Tests may queue faults (`fail_next`: a status and an AADSTS
code). It imports nothing from the broker and never logs a request. Never part of the Lambda layer.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from .serving import QuietHandler
from . import oidc
from .oidc import OidcError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
CLOCK_SKEW = 300
ACCESS_TOKEN_LIFETIME = 3599
MAX_BODY_BYTES = 64 * 1024
ERROR_URI = "https://login.microsoftonline.com/error?code={code}"


# -- TLS: a CA made for the run --------------------------------------------------------------------

class TestCA:
    """A CA and a loopback server certificate it signed, written to a directory of their own."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oidc-broker emulators CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        server = (x509.CertificateBuilder()
                  .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                  .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                  .add_extension(x509.SubjectAlternativeName([
                      x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                  .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                  .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                  .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                 critical=False)
                  .sign(ca_key, hashes.SHA256()))
        self.directory = Path(tempfile.mkdtemp(prefix="oidc-broker-ca-"))
        pem = serialization.Encoding.PEM
        self.ca_pem = ca.public_bytes(pem)
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self.ca_pem)
        self.cert_file = self.directory / "server.pem"
        self.cert_file.write_bytes(server.public_bytes(pem))
        self.key_file = self.directory / "server.key"
        self.key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def bundle(self, *others: Path | str) -> Path:
        """A CA bundle of `others` (e.g. certifi's) and this CA: what REQUESTS_CA_BUNDLE may name."""
        path = self.directory / "bundle.pem"
        path.write_bytes(b"".join(Path(o).read_bytes().rstrip(b"\n") + b"\n" for o in others) + self.ca_pem)
        return path


# -- the directory: apps and their federated credentials --------------------------------------------

@dataclass(frozen=True)
class FederatedCredential:
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...] = ("api://AzureADTokenExchange",)
    visible_after: float = 0.0  # Entra takes a while to propagate a new credential: 70021 until then


@dataclass
class Directory:
    """Apps (tenant, client_id) and their federated credentials (thread-safe enough for tests)."""

    apps: dict[tuple[str, str], list[FederatedCredential]] = field(default_factory=dict)

    def add_app(self, tenant: str, client_id: str) -> None:
        self.apps.setdefault((tenant.lower(), client_id.lower()), [])

    def add_credential(self, tenant: str, client_id: str, credential: FederatedCredential) -> None:
        self.apps.setdefault((tenant.lower(), client_id.lower()), []).append(credential)

    def credentials(self, tenant: str, client_id: str) -> list[FederatedCredential] | None:
        return self.apps.get((tenant.lower(), client_id.lower()))


@dataclass(frozen=True)
class AccessToken:
    tenant: str
    client_id: str
    scope: str
    expires_at: float


class IssuedTokens:
    """The access tokens Entra issued (what ACR accepts)."""

    def __init__(self) -> None:
        self._tokens: dict[str, AccessToken] = {}
        self._lock = threading.Lock()

    def issue(self, tenant: str, client_id: str, scope: str, expires_at: float) -> str:
        token = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = AccessToken(tenant.lower(), client_id.lower(), scope, expires_at)
        return token

    def get(self, token: str) -> AccessToken | None:
        with self._lock:
            return self._tokens.get(token)


class EntraError(Exception):
    def __init__(self, code: int, error: str, message: str, status: int = 400):
        super().__init__(f"AADSTS{code}: {message}")
        self.code, self.error, self.message, self.status = code, error, message, status


def error_body(e: EntraError, now: float) -> dict[str, Any]:
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))
    return {
        "error": e.error,
        "error_description": f"AADSTS{e.code}: {e.message} Trace ID: {trace_id} Correlation ID: {correlation_id} "
                             f"Timestamp: {stamp}",
        "error_codes": [e.code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": ERROR_URI.format(code=e.code),
    }


class Verifier:
    def __init__(self, directory: Directory, fetch: oidc.Fetch = oidc.http_fetch,
                 clock: Callable[[], float] = time.time):
        self.directory, self.fetch, self.clock = directory, fetch, clock

    def verify(self, tenant: str, form: dict[str, str]) -> tuple[str, str]:
        """(client_id, scope) of a request whose assertion Entra would accept, else EntraError."""
        if form.get("grant_type") != "client_credentials":
            raise EntraError(900144, "invalid_request", "The request body must contain the following parameter: "
                             "'grant_type'.")
        for name in ("client_id", "scope", "client_assertion"):
            if not form.get(name):
                raise EntraError(900144, "invalid_request",
                                 f"The request body must contain the following parameter: '{name}'.")
        if form.get("client_assertion_type") != JWT_BEARER:
            raise EntraError(90014, "invalid_request", "The request body must contain the following parameter: "
                             "'client_assertion_type'.")
        client_id = form["client_id"]
        try:
            token = oidc.parse(form["client_assertion"])
        except OidcError:
            raise EntraError(50027, "invalid_request", "JWT token is invalid or malformed.") from None
        alg = token.header.get("alg")
        if alg not in RSA_ALGORITHMS:
            raise EntraError(5002738, "invalid_client", f"Invalid JWT token. '{alg}' is not a supported signature "
                             "algorithm. Supported signing algorithms are: 'RS256, RS384, RS512'")
        records = self.directory.credentials(tenant, client_id)
        if records is None:
            raise EntraError(700016, "unauthorized_client", f"Application with identifier '{client_id}' was not "
                             f"found in the directory '{tenant}'.")
        claims = token.claims
        iss, sub, aud = claims.get("iss"), claims.get("sub"), claims.get("aud")
        said = f"Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud}'."
        now = self.clock()
        records = [r for r in records if r.visible_after <= now]
        audiences = aud if isinstance(aud, list) else [aud]
        if not records:
            raise EntraError(70021, "invalid_request", f"No matching federated identity record found for presented "
                             f"assertion. {said}")
        by_issuer = [r for r in records if r.issuer == iss]
        if not by_issuer:
            raise EntraError(700211, "invalid_request", "No matching federated identity record found for presented "
                             f"assertion issuer '{iss}'. Please check your federated identity credential Subject, "
                             f"Audience and Issuer against the presented assertion. {said}")
        by_audience = [r for r in by_issuer if any(a in r.audiences for a in audiences)]
        if not by_audience:
            raise EntraError(700212, "invalid_request", "No matching federated identity record found for presented "
                             f"assertion audience '{aud}'. {said}")
        if not any(r.subject == sub for r in by_audience):
            if isinstance(sub, str) and any(r.subject.lower() == sub.lower() for r in by_audience):
                raise EntraError(7002138, "invalid_client", "No matching federated identity record found for "
                                 f"presented assertion subject '{sub}'. The subject matches with case-insensitive "
                                 f"comparison, but not with case-sensitive comparison. {said}")
            raise EntraError(700213, "invalid_client", "No matching federated identity record found for presented "
                             f"assertion subject '{sub}'. Please check your federated identity credential Subject, "
                             f"Audience and Issuer against the presented assertion. {said}")
        try:
            if not oidc.secure_issuer(iss):
                raise OidcError("issuer", "not https")
            oidc.verify_signature(token, oidc.signing_key(iss, token.header.get("kid"), self.fetch))
            oidc.check_times(claims, now, CLOCK_SKEW)
        except OidcError as e:
            raise _entra_error(e, iss) from None
        return client_id, form["scope"]


def _entra_error(e: OidcError, iss: Any) -> EntraError:
    if e.check in ("unreachable", "discovery", "issuer"):
        return EntraError(50166, "invalid_client", f"Request to External OIDC endpoint failed. Issuer: '{iss}'.")
    if e.check in ("kid", "signature"):
        return EntraError(700027, "invalid_client", "Client assertion failed signature validation.")
    if e.check in ("expired", "nbf", "iat", "exp"):
        return EntraError(700024, "invalid_client", "Client assertion is not within its valid time range. "
                          f"({e.message})")
    return EntraError(50027, "invalid_request", "JWT token is invalid or malformed.")


# -- the server ----------------------------------------------------------------------------------------

class EntraEmulator:
    """The HTTPS server. `calls` counts token requests; `refusals` the AADSTS codes answered."""

    def __init__(self, verifier: Verifier, ca: TestCA, issued: IssuedTokens | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.verifier = verifier
        self.issued = issued or IssuedTokens()
        self.calls = 0
        self.refusals: list[int] = []
        self._faults: list[tuple[int, dict[str, Any] | None]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._server.socket = ca.server_context().wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def fail_next(self, status: int = 503, code: int | None = None, times: int = 1) -> None:
        """The next requests answer `status`: with an AADSTS `code` body, or no JSON body at all."""
        body = error_body(EntraError(code, "temporarily_unavailable", "Injected fault."), time.time()) if code else None
        with self._lock:
            self._faults.extend((status, body) for _ in range(times))

    def start(self) -> EntraEmulator:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="entra-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            self.calls += 1
            fault = self._faults.pop(0) if self._faults else None
        if fault:
            return fault
        now = self.verifier.clock()
        try:
            client_id, scope = self.verifier.verify(tenant, form)
        except EntraError as e:
            with self._lock:
                self.refusals.append(e.code)
            return e.status, error_body(e, now)
        token = self.issued.issue(tenant, client_id, scope, now + ACCESS_TOKEN_LIFETIME)
        return 200, {"token_type": "Bearer", "expires_in": ACCESS_TOKEN_LIFETIME,
                     "ext_expires_in": ACCESS_TOKEN_LIFETIME, "access_token": token}


def _handler(emulator: EntraEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            body = self.read_body(MAX_BODY_BYTES)
            if len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"] or self.content_length() > MAX_BODY_BYTES:
                return self._send(404, {"error": "invalid_request", "error_description": "not found"})
            try:
                form = dict(parse_qsl(body.decode(), keep_blank_values=True))
            except UnicodeDecodeError:
                form = {}
            self._send(*emulator.token(parts[0], form))

        def _send(self, status: int, body: dict[str, Any] | None) -> None:
            if body is None:  # what Entra's front door answers when the service behind it is down
                return self.reply(status, b"<html>Service Unavailable</html>", "text/html", Cache_Control="no-store")
            self.reply_json(status, body, Cache_Control="no-store")

    return Handler
