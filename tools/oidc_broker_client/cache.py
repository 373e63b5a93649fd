"""Credentials kept on disk between calls of `credential-process` and the docker credential helper.

A tool that asks for credentials again and again (each `aws` command, each `docker pull`) is served
the same ones until half their lifetime has passed, as the broker's own cache and
docker-credential-ecr-login refresh; it also saves the CI token, which the broker accepts once per
target (GitLab gives a job one). Entries live in an owner-only directory (0700), one 0600 file each,
written atomically; a file anyone else could read or write is ignored. An entry is never served
within EXPIRY_MARGIN of its expiry: when a refresh fails because the broker is unreachable or busy,
or because this job's CI token was already spent on the cached credentials, the cached ones are
served only while they are still good.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import broker as broker_module
from . import transport
from .errors import ClientError
from .files import is_private_file, private_dir, write_private

REFRESH_AT = 0.5  # of an entry's lifetime: past it, new credentials are fetched
EXPIRY_MARGIN = 60  # seconds: never served closer to expiry than this


def default_dir(env: Mapping[str, str]) -> Path:
    """$OIDC_BROKER_CACHE_DIR, else $XDG_CACHE_HOME/oidc-broker, else ~/.cache/oidc-broker."""
    if env.get("OIDC_BROKER_CACHE_DIR"):
        return Path(env["OIDC_BROKER_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "oidc-broker"


def expiry(credentials: Mapping[str, Any]) -> float:
    """`expires_at` (RFC 3339) as seconds since the epoch."""
    try:
        when = datetime.fromisoformat(str(credentials["expires_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise ClientError("the broker's credentials carry no readable expires_at",
                          "is this client as new as the broker?") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


@dataclass(frozen=True)
class Entry:
    credentials: dict[str, Any]
    fetched_at: float
    expires_at: float

    def fresh(self, now: float) -> bool:
        return now < self.fetched_at + (self.expires_at - self.fetched_at) * REFRESH_AT and self.usable(now)

    def usable(self, now: float) -> bool:
        return now < self.expires_at - EXPIRY_MARGIN


class Cache:
    def __init__(self, directory: Path, clock: Callable[[], float]):
        self.directory = directory
        self.clock = clock

    @staticmethod
    def key(url: str, cloud: str, target: str) -> str:
        return hashlib.sha256("\0".join((url, cloud, target)).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        path = self._path(key)
        if not is_private_file(path):
            return None
        try:
            data = json.loads(path.read_text())
            return Entry(dict(data["credentials"]), float(data["fetched_at"]), float(data["expires_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: fetched again and overwritten

    def put(self, key: str, credentials: dict[str, Any], fetched_at: float) -> Entry:
        entry = Entry(credentials, fetched_at, expiry(credentials))
        self._ready()
        try:
            write_private(self._path(key), json.dumps(
                {"credentials": credentials, "fetched_at": fetched_at, "expires_at": entry.expires_at}).encode())
        except OSError as e:
            raise ClientError(f"cannot write to the credential cache {self.directory}: {e.strerror}",
                              "set OIDC_BROKER_CACHE_DIR to a directory of your own") from None
        return entry

    def _ready(self) -> None:
        try:
            private_dir(self.directory)
        except OSError as e:
            raise ClientError(f"cannot use {self.directory} as the credential cache: {e.strerror}",
                              "set OIDC_BROKER_CACHE_DIR to a directory of your own") from None

    def drop(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def obtain(self, key: str, fetch: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached credentials while fresh; else `fetch()`ed and cached; if that fails for a reason the
        cached ones survive (see the module's docstring) and they are still good, the cached ones."""
        now = self.clock()
        entry = self.get(key)
        if entry and entry.fresh(now):
            return entry.credentials
        self._ready()  # before the CI token is spent, not after
        try:
            credentials = fetch()
        except (transport.TransportError, broker_module.Refusal) as e:
            survivable = isinstance(e, transport.TransportError) or e.unavailable or e.replayed
            if survivable and entry and entry.usable(self.clock()):
                return entry.credentials
            raise
        return self.put(key, credentials, now).credentials
