"""moto's ECR with real registry tokens: a realistic lifetime, and a password docker login can check.

moto answers GetAuthorizationToken with `expiresAt` fixed at 2015-01-01 and the password
`<account>-auth-token`, the same for everyone, forever. Local mode wraps moto's handler to answer
what ECR answers: `expiresAt` 12 hours from now and a password this module signs (`EcrTokens`),
bound to the registry host (`proxyEndpoint`) and that expiry.

`EcrLogin` is docker's side of it, served per registry host by registry.py: ECR challenges
`GET /v2/` with `Basic realm="https://<host>/",service="ecr.amazonaws.com"` and takes Basic
`AWS:<password>` on every request; a password it never signed, or another registry's, is 401
`UNAUTHORIZED`, an expired one 403 `DENIED` "Your authorization token has expired.". moto's IAM
evaluates no policies, so a pull is allowed to whoever holds a valid password. Tests of the
broker's expiry logic use fake clocks, never this. Local mode only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .registry import Authority, RegistryError, Scope

TOKEN_LIFETIME = 12 * 3600
DOCKER_USERNAME = "AWS"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class EcrTokens:
    """Registry passwords signed with a key of this run: `sign` for GetAuthorizationToken, `verify` for docker."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._key = secrets.token_bytes(32)

    def sign(self, host: str, expires_at: int) -> str:
        payload = _b64(json.dumps({"registry": host, "exp": expires_at, "nonce": secrets.token_hex(8)}).encode())
        return f"{payload}.{_b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())}"

    def verify(self, password: str, host: str) -> dict[str, Any]:
        """The claims of a password signed for `host`; RegistryError otherwise (expired: 403 DENIED)."""
        payload, _, signature = password.partition(".")
        expected = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, ValueError):
            claims = None
        if not hmac.compare_digest(signature, expected) or not isinstance(claims, dict) or claims.get("registry") != host:
            raise RegistryError(401, "UNAUTHORIZED", "Not Authorized")
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= self.clock():
            raise RegistryError(403, "DENIED", "Your authorization token has expired. Reauthenticate and try again.")
        return claims


class EcrLogin(Authority):
    scheme = "basic"
    basic_service = "ecr.amazonaws.com"

    def __init__(self, tokens: EcrTokens):
        self.tokens = tokens

    def authenticate(self, host: str, username: str | None, password: str) -> str:
        if username != DOCKER_USERNAME:
            raise RegistryError(401, "UNAUTHORIZED", "Not Authorized")
        self.tokens.verify(password, host)
        return host.split(".", 1)[0]  # the account: the registry's own

    def permitted(self, host: str, principal: str, scope: Scope) -> frozenset[str]:
        return frozenset({"pull"})

    def unauthenticated(self, host: str, scope: Scope | None) -> RegistryError:
        return RegistryError(401, "UNAUTHORIZED", "Not Authorized")


_tokens: EcrTokens | None = None  # the signer of the local mode running in this process


def patch_moto_ecr(tokens: EcrTokens) -> None:
    """moto's GetAuthorizationToken answers with `tokens`' passwords, valid 12 hours."""
    global _tokens
    _tokens = tokens
    from moto.ecr.responses import ECRResponse

    original = ECRResponse.get_authorization_token
    if getattr(original, "_oidc_broker_patched", False):
        return

    def get_authorization_token(self):  # type: ignore[no-untyped-def]
        result = original(self)
        expires = int(time.time()) + TOKEN_LIFETIME
        for data in getattr(result, "result", {}).get("authorizationData", []):
            data["expiresAt"] = datetime.fromtimestamp(expires, tz=timezone.utc)
            host = str(data.get("proxyEndpoint", "")).removeprefix("https://")
            if _tokens is not None:
                password = _tokens.sign(host, expires)
                data["authorizationToken"] = base64.b64encode(f"{DOCKER_USERNAME}:{password}".encode()).decode()
        return result

    get_authorization_token._oidc_broker_patched = True  # type: ignore[attr-defined]
    ECRResponse.get_authorization_token = get_authorization_token
