"""Docker's side of a feed: registry names as docker compares them, and the login written into its config.

Docker reads a registry's login from `auths.<host>.auth` (base64 of `user:password`) in
`$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`) unless the config sends the host to a
credential helper (`credHelpers`) or every host to a credential store (`credsStore`): then docker
never reads `auths`, and writing there would only look like a login, so that is refused.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ClientError
from .files import write_private


def registry_host(server_url: str) -> str:
    """The registry of a server URL as docker names it: scheme and path dropped, the port kept (docker's
    ConvertToHostname), lower-cased because host names are compared without case."""
    text = server_url.strip()
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.hostname:
            return parts.hostname + (f":{port}" if port else "")
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0].lower()


def config_path(env: Mapping[str, str]) -> Path:
    """The config docker reads: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    directory = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path(env.get("HOME") or Path.home()) / ".docker"
    return directory / "config.json"


def write_login(path: Path, registry: str, username: str, password: str) -> str:
    """Record the login for `registry` in docker's config at `path`, keeping every other entry; the
    file is written whole, mode 0600. Returns the host the login is recorded under."""
    host = registry_host(registry)
    config = _read(path)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict) and helpers.get(host):
        raise ClientError(f"{path} sends {host} to the credential helper docker-credential-{helpers[host]} "
                          "(credHelpers): docker would not read a login written to auths",
                          "remove that credHelpers entry, or pipe --print into `docker login --password-stdin`")
    if config.get("credsStore"):
        raise ClientError(f"{path} keeps logins in the credential store docker-credential-{config['credsStore']} "
                          "(credsStore): docker would not read a login written to auths",
                          f"pipe --print into `docker login --username {username} --password-stdin {registry}`")
    auths = config.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise ClientError(f"{path}: auths is not an object", "fix or remove the file")
    for name in [n for n in auths if n != host and registry_host(n) == host]:
        del auths[name]  # the same registry spelt with a scheme or path: one login per host
    auths[host] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        write_private(target, (json.dumps(config, indent="\t") + "\n").encode())
    except OSError as e:
        raise ClientError(f"cannot write {target}: {e.strerror}", "set DOCKER_CONFIG to a directory of your own") from None
    return host


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ClientError(f"cannot read {path}: {getattr(e, 'strerror', e)}", "fix its permissions") from None
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError:
        config = None
    if not isinstance(config, dict):
        # Never overwrite what cannot be read back: the user's other logins are in it.
        raise ClientError(f"{path} is not a JSON object, so it is left as it is", "fix or remove the file")
    return config
