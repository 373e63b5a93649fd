"""Docker's registry login as a registry serves it, for one registry host on one loopback port.

The docker CLI (distribution's auth client) logs in like this, and every check here follows it:

  1. `GET /v2/` without credentials -> 401 with `WWW-Authenticate`: `Bearer realm="<token
     service>",service="<registry host>"` (a token service), or `Basic realm=…` (the registry
     takes the credentials itself, as ECR does);
  2. Bearer: `GET <realm>?service=…&scope=…&account=<user>&client_id=docker&offline_token=true`
     with Basic `<user>:<password>` (or, holding a refresh token, `POST <realm>` with the OAuth2
     form `grant_type=refresh_token|password`) -> `{"token"|"access_token", "expires_in", …}`;
  3. `GET /v2/` again with `Authorization: Bearer <token>` (or Basic) -> 200: "Login Succeeded".

A pull names a repository: `/v2/<name>/manifests/<ref>` (blobs, tags) challenges with
`scope="repository:<name>:pull"`; a token holding that access gets 404 (no images are stored
here), one without it the registry's denial.

Whose credentials they are is the cloud's to say: an `Authority` (acr.py: ACR refresh tokens;
artifact_registry.py: Google access tokens; ecr.py: ECR authorization tokens) authenticates a
username and password for the registry host, says which actions a principal may take on a
repository, and words the refusals as its registry does. The bearer tokens issued here are HS256
JWTs bound to the registry host (`aud`), the principal, the access granted and their times,
checked against `clock`.

Errors have distribution's body, `{"errors": [{"code", "message", "detail"}]}`. Imports nothing
from oidc_broker and never logs a request. Never part of the Lambda layer.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt

from .serving import QuietHandler, bind

API_VERSION = "registry/2.0"
MAX_BODY_BYTES = 64 * 1024
_NAME = r"[a-z0-9]+(?:(?:[._]|__|-+|/)[a-z0-9]+)*"
_REPOSITORY_PATH = re.compile(rf"/v2/(?P<name>{_NAME})/(?P<kind>manifests|blobs|tags)/[^/]+")
_SCOPE = re.compile(rf"repository:(?P<name>{_NAME}):(?P<actions>[a-z*]+(?:,[a-z*]+)*)")
_UNKNOWN = {"manifests": "MANIFEST_UNKNOWN", "blobs": "BLOB_UNKNOWN", "tags": "NAME_UNKNOWN"}


class RegistryError(Exception):
    """A refusal as a registry answers it: an HTTP status and distribution's error body."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.detail = status, code, message, detail

    def body(self) -> dict[str, Any]:
        return {"errors": [{"code": self.code, "message": self.message, "detail": self.detail}]}


@dataclass(frozen=True)
class Scope:
    """`repository:<name>:<actions>`, what a token request asks for and a challenge names."""

    repository: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"repository:{self.repository}:{','.join(sorted(self.actions))}"


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """The repository scopes among `values` (each may hold several, space-separated); others grant nothing."""
    scopes = []
    for value in values:
        for item in value.split():
            m = _SCOPE.fullmatch(item)
            if m:
                scopes.append(Scope(m.group("name"), frozenset(m.group("actions").split(","))))
    return scopes


class Authority:
    """What a cloud decides for its registries. The defaults are distribution's own answers."""

    scheme = "bearer"  # "bearer": a token service at `realm_path`; "basic": credentials on every request
    realm_path = "/token"
    service_on_ping = True  # whether the challenge to `GET /v2/` names the service
    basic_service = ""  # the `service` of a Basic challenge
    token_lifetime = 300

    def authenticate(self, host: str, username: str | None, password: str) -> str:
        """The principal these credentials stand for on registry `host` (username None: an OAuth2
        refresh_token grant); else RegistryError."""
        raise RegistryError(401, "UNAUTHORIZED", "authentication required")

    def permitted(self, host: str, principal: str, scope: Scope) -> frozenset[str]:
        """The actions of `scope` the principal may take."""
        return frozenset()

    def unauthenticated(self, host: str, scope: Scope | None) -> RegistryError:
        return RegistryError(401, "UNAUTHORIZED", "authentication required", _detail(scope))

    def denied(self, host: str, scope: Scope) -> RegistryError:
        return RegistryError(401, "UNAUTHORIZED", "authentication required", _detail(scope))

    def token_body(self, token: str, expires_in: int, issued_at: str) -> dict[str, Any]:
        return {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued_at}


