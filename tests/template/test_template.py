"""The SAM template: it lints, validates and builds, and its permissions stay least-privilege.

The lint/validate/build tests run the tools from .venv-tools (`make tools`, which `make test`
runs first); the structural tests read template.yaml with a loader that keeps CloudFormation's
short-form tags as their long-form dicts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from oidc_broker_cli.yamlfile import load_template

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
TOOLS = REPO / ".venv-tools" / "bin"


# --- reading the template -------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(TEMPLATE.read_text())


def _resources(template: dict, type_: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == type_}


def _functions(template: dict) -> dict[str, dict]:
    return _resources(template, "AWS::Serverless::Function")


def _statements(function: dict) -> list[dict]:
    """Inline statements of a SAM function's Policies (policy documents, not managed names)."""
    statements = []
    for policy in function["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            statements.extend(policy["Statement"])
    return statements


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# --- running the tools ----------------------------------------------------------------------


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (`make test` builds .venv-tools first)")
    return str(path)


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.tools
def test_cfn_lint_accepts_the_template():
    result = _run([_tool("cfn-lint"), "template.yaml"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.tools
def test_sam_validate_with_lint_accepts_the_template():
    result = _run([_tool("sam"), "validate", "--lint", "--template-file", "template.yaml"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.tools
def test_sam_build_ships_the_core_and_its_dependencies_in_the_layer(tmp_path):
    build = tmp_path / "build"
    result = _run(
        [
            _tool("sam"), "build",
            "--template-file", "template.yaml",
            "--parameter-overrides", "PythonRuntime=python3.11",
            "--build-dir", str(build),
            # samconfig's cached build keeps dependencies in <repo>/.aws-sam/deps: stay out of it.
            "--no-cached",
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    layer = build / "BrokerLayer" / "python"
    assert (layer / "oidc_broker" / "__init__.py").is_file()
    assert (layer / "jwt").is_dir()
    # The layer's Metadata follows the PythonRuntime and Architecture parameters, so compiled
    # modules (cffi's backend, which cryptography loads) match the functions' runtime.
    compiled = [p.name for p in layer.rglob("*.cpython-*.so")]
    assert all("cpython-311-aarch64" in name for name in compiled), compiled


# --- permissions ----------------------------------------------------------------------------


def test_no_function_statement_allows_every_action_or_every_resource(template):
    for name, function in _functions(template).items():
        for statement in _statements(function):
            actions = _as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (name, statement)
            assert "*" not in _as_list(statement["Resource"]), (name, statement)


def test_only_the_minting_functions_may_sign_and_only_rs256_with_the_signing_key(template):
    signers = {}
    for name, function in _functions(template).items():
        for statement in _statements(function):
            if "kms:Sign" in _as_list(statement["Action"]):
                signers[name] = statement
    assert sorted(signers) == ["ExchangeAwsFunction", "TokenFunction"]
    for statement in signers.values():
        assert _as_list(statement["Action"]) == ["kms:Sign"]
        assert statement["Resource"] == {"Fn::GetAtt": ["SigningKey", "Arn"]}
        assert statement["Condition"] == {"StringEquals": {"kms:SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"}}


def test_only_the_exchange_function_gets_cache_data_keys_and_only_from_the_cache_key(template):
    users = {}
    for name, function in _functions(template).items():
        for statement in _statements(function):
            actions = set(_as_list(statement["Action"]))
            if actions & {"kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt"}:
                users[name] = statement
    assert list(users) == ["ExchangeAwsFunction"]
    statement = users["ExchangeAwsFunction"]
    assert sorted(_as_list(statement["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert statement["Resource"] == {"Fn::GetAtt": ["CacheKey", "Arn"]}
    assert statement["Condition"] == {"StringEquals": {"kms:EncryptionContext:purpose": "oidc-broker credential cache"}}


def test_the_exchange_function_reaches_only_the_table_and_the_two_keys(template):
    function = template["Resources"]["ExchangeAwsFunction"]["Properties"]
    actions = {a for s in _statements(template["Resources"]["ExchangeAwsFunction"]) for a in _as_list(s["Action"])}
    # STS AssumeRoleWithWebIdentity is unsigned; ECR is called with the assumed role's credentials.
    assert actions == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:DeleteItem",
                       "kms:Sign", "kms:GenerateDataKey", "kms:Decrypt"}
    dynamodb = [s for s in _statements(template["Resources"]["ExchangeAwsFunction"])
                if any(a.startswith("dynamodb:") for a in _as_list(s["Action"]))]
    assert all(s["Resource"] == {"Fn::GetAtt": ["BrokerTable", "Arn"]} for s in dynamodb)
    assert function["Environment"]["Variables"] == {"CACHE_KEY_ID": {"Fn::GetAtt": ["CacheKey", "Arn"]}}


def test_the_cache_key_is_a_retained_symmetric_key_administered_by_the_account(template):
    key = template["Resources"]["CacheKey"]
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"
    props = key["Properties"]
    assert (props["KeySpec"], props["KeyUsage"], props["EnableKeyRotation"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", True)
    assert props["KeyPolicy"] == template["Resources"]["SigningKey"]["Properties"]["KeyPolicy"]


def test_the_discovery_function_gets_no_policies(template):
    assert "Policies" not in template["Resources"]["DiscoveryFunction"]["Properties"]


@pytest.mark.parametrize("name", ["JwksFunction", "KeyRingFunction"])
def test_key_ring_functions_reach_only_the_keyring_partition(template, name):
    dynamodb = [
        s for s in _statements(template["Resources"][name])
        if any(a.startswith("dynamodb:") for a in _as_list(s["Action"]))
    ]
    assert dynamodb
    for statement in dynamodb:
        assert statement["Resource"] == {"Fn::GetAtt": ["BrokerTable", "Arn"]}
        leading = statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"]
        assert leading == ["KEYRING"]


def test_the_token_function_reaches_the_table_but_not_its_indexes(template):
    dynamodb = [
        s for s in _statements(template["Resources"]["TokenFunction"])
        if any(a.startswith("dynamodb:") for a in _as_list(s["Action"]))
    ]
    actions = {a for s in dynamodb for a in _as_list(s["Action"])}
    assert actions == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:DeleteItem"}
    assert all(s["Resource"] == {"Fn::GetAtt": ["BrokerTable", "Arn"]} for s in dynamodb)


def test_the_key_policy_grants_administration_only_to_the_account(template):
    statements = template["Resources"]["SigningKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert len(statements) == 1
    assert statements[0]["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    }


# --- data that must outlive the stack -------------------------------------------------------


def test_the_table_is_retained_recoverable_encrypted_and_expires_items(template):
    table = template["Resources"]["BrokerTable"]
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert [i["IndexName"] for i in props["GlobalSecondaryIndexes"]] == ["audit"]


def test_the_signing_key_is_a_retained_rsa_2048_signing_key(template):
    key = template["Resources"]["SigningKey"]
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"
    assert key["Properties"]["KeySpec"] == "RSA_2048"
    assert key["Properties"]["KeyUsage"] == "SIGN_VERIFY"


def test_every_function_has_a_log_group_with_retention(template):
    groups = {
        json.dumps(r["Properties"].get("LogGroupName"), sort_keys=True): r["Properties"]
        for r in _resources(template, "AWS::Logs::LogGroup").values()
    }
    for name in _functions(template):
        key = json.dumps({"Fn::Sub": f"/aws/lambda/${{{name}}}"}, sort_keys=True)
        assert key in groups, f"{name} has no /aws/lambda/ log group"
        assert groups[key]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_api_access_logs_go_to_a_log_group_with_retention(template):
    api = template["Resources"]["HttpApi"]["Properties"]
    assert api["AccessLogSettings"]["DestinationArn"] == {"Fn::GetAtt": ["HttpApiAccessLogs", "Arn"]}
    logs = template["Resources"]["HttpApiAccessLogs"]["Properties"]
    assert logs["RetentionInDays"] == {"Ref": "LogRetentionDays"}


# --- what other code reads from the template ------------------------------------------------


def _routes(template: dict) -> dict[str, tuple[str, dict]]:
    routes = {}
    for name, function in _functions(template).items():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                p = event["Properties"]
                routes[f"{p['Method']} {p['Path']}"] = (name, p)
    return routes


def test_every_route_is_a_literal_path_on_the_one_http_api(template):
    routes = _routes(template)
    assert {route: name for route, (name, _) in routes.items()} == {
        "GET /.well-known/openid-configuration": "DiscoveryFunction",
        "GET /.well-known/jwks.json": "JwksFunction",
        "POST /token": "TokenFunction",
        "POST /exchange/aws": "ExchangeAwsFunction",
    }
    for _, props in routes.values():
        assert props["ApiId"] == {"Ref": "HttpApi"}


def test_the_key_ring_custom_resource_publishes_the_signing_key(template):
    key_ring = template["Resources"]["KeyRing"]
    assert key_ring["Type"] == "Custom::KeyRing"
    assert key_ring["Properties"] == {
        "ServiceToken": {"Fn::GetAtt": ["KeyRingFunction", "Arn"]},
        "KeyArn": {"Fn::GetAtt": ["SigningKey", "Arn"]},
    }


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("", True),
        ("https://id.example.com", True),
        ("https://id.example.com/broker/prod", True),
        ("https://id.example.com/", False),
        ("https://id.example.com/broker/", False),
        ("http://id.example.com", False),
        ("https://id.example.com:8443", False),
        ("https://id.example.com?x=1", False),
        ("https://", False),
    ],
)
def test_the_issuer_url_parameter_allows_only_https_without_trailing_slash(template, value, allowed):
    pattern = template["Parameters"]["IssuerUrl"]["AllowedPattern"]
    # CloudFormation matches AllowedPattern against the whole value.
    assert (re.fullmatch(pattern, value) is not None) is allowed


def test_build_and_deploy_use_the_same_runtime():
    # samconfig pins no runtime, so `sam build` and `sam deploy` both take the template's default;
    # the Makefile's build and deploy pass the same override.
    config = tomllib.loads((REPO / "samconfig.toml").read_text())["default"]
    assert all("PythonRuntime" not in str(section) for section in config.values())
    makefile = (REPO / "Makefile").read_text()
    overrides = re.findall(r"sam (?:build|deploy)\b.*?(PythonRuntime=\S+)", makefile)
    assert len(overrides) == 2 and len(set(overrides)) == 1, overrides


@pytest.mark.parametrize("path", sorted((REPO / "events").glob("*.json")), ids=lambda p: p.name)
def test_every_sample_event_targets_something_in_the_template(template, path):
    event = json.loads(path.read_text())
    if "routeKey" in event:
        assert event["version"] == "2.0"
        assert event["routeKey"] in _routes(template)
    else:
        assert event["ResourceType"] == template["Resources"]["KeyRing"]["Type"]
        assert set(event["ResourceProperties"]) == set(template["Resources"]["KeyRing"]["Properties"])
