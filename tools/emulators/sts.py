"""An AWS STS emulator that verifies web identity tokens the way STS does.

moto's STS accepts any string as a web identity token, so a test against it proves nothing about
trust. This emulator speaks the STS query protocol for AssumeRoleWithWebIdentity and checks what
AWS checks, in the same order, answering with AWS's XML error shapes and codes:

  parameters     RoleSessionName [\\w+=,.@-]{2,64}, token 4-20000 chars, DurationSeconds 900-43200
                                                                        -> ValidationError
  the token      a JWS with an asymmetric alg                           -> InvalidIdentityToken
                 (this and the key, signature and time checks: oidc.py, shared by every emulator)
  provider       an IAM OIDC provider in the role's account whose URL is `iss` without its scheme
                 (https, or http for loopback hosts: local mode)         -> InvalidIdentityToken
  audience       `aud` in the provider's client ID list                 -> InvalidIdentityToken
  keys           `<iss>/.well-known/openid-configuration` and its jwks_uri fetched over HTTP,
                 5 s timeout; unreachable -> IDPCommunicationError, `kid` absent -> InvalidIdentityToken
  signature      verified with the key of that `kid`                    -> InvalidIdentityToken
  time           `exp` with AWS's 5 minutes of skew                     -> ExpiredTokenException
  trust policy   the role's AssumeRolePolicyDocument: Allow (and Deny) statements for
                 sts:AssumeRoleWithWebIdentity, Principal.Federated the provider's ARN, Condition
                 StringEquals / StringLike / StringNotEquals / StringNotLike on `<host/path>:aud`
                 and `<host/path>:sub`                                   -> AccessDenied
  duration       not above the role's MaxSessionDuration                -> ValidationError

Providers and roles are read from IAM (moto's, in local mode), so they are set up the way one
sets them up in AWS; on success the credentials come from moto's STS, so calls made with them
(ECR) reach moto as that role's account. Other actions are passed to moto unchanged. Tests may
queue faults (`fail_next`) such as throttling. It imports nothing from the broker: a helper shared
with it would share its bugs. Never part of the Lambda layer.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from .serving import QuietHandler
from . import oidc
from .oidc import OidcError

NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
ACTION = "AssumeRoleWithWebIdentity"
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})", re.ASCII)
ALGORITHMS = oidc.ALGORITHMS
CLOCK_SKEW = 300  # AWS's allowance for `exp` and `nbf`


class StsError(Exception):
    """An STS error response: code, message, HTTP status (and Sender/Receiver type)."""

    def __init__(self, code: str, message: str, status: int = 400, kind: str = "Sender"):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.kind = code, message, status, kind


def provider_host(issuer: str) -> str:
    """How IAM names an OIDC provider and its condition keys: the issuer's host and path, no scheme."""
    parts = urlsplit(issuer)
    return f"{parts.netloc}{parts.path}"


# -- who is registered: providers and roles ----------------------------------------------------

@dataclass(frozen=True)
class Role:
    arn: str
    trust_policy: dict[str, Any]
    max_session_duration: int = 3600


class Directory(Protocol):
    def client_ids(self, account: str, provider_url: str) -> list[str] | None: ...  # url without scheme
    def role(self, arn: str) -> Role | None: ...


class StaticDirectory:
    """Providers and roles held in memory (for tests that need no IAM)."""

    def __init__(self) -> None:
        self.providers: dict[tuple[str, str], list[str]] = {}
        self.roles: dict[str, Role] = {}

    def add_provider(self, account: str, url: str, client_ids: list[str]) -> None:
        self.providers[(account, provider_host(url))] = list(client_ids)

    def add_role(self, arn: str, trust_policy: dict[str, Any], max_session_duration: int = 3600) -> None:
        self.roles[arn] = Role(arn, trust_policy, max_session_duration)

    def client_ids(self, account: str, provider_url: str) -> list[str] | None:
        return self.providers.get((account, provider_url))

    def role(self, arn: str) -> Role | None:
        return self.roles.get(arn)


