"""`oidc-broker validate` and `apply` against a table in moto's server, as an operator runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from localmode import GOOD, ONE_FEED
from oidc_broker.store import Store
from oidc_broker_cli.local import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def aws():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="t", AWS_SECRET_ACCESS_KEY="t",
               AWS_DEFAULT_REGION="us-east-1", TABLE_NAME="broker")
    client = boto3.client("dynamodb", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="t", aws_secret_access_key="t")
    client.create_table(TableName="broker", BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}])
    # What the stack's key ring custom resource records at every deploy: the deployment's issuer.
    client.put_item(TableName="broker", Item={"pk": {"S": "DEPLOYMENT"}, "sk": {"S": "CURRENT"},
                                              "issuer": {"S": "https://id.example.com"}, "recorded_at": {"N": "1"}})
    yield env, client
    server.stop()


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def stored(client):
    return client.get_item(TableName="broker", Key={"pk": {"S": "CONFIG"}, "sk": {"S": "CURRENT"}}).get("Item")


def test_validate_accepts_a_good_file(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD)
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "valid (1 spaces, 1 targets, 1 trust rules)" in result.stdout


def test_validate_names_the_file_the_path_and_the_rule(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace("name: prod-ecr", "name: Prod_ECR"))
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 2
    assert f"{path}: spaces[0].targets[0].name: must be a slug" in result.stderr


def test_validate_refuses_duplicate_yaml_keys(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD + "issuer: https://other.example.com\n")
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 2
    assert "duplicate key 'issuer'" in result.stderr


def test_apply_writes_a_valid_file(aws, tmp_path):
    env, client = aws
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD)
    result = cli(env, "apply", str(path))
    assert result.returncode == 0, result.stderr
    assert Store(client, "broker").get_config()["document"]["issuer"] == "https://id.example.com"


def test_apply_writes_nothing_when_anything_is_invalid(aws, tmp_path):
    env, client = aws
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert cli(env, "apply", str(path)).returncode == 0
    before = stored(client)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("targets: [prod-ecr]", "targets: [prod-ecr, nope]").replace("issuer: https://id.example.com", "issuer: http://id.example.com"))
    result = cli(env, "apply", str(bad))
    assert result.returncode == 2
    assert "issuer: must start with https://" in result.stderr
    assert "trust[0].targets[1]: 'nope' is not a target" in result.stderr
    assert "nothing was written" in result.stderr
    assert stored(client) == before


# The deployment's issuer checks use a file of their own, valid on every other count.
DEPLOYED = ONE_FEED


def test_apply_refuses_a_configuration_naming_another_issuer_than_the_deployments(aws, tmp_path):
    env, client = aws
    good = tmp_path / "good.yaml"
    good.write_text(DEPLOYED)
    assert cli(env, "apply", str(good)).returncode == 0
    before = stored(client)
    path = tmp_path / "broker.yaml"
    path.write_text(DEPLOYED.replace("issuer: https://id.example.com", "issuer: https://elsewhere.example.com"))
    result = cli(env, "apply", str(path))
    assert result.returncode == 2
    assert (f"{path}: issuer: is https://elsewhere.example.com, but this deployment's issuer is "
            "https://id.example.com") in result.stderr
    assert "nothing was written" in result.stderr
    assert stored(client) == before


def test_apply_refuses_a_stated_issuer_the_deployment_contradicts(aws, tmp_path):
    env, client = aws
    before = stored(client)
    path = tmp_path / "broker.yaml"
    path.write_text(DEPLOYED.replace("issuer: https://id.example.com", "issuer: https://elsewhere.example.com"))
    result = cli(env, "apply", str(path), "--issuer", "https://elsewhere.example.com")
    assert result.returncode == 2
    assert "--issuer is https://elsewhere.example.com, but this deployment's issuer is https://id.example.com" in result.stderr
    assert stored(client) == before


def test_apply_to_a_stack_that_records_no_issuer_needs_it_stated(aws, tmp_path):
    env, client = aws
    client.create_table(TableName="older", BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}])
    config = {"TableName": "older", "Key": {"pk": {"S": "CONFIG"}, "sk": {"S": "CURRENT"}}}
    path = tmp_path / "broker.yaml"
    path.write_text(DEPLOYED)
    result = cli(env, "apply", str(path), "--table", "older")
    assert result.returncode == 2
    assert "redeploy the stack, or state it with --issuer URL" in result.stderr
    assert "Item" not in client.get_item(**config)
    result = cli(env, "apply", str(path), "--table", "older", "--issuer", "https://other.example.com")
    assert result.returncode == 2
    assert "issuer: is https://id.example.com, but this deployment's issuer is https://other.example.com" in result.stderr
    assert "Item" not in client.get_item(**config)
    result = cli(env, "apply", str(path), "--table", "older", "--issuer", "https://id.example.com")
    assert result.returncode == 0, result.stderr
    assert "Item" in client.get_item(**config)


def test_apply_reports_a_missing_table_in_one_line(aws, tmp_path):
    env, _ = aws
    path = tmp_path / "broker.yaml"
    path.write_text(DEPLOYED)
    result = cli(env, "apply", str(path), "--table", "no-such-table")
    assert result.returncode == 2
    assert "oidc-broker apply: no-such-table:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["explain", "--target", "a/b", "x.y.z"], ["trust-policy", "aws", "--target", "a/b"],
                                     ["keys", "jwks"]])
def test_commands_reading_the_table_report_no_region_in_one_line(command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = cli(env, *command, "--table", "some-table")
    assert result.returncode == 2
    assert "cannot read the configuration from table some-table" in result.stderr
    assert "Traceback" not in result.stderr


def test_apply_refuses_loopback_http_issuers_outside_local_mode(aws, tmp_path):
    env, _ = aws
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace("https://id.example.com", "http://127.0.0.1:3000"))
    result = cli(env, "apply", str(path))
    assert result.returncode == 2
    assert "only for loopback hosts in local mode" in result.stderr


def test_decode_prints_header_and_claims():
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzcGFjZTpkZWZhdWx0OmZlZWQ6cHJvZC1lY3IifQ.c2ln"
    result = cli(os.environ.copy(), "decode", token)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"header": {"alg": "RS256"}, "claims": {"sub": "space:default:feed:prod-ecr"}}


def test_apply_warns_when_a_rule_matches_only_a_mutable_name(aws, tmp_path):
    env, _ = aws
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD)
    result = cli(env, "apply", str(path))
    assert result.returncode == 0
    assert "warning:" in result.stderr
    assert "trust[0].claims.repository: matches a name that can change hands; also match 'repository_id'" in result.stderr


def test_validate_warns_about_a_claim_the_issuer_never_sends(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace("ref: refs/heads/main}", "ref: refs/heads/main, repo_id: '1'}"))
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 0
    assert "GitHub Actions tokens carry no 'repo_id' claim" in result.stderr


def test_validate_refuses_a_rule_without_claim_conditions(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace('claims: {repository_owner_id: "7", repository: acme/app, ref: refs/heads/main}', "claims: {}"))
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 2
    assert "trust[0].claims: must be a mapping with at least one claim condition" in result.stderr


@pytest.mark.parametrize("claims", ["{event_name: push}", "{environment: production}", '{ref_protected: "true"}',
                                    '{job_workflow_ref: "*/*/.github/workflows/deploy.yml@refs/heads/main"}',
                                    '{repository_owner_id: "7*", repository: acme/app}'])
def test_validate_refuses_a_rule_that_admits_every_github_customer(tmp_path, claims):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace('{repository_owner_id: "7", repository: acme/app, ref: refs/heads/main}', claims))
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 2
    assert "trust[0].claims: pins no tenant, so it admits any GitHub Actions customer's pipelines" in result.stderr
    assert "match 'repository_id' or 'repository_owner_id' with exact values" in result.stderr


def test_validate_accepts_an_unpinned_rule_on_a_single_tenant_issuer(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace("issuer: https://token.actions.githubusercontent.com",
                                 "issuer: https://ghes.example.com/_services/token\n    single_tenant: true")
                        .replace('{repository_owner_id: "7", repository: acme/app, ref: refs/heads/main}',
                                 "{environment: production}"))
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 0, result.stderr


def test_validate_warns_about_a_glob_that_cannot_cross_a_slash(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace("ref: refs/heads/main}", "ref: 'refs/heads/*'}"))
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 0, result.stderr
    assert ("claims.ref: '*' never matches '/' or ':', so 'refs/heads/*' matches 'refs/heads/main' "
            "but not 'refs/heads/feature/login'") in result.stderr


def test_validate_refuses_a_numeric_id_github_sends_as_a_string(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD.replace("ref: refs/heads/main}", "ref: refs/heads/main, repository_id: 42}"))
    result = cli(os.environ.copy(), "validate", str(path))
    assert result.returncode == 2
    assert "claims.repository_id: GitHub Actions sends repository_id as a string: quote the value" in result.stderr


@pytest.fixture(scope="module")
def hostile():
    from hostile_issuer import HostileIssuer

    issuer = HostileIssuer()
    yield issuer
    issuer.stop()


def explain_config(tmp_path, hostile) -> Path:
    path = tmp_path / "explain.yaml"
    path.write_text(f"""
