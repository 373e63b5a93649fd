"""oidc_broker_cli/targets.py: `oidc-broker targets list` and `oidc-broker preview-subject` against a
configuration file, a stack's applied configuration (moto's server) and a running local mode (its
record), and the one-line refusals of a user's mistakes."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from oidc_broker.store import Store
from oidc_broker_cli.local import free_port
from oidc_broker_cli.targets import add_parsers, run

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from localmode import start_recorded, stop_local  # noqa: E402

NOW = 1_800_000_000
CONFIG = """
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
        refresh: true
        aws: {role_arn: "arn:aws:iam::123456789012:role/pull", region: us-east-1}
      - name: prod-deploy
        kind: account
        provider: aws
        subject: [space, environment, account]
        lifetime: 15m
        aws: {role_arn: "arn:aws:iam::123456789012:role/deploy"}
      - name: prod-acr
        kind: feed
        provider: azure
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 66666666-7777-8888-9999-000000000000,
                registry: acme.azurecr.io}
      - name: prod-gar
        kind: feed
        provider: gcp
        subject: [space, project, environment, feed]
        gcp:
          workload_identity_provider: projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/broker
          registry: europe-docker.pkg.dev
      - name: orphan
        kind: feed
        provider: aws
    trust:
      - name: app-main
        issuer: github
        claims: {repository_owner_id: "7", repository: acme/app, ref: refs/heads/main}
        targets: [prod-ecr, prod-acr]
      - name: app-deploy
        issuer: github
        claims: {repository_owner_id: "7", repository: acme/app, environment: [production, staging]}
        targets: [prod-deploy]
        context: {environment: {claim: environment}}
      - name: gar
        issuer: github
        claims: {repository_owner_id: "7", repository: acme/app}
        targets: [prod-gar]
        context: {project: {claim: project}, environment: {claim: environment}}
  - name: other
    targets:
      - name: images
        kind: feed
        provider: aws
"""
DEPLOY = {"repository_owner_id": "7", "repository": "acme/app", "environment": "production",
          "sub": "repo:acme/app:environment:production"}


def command(argv: list[str], *, stdin: str = "", root: Path | None = None) -> tuple[int, str, str]:
    """Parse argv as `oidc-broker` would with these commands, run it; (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="oidc-broker")
    add_parsers(parser.add_subparsers(dest="command", required=True), run)
    out, err = io.StringIO(), io.StringIO()
    code = run(parser.parse_args(argv), (lambda: root) if root else None, stdout=out, stderr=err,
               stdin=io.StringIO(stdin), clock=lambda: NOW)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(CONFIG)
    return path


def one_line(err: str) -> str:
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err.strip()


# -- targets list ---------------------------------------------------------------------------------

def test_targets_list_shows_every_target_with_its_subject_lifetime_refresh_and_rules(config_file):
    code, out, err = command(["targets", "list", "--config", str(config_file), "--output", "json"])
    assert (code, err) == (0, "")
    rows = {r["target"]: r for r in json.loads(out)}
    assert list(rows) == ["default/prod-ecr", "default/prod-deploy", "default/prod-acr", "default/prod-gar",
                          "default/orphan", "other/images"]
    assert rows["default/prod-ecr"] == {
        "target": "default/prod-ecr", "kind": "feed", "provider": "aws", "audience": "sts.amazonaws.com",
        "subjects": ["space:default:feed:prod-ecr"], "lifetime": 600, "refresh": True, "rules": ["app-main"]}
    assert rows["default/prod-deploy"]["subjects"] == ["space:default:environment:<claim environment>:account:prod-deploy"]
    assert rows["default/prod-deploy"]["lifetime"] == 900
    assert rows["default/prod-acr"]["audience"] == "api://AzureADTokenExchange"
    assert rows["default/prod-gar"]["subjects"] == [
        "space:default:project:<claim project>:environment:<claim environment>:feed:prod-gar"]
    assert rows["default/orphan"]["rules"] == []


