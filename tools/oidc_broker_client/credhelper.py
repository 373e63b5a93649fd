"""`docker-credential-oidc-broker`: docker's credential helper protocol, answered from the broker.

Docker runs `docker-credential-oidc-broker get` with a registry's server URL on standard input for
each registry the config's `credHelpers` sends here, and reads `{"ServerURL", "Username", "Secret"}`
from standard output. Which broker target serves which registry is a small JSON file,
$OIDC_BROKER_REGISTRIES or ~/.config/oidc-broker/registries.json (under $XDG_CONFIG_HOME when set):

    {"registries": {"123456789012.dkr.ecr.us-east-1.amazonaws.com":
                        {"url": "https://id.example.com", "target": "default/prod-ecr", "cloud": "aws"}}}

(optional per registry: `audience`, `token_env`, `token_file`, `azure_service_connection`, as for
`oidc-broker login`). Server URLs match with or without scheme and path, as docker compares them. A
registry not in the file gets docker's `credentials not found in native keychain` (exit 1), and
docker goes on without credentials. Credentials are cached (cache.py) until half their lifetime,
and are given only for the registry they are for. Like docker-credential-ecr-login this helper
stores nothing: `store` is refused, `erase` drops the cached credentials. Every other failure is one
line on standard output and exit 1, which docker shows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import ambient, version
from .broker import is_feed
from .cache import Cache, default_dir
from .docker import registry_host
from .errors import ClientError
from .login import CLOUDS, Context, checked_target, obtain
from .transport import checked_url

NOT_FOUND = "credentials not found in native keychain"
USAGE = "Usage: docker-credential-oidc-broker <get|store|erase|list|version>"
OPTIONAL = ("audience", "token_env", "token_file", "azure_service_connection")


@dataclass(frozen=True)
class Registry:
    url: str
    target: str
    cloud: str
    audience: str | None = None
    token_env: str = ambient.DEFAULT_TOKEN_ENV
    token_file: str | None = None
    azure_service_connection: str | None = None

    def source(self) -> ambient.Source:
        return ambient.Source(token_file=self.token_file, token_env=self.token_env,
                              azure_service_connection=self.azure_service_connection)

    def cache_key(self) -> str:
        return Cache.key(self.url, self.cloud, self.target)


def registries_path(env: Mapping[str, str]) -> Path:
    if env.get("OIDC_BROKER_REGISTRIES"):
        return Path(env["OIDC_BROKER_REGISTRIES"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "oidc-broker" / "registries.json"


def load_registries(path: Path) -> dict[str, Registry]:
    """Registry host -> the broker target serving it; no file means no registry."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ClientError(f"{path}: cannot be read as JSON: {e}", 'write {"registries": {"<host>": {...}}}') from None
    entries = document.get("registries") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise ClientError(f"{path}: has no \"registries\" object", 'write {"registries": {"<host>": {...}}}')
    registries = {}
    for name, entry in entries.items():
        where = f"{path}: registries.{name}"
        if not isinstance(entry, dict):
            raise ClientError(f"{where}: is not an object", 'give {"url", "target", "cloud"}')
        unknown = set(entry) - {"url", "target", "cloud", *OPTIONAL}
        missing = [k for k in ("url", "target", "cloud") if not isinstance(entry.get(k), str) or not entry[k]]
        wrong = [k for k in OPTIONAL if k in entry and not isinstance(entry[k], str)]
        if unknown or missing or wrong:
            problems = ([f"unknown {', '.join(sorted(unknown))}"] if unknown else []) + \
                ([f"needs {', '.join(missing)}"] if missing else []) + ([f"{', '.join(wrong)} must be strings"] if wrong else [])
            raise ClientError(f"{where}: {'; '.join(problems)}",
                              f'each registry is {{"url", "target", "cloud"}} (optional: {", ".join(OPTIONAL)})')
        if entry["cloud"] not in CLOUDS:
            raise ClientError(f"{where}: cloud {entry['cloud']!r} is not one of {', '.join(CLOUDS)}")
        try:
            checked_target(entry["target"])
            url = checked_url(entry["url"], f"{where}: url")
        except ClientError as e:
            raise ClientError(f"{where}: {e.message}", e.next_step) from None
        registries[registry_host(name)] = Registry(**{**entry, "url": url})
    return registries


def get(server: str, registries: dict[str, Registry], cache: Cache, context: Context) -> dict[str, str] | None:
    """Docker's credentials for `server`, or None when no broker target serves it."""
    host = registry_host(server)
    registry = registries.get(host)
    if registry is None:
        return None

    def fetch() -> dict[str, Any]:
        return obtain(registry.url, registry.cloud, registry.target, registry.source(), registry.audience, context)

    credentials = cache.obtain(registry.cache_key(), fetch)
    if not is_feed(credentials):
        raise ClientError(f"{registry.target} is an account target, not a feed: it serves no registry")
    if registry_host(credentials["registry"]) != host:
        # Never hand one registry's password to another host.
        raise ClientError(f"{registry.target} serves the registry {credentials['registry']}, not {host}: "
                          f"correct {host} in the registries file")
    return {"ServerURL": server, "Username": credentials["username"], "Secret": credentials["password"]}


def listing(registries: dict[str, Registry], cache: Cache) -> dict[str, str]:
    """Each registry, with and without scheme (as ecr-login lists them), and its cached username."""
    listed = {}
    for host, registry in registries.items():
        entry = cache.get(registry.cache_key())
        username = str(entry.credentials.get("username", "")) if entry else ""
        listed[host] = listed[f"https://{host}"] = username
    return listed


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
         env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    env = os.environ if env is None else env
    if len(argv) != 1:
        stdout.write(USAGE + "\n")
        return 1
    action = argv[0]
    context = Context(ambient.Environment(env), out=stdout, err=sys.stderr, clock=clock)
    try:
        if action == "version":
            stdout.write(f"docker-credential-oidc-broker {version()}\n")
            return 0
        if action not in ("get", "store", "erase", "list"):
            stdout.write(f"Unknown credential action `{action}`\n")
            return 1
        registries = load_registries(registries_path(env))
        cache = Cache(default_dir(env), clock)
        if action == "get":
            server = stdin.read().strip()
            if not server:
                stdout.write("no credentials server URL\n")
                return 1
            found = get(server, registries, cache, context)
            if found is None:
                stdout.write(NOT_FOUND + "\n")
                return 1
            stdout.write(json.dumps(found) + "\n")
            return 0
        if action == "store":
            stdin.read()  # the credentials docker offers: never kept
            stdout.write("docker-credential-oidc-broker stores no credentials: it obtains them from the broker "
                         "for the registries in its registries file; send only those hosts to it (credHelpers)\n")
            return 1
        if action == "erase":
            registry = registries.get(registry_host(stdin.read().strip()))
            if registry is not None:
                cache.drop(registry.cache_key())
            return 0
        stdout.write(json.dumps(listing(registries, cache)) + "\n")
        return 0
    except ClientError as e:
        stdout.write(" ".join(e.diagnostics().split("\n  ")) + "\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
