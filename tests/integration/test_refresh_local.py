"""The scheduled credential refresh in a running local mode, as an operator and a pipeline meet it:
the schedule fired as EventBridge would (`POST /_local/schedule/RefreshFunction/Refresh`), `oidc-broker
refresh` (no --stack: the local mode's record), and exchanges over HTTP against the verifying AWS,
Azure and Google emulators then served from the refreshed cache. examples/local.yaml marks prod-ecr,
prod-acr and prod-gar `refresh: true`.
"""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time

import pytest
from localmode import ROOT, start_recorded, stop_local

MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}
REFRESHED = {"aws": "default/prod-ecr", "azure": "default/prod-acr", "gcp": "default/prod-gar"}


@pytest.fixture(scope="module")
def mode(tmp_path_factory):
    local = start_recorded(tmp_path_factory.mktemp("refresh"))
    yield local
    stop_local(local)


def cli(mode, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", *args], cwd=ROOT, env=mode.env,
                          capture_output=True, text=True, timeout=120)


def exchange(mode, cloud: str) -> dict:
    token = mode.ci_token(**MAIN)
    response = mode.http.post(f"/exchange/{cloud}", json={"target": REFRESHED[cloud]},
                              headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def epoch(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def issued(mode, target: str) -> dict:
    """The exchange handler's newest `credentials issued` line for `target`."""
    lines = [r for r in mode.log_records() if r.get("message") == "credentials issued" and r.get("target") == target]
    assert lines, f"no credentials issued for {target}"
    return lines[-1]


def by_target(report: dict) -> dict[str, dict]:
    return {r["target"]: r for r in report["results"]}


def test_the_schedule_warms_every_refreshable_target_and_pipelines_are_then_served_from_the_cache(mode):
    response = mode.http.post("/_local/schedule/RefreshFunction/Refresh")
    assert response.status_code == 200, response.text
    report = response.json()["result"]
    results = by_target(report)
    assert {t: (r["subject"], r["outcome"]) for t, r in results.items()} == {
        ref: (f"space:default:feed:{ref.split('/')[1]}", "refreshed") for ref in REFRESHED.values()}
    assert report["counts"]["failed"] == 0 and report["min_served_remaining"] > 0
    for cloud, ref in REFRESHED.items():
        answer = exchange(mode, cloud)
        # The credentials the refresh obtained: their expiry, and no call to the cloud for this request.
        assert epoch(answer["expires_at"]) == results[ref]["expires_at"], cloud
        assert issued(mode, ref)["from_cache"] is True, cloud


def test_oidc_broker_refresh_renews_a_target_by_hand_and_its_expiry_moves(mode):
    first = cli(mode, "refresh", "--target", "default/prod-ecr", "--force", "--output", "json")
    assert first.returncode == 0, first.stderr
    before = by_target(json.loads(first.stdout))["default/prod-ecr"]
    time.sleep(1.1)  # times are whole seconds
    again = cli(mode, "refresh", "--target", "default/prod-ecr", "--force")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0].startswith("refresh in local mode at http://127.0.0.1:") and "1 refreshed" in lines[0]
    assert lines[1].split()[:3] == ["refreshed", "default/prod-ecr", "space:default:feed:prod-ecr"]
    answer = exchange(mode, "aws")
    assert epoch(answer["expires_at"]) > before["expires_at"]
    assert issued(mode, "default/prod-ecr")["from_cache"] is True


def test_a_run_with_nothing_due_renews_nothing(mode):
    response = mode.http.post("/_local/schedule/RefreshFunction/Refresh")
    report = response.json()["result"]
    assert {r["outcome"] for r in report["results"]} == {"skipped"}
    assert all(r["reason"].startswith("fresh: renewed from ") for r in report["results"])


def test_the_refresh_mints_as_the_broker_and_its_grants_are_in_the_audit_index(mode):
    env = {**mode.env, "AWS_ENDPOINT_URL": mode.aws_endpoint, "AWS_ACCESS_KEY_ID": "local",
           "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "audit", "--target", "default/prod-gar",
                             "--table", "oidc-broker-local", "--since", "1h", "--json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    records = [r for r in json.loads(result.stdout) if r["trust_rule"] == "scheduled-refresh"]
    assert records, result.stdout
    assert {(r["caller_issuer"], r["caller_subject"], r["subject"]) for r in records} == {
        (mode.base_url, "oidc-broker:refresh", "space:default:feed:prod-gar")}


def test_naming_a_target_without_refresh_is_one_line_and_exit_2(mode):
    result = cli(mode, "refresh", "--target", "default/prod-public")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("oidc-broker refresh: target 'default/prod-public' is not refreshed")
    assert len(result.stderr.splitlines()) == 1


def test_no_credential_reaches_the_refresh_report_or_its_log(mode):
    passwords = [exchange(mode, cloud)["password"] for cloud in REFRESHED]
    report = mode.http.post("/_local/invoke/RefreshFunction", json={"force": True}).text
    logs = mode.logs()
    for password in passwords:
        assert password not in report and password not in logs


def test_apply_names_a_newly_refreshed_target_and_the_command_that_warms_it(mode, tmp_path):
    text = (ROOT / "examples" / "local.yaml").read_text().replace("${local_url}", mode.base_url)
    marked = "        provider: aws\n        aws: {role_arn: \"arn:aws:iam::123456789012:role/ecr-public-pull\""
    assert text.count(marked) == 1
    text = text.replace(marked, marked.replace("provider: aws\n", "provider: aws\n        refresh: true\n"))
    config = tmp_path / "broker.yaml"
    config.write_text(f"issuer: {mode.base_url}\n{text}")
    env = {**mode.env, "AWS_ENDPOINT_URL": mode.aws_endpoint, "AWS_ACCESS_KEY_ID": "local",
           "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}
    applied = subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "apply", str(config), "--table",
                              "oidc-broker-local", "--allow-loopback-http"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[-1] == (
        "refresh: true is new for default/prod-public: the scheduled refresh warms their cached credentials on its "
        "next run; to warm them now: oidc-broker refresh --target default/prod-public [--stack NAME]")
    # Each run reads the applied configuration afresh: the new target is warmed at once.
    warmed = cli(mode, "refresh", "--target", "default/prod-public", "--output", "json")
    assert warmed.returncode == 0, warmed.stderr
    assert [(r["outcome"], r["reason"]) for r in json.loads(warmed.stdout)["results"]] == [
        ("refreshed", "no credentials cached")]
