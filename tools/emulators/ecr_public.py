"""An ECR Public emulator: registry tokens only for requests signed with credentials STS issued.

moto has no ECR Public backend, so local mode could never serve an `ecr-public` feed. This
emulator speaks the `ecr-public` API's AWS JSON 1.1 protocol (`X-Amz-Target:
SpencerFrontendService.<Operation>`) for GetAuthorizationToken only, and checks what AWS checks
before answering, in this order, with AWS's JSON error shapes (`{"__type", "message"}`):

  signed         an `AWS4-HMAC-SHA256` Authorization header       -> MissingAuthenticationTokenException
                 with Credential, SignedHeaders and Signature       -> IncompleteSignatureException
  scope          `<date>/us-east-1/ecr-public/aws4_request`: the API lives only in us-east-1
                                                                    -> InvalidSignatureException
  credentials    an access key id STS issued (`IssuedCredentials`), with its session token
                                                                    -> UnrecognizedClientException
                 not past its expiration                            -> ExpiredTokenException
  time           X-Amz-Date within 15 minutes of now                -> InvalidSignatureException
  signature      SigV4 over method, path, query, signed headers and body, with that key's secret
                                                                    -> InvalidSignatureException
  operation      GetAuthorizationToken, a JSON object body          -> UnknownOperationException,
                                                                       SerializationException

It imports nothing from the broker and never logs a request (they carry signatures and session
tokens). The role's IAM permissions (ecr-public:GetAuthorizationToken, sts:GetServiceBearerToken)
are not evaluated: moto's IAM evaluates no policies either. Never part of the Lambda layer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from .serving import QuietHandler

REGION = "us-east-1"
SERVICE = "ecr-public"  # the SigV4 signing name
TARGET_PREFIX = "SpencerFrontendService"
OPERATION = "GetAuthorizationToken"
TOKEN_LIFETIME = 12 * 3600
SIGNATURE_SKEW = 15 * 60  # SigV4 requests older or newer than this are refused
CONTENT_TYPE = "application/x-amz-json-1.1"
MAX_BODY_BYTES = 64 * 1024
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*"
)


class EcrPublicError(Exception):
    """An AWS JSON error response: `__type` code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


# -- who may sign: the credentials STS handed out ------------------------------------------------------

@dataclass(frozen=True)
class IssuedKey:
    secret_access_key: str
    session_token: str
    expires_at: float


class IssuedCredentials:
    """Access key ids STS issued, with their secret, session token and expiration (thread-safe)."""

    def __init__(self) -> None:
        self._keys: dict[str, IssuedKey] = {}
        self._lock = threading.Lock()

    def record(self, credentials: dict[str, Any]) -> None:
        expiration = credentials["Expiration"]
        expires_at = expiration.timestamp() if isinstance(expiration, datetime) else \
            datetime.fromisoformat(str(expiration).replace("Z", "+00:00")).timestamp()
        with self._lock:
            self._keys[credentials["AccessKeyId"]] = IssuedKey(
                credentials["SecretAccessKey"], credentials["SessionToken"], expires_at)

    def recording(self, obtain: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        """Wrap an STS emulator's credentials source so that what it hands out is recorded here."""

        def obtain_and_record(*args: Any) -> dict[str, Any]:
            credentials = obtain(*args)
            self.record(credentials)
            return credentials

        return obtain_and_record

    def get(self, access_key_id: str) -> IssuedKey | None:
        with self._lock:
            return self._keys.get(access_key_id)


# -- SigV4 -----------------------------------------------------------------------------------------------

def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def canonical_request(method: str, path: str, query: str, headers: dict[str, str], signed: list[str],
                      body: bytes) -> str:
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted(parse_qsl(query, keep_blank_values=True))
    )
    lines = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed)
    return "\n".join([method, quote(path or "/", safe="/~"), canonical_query, lines, ";".join(signed),
                      hashlib.sha256(body).hexdigest()])