def _detail(scope: Scope | None) -> Any:
    if scope is None:
        return None
    return [{"Type": "repository", "Name": scope.repository, "Action": a} for a in sorted(scope.actions)]


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """(username, password) of a Basic Authorization header, or None."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon and password else None


class DockerRegistry:
    """One registry host's docker-facing side, served on `bind_host:port` (a free port if taken and `fallback`)."""

    def __init__(self, host: str, authority: Authority, clock: Callable[[], float] = time.time,
                 bind_host: str = "127.0.0.1", port: int = 0, fallback: bool = False):
        self.host, self.authority, self.clock = host, authority, clock
        self._secret = secrets.token_bytes(32)
        self._serving: threading.Thread | None = None
        self._server = bind(_handler(self), bind_host, port, fallback)
        self.address = f"{bind_host}:{self._server.server_address[1]}"
        self.url = f"http://{self.address}"

    def start(self) -> DockerRegistry:
        self._serving = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                         name=f"registry-{self.host}", daemon=True)
        self._serving.start()
        return self

    def stop(self) -> None:
        if self._serving is not None:  # shutdown() waits for serve_forever: only if it runs
            self._server.shutdown()
        self._server.server_close()

    # -- the challenge and the registry's own tokens -------------------------------------------
    def challenge(self, scope: Scope | None = None, error: str | None = None) -> str:
        a = self.authority
        if a.scheme == "basic":
            return f'Basic realm="https://{self.host}/",service="{a.basic_service}"'
        parts = [f'realm="{self.url}{a.realm_path}"']
        if a.service_on_ping or scope is not None:
            parts.append(f'service="{self.host}"')
        if scope is not None:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def issue(self, principal: str, scopes: list[Scope]) -> tuple[str, int]:
        now = int(self.clock())
        access = []
        for scope in scopes:
            granted = self.authority.permitted(self.host, principal, scope) & scope.actions
            if granted:
                access.append({"type": "repository", "name": scope.repository, "actions": sorted(granted)})
        lifetime = self.authority.token_lifetime
        claims = {"iss": self.host, "aud": self.host, "sub": principal, "access": access, "iat": now, "nbf": now,
                  "exp": now + lifetime, "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._secret, algorithm="HS256"), lifetime

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a bearer token this registry issued and that is valid now, else None."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=self.host,
                                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                         "require": ["exp", "nbf", "sub"]})
        except jwt.PyJWTError:
            return None
        now = self.clock()
        return claims if claims["nbf"] <= now < claims["exp"] else None

    # -- the routes ------------------------------------------------------------------------------
    def answer(self, method: str, target: str, authorization: str,
               form: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, headers) for one request."""
        split = urlsplit(target)
        path, query = split.path, parse_qsl(split.query, keep_blank_values=True)
        try:
            if self.authority.scheme == "bearer" and path == self.authority.realm_path:
                if method not in ("GET", "POST"):
                    raise RegistryError(405, "UNSUPPORTED", "the token service answers GET and POST")
                return 200, self.token(method, query, form, authorization), {}
            if path in ("/v2", "/v2/"):
                scope = None
            elif m := _REPOSITORY_PATH.fullmatch(path):
                scope = Scope(m.group("name"), frozenset({"pull"}))
            else:
                raise RegistryError(404, "NOT_FOUND", f"no route {path}")
            if method not in ("GET", "HEAD"):
                raise RegistryError(405, "UNSUPPORTED", "this registry stand-in holds no images: it answers logins "
                                    "and pull checks")
            return self.registry(scope, m.group("kind") if scope else "", authorization)
        except RegistryError as e:
            return e.status, e.body(), {}

    def registry(self, scope: Scope | None, kind: str, authorization: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"Docker-Distribution-Api-Version": API_VERSION}
        a = self.authority

        def refused(error: RegistryError, why: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
            extra = {"WWW-Authenticate": self.challenge(scope, why)} if error.status == 401 else {}
            return error.status, error.body(), {**headers, **extra}

        if a.scheme == "basic":
            credentials = basic_credentials(authorization)
            if credentials is None:
                return refused(a.unauthenticated(self.host, scope))
            try:
                principal = a.authenticate(self.host, *credentials)
            except RegistryError as e:
                return refused(e)
            allowed = scope is None or "pull" in a.permitted(self.host, principal, scope)
        else:
            bearer, _, token = (authorization or "").partition(" ")
            claims = self.verify(token.strip()) if bearer.lower() == "bearer" and token else None
            if claims is None:
                return refused(a.unauthenticated(self.host, scope), "invalid_token" if token else None)
            allowed = scope is None or any(
                grant.get("type") == "repository" and grant.get("name") == scope.repository
                and "pull" in grant.get("actions", []) for grant in claims.get("access") or [])
        if not allowed:
            return refused(a.denied(self.host, scope), "insufficient_scope")
        if scope is None:
            return 200, {}, headers
        return 404, RegistryError(404, _UNKNOWN[kind], f"{scope.repository}: not stored by this registry stand-in",
                                  _detail(scope)).body(), headers

    def token(self, method: str, query: list[tuple[str, str]], form: dict[str, str],
              authorization: str) -> dict[str, Any]:
        """The token service: credentials in, a bearer token for this registry out (else RegistryError)."""
        a = self.authority
        if method == "GET":
            params = dict(query)
            credentials = basic_credentials(authorization)
            if credentials is None:
                raise a.unauthenticated(self.host, None)
            username, password = credentials
            scopes = parse_scopes(v for k, v in query if k == "scope")
        else:
            params = form
            grant = form.get("grant_type")
            if grant == "password" and form.get("username") and form.get("password"):
                username, password = form["username"], form["password"]
            elif grant == "refresh_token" and form.get("refresh_token"):
                username, password = None, form["refresh_token"]
            else:
                raise RegistryError(400, "UNSUPPORTED", "grant_type must be password or refresh_token, with its "
                                    "credentials")
            scopes = parse_scopes([form.get("scope", "")])
        service = params.get("service")
        if service and service != self.host:
            raise RegistryError(400, "BAD_REQUEST", f"service {service!r} is not this registry ({self.host})")
        principal = a.authenticate(self.host, username, password)
        token, lifetime = self.issue(principal, scopes)
        issued_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        return a.token_body(token, lifetime, issued_at)


def _handler(registry: DockerRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def _serve(self, method: str) -> None:
            form: dict[str, str] = {}
            if method not in ("GET", "HEAD"):
                body = self.read_body(MAX_BODY_BYTES)
                if self.content_length() > MAX_BODY_BYTES:
                    self.close_connection = True  # the rest of the body is never read
                    return self.reply_json(413, RegistryError(413, "SIZE_INVALID", "body too large").body())
                form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            status, answer, headers = registry.answer(method, self.path, self.headers.get("Authorization", ""), form)
            extra = {name.replace("-", "_"): value for name, value in headers.items()}
            if method == "HEAD":
                return self.reply(status, b"", "application/json; charset=utf-8", **extra)
            self.reply_json(status, answer, **extra)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler
