"""oidc_broker_cli/deployment.py: local mode's record of where it runs, and a stack found by its
CloudFormation outputs (moto's server) whose function is invoked with Lambda Invoke."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from oidc_broker_cli.deployment import (NOT_RUNNING, DeploymentError, Function, LocalDeployment, LocalRecord,
                                        StackDeployment, find, record_path)
from oidc_broker_cli.local import free_port

ROOT = Path(__file__).resolve().parents[2]
ROTATE = Function("RotateKeysFunction", "KeyRotationFunctionName")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def record(pid: int, url: str = "http://127.0.0.1:9") -> LocalRecord:
    return LocalRecord(url=url, issuer=url, table="oidc-broker-local", aws_endpoint="http://127.0.0.1:8", pid=pid)


def test_the_record_is_under_the_project_unless_the_environment_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv("OIDC_BROKER_LOCAL_RECORD", raising=False)
    assert record_path(tmp_path) == tmp_path / ".oidc-broker" / "local.json"
    monkeypatch.setenv("OIDC_BROKER_LOCAL_RECORD", str(tmp_path / "elsewhere.json"))
    assert record_path(tmp_path) == tmp_path / "elsewhere.json"


def test_a_record_is_written_read_back_and_removed_by_its_local_mode(tmp_path):
    path = tmp_path / ".oidc-broker" / "local.json"
    mine = record(os.getpid())
    assert mine.write(path)
    assert LocalRecord.read(path) == mine
    assert json.loads(path.read_text())["url"] == "http://127.0.0.1:9"
    assert list(path.parent.iterdir()) == [path]  # written whole, through a temporary file
    record(dead_pid()).remove(path)
    assert path.exists()  # not another local mode's to remove
    mine.remove(path)
    assert not path.exists()


def test_a_live_local_modes_record_is_not_taken_over_but_a_dead_ones_is(tmp_path):
    path = tmp_path / "local.json"
    record(os.getpid()).write(path)
    assert not record(dead_pid(), "http://127.0.0.1:10").write(path)
    assert LocalRecord.read(path).pid == os.getpid()
    stale = tmp_path / "stale.json"
    record(dead_pid()).write(stale)
    assert record(os.getpid(), "http://127.0.0.1:10").write(stale)
    assert LocalRecord.read(stale).url == "http://127.0.0.1:10"


@pytest.mark.parametrize("content", [None, "", "not json", "{}", '{"url": "x", "pid": "abc"}'])
def test_no_record_or_a_broken_one_is_local_mode_not_running(tmp_path, content):
    path = tmp_path / "local.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DeploymentError) as not_running:
        LocalDeployment(path)
    assert str(not_running.value) == NOT_RUNNING
    assert "start it with `make run`" in NOT_RUNNING


def test_a_record_of_a_dead_local_mode_is_not_running(tmp_path):
    path = tmp_path / "local.json"
    record(dead_pid()).write(path)
    with pytest.raises(DeploymentError, match="local mode is not running"):
        LocalDeployment(path)


def test_a_live_pid_with_nothing_listening_is_not_running_either(tmp_path):
    path = tmp_path / "local.json"
    url = f"http://127.0.0.1:{free_port()}"
    record(os.getpid(), url).write(path)
    with pytest.raises(DeploymentError) as not_running:
        LocalDeployment(path).invoke(ROTATE, {"action": "status"})
    assert str(not_running.value).startswith(NOT_RUNNING + f" ({url}:")


def test_region_or_profile_without_a_stack_is_a_usage_error(tmp_path):
    with pytest.raises(DeploymentError, match="give --stack NAME too"):
        find(None, "eu-west-1", None, tmp_path)


# -- a stack: outputs from moto's CloudFormation, Invoke through a stand-in Lambda client -------------------


@pytest.fixture(scope="module")
def moto():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    cfn = boto3.client("cloudformation", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="t", aws_secret_access_key="t")
    for name, outputs in (("broker", {"KeyRotationFunctionName": "broker-RotateKeys-1",
                                      "IssuerUrl": "https://id.example.com", "TableName": "broker-table"}),
                          ("older", {"TableName": "older-table"})):
        cfn.create_stack(StackName=name, TemplateBody=json.dumps({
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {k: {"Value": v} for k, v in outputs.items()}}))
    yield endpoint, cfn
    server.stop()


class FakeLambda:
    def __init__(self, payload, function_error=None):
        self.payload, self.function_error, self.calls = payload, function_error, []

    def invoke(self, **request):
        self.calls.append(request)
        answer = {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(self.payload).encode())}
        if self.function_error:
            answer["FunctionError"] = self.function_error
        return answer


class Session:
    """What StackDeployment needs of a boto3 Session: moto's CloudFormation, a stand-in Lambda."""

    def __init__(self, cfn, lam):
        self.clients = {"cloudformation": cfn, "lambda": lam}

    def client(self, name, config=None):
        if name == "lambda":
            assert config.retries == {"total_max_attempts": 1}  # an invocation is never sent twice
        return self.clients[name]


