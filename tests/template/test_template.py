"""The SAM template: it lints, validates and builds, and its permissions stay least-privilege.

The lint/validate/build tests run the tools from .venv-tools (`make tools`) and checkov from
.venv-checkov (`make checkov`; `make test` builds both first); the structural tests read
template.yaml with a loader that keeps CloudFormation's short-form tags as their long-form dicts.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from oidc_broker_cli.yamlfile import TemplateLoader, load_template

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


# --- permissions: functions' IAM policies ---------------------------------------------------

TABLE = {"Fn::GetAtt": ["BrokerTable", "Arn"]}
# The only DynamoDB actions a function may have: each names its partition key, so
# dynamodb:LeadingKeys bounds it. Scan, Batch*, PartiQL and Transact* actions name none (or
# several per call), and ForAllValues is vacuously true for a request without leading keys.
# A TransactWriteItems call needs none of them: DynamoDB authorizes each of its items by that
# item's own action (PutItem, DeleteItem, ...) and leading key, so the key ring's transactions
# (store.change_key_ring: the key ring and rotation functions) are bounded like single writes.
ITEM_ACTIONS = {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:DeleteItem"}
WRITE_ACTIONS = {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem",
                 "dynamodb:TransactWriteItems", "dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate",
                 "dynamodb:PartiQLDelete"}
UNBOUNDED_ACTIONS = {"dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:TransactGetItems",
                     "dynamodb:TransactWriteItems", "dynamodb:PartiQLSelect", "dynamodb:PartiQLInsert",
                     "dynamodb:PartiQLUpdate", "dynamodb:PartiQLDelete", "dynamodb:ExecuteStatement",
                     "dynamodb:BatchExecuteStatement", "dynamodb:ExecuteTransaction"}
LEADING_KEY_OPERATORS = ("ForAllValues:StringEquals", "ForAllValues:StringLike")

# Which partitions (pk values or StringLike patterns) each function may touch, and how. Store
# (store.py) calls per function: the JWKS reads the ring; the minting functions read the
# configuration and the ring, share trusted issuers' key sets and record grants; only the exchange
# function caches credentials; only the key ring function adds keys and records the issuer.
PARTITIONS = {
    "JwksFunction": {"dynamodb:Query": ["KEYRING"]},
    "TokenFunction": {
        "dynamodb:GetItem": ["CONFIG", "ISSUERKEYS#*"],
        "dynamodb:Query": ["CONFIGBLOB#*", "KEYRING"],
        "dynamodb:PutItem": ["GRANT#*", "ISSUERKEYS#*"],
        "dynamodb:DeleteItem": ["GRANT#*"],
    },
    "ExchangeAwsFunction": {
        "dynamodb:GetItem": ["CACHE#*", "CONFIG", "ISSUERKEYS#*"],
        "dynamodb:Query": ["CONFIGBLOB#*", "KEYRING"],
        "dynamodb:PutItem": ["CACHE#*", "GRANT#*", "ISSUERKEYS#*"],
        "dynamodb:DeleteItem": ["CACHE#*", "GRANT#*"],
    },
    "ExchangeAzureFunction": {
        "dynamodb:GetItem": ["CACHE#*", "CONFIG", "ISSUERKEYS#*"],
        "dynamodb:Query": ["CONFIGBLOB#*", "KEYRING"],
        "dynamodb:PutItem": ["CACHE#*", "GRANT#*", "ISSUERKEYS#*"],
        "dynamodb:DeleteItem": ["CACHE#*", "GRANT#*"],
    },
    "ExchangeGcpFunction": {
        "dynamodb:GetItem": ["CACHE#*", "CONFIG", "ISSUERKEYS#*"],
        "dynamodb:Query": ["CONFIGBLOB#*", "KEYRING"],
        "dynamodb:PutItem": ["CACHE#*", "GRANT#*", "ISSUERKEYS#*"],
        "dynamodb:DeleteItem": ["CACHE#*", "GRANT#*"],
    },
    "KeyRingFunction": {"dynamodb:Query": ["KEYRING"], "dynamodb:PutItem": ["DEPLOYMENT", "KEYRING"]},
    # The key ring's keys and its STATE item, changed in transactions of conditional puts and deletes.
    "RotateKeysFunction": {"dynamodb:Query": ["KEYRING"], "dynamodb:PutItem": ["KEYRING"],
                           "dynamodb:DeleteItem": ["KEYRING"]},
    # The exchange functions' cache and grants, the cache's partitions queried, the recorded issuer;
    # no caller key sets (it verifies no caller).
    "RefreshFunction": {
        "dynamodb:GetItem": ["CACHE#*", "CONFIG", "DEPLOYMENT"],
        "dynamodb:Query": ["CACHE#*", "CONFIGBLOB#*", "KEYRING"],
        "dynamodb:PutItem": ["CACHE#*", "GRANT#*"],
        "dynamodb:DeleteItem": ["CACHE#*", "GRANT#*"],
    },
}


def _iam_like(pattern: str, value: str) -> bool:
    """IAM's wildcard match (`*` any run, `?` one character), as StringLike and Action use it."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE) is not None