def test_targets_list_as_text_is_an_aligned_table(config_file):
    code, out, _ = command(["targets", "list", "--config", str(config_file)])
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["TARGET", "KIND", "PROVIDER", "AUDIENCE", "SUBJECT", "LIFETIME", "REFRESH", "TRUST",
                                "RULES"]
    assert len(lines) == 7
    column = lines[0].index("SUBJECT")
    assert all(line[column - 2:column] == "  " for line in lines)  # every row's subject starts in one column
    assert re.search(r"space:default:environment:<claim environment>:account:prod-deploy +900s ", out)
    assert "(none: no one is admitted)" in lines[5]


def test_targets_list_of_one_space_and_of_a_configuration_read_from_stdin():
    code, out, _ = command(["targets", "list", "--space", "other", "--config", "-", "--output", "json"], stdin=CONFIG)
    assert code == 0
    assert [r["target"] for r in json.loads(out)] == ["other/images"]


def test_targets_list_of_an_unknown_space_is_one_line_and_exit_2(config_file):
    code, out, err = command(["targets", "list", "--space", "nope", "--config", str(config_file)])
    assert (code, out) == (2, "")
    assert one_line(err) == "oidc-broker targets list: no space 'nope' in this configuration; spaces: default, other"


# -- preview-subject -------------------------------------------------------------------------------

def test_preview_fills_the_claim_valued_subject_part_and_shows_the_exact_sub_aud_and_claims(config_file):
    code, out, err = command(["preview-subject", "default/prod-deploy", "--config", str(config_file),
                              "--claims", json.dumps(DEPLOY), "--output", "json"])
    assert (code, err) == (0, ""), out
    result = json.loads(out)
    assert result["sub"] == "space:default:environment:production:account:prod-deploy"
    assert result["aud"] == "sts.amazonaws.com"
    assert result["rule"] == "app-deploy" and result["ok"] and result["reason"] is None
    claims = result["claims"]
    assert {k: claims[k] for k in ("iss", "sub", "aud", "space", "environment", "account", "iat", "exp")} == {
        "iss": "https://id.example.com", "sub": result["sub"], "aud": "sts.amazonaws.com", "space": "default",
        "environment": "production", "account": "prod-deploy", "iat": NOW, "exp": NOW + 900}
    assert claims["act"] == {"iss": "https://token.actions.githubusercontent.com", "sub": DEPLOY["sub"]}
    limits = {(c["cloud"], c["check"]): c for c in result["limits"]}
    assert limits[("aws", "subject bytes")]["ok"] and limits[("aws", "subject bytes")]["decides"]
    assert "at most 255" in limits[("aws", "subject bytes")]["detail"]
    assert "at most 127" in limits[("gcp", "subject bytes")]["detail"] and not limits[("gcp", "subject bytes")]["decides"]
    assert limits[("kms", "signing input")]["ok"]


def test_preview_as_text_says_each_verdict(config_file):
    code, out, _ = command(["preview-subject", "default/prod-deploy", "--config", str(config_file),
                            "--claims", json.dumps(DEPLOY)])
    assert code == 0
    assert "sub      space:default:environment:production:account:prod-deploy" in out
    assert "rule     app-deploy: ADMITS" in out
    assert out.splitlines()[-1] == "verdict  could be minted, and fits every limit"


def test_claims_the_rule_refuses_are_a_verdict_of_no_with_the_check_that_failed(config_file):
    claims = {**DEPLOY, "environment": "qa"}
    code, out, err = command(["preview-subject", "default/prod-deploy", "--config", str(config_file),
                              "--claims", json.dumps(claims), "--output", "json"])
    assert (code, err) == (1, "")
    result = json.loads(out)
    assert result["reason"] == ("rule app-deploy refuses: claim environment: rule expects any of 'production', "
                                "'staging'; the claims have 'qa'")
    assert result["sub"] == "space:default:environment:qa:account:prod-deploy"  # what it would be, were it admitted