issuer: https://id.example.com
trusted_issuers:
  - {{name: gh, issuer: '{hostile.url("gh")}', preset: github}}
spaces:
  - name: default
    targets:
      - {{name: deploy, kind: account, provider: aws, subject: [space, environment, account]}}
    trust:
      - name: main
        issuer: gh
        claims: {{repository_id: "42", ref: refs/heads/main}}
        targets: [deploy]
        context: {{environment: {{claim: environment}}}}
""")
    return path


def test_explain_shows_each_check_and_what_would_be_minted(tmp_path, hostile):
    token = hostile.sign(hostile.claims("https://id.example.com", environment="production"))
    result = cli(os.environ.copy(), "explain", "--allow-loopback-http", "--config", str(explain_config(tmp_path, hostile)),
                 "--target", "default/deploy", token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signature  ok; time ok" in result.stdout
    assert "rule main: ADMITS" in result.stdout
    assert "claim repository_id" in result.stdout
    assert "would mint  sub 'space:default:environment:production:account:deploy'" in result.stdout
    assert "aud 'sts.amazonaws.com'" in result.stdout
    assert token not in result.stdout and token.split(".")[2] not in result.stdout


def test_explain_names_the_claim_that_fails(tmp_path, hostile):
    token = hostile.sign(hostile.claims("https://id.example.com", ref="refs/heads/dev", environment="production"))
    result = cli(os.environ.copy(), "explain", "--allow-loopback-http", "--config", str(explain_config(tmp_path, hostile)),
                 "--target", "default/deploy", token)
    assert result.returncode == 1
    assert "rule main: refuses" in result.stdout
    assert "FAIL  claim ref" in result.stdout and "token has 'refs/heads/dev'" in result.stdout
    assert "no trust rule admits this token to the target" in result.stdout


def test_explain_says_when_the_signature_does_not_verify(tmp_path, hostile):
    from cryptography.hazmat.primitives.asymmetric import rsa

    forged = hostile.sign(hostile.claims("https://id.example.com", environment="production"),
                          key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    result = cli(os.environ.copy(), "explain", "--allow-loopback-http", "--config", str(explain_config(tmp_path, hostile)),
                 "--target", "default/deploy", forged)
    assert result.returncode == 1
    assert "signature  FAIL: subject_token signature is not valid" in result.stdout
    assert "ADMITS" not in result.stdout and "would mint" not in result.stdout
    assert "rule main: claims match, but the token is not valid" in result.stdout


def test_explain_never_admits_an_expired_token_even_without_verifying(tmp_path, hostile):
    import time

    now = int(time.time())
    expired = hostile.sign(hostile.claims("https://id.example.com", environment="production",
                                          iat=now - 900, nbf=now - 900, exp=now - 600))
    result = cli(os.environ.copy(), "explain", "--no-verify", "--config", str(explain_config(tmp_path, hostile)),
                 "--allow-loopback-http", "--target", "default/deploy", expired)
    assert result.returncode == 1
    assert "time       FAIL: subject_token has expired" in result.stdout
    assert "ADMITS" not in result.stdout and "would mint" not in result.stdout
    assert "claims match, but the token is not valid" in result.stdout


def test_explain_without_verifying_is_not_a_success(tmp_path, hostile):
    token = hostile.sign(hostile.claims("https://id.example.com", environment="production"))
    result = cli(os.environ.copy(), "explain", "--no-verify", "--config", str(explain_config(tmp_path, hostile)),
                 "--allow-loopback-http", "--target", "default/deploy", token)
    assert result.returncode == 1
    assert "the signature was not verified" in result.stdout


def test_explain_exits_2_for_a_target_that_does_not_exist(tmp_path, hostile):
    token = hostile.sign(hostile.claims("https://id.example.com"))
    result = cli(os.environ.copy(), "explain", "--no-verify", "--config", str(explain_config(tmp_path, hostile)),
                 "--allow-loopback-http", "--target", "default/nope", token)
    assert result.returncode == 2


def test_explain_help_documents_its_exit_codes():
    result = cli(os.environ.copy(), "explain", "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout
    for code in ("  0  a trust rule admits", "  1  not admitted", "  2  usage or configuration error"):
        assert code in result.stdout


TRUST = GOOD.replace(
    """      - name: prod-ecr
        kind: feed""",
    """      - name: deploy
        kind: account
        provider: aws
        subject: [space, environment, account]
        aws: {role_arn: "arn:aws:iam::210987654321:role/deploy", region: us-east-1}
      - name: prod-ecr
        kind: feed""",
) + """      - name: deploy-main
        issuer: github
        claims: {repository_id: "1", ref: refs/heads/main}
        targets: [deploy]
        context: {environment: {claim: environment}}
      - name: deploy-staging
        issuer: github
        claims: {repository_id: "1"}
        targets: [deploy]
        context: {environment: staging}
