"""Signing-key rotation against a running local mode, as an operator and the clouds meet it:
`oidc-broker keys list | rotate | revoke` (no --stack: the local mode's record), the JWKS over HTTP,
tokens from /token, and the AWS, Azure and Google emulators verifying exchanges across each switch.

Local mode shortens the lifecycle through the production variables (JWKS_MAX_AGE, KEY_RING_TTL...),
so a rotation takes effect within seconds; every wait here polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import jwt
import pytest
from localmode import ROOT, start_local, stop_local

MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}
EXCHANGES = {"aws": "default/prod-ecr", "azure": "default/prod-acr", "gcp": "default/prod-gar"}
DEADLINE = 90  # seconds: well over local mode's publication delay and key ring cache


def uncached_config(tmp_path) -> str:
    """The demo configuration with no credential caching, so each exchange reaches its cloud's emulator."""
    text = (ROOT / "examples" / "local.yaml").read_text()
    for old, new in (('role/ecr-pull", region: us-east-1}', 'role/ecr-pull", region: us-east-1, refresh_at: 0}'),
                     ("registry: acme.azurecr.io}", "registry: acme.azurecr.io, refresh_at: 0}"),
                     ("          registry: europe-docker.pkg.dev\n",
                      "          registry: europe-docker.pkg.dev\n          refresh_at: 0\n")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "uncached.yaml"
    path.write_text(text)
    return str(path)


def cli_env(record) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["OIDC_BROKER_LOCAL_RECORD"] = str(record)
    return env


@pytest.fixture(scope="module")
def rotating(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rotation")
    record = tmp / "local.json"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OIDC_BROKER_LOCAL_RECORD", str(record))
        mode = start_local(tmp / "local.log", "--config", uncached_config(tmp))
    mode.record, mode.env = record, cli_env(record)
    yield mode
    stop_local(mode)


def keys(mode, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "keys", *args], cwd=ROOT, env=mode.env,
                          capture_output=True, text=True, timeout=60)


def report(mode, *args: str) -> dict:
    result = keys(mode, *args, "--output", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def in_state(rep: dict, state: str) -> list[str]:
    return [k["kid"] for k in rep["keys"] if k["state"] == state]


def published(mode) -> list[str]:
    response = mode.http.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    return [k["kid"] for k in response.json()["keys"]]


def minted(mode) -> str:
    response = mode.exchange(mode.ci_token(**MAIN))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def until(what: str, check: Callable[[], object], deadline: float = DEADLINE) -> object:
    end = time.monotonic() + deadline
    while True:
        if value := check():
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline}s: {what}")
        time.sleep(0.25)


def clouds_accept(mode) -> None:
    """Each cloud's emulator fetches the JWKS itself and verifies a token minted now."""
    for cloud, target in EXCHANGES.items():
        response = mode.http.post(f"/exchange/{cloud}", content=json.dumps({"target": target}),
                                  headers={"Content-Type": "application/json",
                                           "Authorization": f"Bearer {mode.ci_token(**MAIN)}"})
        assert response.status_code == 200, (cloud, response.text)
    issued = [r for r in mode.log_records() if r.get("message") == "credentials issued"]
    assert issued and [r["from_cache"] for r in issued] == [False] * len(issued)  # each verified by its emulator


def verified(mode, token: str) -> dict:
    """The token verified as a relying party does: the JWKS fetched now, RS256, iss and aud."""
    discovery = mode.http.get("/.well-known/openid-configuration").json()
    key = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False).get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience="sts.amazonaws.com", issuer=discovery["issuer"])


def test_local_mode_records_where_it_runs_for_the_commands(rotating):
    recorded = json.loads(rotating.record.read_text())
    assert recorded == {"url": rotating.base_url, "issuer": rotating.base_url, "table": "oidc-broker-local",
                        "aws_endpoint": rotating.aws_endpoint, "pid": rotating.process.pid}
    banner = rotating.logs()
    assert "oidc-broker keys list" in banner and "oidc-broker keys rotate" in banner
    assert "JWKS_MAX_AGE=" in banner