def test_a_claim_value_that_is_not_a_slug_cannot_be_minted(config_file):
    claims = {"repository_owner_id": "7", "repository": "acme/app", "project": "Acme", "environment": "prod"}
    code, out, _ = command(["preview-subject", "default/prod-gar", "--rule", "gar", "--config", str(config_file),
                            "--claims", json.dumps(claims)])
    assert code == 1
    assert "rule     gar: ADMITS" in out
    assert out.splitlines()[-1] == "verdict  NO: claim 'project' for subject key 'project' is not a slug"


def test_a_subject_longer_than_googles_127_bytes_is_refused_for_a_google_target(config_file):
    claims = {"repository_owner_id": "7", "repository": "acme/app", "project": "p" * 63, "environment": "e" * 40}
    code, out, _ = command(["preview-subject", "default/prod-gar", "--config", str(config_file),
                            "--claims", json.dumps(claims), "--output", "json"])
    result = json.loads(out)
    assert code == 1
    size = len(result["sub"].encode())
    assert 127 < size <= 255
    limits = {c["cloud"]: c for c in result["limits"] if c["check"] == "subject bytes"}
    assert not limits["gcp"]["ok"] and limits["aws"]["ok"]
    assert result["reason"] == f"subject is {size} bytes; gcp targets allow at most 127"


def test_an_azure_target_names_its_exact_subject_and_entras_count_of_federated_credentials(config_file):
    code, out, _ = command(["preview-subject", "default/prod-acr", "--config", str(config_file), "--output", "json"])
    result = json.loads(out)
    assert code == 0 and result["claims_judged"] is False and result["rule"] == "app-main"
    entra = next(c for c in result["limits"] if c["check"] == "federated credentials")
    assert entra["ok"] and entra["decides"]
    assert entra["detail"] == ("a federated credential with exactly subject space:default:feed:prod-acr; app "
                               "66666666-7777-8888-9999-000000000000 in tenant 11111111-2222-3333-4444-555555555555 "
                               "needs 1 of the 20 Entra allows")


def test_a_caller_sub_too_long_for_kms_to_sign_is_a_verdict_of_no(config_file):
    claims = {**DEPLOY, "sub": "repo:" + "a" * 3500}
    code, out, _ = command(["preview-subject", "default/prod-deploy", "--config", str(config_file),
                            "--claims", json.dumps(claims), "--output", "json"])
    result = json.loads(out)
    assert code == 1
    assert result["reason"].startswith("kms signing input: ") and "KMS signs at most 4096" in result["reason"]


def test_only_one_of_config_and_claims_reads_standard_input():
    code, out, err = command(["preview-subject", "default/prod-ecr", "--config", "-", "--claims", "-"], stdin=CONFIG)
    assert (code, out) == (2, "")
    assert one_line(err) == "oidc-broker preview-subject: only one of --config and --claims can read standard input"


def test_a_target_no_rule_admits_to_is_a_verdict_of_no(config_file):
    code, out, _ = command(["preview-subject", "default/orphan", "--config", str(config_file)])
    assert code == 1
    assert out.splitlines()[-1] == "verdict  NO: no trust rule admits anyone to default/orphan"


def test_a_claim_valued_part_without_claims_asks_for_them(config_file):
    code, out, err = command(["preview-subject", "default/prod-deploy", "--config", str(config_file)])
    assert (code, out) == (2, "")
    assert one_line(err) == ("oidc-broker preview-subject: rule app-deploy takes 'environment' (subject key "
                             "'environment') from the caller's claims: give them with --claims JSON")


def test_claims_read_from_standard_input(config_file):
    code, out, _ = command(["preview-subject", "default/prod-deploy", "--config", str(config_file), "--claims", "-",
                            "--output", "json"], stdin=json.dumps(DEPLOY))
    assert code == 0 and json.loads(out)["sub"] == "space:default:environment:production:account:prod-deploy"


