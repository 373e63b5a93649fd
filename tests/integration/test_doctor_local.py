"""`oidc-broker doctor` against a running local mode, found by its record as `make run`'s is: a real
exchange step by step (discovery, trust rules, /token, /exchange/<cloud>, docker login at the
registry stand-ins) for each cloud's feed and an AWS account, and each failure named with its fix.

The local mode runs examples/local.yaml plus a target whose role trusts another subject (the
cloud's refusal, as tests/integration/test_exchange_aws.py provokes AccessDenied) and one in an
account without the broker's OIDC provider.
"""

from __future__ import annotations

import argparse
import io
import json

import boto3
import pytest
from localmode import ROOT, start_recorded, stop_local
from oidc_broker_cli import doctor
from oidc_broker_cli.deployment import RECORD_ENV

WRONG_TARGETS = """
      - name: other-team
        kind: account
        provider: aws
        aws: {role_arn: "arn:aws:iam::123456789012:role/other-team", region: us-east-1}
      - name: foreign
        kind: account
        provider: aws
        aws: {role_arn: "arn:aws:iam::210987654321:role/deploy", region: us-east-1}
"""
STEPS = ["deployment", "discovery", "target", "token", "cloud", "registry"]


@pytest.fixture(scope="module")
def mode(tmp_path_factory):
    text = (ROOT / "examples" / "local.yaml").read_text()
    assert text.count("    targets:\n") == 1 and text.count("targets: [prod-ecr, ") == 1
    text = text.replace("    targets:\n", "    targets:" + WRONG_TARGETS, 1)
    text = text.replace("targets: [prod-ecr, ", "targets: [other-team, foreign, prod-ecr, ")
    directory = tmp_path_factory.mktemp("doctor")
    (directory / "broker.yaml").write_text(text)
    local = start_recorded(directory, "--config", str(directory / "broker.yaml"))
    # The role of other-team trusts another subject than the one the broker mints for it.
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=local.aws_endpoint,
                       aws_access_key_id="local", aws_secret_access_key="local")
    document = iam.get_role(RoleName="other-team")["Role"]["AssumeRolePolicyDocument"]
    host = local.base_url.removeprefix("http://")
    document["Statement"][0]["Condition"]["StringLike"][f"{host}:sub"] = "space:default:account:someone-else"
    iam.update_assume_role_policy(RoleName="other-team", PolicyDocument=json.dumps(document))
    yield local
    stop_local(local)