"""


def test_trust_policy_prints_the_policy_for_every_subject_a_target_can_get(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(TRUST)
    result = cli(os.environ.copy(), "trust-policy", "aws", "--target", "default/deploy", "--config", str(path))
    assert result.returncode == 0, result.stderr
    (statement,) = json.loads(result.stdout)["Statement"]
    assert statement["Principal"] == {"Federated": "arn:aws:iam::210987654321:oidc-provider/id.example.com"}
    assert statement["Condition"]["StringEquals"] == {"id.example.com:aud": "sts.amazonaws.com"}
    assert statement["Condition"]["StringLike"]["id.example.com:sub"] == [
        "space:default:environment:*:account:deploy",
        "space:default:environment:staging:account:deploy",
    ]


def test_trust_policy_names_each_value_a_rule_pins_instead_of_a_star(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(TRUST.replace('claims: {repository_id: "1", ref: refs/heads/main}',
                                  'claims: {repository_id: "1", ref: refs/heads/main, environment: [production, Prod, eu-west]}'))
    result = cli(os.environ.copy(), "trust-policy", "aws", "--target", "default/deploy", "--config", str(path))
    assert result.returncode == 0, result.stderr
    condition = json.loads(result.stdout)["Statement"][0]["Condition"]
    assert "StringLike" not in condition
    assert condition["StringEquals"]["id.example.com:sub"] == [
        "space:default:environment:eu-west:account:deploy",
        "space:default:environment:production:account:deploy",
        "space:default:environment:staging:account:deploy",
    ]


def test_trust_policy_of_a_fixed_subject_is_an_exact_match(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(TRUST)
    result = cli(os.environ.copy(), "trust-policy", "aws", "--target", "default/prod-ecr", "--config", str(path))
    assert result.returncode == 0, result.stderr
    condition = json.loads(result.stdout)["Statement"][0]["Condition"]
    assert condition == {"StringEquals": {"id.example.com:aud": "sts.amazonaws.com",
                                          "id.example.com:sub": "space:default:feed:prod-ecr"}}


def test_trust_policy_refuses_a_target_it_cannot_describe(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(TRUST)
    result = cli(os.environ.copy(), "trust-policy", "aws", "--target", "default/nope", "--config", str(path))
    assert result.returncode == 2
    assert "is not an aws target" in result.stderr