@pytest.mark.parametrize("argv,says", [
    (["default/nope"], "'default/nope' is not a <space>/<target> of this configuration"),
    (["nope"], "'nope' is not a <space>/<target> of this configuration"),
    (["default/prod-ecr", "--claims", "{\"ref\": "], "--claims is not JSON"),
    (["default/prod-ecr", "--claims", "[\"ref\"]"], "--claims must be a JSON object"),
    (["default/prod-ecr", "--claims", "\"main\""], "--claims must be a JSON object"),
    (["default/prod-ecr", "--claims", "{\"a\": " + "[" * 40 + "]" * 40 + "}"], "--claims is nested deeper than 32"),
    (["default/prod-ecr", "--claims", "[" * 100000 + "]" * 100000], "--claims is nested deeper than 32"),
    (["default/prod-ecr", "--claims", "{\"ref\": 1, \"ref\": 2}"], "--claims is not JSON (duplicate member"),
    (["default/prod-ecr", "--rule", "nope"], "no trust rule 'nope' in space 'default'; its rules: app-main"),
])
def test_a_mistake_is_one_line_and_exit_2(config_file, argv, says):
    code, out, err = command(["preview-subject", *argv[:1], "--config", str(config_file), *argv[1:]])
    assert (code, out) == (2, "")
    assert one_line(err).startswith(f"oidc-broker preview-subject: {says}")


@pytest.mark.parametrize("argv,says", [
    (["--config", "/nonexistent/broker.yaml"], "oidc-broker targets list: /nonexistent/broker.yaml: cannot read"),
    (["--config", "-"], "oidc-broker targets list: <stdin>: not valid YAML: line 1, column 5: expected the node content"),
    (["--config", "x.yaml", "--stack", "broker"], "oidc-broker targets list: --config names the configuration"),
])
def test_a_configuration_that_cannot_be_read_is_one_line_and_exit_2(argv, says):
    code, out, err = command(["targets", "list", *argv], stdin="a: [")
    assert (code, out) == (2, "")
    assert one_line(err).startswith(says)


