"""`oidc-broker apply [--dry-run]`: what a configuration changes against what is applied (apply.changes,
pure), shown before writing; --dry-run writes nothing — against a table in moto's server, a stack found
by its outputs, and the running local mode found by its record."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from oidc_broker.store import Store
from oidc_broker_cli.apply import change_lines, changes
from oidc_broker_cli.local import free_port

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "issuer": "https://id.example.com",
    "trusted_issuers": [{"name": "github", "issuer": "https://token.actions.githubusercontent.com"}],
    "spaces": [{
        "name": "default",
        "targets": [
            {"name": "prod-ecr", "kind": "feed", "provider": "aws",
             "aws": {"role_arn": "arn:aws:iam::123456789012:role/pull", "region": "us-east-1"}},
            {"name": "deploy", "kind": "account", "provider": "aws",
             "aws": {"role_arn": "arn:aws:iam::123456789012:role/deploy", "region": "us-east-1"}},
        ],
        "trust": [{"name": "app-main", "issuer": "github", "claims": {"repository_id": "1", "ref": "refs/heads/main"},
                   "targets": ["prod-ecr", "deploy"]}],
    }],
}


def edited(**changes_to_make):
    document = copy.deepcopy(BASE)
    for edit in changes_to_make.values():
        edit(document)
    return document


# -- the pure difference ---------------------------------------------------------------------------

def test_nothing_changes_when_the_documents_are_equal():
    assert changes(copy.deepcopy(BASE), BASE) == []
    assert change_lines([]) == ["  no changes: the configuration is the one applied"]


def test_against_nothing_applied_everything_is_added():
    found = changes(None, BASE)
    assert [(c["kind"], c["space"], c["name"], c["change"]) for c in found] == [
        ("issuer", None, "https://id.example.com", "added"),
        ("trusted issuer", None, "github", "added"),
        ("target", "default", "deploy", "added"),
        ("target", "default", "prod-ecr", "added"),
        ("trust rule", "default", "app-main", "added"),
    ]


def test_a_changed_target_names_the_fields_that_differ():
    after = edited(refresh=lambda d: d["spaces"][0]["targets"][0].update(refresh=True, lifetime="15m"))
    assert changes(BASE, after) == [{"kind": "target", "space": "default", "name": "prod-ecr", "change": "changed",
                                     "fields": ["lifetime", "refresh"]}]
    assert change_lines(changes(BASE, after)) == ["  ~ space default: target prod-ecr (lifetime, refresh)"]


def test_removed_and_added_rules_and_targets_are_told_apart_per_space():
    def second_space(d):
        d["spaces"].append({"name": "team", "targets": [copy.deepcopy(d["spaces"][0]["targets"][0])], "trust": []})

    def drop_deploy(d):
        d["spaces"][0]["targets"].pop(1)
        d["spaces"][0]["trust"][0]["targets"] = ["prod-ecr"]

    found = changes(BASE, edited(a=second_space, b=drop_deploy))
    assert change_lines(found) == [
        "  - space default: target deploy",
        "  ~ space default: trust rule app-main (targets)",
        "  + space team: target prod-ecr",
    ]


def test_a_changed_trusted_issuer_and_issuer_are_shown():
    after = edited(a=lambda d: d.update(issuer="https://other.example.com"),
                   b=lambda d: d["trusted_issuers"][0].update(leeway=30))
    assert change_lines(changes(BASE, after)) == [
        "  ~ issuer https://other.example.com (was https://id.example.com)",
        "  ~ trusted issuer github (leeway)",
    ]


def test_an_applied_document_that_is_not_a_configuration_is_compared_defensively():
    assert [c["change"] for c in changes({"spaces": "nonsense", "trusted_issuers": [1, {"x": 2}]}, BASE)] == [
        "added"] * 5


# -- against a table -------------------------------------------------------------------------------

TABLE_KEYS = dict(KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                  AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                        {"AttributeName": "sk", "AttributeType": "S"}])


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "TABLE_NAME"}
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="t", AWS_SECRET_ACCESS_KEY="t",
               AWS_DEFAULT_REGION="us-east-1", HOME=str(home), OIDC_BROKER_LOCAL_RECORD=str(home / "none.json"))
    kwargs = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    client = boto3.client("dynamodb", **kwargs)
    for table in ("diffs", "stacked"):
        client.create_table(TableName=table, BillingMode="PAY_PER_REQUEST", **TABLE_KEYS)
        client.put_item(TableName=table, Item={"pk": {"S": "DEPLOYMENT"}, "sk": {"S": "CURRENT"},
                                               "issuer": {"S": "https://id.example.com"}, "recorded_at": {"N": "1"}})
    boto3.client("cloudformation", **kwargs).create_stack(StackName="diff-broker", TemplateBody=json.dumps({
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"TableName": {"Value": "stacked"}, "IssuerUrl": {"Value": "https://id.example.com"}}}))
    yield env, client
    server.stop()


def cli(env, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def stored(client, table):
    """The configuration's pointer item: unchanged means nothing was applied."""
    return client.get_item(TableName=table, Key={"pk": {"S": "CONFIG"}, "sk": {"S": "CURRENT"}}).get("Item")


def applied(client, table):
    return Store(client, table).get_config()["document"]


