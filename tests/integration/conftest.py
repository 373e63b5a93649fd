"""The session-wide local mode every integration test may share."""

from __future__ import annotations

import pytest

from localmode import LocalMode, start_local, stop_local


@pytest.fixture(scope="session")
def local(tmp_path_factory) -> LocalMode:
    mode = start_local(tmp_path_factory.mktemp("local") / "local.log")
    yield mode
    stop_local(mode)


@pytest.fixture(scope="module")
def moto_endpoint() -> str:
    """A module's own moto server (serialized, as local mode runs it), its URL."""
    from oidc_broker_cli.local import free_port
    from oidc_broker_cli.local.aws import moto_server

    port = free_port()
    server = moto_server(port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