class IamDirectory:
    """Providers and roles as IAM (moto's, here) holds them for one account."""

    def __init__(self, iam: Any, account: str):
        self._iam = iam
        self._account = account

    def client_ids(self, account: str, provider_url: str) -> list[str] | None:
        if account != self._account:
            return None
        arn = f"arn:aws:iam::{account}:oidc-provider/{provider_url}"
        listed = {p["Arn"] for p in self._iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]}
        if arn not in listed:
            return None
        return list(self._iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn).get("ClientIDList", []))

    def role(self, arn: str) -> Role | None:
        m = ROLE_ARN.fullmatch(arn)
        if not m or m.group(1) != self._account:
            return None
        try:
            role = self._iam.get_role(RoleName=m.group(2))["Role"]
        except self._iam.exceptions.NoSuchEntityException:
            return None
        if role["Arn"] != arn:
            return None
        policy = role["AssumeRolePolicyDocument"]
        if isinstance(policy, str):
            policy = json.loads(policy)
        return Role(arn, policy, int(role.get("MaxSessionDuration", 3600)))


# -- trust policies --------------------------------------------------------------------------------

def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S) is not None


_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda expected, actual: expected == actual,
    "StringLike": _like,
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotLike": "StringLike"}


def _condition_holds(operator: str, key: str, expected: Any, context: dict[str, str]) -> bool:
    actual = context.get(key.lower())
    if operator in _NEGATED:
        return actual is None or not _condition_holds(_NEGATED[operator], key, expected, context)
    if operator not in _OPERATORS or actual is None:
        return False  # an operator the emulator does not know never grants anything
    return any(_OPERATORS[operator](str(e), actual) for e in _as_list(expected))


def _action_matches(actions: Any) -> bool:
    return any(_like(str(a).lower(), f"sts:{ACTION}".lower()) for a in _as_list(actions))


def trust_allows(policy: dict[str, Any], provider_arn: str, context: dict[str, str]) -> bool:
    """Whether the role's trust policy lets this web identity assume it (an explicit Deny wins)."""
    context = {k.lower(): v for k, v in context.items()}
    allowed = False
    for statement in _as_list(policy.get("Statement", [])):
        if not isinstance(statement, dict) or not _action_matches(statement.get("Action", [])):
            continue
        federated = (statement.get("Principal") or {}).get("Federated") if isinstance(statement.get("Principal"), dict) else None
        if federated is None or provider_arn not in _as_list(federated):
            continue
        conditions = statement.get("Condition") or {}
        if not all(_condition_holds(op, key, expected, context)
                   for op, pairs in conditions.items() for key, expected in pairs.items()):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


# -- verification ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verified:
    role: Role
    provider_url: str  # host/path
    issuer: str
    subject: str
    audience: str
    duration: int
    session_name: str