def write(tmp_path, document, name="broker.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def test_a_dry_run_shows_the_changes_and_writes_nothing(aws, tmp_path):
    env, client = aws
    assert cli(env, "apply", str(write(tmp_path, BASE)), "--table", "diffs").returncode == 0
    before = stored(client, "diffs")
    after = edited(a=lambda d: d["spaces"][0]["targets"].pop(1), b=lambda d: d["spaces"][0]["trust"][0].update(
        targets=["prod-ecr"]))
    result = cli(env, "apply", str(write(tmp_path, after)), "--table", "diffs", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "  - space default: target deploy\n  ~ space default: trust rule app-main (targets)\n" in result.stdout
    assert "dry run: nothing was written" in result.stdout
    assert stored(client, "diffs") == before


def test_apply_shows_the_changes_then_writes(aws, tmp_path):
    env, client = aws
    assert cli(env, "apply", str(write(tmp_path, BASE)), "--table", "diffs").returncode == 0
    after = edited(a=lambda d: d["spaces"][0]["targets"][0].update(lifetime="15m"))
    result = cli(env, "apply", str(write(tmp_path, after)), "--table", "diffs")
    assert result.returncode == 0, result.stderr
    assert "  ~ space default: target prod-ecr (lifetime)\n" in result.stdout
    assert "applied" in result.stdout
    assert applied(client, "diffs") == after
    again = cli(env, "apply", str(write(tmp_path, after)), "--table", "diffs", "--dry-run")
    assert "no changes: the configuration is the one applied" in again.stdout


def test_apply_output_json_is_the_changes_and_whether_they_were_applied(aws, tmp_path):
    env, client = aws
    assert cli(env, "apply", str(write(tmp_path, BASE)), "--table", "diffs").returncode == 0
    after = edited(a=lambda d: d["trusted_issuers"][0].update(leeway=30))
    result = cli(env, "apply", "-", "--table", "diffs", "--dry-run", "--output", "json", stdin=json.dumps(after))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"applied": False, "changes": [
        {"kind": "trusted issuer", "space": None, "name": "github", "change": "changed", "fields": ["leeway"]}]}
    result = cli(env, "apply", "-", "--table", "diffs", "--output", "json", stdin=json.dumps(after))
    assert json.loads(result.stdout)["applied"] is True
    assert applied(client, "diffs") == after
    assert stored(client, "diffs")["source"]["S"] == "<stdin>"


def test_a_dry_run_still_refuses_another_issuer_than_the_deployments(aws, tmp_path):
    env, client = aws
    before = stored(client, "diffs")
    path = write(tmp_path, edited(a=lambda d: d.update(issuer="https://elsewhere.example.com")))
    result = cli(env, "apply", str(path), "--table", "diffs", "--dry-run")
    assert result.returncode == 2
    assert "issuer: is https://elsewhere.example.com, but this deployment's issuer is https://id.example.com" in result.stderr
    assert stored(client, "diffs") == before


def test_apply_finds_the_table_by_the_stacks_outputs(aws, tmp_path):
    env, client = aws
    result = cli(env, "apply", str(write(tmp_path, BASE)), "--stack", "diff-broker", "--region", "us-east-1")
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout and "to stacked" in result.stdout
    assert applied(client, "stacked") == BASE
    result = cli(env, "trust-policy", "aws", "--target", "default/prod-ecr", "--stack", "diff-broker")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Statement"][0]["Condition"]["StringEquals"]["id.example.com:sub"] == \
        "space:default:feed:prod-ecr"


def test_a_stack_issuer_contradicting_the_stated_one_is_refused(aws, tmp_path):
    env, client = aws
    before = stored(client, "stacked")
    result = cli(env, "apply", str(write(tmp_path, BASE)), "--stack", "diff-broker", "--issuer", "https://x.example.com")
    assert result.returncode == 2
    assert "--issuer is https://x.example.com, but the deployment's issuer is https://id.example.com" in result.stderr
    assert stored(client, "stacked") == before


# -- against the running local mode ------------------------------------------------------------------

@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """`oidc-broker local` on a free port, recording itself in a file of this test's."""
    directory = tmp_path_factory.mktemp("local")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "TABLE_NAME"}
    env.update(OIDC_BROKER_LOCAL_RECORD=str(directory / "local.json"), HOME=str(directory))
    log = (directory / "local.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "oidc_broker_cli.main", "local", "--port", "0"], cwd=ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline, url = time.monotonic() + 60, None
    while url is None and time.monotonic() < deadline and process.poll() is None:
        url = re.search(r"^ready: (http://\S+)", (directory / "local.log").read_text(), re.M)
        time.sleep(0.1)
    assert url, (directory / "local.log").read_text()
    yield env, url.group(1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    log.close()


def test_with_no_flags_apply_finds_the_running_local_mode_and_its_own_file_changes_nothing(local):
    env, url = local
    result = cli(env, "apply", "examples/local.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "changes against what is applied to oidc-broker-local:\n  no changes" in result.stdout


def test_the_readmes_commands_run_as_written_against_local_mode(local):
    env, url = local
    result = cli(env, "audit", "--target", "default/prod-ecr")
    assert result.returncode == 0, result.stderr
    result = cli(env, "trust-policy", "aws", "--target", "default/prod-ecr")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Statement"][0]["Condition"]["StringEquals"]
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"{url}/_dev/ci/token?format=raw", method="POST",
                                                       data=b"{}")) as response:
        token = response.read().decode().strip()
    result = cli(env, "explain", "--target", "default/prod-ecr", "-", stdin=token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule app-main: ADMITS" in result.stdout
    result = cli(env, "explain", "--target", "default/prod-ecr", token, "--output", "json")
    assert json.loads(result.stdout)["admitted"] is True