def test_keys_list_shows_the_signing_key_and_the_lifecycle(rotating):
    result = keys(rotating, "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"signing keys of local mode at {rotating.base_url}:")
    rep = report(rotating, "list")
    (active,) = in_state(rep, "active")
    (pending,) = in_state(rep, "pending")  # published at start by the first scheduled run
    assert active in result.stdout and pending in result.stdout and "  rotation period    90d:" in result.stdout
    assert sorted(published(rotating)) == sorted([active, pending])
    assert rep["lifecycle"]["publication_delay"] < 60  # local mode's shortened lifecycle
    assert kid_of(minted(rotating)) == active


def test_rotate_publishes_the_next_key_before_it_signs_and_the_clouds_keep_accepting(rotating):
    before = report(rotating, "list")
    (old,) = in_state(before, "active")
    clouds_accept(rotating)

    # Local mode's first scheduled run published the next key at start, long enough ago to sign at
    # once; revoked, a new next key takes its place, published now, so publish before use shows.
    (published_at_start,) = in_state(before, "pending")
    assert published_at_start in published(rotating)
    revoked = keys(rotating, "revoke", published_at_start, "--yes")
    assert revoked.returncode == 0, revoked.stderr
    assert in_state(report(rotating, "list"), "pending") not in ([], [published_at_start])

    result = keys(rotating, "rotate")
    assert result.returncode == 0, result.stderr
    rep = report(rotating, "list")
    assert rep["effective_at"] and rep["effective_at"] > time.time() - 5
    (new,) = in_state(rep, "pending")
    assert new not in (old, published_at_start) and "publish before use" in result.stdout and new in result.stdout
    # Published before use: the next key is in the JWKS while tokens still carry the old one.
    until("the next key is published", lambda: new in published(rotating) and old in published(rotating))
    early = minted(rotating)
    assert kid_of(early) == old
    clouds_accept(rotating)

    # After the publication delay local mode's scheduled run switches; new tokens carry the new kid.
    until("the next key signs", lambda: in_state(report(rotating, "list"), "active") == [new])
    until("new tokens carry the new kid", lambda: kid_of(minted(rotating)) == new)
    after = report(rotating, "list")
    keys_now = {k["kid"]: k for k in after["keys"]}
    assert keys_now[old]["state"] == "retired"
    assert keys_now[new]["activated_at"] >= keys_now[new]["published_at"] + after["lifecycle"]["publication_delay"]
    assert old in published(rotating) and new in published(rotating)  # the previous key stays published
    assert verified(rotating, early)["sub"] == "space:default:feed:prod-ecr"  # minted just before the switch
    clouds_accept(rotating)
    assert until("a pending key again", lambda: in_state(report(rotating, "list"), "pending"))


def test_revoke_takes_the_signing_key_out_of_the_jwks_and_the_next_key_takes_over(rotating):
    (revoked,) = in_state(report(rotating, "list"), "active")
    signed_before = minted(rotating)
    assert kid_of(signed_before) == revoked

    result = keys(rotating, "revoke", revoked, "--yes")
    assert result.returncode == 0, result.stderr
    assert f"revoked {revoked}: out of the key ring and the JWKS now" in result.stdout
    assert f"oidc-broker keys jwks --issuer {rotating.base_url}" in result.stdout
    assert "verifiers may keep the revoked key cached until" in result.stdout
    rep = report(rotating, "list")
    assert revoked not in [k["kid"] for k in rep["keys"]]
    (signing,) = in_state(rep, "active")
    assert f"signs now: {signing}" in result.stdout

    # Out of the JWKS once the JWKS function's key ring cache (KEY_RING_TTL) has passed.
    until("the revoked key leaves the JWKS", lambda: revoked not in published(rotating), deadline=30)
    with pytest.raises(jwt.PyJWKClientError):
        verified(rotating, signed_before)  # a verifier that refreshes refuses what the revoked key signed
    until("new tokens carry the next key", lambda: kid_of(minted(rotating)) == signing, deadline=30)
    clouds_accept(rotating)


def test_revoke_of_an_unknown_kid_changes_nothing(rotating):
    before = report(rotating, "list")
    result = keys(rotating, "revoke", "no-such-kid", "--yes")
    assert result.returncode == 2
    assert result.stderr.startswith("oidc-broker keys revoke: no key 'no-such-kid' in the key ring of local mode")
    assert [k["kid"] for k in report(rotating, "list")["keys"]] == [k["kid"] for k in before["keys"]]


def test_the_record_goes_with_local_mode_and_a_stale_one_is_not_running(tmp_path, monkeypatch):
    record = tmp_path / "local.json"
    monkeypatch.setenv("OIDC_BROKER_LOCAL_RECORD", str(record))
    mode = start_local(tmp_path / "first.log")
    mode.env = cli_env(record)
    assert keys(mode, "list").returncode == 0
    stop_local(mode)
    assert not record.exists()
    result = keys(mode, "list")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("oidc-broker keys list: local mode is not running (start it with `make run`)")

    killed = start_local(tmp_path / "killed.log")
    killed.process.send_signal(signal.SIGKILL)  # no chance to remove its record
    killed.process.wait(10)
    killed.http.close()
    killed._log.close()
    assert record.exists()
    result = keys(mode, "list")
    assert result.returncode == 2 and "local mode is not running" in result.stderr
