"""Local mode for the client's tests, and a client (clientrun.Client) with a HOME of its own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from clientrun import Client  # noqa: E402
from localmode import LocalMode, start_local, stop_local  # noqa: E402


@pytest.fixture(scope="session")
def local(tmp_path_factory) -> LocalMode:
    mode = start_local(tmp_path_factory.mktemp("client-local") / "local.log")
    yield mode
    stop_local(mode)


@pytest.fixture
def client(tmp_path) -> Client:
    home = tmp_path / "home"
    home.mkdir()
    return Client(home)
