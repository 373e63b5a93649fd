"""Each cloud's emulators, wired into local mode: one module per cloud, registered once in CLOUDS.

A cloud's module gives `start(broker) -> Wiring`, called once the broker knows its issuer and
before any function runs: it starts the cloud's emulators and points the handlers' clients at
them (environment variables). After the configuration is applied, `trust(config)` sets up the
cloud's side for the configured targets the way an operator would (an OIDC provider, roles, ...),
so the broker's tokens meet a cloud that verifies them. Adding Azure or Google Cloud means adding
`azure.py` or `gcp.py` here and one entry in CLOUDS; nothing else in local mode names a cloud.
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
