"""Artifact Registry / Container Registry docker login: Google access tokens as docker passwords.

`docker login -u oauth2accesstoken --password-stdin <location>-docker.pkg.dev` (or gcr.io), served
per registry host by registry.py, as Google serves it:

  ping        `GET /v2/` challenges `Bearer realm="https://<host>/v2/token"` with no `service`
              (Google names the service only on a repository's challenge)
  token       `GET /v2/token` with Basic `oauth2accesstoken:<access token>`: a token the Google STS
              emulator issued (federated, `principal://…/subject/<sub>`) or the IAM Credentials
              emulator issued (`serviceAccount:<email>`), unexpired by `clock`   -> 401 UNAUTHORIZED
  pull        a repository needs roles/artifactregistry.reader on the registry for the principal
              (`grant`: that member, or the pool's `principalSet://…/<pool>/*`)   -> 403 DENIED

A token that is valid but holds no role still logs in ("Login Succeeded"), as with Google: the
denial comes with the first pull, naming the permission. Imports nothing from the broker and never
logs a request. Never part of the Lambda layer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .google_sts import Federated
from .iamcredentials import Impersonated
from .registry import Authority, RegistryError, Scope

DOCKER_USERNAME = "oauth2accesstoken"
DOWNLOAD = "artifactregistry.repositories.downloadArtifacts"


class ArtifactRegistry(Authority):
    realm_path = "/v2/token"
    service_on_ping = False

    def __init__(self, federated: Callable[[str], Federated | None],
                 impersonated: Callable[[str], Impersonated | None], clock: Callable[[], float] = time.time):
        self.federated, self.impersonated, self.clock = federated, impersonated, clock
        self.readers: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def grant(self, host: str, member: str) -> None:
        """roles/artifactregistry.reader on the registry's repositories for `member`."""
        with self._lock:
            self.readers.setdefault(host, set()).add(member)

    def authenticate(self, host: str, username: str | None, password: str) -> str:
        now = self.clock()
        if username == DOCKER_USERNAME:
            account = self.impersonated(password)
            if account is not None and account.expires_at > now:
                return f"serviceAccount:{account.email}"
            federated = self.federated(password)
            if federated is not None and federated.expires_at > now:
                return federated.principal
        raise RegistryError(401, "UNAUTHORIZED", "Not authenticated: the password must be a valid Google access "
                            f"token and the username {DOCKER_USERNAME}.")

    def permitted(self, host: str, principal: str, scope: Scope) -> frozenset[str]:
        with self._lock:
            members = set(self.readers.get(host, ()))
        return frozenset({"pull"}) if any(_holds(member, principal) for member in members) else frozenset()

    def unauthenticated(self, host: str, scope: Scope | None) -> RegistryError:
        where = f" on resource {_resource(host, scope)!r}" if scope else ""
        return RegistryError(401, "UNAUTHORIZED", f"Unauthenticated request. Unauthenticated requests do not have "
                             f"permission {DOWNLOAD!r}{where} (or it may not exist)")

    def denied(self, host: str, scope: Scope) -> RegistryError:
        return RegistryError(403, "DENIED", f"Permission {DOWNLOAD!r} denied on resource {_resource(host, scope)!r} "
                             "(or it may not exist)")

    def token_body(self, token: str, expires_in: int, issued_at: str) -> dict[str, Any]:
        return {"token": token, "expires_in": expires_in, "issued_at": issued_at}


def _holds(member: str, principal: str) -> bool:
    if member == principal:
        return True
    # principalSet://iam.googleapis.com/<pool>/*: every principal of the pool
    if member.startswith("principalSet://") and member.endswith("/*"):
        pool = member[len("principalSet://"):-2]
        return principal.startswith(f"principal://{pool}/subject/")
    return False


def _resource(host: str, scope: Scope | None) -> str:
    """The repository a docker path names, as Google names it (`<project>/<repository>/<image>`)."""
    parts = scope.repository.split("/") if scope else []
    location = host.removesuffix("-docker.pkg.dev")
    if host.endswith("-docker.pkg.dev") and len(parts) >= 2:
        return f"projects/{parts[0]}/locations/{location}/repositories/{parts[1]}"
    return f"{host}/{scope.repository}" if scope else host
