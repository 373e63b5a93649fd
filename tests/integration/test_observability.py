"""What operators see: every route driven over HTTP, then every log line read back.

No token, password or secret may appear in any line; each request's lines carry the correlation
id, and once known, the target and the caller's identity; refusals and exchanges are counted.
"""

from __future__ import annotations

import json
import time

import pytest

from localmode import start_local, stop_local

MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    """A fresh local mode, every route driven once or more, and every secret it handed out."""
    mode = start_local(tmp_path_factory.mktemp("observe") / "local.log")
    secrets: list[str] = []
    try:
        mode.http.get("/.well-known/openid-configuration")
        mode.http.get("/.well-known/jwks.json")
        mode.http.get("/openapi.json")
        for claims in (MAIN, {**MAIN, "environment": "production"}):
            token = mode.ci_token(**claims)
            secrets.append(token)
            minted = mode.exchange(token).json()["access_token"]
            secrets.append(minted)
            mode.exchange(token)  # replayed: refused after verification
        deploy = mode.ci_token(**MAIN, environment="production")
        secrets.append(deploy)
        account = mode.http.post("/exchange/aws", json={"target": "default/prod-deploy"},
                                 headers={"Authorization": f"Bearer {deploy}"}).json()
        secrets += [account["secret_access_key"], account["session_token"]]
        feed_token = mode.ci_token(**MAIN)
        secrets.append(feed_token)
        feed = mode.http.post("/exchange/aws", json={"target": "default/prod-ecr"},
                              headers={"Authorization": f"Bearer {feed_token}"}).json()
        secrets.append(feed["password"])
        again = mode.ci_token(**MAIN)
        secrets.append(again)
        mode.http.post("/exchange/aws", json={"target": "default/prod-ecr"}, headers={"Authorization": f"Bearer {again}"})
        bad = mode.ci_token(**{**MAIN, "ref": "refs/heads/other"})
        secrets.append(bad)
        mode.exchange(bad)
        mode.http.post("/exchange/aws", json={"target": "default/prod-ecr"}, headers={"Authorization": f"Bearer {bad}"})
        mode.exchange("not-a-token")
        time.sleep(0.3)
        yield mode, secrets
    finally:
        stop_local(mode)


def records(mode) -> list[dict]:
    out = []
    for line in mode.logs().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_no_token_password_or_secret_appears_in_any_log_line(driven):
    mode, secrets = driven
    logs = mode.logs()
    assert len(secrets) >= 10
    for secret in secrets:
        parts = secret.split(".")
        # Whole tokens, and their signatures (a signature alone identifies a token).
        for fragment in {secret, parts[-1]} if len(parts) == 3 else {secret}:
            assert fragment not in logs


def test_every_handler_line_carries_the_correlation_id(driven):
    mode, _ = driven
    lines = [r for r in records(mode) if "function_name" in r]  # scheduled and deploy-time functions too
    assert lines
    assert all(r.get("correlation_id") for r in lines)


@pytest.mark.parametrize("message", ["token minted", "credentials issued"])
def test_issuing_lines_name_the_target_and_the_caller(driven, message):
    mode, _ = driven
    lines = [r for r in records(mode) if r.get("message") == message]
    assert lines
    for r in lines:
        assert r["target"].startswith("default/")
        assert r["caller_issuer"].endswith("/_dev/ci")
        assert r["caller_subject"].startswith("repo:acme/app:")


def test_a_refusal_after_verification_names_the_caller(driven):
    mode, _ = driven
    lines = [r for r in records(mode) if r.get("message") == "token refused" and r.get("reason") == "claim_mismatch"]
    assert lines and lines[-1]["caller_subject"] == "repo:acme/app:ref:refs/heads/other"


def test_keys_of_one_request_never_leak_into_the_next(driven):
    mode, _ = driven
    refused = [r for r in records(mode) if r.get("message") == "token refused" and r.get("reason") == "malformed_token"]
    assert refused and "caller_subject" not in refused[-1]


def test_refusals_are_counted_per_reason_and_exchanges_per_cloud_and_outcome(driven):
    mode, _ = driven
    metrics = [r for r in records(mode) if "_aws" in r]
    refusal_reasons = {r["reason"] for r in metrics if "Refusals" in r}
    assert {"replayed", "claim_mismatch", "malformed_token"} <= refusal_reasons
    outcomes = {(r["cloud"], r["outcome"]) for r in metrics if "Exchanges" in r}
    assert outcomes == {("aws", "exchanged"), ("aws", "cached")}
    assert any("TokensMinted" in r for r in metrics)


def test_no_tracer_is_imported_by_any_function():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for function in sorted((root / "functions").iterdir()):
        code = (f"import sys; sys.path.insert(0, {str(function)!r}); import app; "
                "print('aws_xray_sdk' in sys.modules)")
        env = {"TABLE_NAME": "t", "AWS_DEFAULT_REGION": "us-east-1", "CACHE_KEY_ID": "k", "PATH": "/usr/bin:/bin",
               "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "False", function.name