class Verifier:
    def __init__(self, directory: Directory, fetch: oidc.Fetch = oidc.http_fetch,
                 clock: Callable[[], float] = time.time):
        self.directory = directory
        self.fetch = fetch
        self.clock = clock

    def verify(self, params: dict[str, str]) -> Verified:
        role_arn = params.get("RoleArn", "")
        session = params.get("RoleSessionName", "")
        token = params.get("WebIdentityToken", "")
        problems = []
        if not ROLE_ARN.fullmatch(role_arn):
            problems.append(f"Value '{role_arn}' at 'roleArn' failed to satisfy constraint: Member must be a role ARN")
        if not SESSION_NAME.fullmatch(session):
            problems.append(f"Value '{session}' at 'roleSessionName' failed to satisfy constraint: "
                            "Member must satisfy regular expression pattern: [\\w+=,.@-]* and length 2-64")
        if not 4 <= len(token) <= 20000:
            problems.append("Value at 'webIdentityToken' failed to satisfy constraint: Member must have length 4-20000")
        try:
            duration = int(params.get("DurationSeconds", "3600"))
        except ValueError:
            duration = -1
        if not 900 <= duration <= 43200:
            problems.append(f"Value '{params.get('DurationSeconds')}' at 'durationSeconds' failed to satisfy "
                            "constraint: Member must have value between 900 and 43200")
        if problems:
            raise StsError("ValidationError", f"{len(problems)} validation error{'s' if len(problems) > 1 else ''} "
                           f"detected: {'; '.join(problems)}")
        account = ROLE_ARN.fullmatch(role_arn).group(1)

        now = self.clock()
        try:
            parsed = oidc.parse(token)
            oidc.check_algorithm(parsed, ALGORITHMS)
        except OidcError as e:
            raise _sts_error(e, now) from None
        claims = parsed.claims

        iss = claims.get("iss")
        secure = oidc.secure_issuer(iss)  # https, or http for loopback hosts (local mode)
        provider_url = provider_host(iss) if secure else ""
        client_ids = self.directory.client_ids(account, provider_url) if secure else None
        if client_ids is None:
            raise StsError("InvalidIdentityToken", f"No OpenIDConnect provider found in your account for {iss}")
        try:
            matched = oidc.matching_audience(claims, client_ids)
        except OidcError:
            raise StsError("InvalidIdentityToken", "Incorrect token audience") from None

        try:
            oidc.verify_signature(parsed, oidc.signing_key(iss, parsed.header.get("kid"), self.fetch))
            oidc.check_times(claims, now, CLOCK_SKEW, iat=False)  # AWS documents exp and nbf only
        except OidcError as e:
            raise _sts_error(e, now) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise StsError("InvalidIdentityToken", "The web identity token has no subject (sub)")

        role = self.directory.role(role_arn)
        provider_arn = f"arn:aws:iam::{account}:oidc-provider/{provider_url}"
        context = {f"{provider_url}:aud": matched, f"{provider_url}:sub": sub}
        if role is None or not trust_allows(role.trust_policy, provider_arn, context):
            raise StsError("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403)
        if duration > role.max_session_duration:
            raise StsError("ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for "
                           "this role.")
        return Verified(role, provider_url, iss, sub, matched, duration, session)


_KEY_NOT_RETRIEVED = ("Couldn't retrieve verification key from your identity provider, please reference "
                      "AssumeRoleWithWebIdentity documentation for requirements")


def _sts_error(e: OidcError, now: float) -> StsError:
    """What STS answers for each failed OIDC check, with its codes and wording."""
    if e.check == "token":
        return StsError("InvalidIdentityToken", "The web identity token that was passed could not be parsed")
    if e.check == "algorithm":
        return StsError("InvalidIdentityToken", f"The web identity token uses an unsupported algorithm: {e.value}")
    if e.check == "unreachable":
        return StsError("IDPCommunicationError", _KEY_NOT_RETRIEVED)
    if e.check == "discovery":
        return StsError("InvalidIdentityToken", "Couldn't retrieve verification key from your identity provider: "
                        "the discovery document does not match the issuer")
    if e.check == "kid":
        return StsError("InvalidIdentityToken", _KEY_NOT_RETRIEVED)
    if e.check == "signature":
        return StsError("InvalidIdentityToken", "The web identity token signature could not be verified")
    if e.check == "exp":
        return StsError("InvalidIdentityToken", "The web identity token has no expiration (exp)")
    if e.check == "expired":
        return StsError("ExpiredTokenException", f"Token expired: current date/time {int(now)} must be before the "
                        f"expiration date/time {int(e.value)}")
    if e.check == "nbf":
        return StsError("InvalidIdentityToken", "The web identity token is not valid yet (nbf)")
    return StsError("InvalidIdentityToken", e.message)


# -- credentials -------------------------------------------------------------------------------------

def fake_credentials(verified: Verified, now: float) -> dict[str, Any]:
    return {
        "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
        "SecretAccessKey": secrets.token_urlsafe(30),
        "SessionToken": secrets.token_urlsafe(120),
        "Expiration": datetime.fromtimestamp(int(now) + verified.duration, tz=timezone.utc),
    }


def moto_credentials(sts: Any) -> Callable[[Verified, str], dict[str, Any]]:
    """Credentials from moto's STS (which checks nothing: the emulator verified first)."""

    def obtain(verified: Verified, token: str) -> dict[str, Any]:
        return sts.assume_role_with_web_identity(
            RoleArn=verified.role.arn, RoleSessionName=verified.session_name, WebIdentityToken=token,
            DurationSeconds=verified.duration,
        )["Credentials"]

    return obtain


def success_xml(verified: Verified, credentials: dict[str, Any], request_id: str) -> str:
    expiration = credentials["Expiration"]
    if isinstance(expiration, datetime):
        expiration = expiration.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    role_name = verified.role.arn.rsplit("/", 1)[1]
    account = ROLE_ARN.fullmatch(verified.role.arn).group(1)
    e = escape
    return (
        f'<AssumeRoleWithWebIdentityResponse xmlns="{NAMESPACE}">'
        "<AssumeRoleWithWebIdentityResult>"
        f"<SubjectFromWebIdentityToken>{e(verified.subject)}</SubjectFromWebIdentityToken>"
        f"<Audience>{e(verified.audience)}</Audience>"
        "<AssumedRoleUser>"
        f"<Arn>arn:aws:sts::{account}:assumed-role/{e(role_name)}/{e(verified.session_name)}</Arn>"
        f"<AssumedRoleId>AROA{account}:{e(verified.session_name)}</AssumedRoleId>"
        "</AssumedRoleUser>"
        "<Credentials>"
        f"<SessionToken>{e(credentials['SessionToken'])}</SessionToken>"
        f"<SecretAccessKey>{e(credentials['SecretAccessKey'])}</SecretAccessKey>"
        f"<Expiration>{e(str(expiration))}</Expiration>"
        f"<AccessKeyId>{e(credentials['AccessKeyId'])}</AccessKeyId>"
        "</Credentials>"
        f"<Provider>{e(verified.issuer)}</Provider>"
        "</AssumeRoleWithWebIdentityResult>"
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        "</AssumeRoleWithWebIdentityResponse>"
    )


def error_xml(error: StsError, request_id: str) -> str:
    return (
        f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{error.kind}</Type><Code>{escape(error.code)}</Code>'
        f"<Message>{escape(error.message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )


# -- the server ----------------------------------------------------------------------------------------

class StsEmulator:
    """The HTTP server. `calls` counts AssumeRoleWithWebIdentity requests (for tests)."""

    def __init__(self, verifier: Verifier, credentials: Callable[[Verified, str], dict[str, Any]] | None = None,
                 passthrough: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.verifier = verifier
        self.credentials = credentials
        self.passthrough = passthrough  # moto's endpoint, for every other action
        self.calls = 0
        self.refusals: list[str] = []
        self._faults: list[StsError] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def fail_next(self, code: str, message: str = "Rate exceeded", status: int = 400, times: int = 1) -> None:
        with self._lock:
            self._faults.extend(StsError(code, message, status) for _ in range(times))

    def start(self) -> StsEmulator:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sts-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def assume_role_with_web_identity(self, params: dict[str, str]) -> tuple[int, str]:
        request_id = str(uuid.uuid4())
        with self._lock:
            self.calls += 1
            fault = self._faults.pop(0) if self._faults else None
        try:
            if fault:
                raise fault
            verified = self.verifier.verify(params)
            now = self.verifier.clock()
            credentials = (self.credentials or (lambda v, t: fake_credentials(v, now)))(verified, params["WebIdentityToken"])
        except StsError as e:
            with self._lock:
                self.refusals.append(e.code)
            return e.status, error_xml(e, request_id)
        return 200, success_xml(verified, credentials, request_id)


def _handler(emulator: StsEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.read_body()
            params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            if params.get("Action") == ACTION:
                status, xml = emulator.assume_role_with_web_identity(params)
                return self._send(status, xml.encode())
            if emulator.passthrough:
                return self._forward(body)
            error = StsError("InvalidAction", f"Could not find operation {params.get('Action')}")
            return self._send(400, error_xml(error, str(uuid.uuid4())).encode())

        def _forward(self, body: bytes) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            request = urllib.request.Request(emulator.passthrough + self.path, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    status, data = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, data = e.code, e.read()
            self._send(status, data)

        def _send(self, status: int, data: bytes) -> None:
            self.reply(status, data, "text/xml", x_amzn_RequestId=str(uuid.uuid4()))

    return Handler
