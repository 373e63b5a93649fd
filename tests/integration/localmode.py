"""Local mode as a pipeline meets it: started as `oidc-broker local`, spoken to over HTTP.

A module of its own (not conftest.py), so test modules import it by one unambiguous name."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from oidc_broker_cli.deployment import RECORD_ENV

ROOT = Path(__file__).resolve().parents[2]
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
# One AWS feed pinned by repository ID, valid on every count: the CLI tests vary it (line numbers matter).
ONE_FEED = """
issuer: https://id.example.com
trusted_issuers:
  - name: github
    issuer: https://token.actions.githubusercontent.com
spaces:
  - name: default
    targets:
      - name: prod-ecr
        kind: feed
        provider: aws
        aws: {role_arn: "arn:aws:iam::123456789012:role/pull", region: us-east-1}
    trust:
      - name: app-main
        issuer: github
        claims: {repository_id: "1", ref: refs/heads/main}
        targets: [prod-ecr]
"""
# A small valid configuration (one AWS feed, one trust rule) that CLI and local mode tests vary.
GOOD = """
issuer: https://id.example.com
trusted_issuers:
  - name: github
    issuer: https://token.actions.githubusercontent.com
spaces:
  - name: default
    targets:
      - name: prod-ecr
        kind: feed
        provider: aws
        aws: {role_arn: "arn:aws:iam::123456789012:role/pull", region: us-east-1}
    trust:
      - name: app-main
        issuer: github
        claims: {repository_owner_id: "7", repository: acme/app, ref: refs/heads/main}
        targets: [prod-ecr]
"""


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


def port_block(width: int = 4) -> int:
    """A free port whose next `width - 1` ports are free too: local mode serves its registry
    stand-ins at its own port + 1..3, and elsewhere (which doctor calls no stand-in) when taken."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 60000)
        sockets = []
        try:
            for port in range(base, base + width):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports found")


def start_local(log_path: Path, *args: str) -> LocalMode:
    """Start `oidc-broker local` on a free port (and free ports above it) and wait for its `ready` line."""
    log = log_path.open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    port = () if "--port" in args else ("--port", str(port_block()))
    process = subprocess.Popen(
        [sys.executable, "-m", "oidc_broker_cli.main", "local", *port, *args],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"local mode exited:\n{log_path.read_text()}")
        if m := re.search(r"^ready: (http://\S+)", log_path.read_text(), re.M):
            mode = LocalMode(process, m.group(1), log_path)
            mode.aws_endpoint = re.search(r"embedded AWS\s+(http://\S+)", log_path.read_text()).group(1)
            mode._log = log
            return mode
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"local mode did not become ready:\n{log_path.read_text()}")


def start_recorded(directory: Path, *args: str) -> LocalMode:
    """start_local, recording where it runs in `directory` rather than the project's .oidc-broker/, so
    the commands that find local mode by its record (`keys`, `refresh`) find this one when run with
    `mode.env`."""
    record = directory / "local.json"
    saved = os.environ.get(RECORD_ENV)
    os.environ[RECORD_ENV] = str(record)
    try:
        mode = start_local(directory / "local.log", *args)
    finally:
        if saved is None:
            del os.environ[RECORD_ENV]
        else:
            os.environ[RECORD_ENV] = saved
    mode.record = record
    mode.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    mode.env[RECORD_ENV] = str(record)
    return mode


def stop_local(mode: LocalMode) -> None:
    mode.http.close()
    mode.process.send_signal(signal.SIGTERM)
    try:
        mode.process.wait(timeout=10)
    finally:
        mode._log.close()
