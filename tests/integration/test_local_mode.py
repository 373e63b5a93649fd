"""Local mode itself: its config, its start-up line, its clean stop."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from localmode import GOOD

ROOT = Path(__file__).resolve().parents[2]


def start(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.Popen([sys.executable, "-m", "oidc_broker_cli.main", "local", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(process) -> tuple[str, list[str]]:
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.match(r"ready: (http://\S+)", line):
            return m.group(1), lines
    raise AssertionError("".join(lines))


def test_local_mode_prints_the_walk_and_stops_cleanly_on_sigterm(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text(GOOD.replace("issuer: https://id.example.com\n", ""))
    process = start("--config", str(config), "--port", "0")
    try:
        url, lines = wait_ready(process)
        banner = "".join(lines)
        assert f"issuer         {url}" in banner
        assert "/_dev/ci/token" in banner and "/token" in banner and "jwks.json" in banner
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "stopped" in out


def test_local_mode_refuses_an_invalid_config_before_serving(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text(GOOD.replace("kind: feed", "kind: bucket"))
    process = start("--config", str(config), "--port", "0")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "spaces[0].targets[0].kind: must be one of feed, account" in out
    assert "ready" not in out


import pytest  # noqa: E402


@pytest.mark.parametrize("sent", [b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"[]", b"\xff", b"{"])
def test_the_development_ci_issuer_refuses_a_body_that_is_not_an_object_of_claims(local, sent):
    response = local.http.post("/_dev/ci/token", content=sent)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "body must be a JSON object of claims"}


@pytest.mark.parametrize("sent", [b"[" * 100_000, b"{", b"\xff"])
def test_invoking_a_function_with_a_body_that_is_not_json_is_a_400(local, sent):
    response = local.http.post("/_local/invoke/RotateKeysFunction", content=sent)
    assert response.status_code == 400 and "JSON event" in response.json()["message"]
