"""Local mode in the test's own process (LocalBroker), spoken to over HTTP all the same.

For tests that also reach local mode's emulators as an operator or time would: a cloud's clock
moved past a credential's expiry, a federated credential or attribute condition set up wrong.
A module of its own (not conftest.py), so test modules import it by one unambiguous name.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from oidc_broker_cli.local import LocalBroker

ROOT = Path(__file__).resolve().parents[2]
MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}


def demo_config(extra_targets: str, extra_refs: list[str]) -> str:
    """examples/local.yaml with `extra_targets` (YAML list items) added, trusted by the app-main rule."""
    text = (ROOT / "examples" / "local.yaml").read_text()
    assert text.count("    targets:\n") == 1 and text.count("targets: [prod-ecr, ") == 1
    text = text.replace("    targets:\n", "    targets:" + extra_targets.rstrip("\n") + "\n", 1)
    return text.replace("targets: [prod-ecr, ", f"targets: [{', '.join(extra_refs)}, prod-ecr, ")


class InProcess:
    def __init__(self, broker: LocalBroker):
        self.broker = broker
        self.http = httpx.Client(base_url=broker.base_url, timeout=30)
        self.banner = broker.banner()

    def wiring(self, cls: type) -> Any:
        return next(w for w in self.broker.wirings if isinstance(w, cls))

    def ci_token(self, **claims: Any) -> str:
        response = self.http.post("/_dev/ci/token", json={**MAIN, **claims})
        response.raise_for_status()
        return response.json()["token"]

    def exchange(self, cloud: str, target: str, **claims: Any) -> httpx.Response:
        return self.http.post(f"/exchange/{cloud}", json={"target": target},
                              headers={"Authorization": f"Bearer {self.ci_token(**claims)}"})

    def registry_address(self, host: str) -> str:
        """Where the banner says the docker registry stand-in for `host` answers."""
        m = re.search(rf"(127\.0\.0\.1:\d+) answers docker login for {re.escape(host)} ", self.banner)
        assert m, f"the banner names no stand-in for {host}:\n{self.banner}"
        return m.group(1)


def _reset_moto() -> None:
    """moto keeps its backends in the process, whichever server serves them: a second embedded AWS
    in this process would find the first one's table, keys and roles."""
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()


@contextlib.contextmanager
def local_broker(directory: Path, config_text: str) -> Iterator[InProcess]:
    """LocalBroker started on a free port with this configuration; moto's state and the process
    environment it changed (AWS_ENDPOINT_URL, AZURE_AUTHORITY_HOST, ...) reset after."""
    config = directory / "broker.yaml"
    config.write_text(config_text)
    saved = dict(os.environ)
    broker = LocalBroker(root=ROOT, config_path=config, port=0, log=lambda line: None)
    _reset_moto()  # another in-process local mode may have run before (tests/integration/test_hostile_inputs.py)
    try:
        broker.start()
        local = InProcess(broker)
        yield local
        local.http.close()
    finally:
        with contextlib.suppress(Exception):
            broker.stop()
        _reset_moto()
        os.environ.clear()
        os.environ.update(saved)
