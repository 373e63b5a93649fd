"""Local mode as a pipeline meets it: started as `oidc-broker local`, spoken to over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class LocalMode:
    def __init__(self, process: subprocess.Popen, base_url: str, log_path: Path):
        self.process = process
        self.base_url = base_url
        self.log_path = log_path
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def logs(self) -> str:
        return self.log_path.read_text()

    def log_records(self) -> list[dict]:
        records = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    def ci_token(self, **claims) -> str:
        response = self.http.post("/_dev/ci/token", json=claims)
        response.raise_for_status()
        return response.json()["token"]

    def exchange(self, subject_token: str, audience: str = "default/prod-ecr", **overrides) -> httpx.Response:
        form = {
            "grant_type": EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": JWT_TYPE,
            "audience": audience,
            **overrides,
        }
        return self.http.post("/token", data={k: v for k, v in form.items() if v is not None})


@pytest.fixture(scope="session")
def local(tmp_path_factory) -> LocalMode:
    log_path = tmp_path_factory.mktemp("local") / "local.log"
    log = log_path.open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "oidc_broker_cli.main", "local", "--port", "0"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    deadline = time.monotonic() + 60
    base_url = None
    while time.monotonic() < deadline and base_url is None:
        if process.poll() is not None:
            raise RuntimeError(f"local mode exited:\n{log_path.read_text()}")
        if m := re.search(r"^ready: (http://\S+)", log_path.read_text(), re.M):
            base_url = m.group(1)
        else:
            time.sleep(0.1)
    if base_url is None:
        process.kill()
        raise RuntimeError(f"local mode did not become ready:\n{log_path.read_text()}")
    mode = LocalMode(process, base_url, log_path)
    yield mode
    mode.http.close()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    finally:
        log.close()


@pytest.fixture
def unique_repo() -> str:
    """Claims differ per test only where a test says so; jti is fresh on every dev CI token."""
    return f"acme/app-{uuid.uuid4().hex[:8]}"
