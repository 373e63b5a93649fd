"""SAM local against a running local mode: the `--env-vars` file it writes beside its record, and
`make events` (python -m oidc_broker_cli.local.samlocal events) refreshing the token-bearing events,
each event replayed through local mode's functions giving the answer events/README.md documents."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from localmode import ROOT, start_recorded, stop_local
from oidc_broker_cli.deployment import RECORD_ENV, LocalRecord
from oidc_broker_cli.local.samlocal import body_length, declared
from oidc_broker_cli.template import Template

TEMPLATE = Template(ROOT / "template.yaml")
FUNCTIONS = list(TEMPLATE.of_type("AWS::Serverless::Function"))
# Each event file and the function it is for (key_ring.json's ResponseURL is an example S3 URL: not replayed).
REPLAYED = {"discovery.json": "DiscoveryFunction", "jwks.json": "JwksFunction", "token.json": "TokenFunction",
            "exchange_aws.json": "ExchangeAwsFunction", "exchange_azure.json": "ExchangeAzureFunction",
            "exchange_gcp.json": "ExchangeGcpFunction", "refresh.json": "RefreshFunction",
            "rotate_keys.json": "RotateKeysFunction"}
WITH_TOKEN = ["exchange_aws.json", "exchange_azure.json", "exchange_gcp.json", "token.json"]


@pytest.fixture(scope="module")
def mode(tmp_path_factory):
    mode = start_recorded(tmp_path_factory.mktemp("samlocal"), "--config", "examples/local.yaml")
    yield mode
    stop_local(mode)


@pytest.fixture(scope="module")
def env(mode) -> dict:
    return json.loads((mode.record.parent / "env.json").read_text())


def replay(mode, function: str, event: dict) -> tuple[int, dict]:
    """The event through local mode's function (POST /_local/invoke, as Lambda Invoke): status and body."""
    response = mode.http.post(f"/_local/invoke/{function}", json=event)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    if isinstance(result, dict) and "statusCode" in result:
        return result["statusCode"], json.loads(result["body"])
    return 200, result


