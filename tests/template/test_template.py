"""The SAM template: it lints, validates and builds, and its permissions stay least-privilege.

The lint/validate/build tests run the tools from .venv-tools (`make tools`) and checkov from
.venv-checkov (`make checkov`; `make test` builds both first); the structural tests read
template.yaml with a loader that keeps CloudFormation's short-form tags as their long-form dicts.
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
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


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


def _checkov() -> str:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make checkov` (`make test` builds .venv-checkov first)")
    return str(CHECKOV)


def _checkov_skips(template: dict) -> dict[tuple[str, str], str]:
    """(resource, check id) -> reason, for every `Metadata: checkov: skip:` in the template."""
    skips = {}
    for name, resource in template["Resources"].items():
        for skip in ((resource.get("Metadata") or {}).get("checkov") or {}).get("skip", []):
            skips[(name, skip["id"])] = skip.get("comment")
    return skips


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
def test_checkov_passes_the_template_with_only_the_skips_written_in_it(template):
    # JSON rather than --quiet: the report must list the skipped checks, not only the failed ones.
    # --skip-download: no call to Prisma Cloud for guidelines (there is no network for it here).
    result = _run(
        [_checkov(), "-f", "template.yaml", "--framework", "cloudformation", "--compact",
         "--skip-download", "--output", "json"],
        timeout=300,
    )
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout)
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stderr
    assert report["summary"]["parsing_errors"] == 0
    # Every resource was read and checked: a template checkov could not parse passes nothing.
    assert report["summary"]["resource_count"] == len(template["Resources"])
    assert report["summary"]["passed"] > 0
    skipped = {(c["resource"].split(".", 1)[1], c["check_id"]) for c in report["results"]["skipped_checks"]}
    # Each skip in the template names a check that really applies to its resource (no typo, no
    # stale id), and nothing is skipped anywhere else (no --skip-check, no inline comment).
    assert skipped == set(_checkov_skips(template))


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


def test_the_key_ring_function_reads_the_public_key_and_adds_keys_only(template):
    actions = {a for s in _statements(template["Resources"]["KeyRingFunction"]) for a in _as_list(s["Action"])}
    # It queries the ring and adds a key with a conditional put: no update, no delete, no signing.
    assert actions == {"kms:GetPublicKey", "dynamodb:Query", "dynamodb:PutItem"}
    kms = [s for s in _statements(template["Resources"]["KeyRingFunction"]) if s["Action"] == "kms:GetPublicKey"]
    assert [s["Resource"] for s in kms] == [{"Fn::GetAtt": ["SigningKey", "Arn"]}]


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


# --- checkov skips --------------------------------------------------------------------------


def test_every_checkov_skip_in_the_template_gives_its_reason(template):
    skips = _checkov_skips(template)
    assert skips, "no checkov skip found: has the Metadata layout changed?"
    for (name, check), reason in skips.items():
        assert re.fullmatch(r"CKV2?_AWS_\d+", check), (name, check)
        # A reason is a sentence about this product, not a placeholder.
        assert isinstance(reason, str) and len(reason.split()) >= 8, (name, check, reason)


def test_every_log_group_skips_only_the_cmk_check(template):
    for name in _resources(template, "AWS::Logs::LogGroup"):
        assert [check for (resource, check) in _checkov_skips(template) if resource == name] == ["CKV_AWS_158"], name


# --- data that must outlive the stack: every key and the table ------------------------------


def test_every_kms_key_and_every_table_is_retained(template):
    kept = {**_resources(template, "AWS::KMS::Key"), **_resources(template, "AWS::DynamoDB::Table")}
    assert {"SigningKey", "CacheKey", "BrokerTable"} <= set(kept)
    for name, resource in kept.items():
        assert (resource.get("DeletionPolicy"), resource.get("UpdateReplacePolicy")) == ("Retain", "Retain"), name


# --- the optional custom domain -------------------------------------------------------------

DOMAIN_TYPES = {
    "AWS::CertificateManager::Certificate",
    "AWS::ApiGatewayV2::DomainName",
    "AWS::ApiGatewayV2::ApiMapping",
    "AWS::Route53::RecordSet",
}
ISSUER = "https://id.example.com"
CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789"
ZONE = "Z0123456789ABCDEFGHIJ"


def _value(template: dict, node, parameters: dict[str, str]):
    if isinstance(node, dict) and "Ref" in node:
        return parameters.get(node["Ref"], str(template["Parameters"][node["Ref"]].get("Default", "")))
    return node


def _holds(template: dict, node, parameters: dict[str, str]) -> bool:
    """Evaluates a condition (or rule) expression the way CloudFormation does, for given parameters."""
    (function, args), = node.items()
    if function in ("Condition", "Fn::Condition"):
        return _holds(template, template["Conditions"][args], parameters)
    if function == "Fn::Equals":
        return _value(template, args[0], parameters) == _value(template, args[1], parameters)
    if function == "Fn::Not":
        return not _holds(template, args[0], parameters)
    if function == "Fn::And":
        return all(_holds(template, a, parameters) for a in args)
    if function == "Fn::Or":
        return any(_holds(template, a, parameters) for a in args)
    raise AssertionError(f"unexpected condition function {function}")


def _created(template: dict, parameters: dict[str, str]) -> set[str]:
    return {
        name for name, resource in template["Resources"].items()
        if "Condition" not in resource or _holds(template, {"Condition": resource["Condition"]}, parameters)
    }


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, set()),
        # An issuer URL alone: the operator fronts the API with a domain of their own.
        ({"IssuerUrl": ISSUER}, set()),
        ({"IssuerUrl": ISSUER, "CertificateArn": CERTIFICATE}, {"CustomDomain", "CustomDomainMapping"}),
        ({"IssuerUrl": ISSUER, "HostedZoneId": ZONE},
         {"CustomDomainCertificate", "CustomDomain", "CustomDomainMapping", "CustomDomainRecord"}),
        ({"IssuerUrl": ISSUER, "CertificateArn": CERTIFICATE, "HostedZoneId": ZONE},
         {"CustomDomain", "CustomDomainMapping", "CustomDomainRecord"}),
    ],
    ids=["default", "issuer-only", "certificate", "hosted-zone", "certificate-and-zone"],
)
def test_custom_domain_resources_exist_only_when_their_parameters_ask_for_them(template, parameters, expected):
    domain = {name for name, r in template["Resources"].items() if r["Type"] in DOMAIN_TYPES}
    assert domain == {"CustomDomainCertificate", "CustomDomain", "CustomDomainMapping", "CustomDomainRecord"}
    assert all("Condition" in template["Resources"][name] for name in domain)
    assert _created(template, parameters) & domain == expected
    target = template["Outputs"]["CustomDomainTarget"]
    assert _holds(template, {"Condition": target["Condition"]}, parameters) is ("CustomDomain" in expected)


@pytest.mark.parametrize(
    ("parameters", "accepted"),
    [
        ({}, True),
        ({"IssuerUrl": ISSUER, "CertificateArn": CERTIFICATE}, True),
        ({"CertificateArn": CERTIFICATE}, False),
        ({"HostedZoneId": ZONE}, False),
    ],
)
def test_a_certificate_or_zone_without_an_issuer_url_is_refused(template, parameters, accepted):
    rule = template["Rules"]["CustomDomainNeedsIssuerUrl"]
    applies = _holds(template, rule["RuleCondition"], parameters)
    holds = all(_holds(template, a["Assert"], parameters) for a in rule["Assertions"])
    assert (not applies or holds) is accepted


def test_the_custom_domain_is_the_issuer_urls_host_at_its_root(template):
    host = {"Fn::Select": [1, {"Fn::Split": ["https://", {"Ref": "IssuerUrl"}]}]}
    resources = template["Resources"]
    assert resources["CustomDomain"]["Properties"]["DomainName"] == host
    assert resources["CustomDomainCertificate"]["Properties"]["DomainName"] == host
    assert resources["CustomDomainCertificate"]["Properties"]["ValidationMethod"] == "DNS"
    (config,) = resources["CustomDomain"]["Properties"]["DomainNameConfigurations"]
    assert (config["EndpointType"], config["SecurityPolicy"]) == ("REGIONAL", "TLS_1_2")
    mapping = resources["CustomDomainMapping"]["Properties"]
    # No mapping key: discovery is served at <issuer>/.well-known/openid-configuration.
    assert "ApiMappingKey" not in mapping
    assert mapping["ApiId"] == {"Ref": "HttpApi"}
    # The issuer the functions sign with is the parameter the domain comes from.
    assert template["Globals"]["Function"]["Environment"]["Variables"]["ISSUER_URL"] == {"Ref": "IssuerUrl"}


@pytest.mark.parametrize(
    ("parameter", "value", "allowed"),
    [
        ("CertificateArn", "", True),
        ("CertificateArn", CERTIFICATE, True),
        ("CertificateArn", "arn:aws:iam::123456789012:server-certificate/x", False),
        ("HostedZoneId", "", True),
        ("HostedZoneId", ZONE, True),
        ("HostedZoneId", "id.example.com", False),
        ("AlarmTopicArn", "", True),
        ("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:oidc-broker-alarms", True),
        ("AlarmTopicArn", "arn:aws:sqs:us-east-1:123456789012:queue", False),
    ],
)
def test_the_optional_arn_and_zone_parameters_take_empty_or_their_own_kind(template, parameter, value, allowed):
    pattern = template["Parameters"][parameter]["AllowedPattern"]
    assert template["Parameters"][parameter]["Default"] == ""
    assert (re.fullmatch(pattern, value) is not None) is allowed


def test_the_outputs_name_the_issuer_url_and_the_api_url(template):
    outputs = template["Outputs"]
    assert outputs["IssuerUrl"]["Value"]["Fn::If"][:2] == ["HasIssuerUrl", {"Ref": "IssuerUrl"}]
    assert outputs["ApiUrl"]["Value"]["Fn::If"][:2] == ["HasCustomDomain", {"Ref": "IssuerUrl"}]


# --- alarms ---------------------------------------------------------------------------------

# Metrics AWS publishes by itself (namespace, name).
AWS_METRICS = {("AWS/ApiGateway", "5xx"), ("AWS/ApiGateway", "Count"), ("AWS/Usage", "CallCount")}
# Metrics of functions not written yet; their alarms must stay OK while there is no data.
PLANNED_METRICS = {"RefreshFailures", "KeyRotationAge"}


def _emitted_broker_metrics() -> set[str]:
    names = set()
    for path in [*(REPO / "layers" / "broker").rglob("*.py"), *(REPO / "functions").rglob("*.py")]:
        names |= set(re.findall(r"""add_metric\(\s*name\s*=\s*["'](\w+)["']""", path.read_text()))
    return names


def _alarm_metrics(alarm: dict) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, metric, dimensions) of everything an alarm reads, Metrics Insights included."""
    props = alarm["Properties"]
    if "MetricName" in props:
        return [(props["Namespace"], props["MetricName"], {d["Name"]: d["Value"] for d in props.get("Dimensions", [])})]
    found = []
    for query in props["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            found.append((metric["Namespace"], metric["MetricName"], {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}))
        elif str(query["Expression"]).startswith("SELECT"):
            m = re.fullmatch(
                r"SELECT SUM\((\w+)\) FROM SCHEMA\((\w+), ([\w, ]+)\) WHERE (\w+) = '([\w-]+)'", query["Expression"]
            )
            assert m, query["Expression"]
            name, namespace, schema, key, value = m.groups()
            found.append((namespace, name, {"schema": schema, key: value}))
    return found


def _alarms(template: dict) -> dict[str, dict]:
    return _resources(template, "AWS::CloudWatch::Alarm")


def test_the_alarms_cover_errors_kms_refusals_refresh_and_rotation(template):
    assert set(_alarms(template)) == {
        "ApiErrorRateAlarm", "KmsThrottlingAlarm", "RefusalsAlarm", "RefreshFailuresAlarm", "KeyRotationOverdueAlarm",
    }


def test_every_alarm_watches_a_metric_that_aws_or_the_broker_emits(template):
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    emitted = _emitted_broker_metrics()
    assert {"Refusals", "Failures", "TokensMinted"} <= emitted, emitted
    for name, alarm in _alarms(template).items():
        metrics = _alarm_metrics(alarm)
        assert metrics, name
        for namespace, metric, dimensions in metrics:
            if namespace.startswith("AWS/"):
                assert (namespace, metric) in AWS_METRICS, (name, namespace, metric)
                continue
            assert namespace == variables["POWERTOOLS_METRICS_NAMESPACE"], name
            assert dimensions.get("service") == variables["POWERTOOLS_SERVICE_NAME"], name
            assert metric in emitted | PLANNED_METRICS, (name, metric)
            if metric not in emitted:
                # Until its function exists, no data must keep the alarm OK.
                assert alarm["Properties"]["TreatMissingData"] == "notBreaching", name


def test_the_refusals_alarm_sums_every_reason_of_the_metric_as_emitted(template):
    # Refusals are emitted with dimensions [reason, service]: a plain metric alarm on
    # service alone would read a series that does not exist and never fire.
    ((namespace, metric, dimensions),) = _alarm_metrics(template["Resources"]["RefusalsAlarm"])
    assert (namespace, metric) == ("OidcBroker", "Refusals")
    assert {d.strip() for d in dimensions["schema"].split(",")} == {"reason", "service"}
    observe = (REPO / "layers" / "broker" / "oidc_broker" / "observe.py").read_text()
    assert 'add_dimension(name="reason"' in observe


def test_the_kms_alarm_reads_the_usage_of_the_rsa_quota_that_signing_counts_against(template):
    ((namespace, metric, dimensions),) = _alarm_metrics(template["Resources"]["KmsThrottlingAlarm"])
    assert (namespace, metric) == ("AWS/Usage", "CallCount")
    assert dimensions == {"Service": "KMS", "Type": "API", "Resource": "CryptographicOperationsRsa", "Class": "None"}
    assert template["Resources"]["SigningKey"]["Properties"]["KeySpec"].startswith("RSA_")


def test_the_api_alarm_reads_this_stacks_api(template):
    for namespace, _, dimensions in _alarm_metrics(template["Resources"]["ApiErrorRateAlarm"]):
        assert namespace == "AWS/ApiGateway"
        assert dimensions == {"ApiId": {"Ref": "HttpApi"}}


def test_every_alarm_stays_ok_without_data_and_notifies_the_topic_only_when_given(template):
    actions = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for name, alarm in _alarms(template).items():
        props = alarm["Properties"]
        assert props["TreatMissingData"] == "notBreaching", name
        assert props["AlarmActions"] == props["OKActions"] == actions, name
        assert props.get("AlarmDescription"), name