def test_an_invalid_configuration_names_each_problem_and_exits_2(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(CONFIG.replace("kind: account", "kind: bucket"))
    code, out, err = command(["targets", "list", "--config", str(path)])
    assert (code, out) == (2, "")
    assert "Traceback" not in err
    assert f"{path}: spaces[0].targets[1].kind: must be one of feed, account" in err


def test_without_a_configuration_or_a_running_local_mode_it_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("OIDC_BROKER_LOCAL_RECORD", str(tmp_path / "local.json"))
    code, out, err = command(["preview-subject", "default/prod-ecr"], root=tmp_path)
    assert (code, out) == (2, "")
    assert one_line(err).startswith("oidc-broker preview-subject: local mode is not running")


# -- a stack's applied configuration (moto's server) -----------------------------------------------

@pytest.fixture(scope="module")
def stack():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as environment:
        for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t")):
            environment.setenv(name, value)
        yield from _stack()
    server.stop()


def _stack():
    db = boto3.client("dynamodb", region_name="us-east-1")
    db.create_table(TableName="broker-table", BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                          {"AttributeName": "sk", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
    import yaml

    Store(db, "broker-table").put_config(yaml.safe_load(CONFIG), "broker.yaml", NOW)
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    for name, table in (("targets-broker", "broker-table"), ("targets-empty", "no-such-table")):
        cfn.create_stack(StackName=name, TemplateBody=json.dumps({
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {"TableName": {"Value": table}, "IssuerUrl": {"Value": "https://id.example.com"}}}))
    yield


def test_the_applied_configuration_of_a_stack_is_read_through_its_table_name_output(stack):
    code, out, err = command(["targets", "list", "--stack", "targets-broker", "--region", "us-east-1", "--output", "json"])
    assert (code, err) == (0, "")
    assert len(json.loads(out)) == 6
    code, out, _ = command(["preview-subject", "default/prod-deploy", "--stack", "targets-broker", "--region", "us-east-1",
                            "--claims", json.dumps(DEPLOY), "--output", "json"])
    assert code == 0 and json.loads(out)["sub"] == "space:default:environment:production:account:prod-deploy"


def test_the_applied_configuration_of_a_table_named_by_table_is_read(stack):
    code, out, err = command(["targets", "list", "--table", "broker-table", "--region", "us-east-1", "--output", "json"])
    assert (code, err) == (0, "")
    assert len(json.loads(out)) == 6
    code, _, err = command(["targets", "list", "--table", "broker-table", "--config", "x.yaml"])
    assert code == 2 and one_line(err).startswith("oidc-broker targets list: --config names the configuration")


def test_a_stack_whose_table_cannot_be_read_or_that_does_not_exist_is_one_line(stack):
    code, _, err = command(["targets", "list", "--stack", "targets-empty", "--region", "us-east-1"])
    assert code == 2
    assert one_line(err).startswith("oidc-broker targets list: cannot read the configuration from table no-such-table "
                                    "of stack targets-empty: ")
    code, _, err = command(["targets", "list", "--stack", "nope", "--region", "us-east-1"])
    assert code == 2
    assert one_line(err).startswith("oidc-broker targets list: cannot describe stack nope: ValidationError")


# -- the running local mode (its record) -----------------------------------------------------------

@pytest.fixture(scope="module")
def local(tmp_path_factory):
    mode = start_recorded(tmp_path_factory.mktemp("targets"))
    yield mode
    stop_local(mode)


def test_targets_list_without_a_deployment_reads_the_running_local_modes_configuration(local, monkeypatch):
    monkeypatch.setenv("OIDC_BROKER_LOCAL_RECORD", str(local.record))
    code, out, err = command(["targets", "list", "--output", "json"], root=ROOT)
    assert (code, err) == (0, "")
    rows = {r["target"]: r for r in json.loads(out)}
    assert set(rows) == {"default/prod-ecr", "default/prod-public", "default/prod-deploy", "default/prod-acr",
                         "default/prod-gar"}
    assert rows["default/prod-deploy"]["subjects"] == ["space:default:environment:<claim environment>:account:prod-deploy"]


def test_preview_subject_in_local_mode_is_the_subject_local_mode_mints(local, monkeypatch):
    monkeypatch.setenv("OIDC_BROKER_LOCAL_RECORD", str(local.record))
    claims = {"repository": "acme/app", "repository_id": "100200300", "ref": "refs/heads/main",
              "environment": "production"}
    code, out, err = command(["preview-subject", "default/prod-deploy", "--claims", json.dumps(claims), "--output",
                              "json"], root=ROOT)
    assert (code, err) == (0, ""), out
    result = json.loads(out)
    assert result["claims"]["iss"] == local.base_url
    # The same subject local mode's token endpoint mints for a CI token with these claims.
    response = local.exchange(local.ci_token(**claims), audience="default/prod-deploy")
    assert response.status_code == 200, response.text
    import base64

    minted = response.json()["access_token"].split(".")[1]
    minted_claims = json.loads(base64.urlsafe_b64decode(minted + "=" * (-len(minted) % 4)))
    assert minted_claims["sub"] == result["sub"] and minted_claims["aud"] == result["aud"]
    assert {k: v for k, v in minted_claims.items() if k not in ("iat", "nbf", "exp", "jti", "act")} == \
           {k: v for k, v in result["claims"].items() if k not in ("iat", "nbf", "exp", "jti", "act")}


def test_preview_subject_in_local_mode_of_an_unknown_target_is_one_line(local, monkeypatch):
    monkeypatch.setenv("OIDC_BROKER_LOCAL_RECORD", str(local.record))
    code, out, err = command(["preview-subject", "default/nope", "--claims", "{}"], root=ROOT)
    assert (code, out) == (2, "")
    assert one_line(err).startswith("oidc-broker preview-subject: 'default/nope' is not a <space>/<target>")
