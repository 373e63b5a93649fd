"""An Azure Container Registry `/oauth2/exchange` emulator: refresh tokens for Entra tokens only.

`POST /oauth2/exchange` (form: grant_type=access_token, service, tenant, access_token), over
HTTPS with the Entra emulator's CA, checks what ACR checks, answering ACR's error shape
(`{"errors": [{"code", "message"}]}`):

  request        grant_type access_token, service, access_token            -> 400 UNSUPPORTED / BAD_REQUEST
  registry       `service` is a registry it serves (`registries`)           -> 400 BAD_REQUEST
  token          an access token the Entra emulator issued (`IssuedTokens`)  -> 401 UNAUTHORIZED
                 for the registry scope, not expired, of `tenant`
  role           the app holds a role on the registry (`grant`)              -> 401 UNAUTHORIZED

On success: `{"refresh_token": <JWT>}` whose `exp` is min(3 h, the Entra token's expiry), as
ACR observed. Tests queue faults with `fail_next(status)`.

`docker login <registry>` is the other half (`AcrLogin`, served per registry host by
registry.py): `GET /v2/` challenges `Bearer realm="https://<registry>/oauth2/token",
service="<registry>"`, as ACR does; its token service takes Basic
`00000000-0000-0000-0000-000000000000:<refresh token>` (or the OAuth2 refresh_token form) only
for a refresh token this emulator issued for that registry, unexpired by `clock`, and answers
`{"access_token"}`; a pull needs the app's role on the registry (AcrPull). Refusals are ACR's 401
`UNAUTHORIZED` "authentication required, visit https://aka.ms/acr/authorization ...". It imports
nothing from the broker and never logs a request. Never part of the Lambda layer.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import jwt

from .entra import IssuedTokens, TestCA
from .registry import Authority, RegistryError, Scope
from .serving import QuietHandler

REGISTRY_SCOPE = "https://containerregistry.azure.net/.default"
REFRESH_TOKEN_LIFETIME = 3 * 3600
MAX_BODY_BYTES = 64 * 1024
DOCKER_USERNAME = "00000000-0000-0000-0000-000000000000"  # the username of a refresh-token login
UNAUTHORIZED = "authentication required, visit https://aka.ms/acr/authorization for more information."


class AcrEmulator:
    def __init__(self, issued: IssuedTokens, ca: TestCA, clock: Callable[[], float] = time.time,
                 host: str = "127.0.0.1", port: int = 0):
        self.issued, self.clock = issued, clock
        self.registries: set[str] = set()
        self.grants: set[tuple[str, str]] = set()  # (registry, client_id) holding AcrPull or AcrPush
        self.calls = 0
        self._secret = secrets.token_bytes(32)
        self._faults: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._server.socket = ca.server_context().wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://{host}:{self._server.server_address[1]}"

    def serve(self, registry: str) -> None:
        self.registries.add(registry)

    def grant(self, registry: str, client_id: str) -> None:
        """A role assignment (AcrPull) for the app on the registry."""
        self.registries.add(registry)
        self.grants.add((registry, client_id.lower()))

    def fail_next(self, status: int = 503, times: int = 1) -> None:
        with self._lock:
            self._faults.extend([status] * times)

    def start(self) -> AcrEmulator:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="acr-emulator",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def verify_refresh_token(self, token: str, registry: str | None = None) -> dict[str, Any]:
        """The claims of a refresh token this emulator issued (for `registry`, when named), unexpired
        by `clock`; jwt.PyJWTError otherwise (a forged, tampered, expired or other registry's token)."""
        claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                            audience=registry if registry is not None else sorted(self.registries),
                            options={"verify_exp": False, "verify_iat": False, "require": ["exp", "sub"]})
        if claims.get("grant_type") != "refresh_token":
            raise jwt.InvalidTokenError("not a refresh token")
        if claims["exp"] <= self.clock():
            raise jwt.ExpiredSignatureError("the refresh token has expired")
        return claims

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.calls += 1
            fault = self._faults.pop(0) if self._faults else None
        if fault:
            return fault, {"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}
        if form.get("grant_type") != "access_token":
            return 400, _errors("UNSUPPORTED", "grant type not supported")
        service, access_token, tenant = form.get("service", ""), form.get("access_token", ""), form.get("tenant", "")
        if not service or not access_token:
            return 400, _errors("BAD_REQUEST", "service and access_token are required")
        if service not in self.registries:
            return 400, _errors("BAD_REQUEST", f"service {service!r} is not this registry")
        now = self.clock()
        issued = self.issued.get(access_token)
        if issued is None or issued.scope != REGISTRY_SCOPE or issued.expires_at <= now or \
                (tenant and tenant.lower() != issued.tenant):
            return 401, _errors("UNAUTHORIZED", "authentication required, visit https://aka.ms/acr/authorization "
                                "for more information.")
        if (service, issued.client_id) not in self.grants:
            return 401, _errors("UNAUTHORIZED", f"the principal {issued.client_id} has no role on {service}")
        exp = int(min(now + REFRESH_TOKEN_LIFETIME, issued.expires_at))
        refresh = jwt.encode({"iss": "Azure Container Registry", "aud": service, "sub": issued.client_id,
                              "tenant": issued.tenant, "iat": int(now), "exp": exp, "grant_type": "refresh_token",
                              "jti": secrets.token_hex(8)}, self._secret, algorithm="HS256")
        return 200, {"refresh_token": refresh}


class AcrLogin(Authority):
    """docker login to an ACR registry with the refresh token `/oauth2/exchange` issued (registry.py serves it)."""

    realm_path = "/oauth2/token"

    def __init__(self, acr: AcrEmulator):
        self.acr = acr

    def authenticate(self, host: str, username: str | None, password: str) -> str:
        if username not in (None, DOCKER_USERNAME):
            raise RegistryError(401, "UNAUTHORIZED", UNAUTHORIZED)
        try:
            claims = self.acr.verify_refresh_token(password, host)
        except jwt.PyJWTError:
            raise RegistryError(401, "UNAUTHORIZED", UNAUTHORIZED) from None
        return claims["sub"]

    def permitted(self, host: str, principal: str, scope: Scope) -> frozenset[str]:
        return frozenset({"pull"}) if (host, principal.lower()) in self.acr.grants else frozenset()

    def unauthenticated(self, host: str, scope: Scope | None) -> RegistryError:
        return RegistryError(401, "UNAUTHORIZED", UNAUTHORIZED)

    denied = unauthenticated

    def token_body(self, token: str, expires_in: int, issued_at: str) -> dict[str, Any]:
        return {"access_token": token}  # what ACR's token service answers


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


def _handler(emulator: AcrEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.read_body(MAX_BODY_BYTES)
            if self.path.split("?", 1)[0] != "/oauth2/exchange" or self.content_length() > MAX_BODY_BYTES:
                status, answer = 404, _errors("NOT_FOUND", "not found")
            else:
                try:
                    status, answer = emulator.exchange(dict(parse_qsl(body.decode(), keep_blank_values=True)))
                except UnicodeDecodeError:
                    status, answer = 400, _errors("BAD_REQUEST", "the body is not a form")
            self.reply_json(status, answer)

    return Handler