def _grants(statement: dict, action: str) -> bool:
    """Whether an Allow statement's Action (patterns included) covers `action`."""
    assert "NotAction" not in statement, statement
    return statement["Effect"] == "Allow" and any(_iam_like(a, action) for a in _as_list(statement["Action"]))


def _dynamodb_statements(function: dict) -> list[dict]:
    return [s for s in _statements(function) if any(a.lower().startswith("dynamodb:") for a in _as_list(s["Action"]))]


def _leading_keys(statement: dict) -> tuple[str, list[str]]:
    """The statement's one dynamodb:LeadingKeys condition: (operator, values)."""
    (operator, keys), = statement["Condition"].items()
    (key, values), = keys.items()
    assert key == "dynamodb:LeadingKeys", statement
    return operator, _as_list(values)


def _may_touch(statement: dict, partition: str) -> bool:
    if not statement.get("Condition"):
        return True  # unbounded: every partition
    operator, values = _leading_keys(statement)
    if operator == "ForAllValues:StringEquals":
        return partition in values
    return any(_iam_like(v, partition) for v in values)


def test_every_policy_of_every_function_is_an_inline_document(template):
    # SAM policy templates and managed policy names would grant what these tests cannot see.
    for name, function in _functions(template).items():
        for policy in function["Properties"].get("Policies", []):
            assert isinstance(policy, dict) and set(policy) == {"Version", "Statement"}, (name, policy)


def test_no_function_statement_allows_every_action_or_every_resource(template):
    for name, function in _functions(template).items():
        for statement in _statements(function):
            actions = _as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (name, statement)
            if actions == ["kms:CreateKey"]:
                continue  # a key to be created has no ARN: CreateKey takes "*", bounded by its conditions
            assert "*" not in _as_list(statement["Resource"]), (name, statement)


def test_every_dynamodb_statement_of_every_function_is_bounded_by_its_leading_keys(template):
    found = 0
    for name, function in _functions(template).items():
        for statement in _dynamodb_statements(function):
            found += 1
            # The table itself: no index (the audit index is the operator's) and no other table.
            assert statement["Resource"] == TABLE, (name, statement)
            assert set(statement.get("Condition") or {}) <= set(LEADING_KEY_OPERATORS), (name, statement)
            assert statement.get("Condition"), f"{name}: {statement.get('Sid')} names no dynamodb:LeadingKeys"
            operator, values = _leading_keys(statement)
            assert operator in LEADING_KEY_OPERATORS, (name, statement)
            assert values and all(isinstance(v, str) and v.strip("*?") for v in values), (name, statement)
    assert found >= 4


def test_no_function_may_scan_batch_transact_or_use_partiql(template):
    for name, function in _functions(template).items():
        for statement in _dynamodb_statements(function):
            actions = _as_list(statement["Action"])
            # Exact action names only: a pattern such as dynamodb:*Item would also cover Batch*.
            assert set(actions) <= ITEM_ACTIONS, (name, statement)
            assert not any(_grants(statement, a) for a in UNBOUNDED_ACTIONS), (name, statement)


def test_each_function_touches_only_the_partitions_it_owns(template):
    seen = {}
    for name, function in _functions(template).items():
        for statement in _dynamodb_statements(function):
            _, values = _leading_keys(statement)
            for action in _as_list(statement["Action"]):
                seen.setdefault(name, {}).setdefault(action, set()).update(values)
    assert {n: {a: sorted(v) for a, v in actions.items()} for n, actions in seen.items()} == PARTITIONS


def _writers(template: dict, partition: str) -> set[str]:
    return {
        name
        for name, function in _functions(template).items()
        for statement in _dynamodb_statements(function)
        if any(_grants(statement, a) for a in WRITE_ACTIONS) and _may_touch(statement, partition)
    }


def test_only_the_key_ring_and_rotation_functions_write_the_key_ring(template):
    assert _writers(template, "KEYRING") == {"KeyRingFunction", "RotateKeysFunction"}
    assert _writers(template, "DEPLOYMENT") == {"KeyRingFunction"}


def test_no_function_writes_the_configuration(template):
    # CONFIG is written by `oidc-broker apply` with the operator's credentials only.
    assert _writers(template, "CONFIG") == set()