def test_a_stacks_outputs_name_the_function_and_the_issuer(moto):
    _, cfn = moto
    lam = FakeLambda({"keys": []})
    stack = StackDeployment(Session(cfn, lam), "broker")
    assert (stack.name, stack.issuer) == ("stack broker", "https://id.example.com")
    assert stack.invoke(ROTATE, {"action": "status"}) == {"keys": []}
    assert lam.calls == [{"FunctionName": "broker-RotateKeys-1", "InvocationType": "RequestResponse",
                          "Payload": b'{"action": "status"}'}]


def test_a_function_error_is_one_line_naming_the_function_and_its_log_group(moto):
    _, cfn = moto
    lam = FakeLambda({"errorType": "AccessDeniedException", "errorMessage": "kms:CreateKey denied\nmore",
                      "stackTrace": ["..."]}, function_error="Unhandled")
    with pytest.raises(DeploymentError) as failed:
        StackDeployment(Session(cfn, lam), "broker").invoke(ROTATE, {"action": "rotate"})
    assert str(failed.value) == ("broker-RotateKeys-1 of stack broker failed: AccessDeniedException: kms:CreateKey "
                                 "denied; its log group is /aws/lambda/broker-RotateKeys-1")


def test_a_stack_without_the_output_says_to_deploy_this_version(moto):
    _, cfn = moto
    with pytest.raises(DeploymentError, match="stack older has no output KeyRotationFunctionName: deploy"):
        StackDeployment(Session(cfn, FakeLambda({})), "older").invoke(ROTATE, {"action": "status"})


def test_no_such_stack_is_one_line(moto):
    _, cfn = moto
    with pytest.raises(DeploymentError) as missing:
        StackDeployment(Session(cfn, FakeLambda({})), "no-such-stack")
    assert str(missing.value) == ("cannot describe stack no-such-stack: ValidationError: Stack with id no-such-stack "
                                  "does not exist")


# -- the command, as an operator runs it ----------------------------------------------------------------------


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), OIDC_BROKER_LOCAL_RECORD=str(tmp_path / "local.json"),
               **extra)
    return env


@pytest.mark.parametrize("args, says", [
    ([], NOT_RUNNING),
    (["--region", "eu-west-1"], "--region and --profile name where a stack is: give --stack NAME too"),
    (["--stack", "broker"], "cannot describe stack broker: You must specify a region."),
    (["--stack", "broker", "--profile", "nope"], "The config profile (nope) could not be found"),
    (["--stack", "broker", "--region", "eu-west-1"], "cannot describe stack broker: Unable to locate credentials"),
])
def test_keys_list_without_a_reachable_deployment_is_one_line_and_exit_2(tmp_path, args, says):
    result = cli(clean_env(tmp_path), "keys", "list", *args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"oidc-broker keys list: {says}")
    assert len(result.stderr.splitlines()) == 1


def test_keys_list_against_a_stack_whose_function_lambda_cannot_find_is_one_line(moto, tmp_path):
    endpoint, _ = moto
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="t", AWS_SECRET_ACCESS_KEY="t")
    result = cli(env, "keys", "list", "--stack", "broker", "--region", "us-east-1")
    assert result.returncode == 2
    assert result.stderr.startswith("oidc-broker keys list: cannot invoke broker-RotateKeys-1 of stack broker: "
                                    "ResourceNotFoundException")
    assert len(result.stderr.splitlines()) == 1
    result = cli(env, "keys", "revoke", "some-kid", "--yes", "--stack", "no-such-stack", "--region", "us-east-1")
    assert (result.returncode, result.stderr) == (2, "oidc-broker keys revoke: cannot describe stack no-such-stack: "
                                                     "ValidationError: Stack with id no-such-stack does not exist\n")
