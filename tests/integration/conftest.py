"""The session-wide local mode every integration test may share."""

from __future__ import annotations

import pytest

from localmode import LocalMode, start_local, stop_local


@pytest.fixture(scope="session")
def local(tmp_path_factory) -> LocalMode:
    mode = start_local(tmp_path_factory.mktemp("local") / "local.log")
    yield mode
    stop_local(mode)