def test_the_leading_key_matcher_sees_patterns_that_cover_a_partition():
    # The checks above are only as good as this: a pattern or list that covers KEYRING is caught.
    like = {"Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["K*G"]}}}
    equals = {"Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["CONFIG", "KEYRING"]}}}
    assert _may_touch(like, "KEYRING") and _may_touch(equals, "KEYRING")
    assert not _may_touch({"Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["GRANT#*"]}}}, "KEYRING")
    assert _grants({"Effect": "Allow", "Action": "dynamodb:Batch*"}, "dynamodb:BatchWriteItem")


def test_the_token_function_reaches_the_table_but_not_its_indexes(template):
    dynamodb = _dynamodb_statements(template["Resources"]["TokenFunction"])
    actions = {a for s in dynamodb for a in _as_list(s["Action"])}
    assert actions == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:DeleteItem"}
    assert all(s["Resource"] == TABLE for s in dynamodb)


def test_the_discovery_function_gets_no_policies(template):
    assert "Policies" not in template["Resources"]["DiscoveryFunction"]["Properties"]


def test_the_exchange_function_reaches_only_the_table(template):
    actions = {a for s in _statements(template["Resources"]["ExchangeAwsFunction"]) for a in _as_list(s["Action"])}
    # STS AssumeRoleWithWebIdentity is unsigned; ECR is called with the assumed role's credentials;
    # its KMS uses are granted in the key policies.
    assert actions == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:DeleteItem"}


def test_the_key_ring_function_reads_the_ring_and_adds_items_only(template):
    actions = {a for s in _statements(template["Resources"]["KeyRingFunction"]) for a in _as_list(s["Action"])}
    # It queries the ring, adds a key with a conditional put and records the issuer: no delete.
    assert actions == {"dynamodb:Query", "dynamodb:PutItem"}


ROTATION_KMS_ACTIONS = {"kms:CreateKey", "kms:TagResource"}  # no key exists yet to name in a key policy


def test_no_function_iam_policy_grants_any_kms_action_but_creating_tagged_signing_keys(template):
    # Who may use a key is written in its key policy, naming the role; an IAM statement naming the
    # key would also make the key and the role depend on each other (a cycle). Creating a key can
    # only be granted in IAM: the rotation function's, for its own kind of key.
    for name, function in _functions(template).items():
        for statement in _statements(function):
            kms = {a for a in _as_list(statement["Action"]) if a.lower().startswith("kms:") or a == "*"}
            assert not kms or (name == "RotateKeysFunction" and kms <= ROTATION_KMS_ACTIONS), (name, statement)


def _rotation_kms_statements(template: dict) -> dict[str, dict]:
    return {a: s for s in _statements(template["Resources"]["RotateKeysFunction"])
            for a in _as_list(s["Action"]) if a.startswith("kms:")}


def test_the_rotation_function_creates_only_rsa_2048_signing_keys_tagged_as_the_stacks(template):
    kms = _rotation_kms_statements(template)
    assert set(kms) == ROTATION_KMS_ACTIONS
    create = kms["kms:CreateKey"]
    assert _as_list(create["Action"]) == ["kms:CreateKey"] and create["Resource"] == "*"
    tags = {"aws:RequestTag/oidc-broker:stack": {"Ref": "AWS::StackName"}, "aws:RequestTag/oidc-broker:purpose": "signing"}
    assert create["Condition"]["StringEquals"] == {"kms:KeySpec": "RSA_2048", "kms:KeyUsage": "SIGN_VERIFY",
                                                   "kms:KeyOrigin": "AWS_KMS", **tags}
    assert create["Condition"]["Bool"] == {"kms:MultiRegion": "false"}
    only_tags = {"aws:TagKeys": ["oidc-broker:stack", "oidc-broker:purpose"]}
    assert create["Condition"]["ForAllValues:StringEquals"] == only_tags
    tag = kms["kms:TagResource"]
    assert _as_list(tag["Action"]) == ["kms:TagResource"]
    assert tag["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/*"}
    assert tag["Condition"] == {"StringEquals": tags, "ForAllValues:StringEquals": only_tags}
    # rotation.py tags every key it creates with exactly these.
    from oidc_broker.rotation import NewKeys

    request = NewKeys(policy={}, stack="S").create_key_request()
    assert (request["KeySpec"], request["KeyUsage"]) == ("RSA_2048", "SIGN_VERIFY")
    assert {t["TagKey"]: t["TagValue"] for t in request["Tags"]} == {"oidc-broker:stack": "S", "oidc-broker:purpose": "signing"}


# --- permissions: the KMS key policies -----------------------------------------------------

ROOT = {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
# Every action that uses a key rather than administers it.
KMS_USE_ACTIONS = [
    "kms:Sign", "kms:Verify", "kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo",
    "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext", "kms:GenerateMac", "kms:VerifyMac", "kms:DeriveSharedSecret",
]
KEY_ADMINISTRATION = [
    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Revoke*",
    "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
]


def _role(function: str) -> dict:
    """The role SAM creates for a function without a Role: logical id <function>Role."""
    return {"Fn::GetAtt": [f"{function}Role", "Arn"]}


def _key_statements(template: dict, key: str) -> list[dict]:
    return template["Resources"][key]["Properties"]["KeyPolicy"]["Statement"]


def _principals(statement: dict) -> list:
    assert set(statement["Principal"]) == {"AWS"}, statement
    return _as_list(statement["Principal"]["AWS"])


def _key_users(template: dict, key: str, action: str) -> dict[str, dict]:
    """Who the key policy lets perform `action`: principal (JSON) -> the statement."""
    users = {}
    for statement in _key_statements(template, key):
        assert statement["Effect"] == "Allow" and "NotPrincipal" not in statement, statement
        if _grants(statement, action):
            for principal in _principals(statement):
                users[json.dumps(principal, sort_keys=True)] = statement
    return users


@pytest.mark.parametrize("key", ["SigningKey", "CacheKey", "KeyRingSealKey"])
def test_the_account_administers_each_key_but_cannot_use_it(template, key):
    (admin,) = [s for s in _key_statements(template, key) if ROOT in _principals(s)]
    assert _principals(admin) == [ROOT]
    assert admin["Action"] == KEY_ADMINISTRATION
    # Without a use action for the root, no IAM policy in the account can grant one with this key.
    assert [a for a in KMS_USE_ACTIONS if _grants(admin, a)] == []


@pytest.mark.parametrize("key", ["SigningKey", "CacheKey", "KeyRingSealKey"])
def test_every_key_policy_principal_is_the_account_or_a_function_role(template, key):
    allowed = [ROOT, *(_role(name) for name in _functions(template))]
    for statement in _key_statements(template, key):
        for principal in _principals(statement):
            assert principal in allowed, (key, statement)
        assert statement["Resource"] == "*"  # in a key policy: this key


def test_only_the_minting_functions_roles_may_sign_and_only_rs256(template):
    signers = _key_users(template, "SigningKey", "kms:Sign")
    assert sorted(signers) == sorted(json.dumps(_role(f), sort_keys=True)
                                     for f in ("TokenFunction", *_exchange_functions(template), "RefreshFunction"))
    for statement in signers.values():
        assert _as_list(statement["Action"]) == ["kms:Sign"]
        assert statement["Condition"] == {"StringEquals": {"kms:SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"}}


def test_only_the_key_ring_and_rotation_roles_and_the_administrators_read_the_public_key(template):
    readers = _key_users(template, "SigningKey", "kms:GetPublicKey")
    functions = ("KeyRingFunction", "RotateKeysFunction")
    assert sorted(readers) == sorted(json.dumps(p, sort_keys=True) for p in (ROOT, *(_role(f) for f in functions)))
    for function in functions:
        assert _as_list(readers[json.dumps(_role(function), sort_keys=True)]["Action"]) == ["kms:GetPublicKey"]


def test_only_the_rotation_role_and_the_administrators_take_the_signing_key_out_of_use(template):
    for action in ("kms:DisableKey", "kms:ScheduleKeyDeletion"):
        users = _key_users(template, "SigningKey", action)
        assert sorted(users) == sorted(json.dumps(p, sort_keys=True) for p in (ROOT, _role("RotateKeysFunction"))), action
    for action in ("kms:PutKeyPolicy", "kms:CreateGrant", "kms:EnableKey", "kms:CancelKeyDeletion"):
        assert set(_key_users(template, "SigningKey", action)) == {json.dumps(ROOT, sort_keys=True)}, action


def _sub_arns(value) -> list:
    """The role ARNs a `!Sub ${A.Arn},${B.Arn}` environment value names, as GetAtt expressions."""
    if "Fn::GetAtt" in value:
        return [value]
    names = re.findall(r"\$\{(\w+)\.Arn\}", value["Fn::Sub"])
    assert value["Fn::Sub"].replace(" ", "") == ",".join(f"${{{n}.Arn}}" for n in names), value
    return [{"Fn::GetAtt": [n, "Arn"]} for n in names]


def test_every_key_rotation_creates_gets_the_signing_keys_policy_from_the_templates_roles(template):
    # One policy for the template's key and every rotated one (rotation.signing_key_policy): the
    # roles the rotation function is told (its environment) are the roles SigningKey names.
    from oidc_broker.rotation import signing_key_policy

    variables = template["Resources"]["RotateKeysFunction"]["Properties"]["Environment"]["Variables"]
    (rotator,) = _sub_arns(variables["KEY_POLICY_ROTATOR"])
    expected = signing_key_policy(account_root=ROOT, signers=_sub_arns(variables["KEY_POLICY_SIGNERS"]),
                                  readers=_sub_arns(variables["KEY_POLICY_READERS"]), rotator=rotator)
    assert template["Resources"]["SigningKey"]["Properties"]["KeyPolicy"] == expected
    assert rotator == _role("RotateKeysFunction")
    # And the account root the function derives from its own role is the template's.
    from oidc_broker.rotation import account_root

    assert account_root("arn:aws:iam::123456789012:role/x") == ROOT["Fn::Sub"].replace(
        "${AWS::Partition}", "aws").replace("${AWS::AccountId}", "123456789012")


def test_the_signing_key_is_used_for_nothing_but_signing_and_publishing(template):
    for action in KMS_USE_ACTIONS:
        users = _key_users(template, "SigningKey", action)
        assert (action == "kms:Sign") is bool(users), action


def test_only_the_exchange_functions_role_gets_cache_data_keys_in_the_caches_context(template):
    roles = sorted(json.dumps(_role(f), sort_keys=True) for f in (*_exchange_functions(template), "RefreshFunction"))
    role = json.dumps(_role("ExchangeAwsFunction"), sort_keys=True)
    for action in KMS_USE_ACTIONS:
        users = _key_users(template, "CacheKey", action)
        assert sorted(users) == (roles if action in ("kms:GenerateDataKey", "kms:Decrypt") else []), action
    statement = _key_users(template, "CacheKey", "kms:Decrypt")[role]
    assert sorted(_as_list(statement["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert statement["Condition"] == {"StringEquals": {"kms:EncryptionContext:purpose": "oidc-broker credential cache"}}


def _exchange_functions(template: dict) -> dict[str, str]:
    """Every exchange function: logical id -> its cloud (the route is POST /exchange/<cloud>)."""
    return {name: props["Path"].removeprefix("/exchange/") for route, (name, props) in _routes(template).items()
            if route.startswith("POST /exchange/")}


def test_every_exchange_function_signs_caches_and_is_shaped_like_the_others(template):
    # What a new cloud's exchange function needs besides its code: the shared environment,
    # policies and checkov skips, its folder, and its role in both key policies.
    exchange = _exchange_functions(template)
    assert "ExchangeAwsFunction" in exchange
    signers = _key_users(template, "SigningKey", "kms:Sign")
    cachers = _key_users(template, "CacheKey", "kms:GenerateDataKey")
    model = template["Resources"]["ExchangeAwsFunction"]
    for name, cloud in exchange.items():
        function = template["Resources"][name]
        assert function["Properties"]["CodeUri"] == f"functions/exchange_{cloud}/", name
        for key in ("Environment", "Policies"):
            assert function["Properties"][key] == model["Properties"][key], (name, key)
        assert function["Metadata"] == model["Metadata"], name
        role = json.dumps(_role(name), sort_keys=True)
        assert role in signers and role in cachers, name


def _ring_readers(template: dict) -> set[str]:
    return {n for n, f in _functions(template).items() for s in _dynamodb_statements(f)
            if _grants(s, "dynamodb:Query") and _may_touch(s, "KEYRING")}


SEAL = {"Fn::GetAtt": ["KeyRingSealKey", "Arn"]}


def test_every_function_that_reads_the_key_ring_trusts_only_entries_with_the_stacks_seal(template):
    # keys.KeyRing publishes and signs only with entries the seal verifies (runtime.key_ring).
    readers = _ring_readers(template)
    assert readers == {"JwksFunction", "TokenFunction", *_exchange_functions(template), "RefreshFunction",
                       "KeyRingFunction", "RotateKeysFunction"}
    for name in readers:
        variables = template["Resources"][name]["Properties"]["Environment"]["Variables"]
        assert variables["KEY_RING_SEAL_KEY"] == SEAL, name
    for name, function in _functions(template).items():
        assert "SIGNING_KEY_ARNS" not in (function["Properties"].get("Environment") or {}).get("Variables", {}), name
    exchange = template["Resources"]["ExchangeAwsFunction"]["Properties"]["Environment"]["Variables"]
    assert exchange == {"CACHE_KEY_ID": {"Fn::GetAtt": ["CacheKey", "Arn"]}, "KEY_RING_SEAL_KEY": SEAL}


def test_the_seal_key_is_a_retained_hmac_key(template):
    key = template["Resources"]["KeyRingSealKey"]
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"
    assert (key["Properties"]["KeySpec"], key["Properties"]["KeyUsage"]) == ("HMAC_256", "GENERATE_VERIFY_MAC")
    assert _key_statements(template, "KeyRingSealKey")[0] == _key_statements(template, "SigningKey")[0]


def test_only_the_functions_that_add_keys_seal_and_every_ring_reader_verifies(template):
    sealers = _key_users(template, "KeyRingSealKey", "kms:GenerateMac")
    assert sorted(sealers) == sorted(json.dumps(_role(f), sort_keys=True) for f in ("KeyRingFunction", "RotateKeysFunction"))
    verifiers = _key_users(template, "KeyRingSealKey", "kms:VerifyMac")
    assert sorted(verifiers) == sorted(json.dumps(_role(f), sort_keys=True)
                                       for f in _ring_readers(template) - {"KeyRingFunction"})
    for statement in [*sealers.values(), *verifiers.values()]:
        assert len(_as_list(statement["Action"])) == 1
        assert statement["Condition"] == {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_256"}}
    for action in KMS_USE_ACTIONS:
        if action not in ("kms:GenerateMac", "kms:VerifyMac"):
            assert _key_users(template, "KeyRingSealKey", action) == {}, action


def test_the_cache_key_is_a_retained_symmetric_key_administered_by_the_account(template):
    key = template["Resources"]["CacheKey"]
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"
    props = key["Properties"]
    assert (props["KeySpec"], props["KeyUsage"], props["EnableKeyRotation"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", True)
    assert _key_statements(template, "CacheKey")[0] == _key_statements(template, "SigningKey")[0]


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
        "POST /exchange/azure": "ExchangeAzureFunction",
        "POST /exchange/gcp": "ExchangeGcpFunction",
    }
    for _, props in routes.values():
        assert props["ApiId"] == {"Ref": "HttpApi"}


def _module_names(path: Path) -> set[str]:
    """The names a module binds at its top level (def, assignment or import)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_every_function_handler_is_defined_in_its_code(template):
    # Handler is shared in Globals; CodeUri is each function's own folder.
    for name, function in _functions(template).items():
        props = function["Properties"]
        module, attribute = props.get("Handler", template["Globals"]["Function"].get("Handler")).split(".")
        source = REPO / props["CodeUri"] / f"{module}.py"
        assert source.is_file(), (name, source)
        assert attribute in _module_names(source), (name, source)


def test_the_key_ring_custom_resource_publishes_the_signing_key(template):
    key_ring = template["Resources"]["KeyRing"]
    assert key_ring["Type"] == "Custom::KeyRing"
    assert key_ring["Properties"] == {
        "ServiceToken": {"Fn::GetAtt": ["KeyRingFunction", "Arn"]},
        "KeyArn": {"Fn::GetAtt": ["SigningKey", "Arn"]},
        "IssuerUrl": template["Outputs"]["IssuerUrl"]["Value"],
    }


def test_the_key_ring_custom_resource_records_the_issuer_the_outputs_name(template):
    # `oidc-broker apply` compares a configuration's issuer with what the custom resource records.
    issuer = template["Resources"]["KeyRing"]["Properties"]["IssuerUrl"]
    assert issuer == {"Fn::If": ["HasIssuerUrl", {"Ref": "IssuerUrl"},
                                 {"Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}]}


@pytest.mark.parametrize(
    ("refs", "expected"),
    [
        ({"IssuerUrl": "http://127.0.0.1:3000"}, "http://127.0.0.1:3000"),
        ({"IssuerUrl": "", "HttpApi": "a1b2c3", "AWS::Region": "eu-west-1", "AWS::URLSuffix": "amazonaws.com"},
         "https://a1b2c3.execute-api.eu-west-1.amazonaws.com"),
    ],
    ids=["issuer-url", "api-domain"],
)
def test_local_mode_resolves_the_recorded_issuer_by_the_templates_conditions(refs, expected):
    from oidc_broker_cli.template import Template

    local = Template(TEMPLATE)
    assert local.resolve(local.resources["KeyRing"]["Properties"]["IssuerUrl"], refs) == expected


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
    environments = tomllib.loads((REPO / "samconfig.toml").read_text())
    assert all("PythonRuntime" not in str(section) for config in environments.values() if isinstance(config, dict)
               for section in config.values())
    makefile = (REPO / "Makefile").read_text()
    overrides = re.findall(r"sam (?:build|deploy)\b.*?(PythonRuntime=\S+)", makefile)
    assert len(overrides) == 2 and len(set(overrides)) == 1, overrides


def test_the_ci_environment_deploys_the_same_stack_without_a_question():
    environments = tomllib.loads((REPO / "samconfig.toml").read_text())
    default, ci = environments["default"]["deploy"]["parameters"], environments["ci"]["deploy"]["parameters"]
    assert ci["stack_name"] == default["stack_name"] and ci["capabilities"] == default["capabilities"]
    assert ci["confirm_changeset"] is False and ci["fail_on_empty_changeset"] is False
    dry = subprocess.run(["make", "-n", "deploy", "CONFIG_ENV=ci", "PARAMS=IssuerUrl=https://id.example.com"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in dry.splitlines() if "sam deploy" in line]
    assert "--config-env ci" in line and "--guided" not in line and line.endswith("IssuerUrl=https://id.example.com")
    interactive = subprocess.run(["make", "-n", "deploy"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "sam deploy --guided" in interactive


@pytest.mark.parametrize("path", sorted((REPO / "events").glob("*.json")), ids=lambda p: p.name)
def test_every_sample_event_targets_something_in_the_template(template, path):
    event = json.loads(path.read_text())
    if "routeKey" in event:
        assert event["version"] == "2.0"
        assert event["routeKey"] in _routes(template)
    elif event.get("detail-type") == "Scheduled Event":
        # EventBridge names a SAM Schedule's rule <stack>-<FunctionLogicalId><EventId>-<suffix>.
        (rule,) = event["resources"]
        scheduled = {f"{name}{event_id}" for name, function in _functions(template).items()
                     for event_id, e in function["Properties"].get("Events", {}).items() if e["Type"] == "Schedule"}
        name = rule.split(":rule/")[1].rsplit("-", 1)[0]
        assert event["source"] == "aws.events" and any(name.endswith(f"-{s}") for s in scheduled), rule
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


def _written(predicate) -> list[yaml.Node]:
    """Every node of template.yaml, as written, that `predicate` picks: a node reused by YAML alias
    is one node, however many resources read it."""
    found, seen = [], set()

    def walk(node: yaml.Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if predicate(node):
            found.append(node)
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                walk(key)
                walk(value)

    walk(yaml.compose(TEMPLATE.read_text(), Loader=TemplateLoader))  # noqa: S506 - a SafeLoader subclass
    return found


def _shape(node: yaml.Node):
    """A node's content, tags included, comparable across nodes."""
    if isinstance(node, yaml.ScalarNode):
        return node.tag, node.value
    if isinstance(node, yaml.SequenceNode):
        return node.tag, tuple(_shape(item) for item in node.value)
    return node.tag, tuple(sorted((_shape(k), _shape(v)) for k, v in node.value))


def _keys(node: yaml.Node) -> dict[str, yaml.Node]:
    return {k.value: v for k, v in node.value} if isinstance(node, yaml.MappingNode) else {}


def _written_twice(nodes: list[yaml.Node]) -> list:
    shapes = [_shape(node) for node in nodes]
    return sorted({shape for shape in shapes if shapes.count(shape) > 1})


def test_no_checkov_skip_reason_is_written_twice():
    # A reason that applies to several resources is written once and reused by alias, so it
    # cannot be corrected in one place and left stale in another.
    reasons = [_keys(n)["comment"] for n in _written(lambda n: {"id", "comment"} <= set(_keys(n)))]
    assert len(reasons) >= 5, "no checkov skip found: has the Metadata layout changed?"
    assert _written_twice(reasons) == []


def test_no_policy_statement_is_written_twice():
    # Functions that share a permission share its one statement (or policy document) by alias.
    statements = _written(lambda n: {"Effect", "Action"} <= set(_keys(n)))
    assert len(statements) >= 8
    assert _written_twice(statements) == []


def test_the_duplicate_finder_sees_two_copies_but_not_an_alias():
    # The two tests above are only as good as this: a copy is found, an alias is not.
    copies = yaml.compose("a: {Sid: X, Effect: Allow, Action: s3:GetObject}\nb: {Sid: X, Effect: Allow, Action: s3:GetObject}")
    alias = yaml.compose("a: &x {Sid: X, Effect: Allow, Action: s3:GetObject}\nb: *x")
    assert len(_written_twice([v for _, v in copies.value])) == 1
    assert _written_twice(list({id(v): v for _, v in alias.value}.values())) == []


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
PLANNED_METRICS: set[str] = set()
# Alarms for which no data is itself the alarm: a function that runs on a schedule, whatever the traffic.
BREACHING_WITHOUT_DATA = {"KeyRotationOverdueAlarm"}


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


def test_every_alarm_but_rotations_stays_ok_without_data_and_notifies_the_topic_only_when_given(template):
    actions = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for name, alarm in _alarms(template).items():
        props = alarm["Properties"]
        assert props["TreatMissingData"] == ("breaching" if name in BREACHING_WITHOUT_DATA else "notBreaching"), name
        assert props["AlarmActions"] == props["OKActions"] == actions, name
        assert props.get("AlarmDescription"), name


# --- the scheduled credential refresh -------------------------------------------------------


def test_the_refresh_runs_on_a_schedule_whose_rate_is_a_parameter(template):
    function = template["Resources"]["RefreshFunction"]["Properties"]
    assert function["CodeUri"] == "functions/refresh/"
    assert function["Events"] == {"Refresh": {"Type": "Schedule", "Properties": {"Schedule": {"Ref": "RefreshSchedule"}}}}
    parameter = template["Parameters"]["RefreshSchedule"]
    assert parameter["Default"] == "rate(5 minutes)"
    # The function reads the same rate to renew two runs ahead.
    assert function["Environment"]["Variables"]["REFRESH_SCHEDULE"] == {"Ref": "RefreshSchedule"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("rate(5 minutes)", 300), ("rate(1 minute)", 60), ("rate(60 minutes)", 3600), ("rate(1 hour)", 3600),
     ("rate(0 minutes)", None), ("rate(2 hours)", None), ("rate(1 minutes)", None), ("cron(0/5 * * * ? *)", None),
     ("rate(5 minutes) ", None), ("", None)],
)
def test_the_schedule_parameter_allows_only_rates_the_refresh_reads(template, value, seconds):
    from oidc_broker.refresh import rate_seconds

    allowed = re.fullmatch(template["Parameters"]["RefreshSchedule"]["AllowedPattern"], value) is not None
    assert allowed is (seconds is not None)
    if allowed:
        assert rate_seconds(value) == seconds


def test_the_refresh_runs_one_at_a_time_within_a_bounded_time(template):
    props = template["Resources"]["RefreshFunction"]["Properties"]
    assert props["ReservedConcurrentExecutions"] == 1
    assert template["Globals"]["Function"]["Timeout"] < props["Timeout"] <= 900


def test_the_refresh_shares_the_exchange_functions_statements_and_reads_no_caller_key_sets(template):
    exchange = {s["Sid"]: s for s in _statements(template["Resources"]["ExchangeAwsFunction"])}
    refresh = {s["Sid"]: s for s in _statements(template["Resources"]["RefreshFunction"])}
    # The same statements (one node each, by alias), less the caller key sets: it verifies no caller.
    assert set(exchange) - set(refresh) == {"ShareIssuerKeys"}
    for sid in set(exchange) & set(refresh):
        assert refresh[sid] == exchange[sid], sid
    # Its own: a Query of the cache's partitions (never a Scan) and the recorded issuer.
    assert {sid: (refresh[sid]["Action"], _leading_keys(refresh[sid])) for sid in set(refresh) - set(exchange)} == {
        "ListCacheEntries": ("dynamodb:Query", ("ForAllValues:StringLike", ["CACHE#*"])),
        "ReadDeployment": ("dynamodb:GetItem", ("ForAllValues:StringEquals", ["DEPLOYMENT"])),
    }
    variables = template["Resources"]["RefreshFunction"]["Properties"]["Environment"]["Variables"]
    model = template["Resources"]["ExchangeAwsFunction"]["Properties"]["Environment"]["Variables"]
    assert {k: variables[k] for k in model} == model


def test_the_refresh_function_is_named_in_the_outputs_for_the_cli(template):
    assert template["Outputs"]["RefreshFunctionName"]["Value"] == {"Ref": "RefreshFunction"}
    keys_cli = (REPO / "tools" / "oidc_broker_cli" / "refresh.py").read_text()
    assert 'Function("RefreshFunction", "RefreshFunctionName")' in keys_cli


def test_the_refresh_alarm_fires_on_repeated_failures_or_credentials_past_their_served_share(template):
    props = template["Resources"]["RefreshFailuresAlarm"]["Properties"]
    queries = {q["Id"]: q for q in props["Metrics"]}
    stats = {q["MetricStat"]["Metric"]["MetricName"]: (q["Id"], q["MetricStat"]["Stat"], q["MetricStat"]["Period"])
             for q in queries.values() if "MetricStat" in q}
    assert stats == {"RefreshFailures": ("failures", "Sum", 900), "RefreshMinRemaining": ("remaining", "Minimum", 900)}
    (result,) = [q for q in queries.values() if q.get("ReturnData")]
    assert result["Expression"] == "IF(FILL(failures, 0) >= 3, 1, 0) + IF(FILL(remaining, 1) <= 0, 1, 0)"
    assert (props["ComparisonOperator"], props["Threshold"], props["EvaluationPeriods"]) == (
        "GreaterThanOrEqualToThreshold", 1, 1)
    # Emitted with the service dimension only (the Refreshes series carry target and outcome).
    observe = (REPO / "layers" / "broker" / "oidc_broker" / "observe.py").read_text()
    assert 'metrics.add_metric(name="RefreshFailures"' in observe
    assert 'metrics.add_metric(name="RefreshMinRemaining"' in observe


# --- signing-key rotation -------------------------------------------------------------------


def test_the_rotation_function_runs_every_hour_under_the_name_the_cli_invokes(template):
    function = template["Resources"]["RotateKeysFunction"]["Properties"]
    assert function["CodeUri"] == "functions/rotate_keys/"
    assert function.get("Handler", template["Globals"]["Function"]["Handler"]) == "app.handler"
    # A literal schedule (local mode fires /_local/schedule/RotateKeysFunction/Rotation).
    assert function["Events"] == {"Rotation": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)"}}}
    assert template["Outputs"]["KeyRotationFunctionName"]["Value"] == {"Ref": "RotateKeysFunction"}
    cli = (REPO / "tools" / "oidc_broker_cli" / "keys.py").read_text()
    assert 'Function("RotateKeysFunction", "KeyRotationFunctionName")' in cli


def test_the_lifecycle_comes_from_the_parameters_and_the_jwks_and_rotation_read_the_same_max_age(template):
    jwks = template["Resources"]["JwksFunction"]["Properties"]["Environment"]["Variables"]
    rotate = template["Resources"]["RotateKeysFunction"]["Properties"]["Environment"]["Variables"]
    assert jwks["JWKS_MAX_AGE"] == rotate["JWKS_MAX_AGE"] == {"Ref": "JwksMaxAge"}
    assert rotate["KEY_ROTATION_PERIOD"] == {"Fn::Sub": "${KeyRotationPeriodDays}d"}
    assert rotate["STACK_NAME"] == {"Ref": "AWS::StackName"}
    parameters = template["Parameters"]
    assert (parameters["KeyRotationPeriodDays"]["Default"], parameters["JwksMaxAge"]["Default"]) == (90, 300)
    # The defaults are the code's own (runtime.lifecycle with nothing set).
    from oidc_broker.rotation import Lifecycle

    assert (Lifecycle().period, Lifecycle().jwks_max_age) == (90 * 86400, 300)
    # Every function with a key ring cache (KEY_RING_TTL) leaves it at the code's one default.
    for name, function in _functions(template).items():
        assert "KEY_RING_TTL" not in (function["Properties"].get("Environment") or {}).get("Variables", {}), name


def test_the_rotation_function_is_told_every_role_that_signs_and_reads_public_keys(template):
    variables = template["Resources"]["RotateKeysFunction"]["Properties"]["Environment"]["Variables"]
    signers = _key_users(template, "SigningKey", "kms:Sign")
    assert sorted(json.dumps(a, sort_keys=True) for a in _sub_arns(variables["KEY_POLICY_SIGNERS"])) == sorted(signers)
    readers = _key_users(template, "SigningKey", "kms:GetPublicKey")
    assert sorted(json.dumps(a, sort_keys=True) for a in _sub_arns(variables["KEY_POLICY_READERS"])) == sorted(
        r for r in readers if r != json.dumps(ROOT, sort_keys=True))


def test_the_overdue_alarm_fires_a_week_past_the_period_or_when_rotation_stops_running(template):
    props = template["Resources"]["KeyRotationOverdueAlarm"]["Properties"]
    queries = {q["Id"]: q for q in props["Metrics"]}
    metric = queries["age"]["MetricStat"]
    assert (metric["Metric"]["MetricName"], metric["Stat"], metric["Period"]) == ("KeyRotationAge", "Maximum", 86400)
    assert queries["overdue"]["Expression"] == {"Fn::Sub": "age / 86400 - ${KeyRotationPeriodDays}"}
    assert queries["overdue"]["ReturnData"] is True and queries["age"]["ReturnData"] is False
    assert (props["ComparisonOperator"], props["Threshold"], props["TreatMissingData"]) == (
        "GreaterThanThreshold", 7, "breaching")
    assert "${KeyRotationPeriodDays}" in props["AlarmDescription"]["Fn::Sub"]
    source = (REPO / "functions" / "rotate_keys" / "app.py").read_text()
    assert 'add_metric(name="KeyRotationAge", unit=MetricUnit.Seconds' in source