def refreshed_events(mode, tmp_path: Path) -> Path:
    """A copy of events/ refreshed by the module `make events` runs, as a subprocess; its folder."""
    shutil.copytree(ROOT / "events", tmp_path / "events")
    done = subprocess.run([sys.executable, "-m", "oidc_broker_cli.local.samlocal", "events"], cwd=tmp_path,
                          env={**mode.env, RECORD_ENV: str(mode.record)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [f"events/{n}" for n in WITH_TOKEN]
    return tmp_path / "events"


def test_the_env_file_has_every_function_with_every_variable_the_template_declares_for_it(env):
    assert set(env) == set(FUNCTIONS)
    for function in FUNCTIONS:
        missing = set(declared(TEMPLATE, function)) - set(env[function])
        assert not missing, f"{function}: {missing}"
        assert all(isinstance(v, str) for v in env[function].values())


def test_every_function_gets_local_modes_endpoints_and_dummy_credentials(mode, env):
    record = LocalRecord.read(mode.record)
    for function, variables in env.items():
        assert variables["TABLE_NAME"] == record.table, function
        assert variables["ISSUER_URL"] == record.issuer == mode.base_url, function
        assert variables["AWS_ENDPOINT_URL"] == record.aws_endpoint, function
        assert (variables["AWS_ACCESS_KEY_ID"], variables["AWS_SECRET_ACCESS_KEY"]) == ("local", "local")
        assert variables["AWS_REGION"] == "us-east-1"
        assert variables["BROKER_ALLOW_LOOPBACK_HTTP"] == "true"
        # Each emulator's URL is the one local mode's banner names (its functions' clients reach it there).
        for name in ("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_ECR_PUBLIC", "AZURE_AUTHORITY_HOST",
                     "ACR_ENDPOINT_URL", "GCP_STS_ENDPOINT", "GCP_IAMCREDENTIALS_ENDPOINT"):
            url = urlsplit(variables[name])
            assert url.hostname == "127.0.0.1" and f"{url.scheme}://{url.netloc}" in mode.logs(), name
        assert Path(variables["REQUESTS_CA_BUNDLE"]).is_file()


# SAM CLI sets these in a container itself (the shell's credentials, --region).
SAM_CLI_OWN = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"}


def test_every_variable_of_the_file_reaches_a_sam_local_container(env):
    # SAM CLI passes a container only the variables the template declares for its function: any
    # other in the file would be silently dropped, leaving the function on the public endpoints.
    for function, variables in env.items():
        dropped = set(variables) - set(declared(TEMPLATE, function)) - SAM_CLI_OWN
        assert not dropped, f"{function}: {sorted(dropped)} are not declared in template.yaml"


def test_the_template_defaults_of_local_variables_are_a_deployments_own(env):
    # Deployed, the declared endpoint variables are empty (the public endpoints), loopback issuers
    # are refused and the lifecycle is the default one.
    variables = TEMPLATE.globals["Environment"]["Variables"]
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_ECR_PUBLIC", "ACR_ENDPOINT_URL",
                 "GCP_STS_ENDPOINT", "GCP_IAMCREDENTIALS_ENDPOINT", "REQUESTS_CA_BUNDLE", "KEY_RING_TTL",
                 "KEY_ROTATION_MARGIN"):
        assert variables[name] == "", name
    assert variables["BROKER_ALLOW_LOOPBACK_HTTP"] == "false"
    assert variables["AZURE_AUTHORITY_HOST"] == "login.microsoftonline.com"


def test_the_key_and_table_values_are_local_modes_resources(env):
    variables = env["ExchangeAwsFunction"]
    kms = boto3.client("kms", endpoint_url=variables["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    assert kms.describe_key(KeyId=variables["CACHE_KEY_ID"])["KeyMetadata"]["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert kms.describe_key(KeyId=variables["KEY_RING_SEAL_KEY"])["KeyMetadata"]["KeyUsage"] == "GENERATE_VERIFY_MAC"
    dynamodb = boto3.client("dynamodb", endpoint_url=variables["AWS_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id="local", aws_secret_access_key="local")
    assert dynamodb.describe_table(TableName=variables["TABLE_NAME"])["Table"]["TableStatus"] == "ACTIVE"


def test_the_lifecycle_values_are_the_ones_local_modes_functions_serve_with(mode, env):
    response = mode.http.get("/.well-known/jwks.json")
    assert response.headers["cache-control"] == f"public, max-age={env['JwksFunction']['JWKS_MAX_AGE']}"


def test_the_events_as_shipped_carry_a_token_the_broker_refuses(mode):
    for name in WITH_TOKEN:
        status, body = replay(mode, REPLAYED[name], json.loads((ROOT / "events" / name).read_text()))
        assert (status, body["error"]) == (400, "invalid_grant"), name
        assert body["error_description"] == "subject_token issuer is not a trusted issuer"


def test_refreshed_events_give_their_documented_answers_once(mode, tmp_path):
    events = refreshed_events(mode, tmp_path)
    answers = {name: replay(mode, function, json.loads((events / name).read_text()))
               for name, function in REPLAYED.items()}
    assert answers["discovery.json"][0] == 200 and answers["discovery.json"][1]["issuer"] == mode.base_url
    assert answers["jwks.json"][0] == 200 and answers["jwks.json"][1]["keys"]
    assert answers["token.json"][0] == 200 and answers["token.json"][1]["access_token"]
    assert answers["exchange_aws.json"][0] == 200
    assert answers["exchange_aws.json"][1]["registry"] == "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert answers["exchange_azure.json"][0] == 200
    assert answers["exchange_azure.json"][1]["registry"] == "acme.azurecr.io"
    assert answers["exchange_gcp.json"][0] == 200
    assert answers["exchange_gcp.json"][1]["username"] == "oauth2accesstoken"
    assert set(answers["refresh.json"][1]["counts"]) == {"refreshed", "current", "skipped", "failed"}
    assert answers["rotate_keys.json"][1]["keys"]
    for name in WITH_TOKEN:  # replayed: the CI token was used for that target
        status, body = replay(mode, REPLAYED[name], json.loads((events / name).read_text()))
        assert (status, body["error"]) == (400, "invalid_grant"), name
        assert "was already used for target" in body["error_description"]


def test_refreshed_events_stay_api_gateway_events_with_right_content_lengths(mode, tmp_path):
    events = refreshed_events(mode, tmp_path)
    for name in WITH_TOKEN:
        refreshed = json.loads((events / name).read_text())
        shipped = json.loads((ROOT / "events" / name).read_text())
        assert refreshed["routeKey"] == shipped["routeKey"] and refreshed["version"] == "2.0"
        assert refreshed["headers"]["content-length"] == str(body_length(refreshed))
        assert set(refreshed["headers"]) == set(shipped["headers"])


def test_the_env_file_is_removed_when_local_mode_stops(tmp_path):
    mode = start_recorded(tmp_path, "--config", "examples/local.yaml")
    try:
        assert (tmp_path / "env.json").is_file()
        assert "sam local: --env-vars " + str(tmp_path / "env.json") in mode.logs()
    finally:
        stop_local(mode)
    assert not (tmp_path / "env.json").exists()
    assert not (tmp_path / "local.json").exists()


def test_an_env_file_is_written_only_beside_its_own_record(mode, tmp_path):
    """A second local mode finding the first one recorded writes no env.json over the first one's."""
    before = (mode.record.parent / "env.json").read_text()
    saved = os.environ.get(RECORD_ENV)
    os.environ[RECORD_ENV] = str(mode.record)
    try:
        from localmode import start_local

        second = start_local(tmp_path / "second.log", "--config", "examples/local.yaml")
    finally:
        if saved is None:
            del os.environ[RECORD_ENV]
        else:
            os.environ[RECORD_ENV] = saved
    try:
        assert "another local mode is recorded" in second.logs()
        assert (mode.record.parent / "env.json").read_text() == before
    finally:
        stop_local(second)
    assert (mode.record.parent / "env.json").read_text() == before
