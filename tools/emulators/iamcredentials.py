"""An IAM Credentials emulator: `generateAccessToken` for a service account, checking who may impersonate whom.

`POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken` with `Authorization: Bearer
<federated token>` and `{"scope": [...], "lifetime": "3600s"}`, checked as Google does, answering
with Google's API error bodies (`{"error": {"code", "message", "status"}}`):

  caller      a federated token the Google STS emulator issued and still valid   -> 401 UNAUTHENTICATED
  account     a known service account                                         -> 404 NOT_FOUND
  binding     roles/iam.workloadIdentityUser on the account for the caller's principal
              (`principal://.../subject/<sub>`), a `principalSet://.../attribute.<name>/<value>`
              it carries, or the whole pool (`principalSet://.../<pool>/*`)   -> 403 PERMISSION_DENIED
  request     scope present; lifetime 1s-3600s, up to 43200s only for an account the organisation
              policy constraints/iam.allowServiceAccountCredentialLifetimeExtension lists
                                                                              -> 400 INVALID_ARGUMENT

On success `{"accessToken", "expireTime"}`; the tokens it issued are remembered (`impersonated`), so
the Artifact Registry emulator can tell whose token docker presents. Tests may queue faults
(`fail_next`). It imports nothing from the broker. Never part of the Lambda layer.
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

from .serving import QuietHandler
from .google_sts import Fault, Federated

PATH = re.compile(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken")
ROLE = "roles/iam.workloadIdentityUser"
DENIED = "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
MAX_LIFETIME = 3600
EXTENDED_LIFETIME = 43200


class IamError(Exception):
    def __init__(self, status: int, state: str, message: str):
        super().__init__(f"{state}: {message}")
        self.status, self.state, self.message = status, state, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message, "status": self.state}}


@dataclass
class ServiceAccount:
    email: str
    members: set[str] = field(default_factory=set)  # holders of roles/iam.workloadIdentityUser
    extended_lifetime: bool = False  # listed by the organisation policy for lifetimes over an hour


def _member_matches(member: str, federated: Federated) -> bool:
    if member == federated.principal:
        return True
    prefix = f"principalSet://iam.googleapis.com/{federated.pool}/"
    if not member.startswith(prefix):
        return False
    rest = member[len(prefix):]
    if rest == "*":
        return True
    m = re.fullmatch(r"attribute\.([\w]+)/(.+)", rest)
    return bool(m) and federated.attributes.get(f"attribute.{m.group(1)}") == m.group(2)


@dataclass(frozen=True)
class Impersonated:
    """Whose token generateAccessToken issued: the service account, its scopes, its expiry."""

    email: str
    scopes: tuple[str, ...]
    expires_at: float


class IamCredentials:
    def __init__(self, principal_of: Callable[[str], Federated | None], clock: Callable[[], float] = time.time):
        self.principal_of = principal_of  # the Google STS emulator's: who a federated token stands for
        self.clock = clock
        self.accounts: dict[str, ServiceAccount] = {}
        self.issued: dict[str, Impersonated] = {}
        self._lock = threading.Lock()

    def impersonated(self, access_token: str) -> Impersonated | None:
        """Whose token this emulator issued, expired or not (its `expires_at` says)."""
        with self._lock:
            return self.issued.get(access_token)

    def add_account(self, email: str, extended_lifetime: bool = False) -> ServiceAccount:
        return self.accounts.setdefault(email, ServiceAccount(email, extended_lifetime=extended_lifetime))

    def bind(self, email: str, member: str) -> None:
        """Grant `member` roles/iam.workloadIdentityUser on the account."""
        self.add_account(email).members.add(member)

    def generate(self, email: str, authorization: str, body: Any) -> dict[str, str]:
        scheme, _, token = (authorization or "").partition(" ")
        federated = self.principal_of(token) if scheme.lower() == "bearer" and token else None
        if federated is None:
            raise IamError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
                           "access token, login cookie or other valid authentication credential.")
        account = self.accounts.get(email)
        if account is None:
            raise IamError(404, "NOT_FOUND", f"Not found; Gaia id not found for email {email}")
        if not any(_member_matches(m, federated) for m in account.members):
            raise IamError(403, "PERMISSION_DENIED", DENIED)
        if not isinstance(body, dict) or not isinstance(body.get("scope"), list) or not body["scope"]:
            raise IamError(400, "INVALID_ARGUMENT", "Scope required.")
        m = re.fullmatch(r"(\d+)s", str(body.get("lifetime") or "3600s"))
        lifetime = int(m.group(1)) if m else -1
        allowed = EXTENDED_LIFETIME if account.extended_lifetime else MAX_LIFETIME
        if not 1 <= lifetime <= allowed:
            raise IamError(400, "INVALID_ARGUMENT", f"The lifetime requested {body.get('lifetime')} exceeds the maximum "
                           f"lifetime allowed ({allowed}s) for this service account.")
        expire = int(self.clock()) + lifetime
        token = "ya29.emulated-sa-" + secrets.token_urlsafe(48)
        with self._lock:
            self.issued[token] = Impersonated(email, tuple(body["scope"]), expire)
        return {"accessToken": token, "expireTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expire))}


class IamCredentialsEmulator:
    def __init__(self, iam: IamCredentials, host: str = "127.0.0.1", port: int = 0):
        self.iam = iam
        self.calls = 0
        self.refusals: list[str] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._faults.extend([fault] * times)

    def start(self) -> IamCredentialsEmulator:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="iamcredentials",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, email: str, authorization: str, raw: bytes) -> tuple[int, Any, float]:
        with self._lock:
            self.calls += 1
            fault = self._faults.pop(0) if self._faults else None
        if fault:
            return fault.status, fault.body, fault.delay
        try:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise IamError(400, "INVALID_ARGUMENT", "Invalid JSON payload received.") from None
            return 200, self.iam.generate(email, authorization, body), 0.0
        except IamError as e:
            with self._lock:
                self.refusals.append(e.state)
            return e.status, e.body(), 0.0


def _handler(emulator: IamCredentialsEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:
            raw = self.read_body()
            m = PATH.fullmatch(self.path.split("?")[0])
            if not m:
                return self.reply_json(404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}})
            status, answer, delay = emulator.answer(m.group(1), self.headers.get("Authorization", ""), raw)
            if delay:
                time.sleep(delay)
            self.reply_json(status, answer, "application/json; charset=UTF-8")

    return Handler
