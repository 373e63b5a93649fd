"""Each cloud's emulators, wired into local mode: one module per cloud, registered once in CLOUDS.

A cloud's module gives `start(broker) -> Wiring`, called once the broker knows its issuer and
before any function runs: it starts the cloud's emulators and points the handlers' clients at
them (environment variables). After the configuration is applied, `trust(config)` sets up the
cloud's side for the configured targets the way an operator would (an OIDC provider, roles, ...),
so the broker's tokens meet a cloud that verifies them. Adding Azure or Google Cloud means adding
`azure.py` or `gcp.py` here and one entry in CLOUDS; nothing else in local mode names a cloud.

A cloud with docker feeds also serves, per registry host its targets name, docker's registry login
(`registries`): a stand-in that answers for that host on plain HTTP at 127.0.0.1 (docker allows
plain HTTP to 127.0.0.0/8). Its port is typed by a person (`docker login 127.0.0.1:<port>`), so
it sits next to the broker's own port, at a fixed offset per cloud (`make run`: 3001 ECR, 3002
ACR, 3003 Artifact Registry) for the cloud's first registry host; further hosts, or a port that
is taken, get a free one. The banner prints every line exactly (`exchange_walk`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol

from . import aws, azure, gcp


class Wiring(Protocol):
    def banner(self) -> list[tuple[str, str]]:
        """(label, text) lines for the banner: each emulator and what it verifies."""
        ...

    def trust(self, config: Any) -> None:
        """Set up the cloud's side for the targets of this applied configuration."""
        ...

    def walk(self, base_url: str, ci_token: str) -> tuple[str, str] | None:
        """A step of the banner's walk, (title, shell lines), for exchanging a CI token (`ci_token` mints one)."""
        ...

    def stop(self) -> None: ...


CLOUDS: tuple[ModuleType, ...] = (aws, azure, gcp)
MAX_PORT = 65535


def registries(hosts: list[str], authority: Any, broker_port: int, offset: int) -> dict[str, Any]:
    """A started docker registry stand-in per host (in order): the first at `broker_port + offset`
    when that port is free, the others on free ports."""
    from oidc_broker_emulators.registry import DockerRegistry

    started: dict[str, Any] = {}
    try:
        for i, host in enumerate(dict.fromkeys(hosts)):
            port = broker_port + offset if i == 0 and broker_port and broker_port + offset <= MAX_PORT else 0
            started[host] = DockerRegistry(host, authority, port=port, fallback=True).start()
    except BaseException:
        for registry in started.values():
            registry.stop()
        raise
    return started


def registry_lines(label: str, registries: dict[str, Any], accepts: str, username: str) -> list[tuple[str, str]]:
    """Banner lines: where each registry stand-in answers, for which host, what it accepts, and its
    exact `docker login` line (under the banner's label column)."""
    return [(label, f"{r.address} answers docker login for {host} ({accepts}):\n{' ' * 17}docker login {r.address} "
                    f"-u {username} --password-stdin") for host, r in registries.items()]


def exchange_walk(base_url: str, ci_token: str, cloud: str, target: str, feeds: dict[str, str],
                  registries: dict[str, Any], username: str) -> str:
    """A walk step's lines: exchange a CI token for `target`; then, for the cloud's first feed with a
    registry stand-in, the same with a fresh CI token, its password piped into `docker login`."""
    def exchange(ref: str) -> str:
        return (f"  {ci_token}\n"
                f"  curl -s {base_url}/exchange/{cloud} -H \"Authorization: Bearer $CI_TOKEN\" "
                "-H 'Content-Type: application/json' \\\n"
                f"    -d '{{\"target\": \"{ref}\"}}'")

    lines = exchange(target) + "\n"
    feed = next(iter(feeds), None)
    if feed is not None:
        registry = registries[feeds[feed]]
        lines += (f"  # docker login: {registry.address} answers for {registry.host} (a fresh CI token; the "
                  "password from the answer)\n"
                  + exchange(feed) + " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"password\"])' \\\n"
                  f"    | docker login {registry.address} -u {username} --password-stdin\n")
    return lines


def start_all(broker: Any) -> list[Wiring]:
    """Every registered cloud's wiring, started in CLOUDS' order (stopped again if one fails)."""
    started: list[Wiring] = []
    try:
        for cloud in CLOUDS:
            started.append(cloud.start(broker))
    except BaseException:
        for wiring in reversed(started):
            wiring.stop()
        raise
    return started