def signature(secret: str, timestamp: str, scope: str, request: str) -> str:
    date, region, service, terminator = scope.split("/")
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), date), region), service), terminator)
    to_sign = "\n".join(["AWS4-HMAC-SHA256", timestamp, scope, hashlib.sha256(request.encode()).hexdigest()])
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _joined(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    # A header sent twice is one comma-joined value, as SigV4 canonicalises it.
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        joined[key] = f"{joined[key]},{value.strip()}" if key in joined else value.strip()
    return joined


def authenticate(method: str, target: str, raw_headers: Iterable[tuple[str, str]], body: bytes,
                 issued: IssuedCredentials, now: float) -> str:
    """The access key id that signed this request, or the EcrPublicError AWS would answer."""
    headers = _joined(raw_headers)
    authorization = headers.get("authorization")
    if not authorization:
        raise EcrPublicError("MissingAuthenticationTokenException", "Missing Authentication Token", 403)
    m = _AUTHORIZATION.fullmatch(authorization)
    if not m:
        raise EcrPublicError("IncompleteSignatureException", "Authorization header requires 'Credential', "
                             "'Signature' and 'SignedHeaders' parameters of an AWS4-HMAC-SHA256 signature")
    access_key_id, _, scope = m.group("credential").partition("/")
    scope_parts = scope.split("/")
    if len(scope_parts) != 4 or scope_parts[1:] != [REGION, SERVICE, "aws4_request"]:
        raise EcrPublicError("InvalidSignatureException", f"Credential should be scoped to a valid region and "
                             f"service: <date>/{REGION}/{SERVICE}/aws4_request, not '{scope}'", 403)
    key = issued.get(access_key_id)
    if key is None or headers.get("x-amz-security-token") != key.session_token:
        raise EcrPublicError("UnrecognizedClientException", "The security token included in the request is invalid.",
                             403)
    if now >= key.expires_at:
        raise EcrPublicError("ExpiredTokenException", "The security token included in the request is expired", 403)
    timestamp = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise EcrPublicError("IncompleteSignatureException", "Authorization requires a valid X-Amz-Date header") \
            from None
    if abs(now - signed_at) > SIGNATURE_SKEW or not timestamp.startswith(scope_parts[0]):
        raise EcrPublicError("InvalidSignatureException", f"Signature expired: {timestamp} is not within 15 minutes "
                             "of the current time, or not the date of the credential scope", 403)
    signed = m.group("signed").split(";")
    if "host" not in signed or signed != sorted(signed) or any(name not in headers for name in signed):
        raise EcrPublicError("InvalidSignatureException", "The request signature does not cover the host header "
                             "and only headers that were sent", 403)
    parts = urlsplit(target)
    expected = signature(key.secret_access_key, timestamp, scope,
                         canonical_request(method, parts.path, parts.query, headers, signed, body))
    if not hmac.compare_digest(expected, m.group("signature")):
        raise EcrPublicError("InvalidSignatureException", "The request signature we calculated does not match the "
                             "signature you provided. Check your AWS Secret Access Key and signing method.", 403)
    return access_key_id


# -- the server ------------------------------------------------------------------------------------------

class EcrPublicEmulator:
    """The HTTP server. `served` counts registry tokens handed out and `refusals` the codes (for tests)."""

    def __init__(self, issued: IssuedCredentials, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] = time.time):
        self.issued = issued
        self.clock = clock
        self.served = 0
        self.refusals: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> EcrPublicEmulator:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ecr-public-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes) -> tuple[int, dict]:
        """One request in, (status, JSON body) out: the checks of the module docstring, in order."""
        headers = list(headers)
        try:
            now = self.clock()
            authenticate(method, target, headers, body, self.issued, now)
            operation = _joined(headers).get("x-amz-target", "")
            if method != "POST" or operation != f"{TARGET_PREFIX}.{OPERATION}":
                raise EcrPublicError("UnknownOperationException", f"Operation '{operation}' is not supported by "
                                     "this emulator (GetAuthorizationToken only)")
            try:
                document = json.loads(body or b"{}")
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise EcrPublicError("SerializationException", "The request body is not a JSON object")
        except EcrPublicError as e:
            with self._lock:
                self.refusals.append(e.code)
            return e.status, {"__type": e.code, "message": e.message}
        password = secrets.token_urlsafe(48)
        with self._lock:
            self.served += 1
        return 200, {"authorizationData": {
            "authorizationToken": base64.b64encode(f"AWS:{password}".encode()).decode(),
            "expiresAt": int(now) + TOKEN_LIFETIME,
        }}


def _handler(emulator: EcrPublicEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self._answer()

        def do_GET(self) -> None:
            self._answer()

        def _answer(self) -> None:
            if not 0 <= self.content_length() <= MAX_BODY_BYTES:
                return self._send(400, {"__type": "SerializationException", "message": "Bad Content-Length"})
            status, document = emulator.answer(self.command, self.path, self.headers.items(), self.read_body())
            self._send(status, document)

        def _send(self, status: int, document: dict) -> None:
            self.reply_json(status, document, CONTENT_TYPE, x_amzn_RequestId=str(uuid.uuid4()))

    return Handler