def run(mode, monkeypatch, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    """`oidc-broker doctor ARGV` in this process, finding local mode by its record as the CLI does."""
    monkeypatch.setenv(RECORD_ENV, str(mode.record))
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser(prog="oidc-broker")
    doctor.add_parser(parser.add_subparsers(dest="command", required=True), lambda args: 0)
    args = parser.parse_args(["doctor", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = doctor.run(args, lambda: ROOT, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


def steps(mode, monkeypatch, *argv: str, stdin: str = "") -> tuple[int, list[dict]]:
    code, out, err = run(mode, monkeypatch, *argv, "--output", "json", stdin=stdin)
    assert err == "", err
    return code, json.loads(out)


def verdicts(report: list[dict]) -> list[tuple[str, bool | None]]:
    return [(s["step"], s["ok"]) for s in report]


# -- the happy paths -----------------------------------------------------------------------------

@pytest.mark.parametrize("target, cloud, host", [
    ("default/prod-ecr", "aws", "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
    ("default/prod-acr", "azure", "acme.azurecr.io"),
    ("default/prod-gar", "gcp", "europe-docker.pkg.dev"),
])
def test_a_feed_is_exchanged_and_logged_in_to_at_its_registry_stand_in(mode, monkeypatch, target, cloud, host):
    code, report = steps(mode, monkeypatch, target)
    assert code == 0, report
    assert verdicts(report) == [(s, True) for s in STEPS]
    by = {s["step"]: s for s in report}
    assert "local mode" in by["discovery"]["detail"] and "a real cloud cannot reach it" in by["discovery"]["detail"]
    assert "admitted by rule app-main" in by["target"]["detail"]
    assert f"sub 'space:default:feed:{target.split('/')[1]}'" in by["token"]["detail"]
    assert f"{cloud} accepted" in by["cloud"]["detail"] and "password (set)" in by["cloud"]["detail"]
    assert f"docker login to {host}" in by["registry"]["detail"] and "succeeded" in by["registry"]["detail"]
    assert all(s["fix"] == "" for s in report)


def test_an_aws_account_target_is_exchanged_and_has_no_registry_step(mode, monkeypatch):
    code, out, _ = run(mode, monkeypatch, "default/prod-deploy", "--claims", '{"environment": "production"}')
    assert code == 0, out
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "deployment"], ["ok", "discovery"], ["ok", "target"], ["ok", "token"], ["ok", "cloud"], ["skip", "registry"]]
    assert "sub 'space:default:environment:production:account:prod-deploy'" in out
    assert "access_key_id" in out and "secret_access_key (set)" in out and "session_token (set)" in out
    assert "not a feed" in lines[-1]


def test_a_target_with_no_registry_stand_in_skips_the_registry_saying_why(mode, monkeypatch):
    code, report = steps(mode, monkeypatch, "default/prod-public")
    assert code == 0, report
    assert report[-1]["step"] == "registry" and report[-1]["ok"] is None
    assert "no registry stand-in for public.ecr.aws" in report[-1]["detail"]


def test_no_secret_is_printed(mode, monkeypatch):
    """What the cloud returned is named, never shown: the password differs from every word printed."""
    _, out, _ = run(mode, monkeypatch, "default/prod-ecr")
    answer = mode.http.post("/exchange/aws", json={"target": "default/prod-ecr"},
                            headers={"Authorization": f"Bearer {mode.ci_token(repository='acme/app')}"}).json()
    assert answer["password"] not in out and "eyJ" not in out


# -- a real CI token ------------------------------------------------------------------------------

def test_a_real_token_is_spent_by_the_token_step_so_the_cloud_step_says_skip_mint(mode, monkeypatch):
    code, report = steps(mode, monkeypatch, "default/prod-ecr", "--token", "-", stdin=mode.ci_token() + "\n")
    assert code == 0, report
    assert verdicts(report)[-2:] == [("token", True), ("cloud", None)]
    assert "spent by step 4" in report[-1]["detail"] and "--skip-mint" in report[-1]["detail"]


def test_a_real_token_with_skip_mint_tests_the_cloud(mode, monkeypatch, tmp_path):
    (tmp_path / "ci.jwt").write_text(mode.ci_token())
    code, report = steps(mode, monkeypatch, "default/prod-acr", "--token-file", str(tmp_path / "ci.jwt"), "--skip-mint")
    assert code == 0, report
    assert verdicts(report) == [("deployment", True), ("discovery", True), ("target", True), ("token", None),
                                ("cloud", True), ("registry", True)]


def test_a_real_token_used_before_is_refused_with_its_fix(mode, monkeypatch):
    token = mode.ci_token()
    assert mode.exchange(token, "default/prod-ecr").status_code == 200
    code, report = steps(mode, monkeypatch, "default/prod-ecr", "--token", "-", "--skip-mint", stdin=token)
    assert code == 1
    assert report[-1]["step"] == "cloud" and report[-1]["ok"] is False
    assert "already used" in report[-1]["detail"] and "once per target" in report[-1]["fix"]


# -- failures, each with its fix -----------------------------------------------------------------

def test_an_unknown_target_fails_naming_the_targets_there_are(mode, monkeypatch):
    code, out, _ = run(mode, monkeypatch, "default/nope")
    assert code == 1
    assert "FAIL  target" in out and "default/nope is not a target" in out and "default/prod-ecr" in out
    assert "fix: " in out and "oidc-broker apply FILE" in out
    assert out.splitlines()[-2].startswith("FAIL  target") and out.count("\n") == 4  # nothing after the failure


def test_claims_no_rule_admits_fail_naming_the_rule_the_claim_and_explain(mode, monkeypatch):
    code, report = steps(mode, monkeypatch, "default/prod-ecr", "--claims", '{"ref": "refs/heads/dev"}')
    assert code == 1
    failed = report[-1]
    assert failed["step"] == "target" and failed["ok"] is False
    assert "rule app-main" in failed["detail"] and "claim ref" in failed["detail"]
    assert "'refs/heads/dev'" in failed["detail"] and "refs/heads/main" in failed["detail"]
    assert "oidc-broker explain --target default/prod-ecr" in failed["fix"]


def test_a_role_that_does_not_trust_the_subject_names_trust_policy(mode, monkeypatch):
    code, report = steps(mode, monkeypatch, "default/other-team")
    assert code == 1
    assert verdicts(report) == [("deployment", True), ("discovery", True), ("target", True), ("token", True),
                                ("cloud", False)]
    failed = report[-1]
    assert "access_denied" in failed["detail"] and "arn:aws:iam::123456789012:role/other-team" in failed["detail"]
    assert "oidc-broker trust-policy aws --target default/other-team" in failed["fix"]


def test_an_account_without_the_broker_as_oidc_provider_names_registering_the_issuer(mode, monkeypatch):
    code, report = steps(mode, monkeypatch, "default/foreign")
    assert code == 1
    failed = report[-1]
    assert failed["step"] == "cloud" and "cloud_error" in failed["detail"]
    assert mode.base_url in failed["fix"] and "trust-policy aws --target default/foreign" in failed["fix"]


# -- usage ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["prod-ecr"], "is not <space>/<target>"),
    (["default/prod-ecr", "--claims", "{"], "--claims is not JSON"),
    (["default/prod-ecr", "--claims", "[]"], "--claims takes a JSON object"),
    (["default/prod-ecr", "--token", "eyJhbGciOi.x.y"], "--token takes only '-'"),
    (["default/prod-ecr", "--token-file", "/nonexistent/ci.jwt"], "cannot read the CI token"),
    (["default/prod-ecr", "--token", "-"], "no CI token in standard input"),
    (["default/prod-ecr", "--region", "us-east-1"], "give --stack NAME too"),
])
def test_usage_errors_are_one_line_and_exit_2(mode, monkeypatch, argv, says):
    code, out, err = run(mode, monkeypatch, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("oidc-broker doctor: ") and says in err


def test_no_local_mode_and_no_stack_is_exit_2(mode, monkeypatch, tmp_path):
    monkeypatch.setattr(mode, "record", tmp_path / "none.json")
    code, out, err = run(mode, monkeypatch, "default/prod-ecr")
    assert code == 2 and out == "" and "local mode is not running" in err and "--stack NAME" in err


def test_a_stack_that_cannot_be_described_is_one_line_exit_2(mode, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _, err = run(mode, monkeypatch, "default/prod-ecr", "--stack", "oidc-broker")
    assert code == 2 and err.count("\n") == 1
    assert "cannot describe stack oidc-broker" in err and "--region" in err


def test_a_url_where_nothing_answers_fails_discovery_with_its_fix(mode, monkeypatch, tmp_path):
    monkeypatch.setattr(mode, "record", tmp_path / "none.json")
    code, report = steps(mode, monkeypatch, "default/prod-ecr", "--url", "http://127.0.0.1:9", "--token", "-",
                         stdin=mode.ci_token())
    assert code == 1
    assert verdicts(report) == [("deployment", True), ("discovery", False)]
    assert "connection refused" in report[-1]["detail"] and "start local mode" in report[-1]["fix"]
