"""oidc_broker_cli/trust.py and `oidc-broker trust-policy --format`: each ready-to-paste form carries
exactly the trust the JSON setup decides, read back by parsing what was printed (json, shlex, YAML,
the Terraform attributes), never by comparing snapshots.

The parsers here are also what tests/integration/test_trust_formats_emulators.py uses to take the
printed setup to the verifying emulators.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from oidc_broker import config as config_module
from oidc_broker.clouds import CLOUDS
from oidc_broker_cli.trust import FORMATS, TrustFormatError, render

ROOT = Path(__file__).resolve().parents[2]
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
        aws: {role_arn: "arn:aws:iam::123456789012:role/ci/pull", region: us-east-1}
      - name: deploy
        kind: account
        provider: aws
        subject: [space, environment, account]
        aws: {role_arn: "arn:aws:iam::123456789012:role/deploy", region: us-east-1}
      - name: acr
        kind: feed
        provider: azure
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 66666666-7777-8888-9999-000000000000, registry: acme.azurecr.io}
      - name: azure-deploy
        kind: account
        provider: azure
        subject: [space, environment, account]
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 66666666-7777-8888-9999-000000000001}
      - name: gar
        kind: feed
        provider: gcp
        gcp:
          workload_identity_provider: projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker
          registry: europe-docker.pkg.dev
      - name: gsa
        kind: account
        provider: gcp
        gcp:
          workload_identity_provider: projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker
          service_account: deploy@proj.iam.gserviceaccount.com
    trust:
      - name: app-main
        issuer: github
        claims: {repository_owner_id: "7", repository: acme/app, ref: refs/heads/main}
        targets: [prod-ecr, acr, gar, gsa]
      - name: app-deploy
        issuer: github
        claims: {repository_owner_id: "7", repository: acme/app, ref: refs/heads/main, environment: [production, staging]}
        targets: [deploy, azure-deploy]
        context: {environment: {claim: environment}}
"""


# -- reading back what was printed -------------------------------------------------------------------

def shell_commands(text: str) -> list[list[str]]:
    """The command lines of a script (comments, `:` checks and heredoc bodies left out), as shell words."""
    commands, in_heredoc, pending = [], False, ""
    for line in text.splitlines():
        if in_heredoc:
            in_heredoc = line != "EOF"
            continue
        if pending:  # a quoted word holding a newline goes on
            line = pending + "\n" + line
        elif "<<'EOF'" in line:
            in_heredoc = True
            continue
        elif not line.strip() or line.startswith(("#", ": ")):
            continue
        try:
            commands.append(shlex.split(line))
            pending = ""
        except ValueError:
            pending = line
    assert not pending and not in_heredoc, "an unclosed quote or heredoc"
    return commands


def heredocs(text: str) -> dict[str, str]:
    """`cat > FILE <<'EOF'` bodies by FILE."""
    return {shlex.split(m.group(1))[0]: m.group(2)
            for m in re.finditer(r"^cat > (.+?) <<'EOF'\n(.*?)\nEOF$", text, re.M | re.S)}


def flags(words: list[str]) -> dict[str, list[str]]:
    """`--flag value...` and `--flag=value` words as {flag: [values]} (a flag's values run to the next flag)."""
    out: dict[str, list[str]] = {}
    current = None
    for word in words:
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            current = out.setdefault(name, [])
            if eq:
                current.append(value)
        elif current is not None:
            current.append(word)
    return out


def command(text: str, *prefix: str) -> list[list[str]]:
    """The command lines starting with these words."""
    return [words for words in shell_commands(text) if words[:len(prefix)] == list(prefix)]


def _hcl_value(text: str) -> Any:
    m = re.fullmatch(r"jsonencode\((.*)\)", text)
    raw = (m.group(1) if m else text).replace("$${", "${").replace("%%{", "%{")
    try:
        return json.loads(raw)
    except ValueError:
        return {"expression": text}


def terraform_blocks(text: str) -> list[dict[str, Any]]:
    """Top-level Terraform blocks as {keyword, type, name, attributes} (a nested block: a dict attribute).
    Reads the layout trust.py writes: one attribute per line, literals as JSON, template escapes undone."""
    blocks: list[dict[str, Any]] = []
    stack: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        if m := re.fullmatch(r'(resource|data|variable) "([\w-]+)"(?: "([\w-]+)")? \{', line):
            block = {"keyword": m.group(1), "type": m.group(2), "name": m.group(3), "attributes": {}}
            blocks.append(block)
            stack = [block["attributes"]]
        elif m := re.fullmatch(r"\s+(\w+) \{", line):
            stack[-1][m.group(1)] = {}
            stack.append(stack[-1][m.group(1)])
        elif re.fullmatch(r"\s*\}", line):
            stack.pop()
        else:
            m = re.fullmatch(r"\s+(\w+) = (.*)", line)
            assert m and stack, f"not Terraform as trust.py writes it: {line!r}"
            stack[-1][m.group(1)] = _hcl_value(m.group(2))
    assert not stack, "an unclosed Terraform block"
    return blocks


def resources(text: str, kind: str) -> list[dict[str, Any]]:
    return [b["attributes"] for b in terraform_blocks(text) if b["keyword"] == "resource" and b["type"] == kind]


def aws_policies(text: str, fmt: str) -> list[dict[str, Any]]:
    """The role trust policy in each form (every place the form states it)."""
    if fmt == "json":
        return [json.loads(text)]
    if fmt == "commands":
        files = heredocs(text)
        used = [flags(w).get("--assume-role-policy-document", flags(w).get("--policy-document"))[0]
                for w in command(text, "aws", "iam", "create-role") + command(text, "aws", "iam", "update-assume-role-policy")]
        assert used and all(u.removeprefix("file://") in files for u in used)
        return [json.loads(files[u.removeprefix("file://")]) for u in used]
    if fmt == "terraform":
        return [r["assume_role_policy"] for r in resources(text, "aws_iam_role")]
    template = yaml.safe_load(text)
    return [r["Properties"]["AssumeRolePolicyDocument"] for r in template["Resources"].values()
            if r["Type"] == "AWS::IAM::Role"]


def aws_provider(text: str, fmt: str) -> tuple[str, list[str]]:
    """(url, client ids) of the OIDC provider a form creates."""
    if fmt == "commands":
        (words,) = command(text, "aws", "iam", "create-open-id-connect-provider")
        f = flags(words)
        return f["--url"][0], f["--client-id-list"]
    if fmt == "terraform":
        (r,) = resources(text, "aws_iam_openid_connect_provider")
        return r["url"], r["client_id_list"]
    (r,) = [r for r in yaml.safe_load(text)["Resources"].values() if r["Type"] == "AWS::IAM::OIDCProvider"]
    return r["Properties"]["Url"], r["Properties"]["ClientIdList"]


def azure_credentials(text: str, fmt: str) -> dict[str, list[dict[str, Any]]]:
    """{"app": [...], "identity": [...]}: the federated credentials each variant registers, as
    {name, issuer, subject, audiences}."""
    if fmt == "json":
        made = json.loads(text)
        made = made if isinstance(made, list) else [made]
        return {"app": made, "identity": made}
    if fmt == "commands":
        app = [json.loads(flags(w)["--parameters"][0]) for w in command(text, "az", "ad", "app", "federated-credential")]
        identity = [{"name": f["--name"][0], "issuer": f["--issuer"][0], "subject": f["--subject"][0],
                     "audiences": f["--audiences"]}
                    for f in map(flags, command(text, "az", "identity", "federated-credential", "create"))]
        return {"app": app, "identity": identity}
    app = [{"name": r["display_name"], "issuer": r["issuer"], "subject": r["subject"], "audiences": r["audiences"]}
           for r in resources(text, "azuread_application_federated_identity_credential")]
    identity = [{"name": r["name"], "issuer": r["issuer"], "subject": r["subject"], "audiences": r["audience"]}
                for r in resources(text, "azurerm_federated_identity_credential")]
    return {"app": app, "identity": identity}


def gcp_provider(text: str, fmt: str) -> dict[str, Any]:
    """{name, issuer_uri, allowed_audiences, attribute_mapping, attribute_condition} of the provider."""
    if fmt == "json":
        spec = json.loads(text)["provider"]
        return {"name": spec["name"], "issuer_uri": spec["oidc"]["issuerUri"],
                "allowed_audiences": spec["oidc"]["allowedAudiences"], "attribute_mapping": spec["attributeMapping"],
                "attribute_condition": spec["attributeCondition"]}
    if fmt == "commands":
        (words,) = command(text, "gcloud", "iam", "workload-identity-pools", "providers", "create-oidc")
        f = flags(words)
        assert f["--location"] == ["global"]
        mapping = dict(pair.split("=", 1) for pair in f["--attribute-mapping"][0].split(","))
        return {"name": f"projects/{f['--project'][0]}/locations/global/workloadIdentityPools/"
                        f"{f['--workload-identity-pool'][0]}/providers/{words[5]}",
                "issuer_uri": f["--issuer-uri"][0],
                "allowed_audiences": f["--allowed-audiences"][0].split(",") if "--allowed-audiences" in f else [],
                "attribute_mapping": mapping, "attribute_condition": f["--attribute-condition"][0]}
    (r,) = resources(text, "google_iam_workload_identity_pool_provider")
    return {"name": f"projects/{r['project']}/locations/global/workloadIdentityPools/"
                    f"{r['workload_identity_pool_id']}/providers/{r['workload_identity_pool_provider_id']}",
            "issuer_uri": r["oidc"]["issuer_uri"], "allowed_audiences": r["oidc"].get("allowed_audiences", []),
            "attribute_mapping": r["attribute_mapping"], "attribute_condition": r["attribute_condition"]}


def gcp_bindings(text: str, fmt: str) -> list[tuple[str, str, str]]:
    """(resource: a service account e-mail or a project number, role, member) of each IAM binding."""
    if fmt == "commands":
        out = [(w[4], flags(w)["--role"][0], flags(w)["--member"][0])
               for w in command(text, "gcloud", "iam", "service-accounts", "add-iam-policy-binding")]
        return out + [(w[3], flags(w)["--role"][0], flags(w)["--member"][0])
                      for w in command(text, "gcloud", "projects", "add-iam-policy-binding")]
    out = [(r["service_account_id"].removeprefix("projects/-/serviceAccounts/"), r["role"], r["member"])
           for r in resources(text, "google_service_account_iam_member")]
    return out + [(r["project"], r["role"].get("expression") if isinstance(r["role"], dict) else r["role"], r["member"])
                  for r in resources(text, "google_project_iam_member")]


# -- the forms, from a configuration ---------------------------------------------------------------

@pytest.fixture(scope="module")
def config():
    return config_module.parse(yaml.safe_load(CONFIG), "broker.yaml")


def setup_of(config, ref: str):
    target = config.target(ref)
    return CLOUDS[target.provider].trust_setup(config.issuer, target, config.subject_patterns(target)), target


def printed(config, ref: str, fmt: str) -> str:
    setup, target = setup_of(config, ref)
    return render(target.provider, fmt, setup, target, config.issuer)


@pytest.mark.parametrize("ref", ["default/prod-ecr", "default/deploy"])
@pytest.mark.parametrize("fmt", ["commands", "terraform", "cloudformation"])
def test_every_aws_form_states_the_json_policy_and_the_issuers_provider(config, ref, fmt):
    setup, target = setup_of(config, ref)
    text = printed(config, ref, fmt)
    assert aws_policies(text, fmt) and all(p == setup for p in aws_policies(text, fmt))
    assert aws_provider(text, fmt) == ("https://id.example.com", ["sts.amazonaws.com"])


def test_the_aws_commands_name_the_targets_role_and_its_path(config):
    text = printed(config, "default/prod-ecr", "commands")
    (create,) = command(text, "aws", "iam", "create-role")
    assert flags(create)["--role-name"] == ["pull"] and flags(create)["--path"] == ["/ci/"]
    (update,) = command(text, "aws", "iam", "update-assume-role-policy")
    assert flags(update)["--role-name"] == ["pull"]


def test_cloudformation_names_the_role_and_uses_no_tags(config):
    text = printed(config, "default/prod-ecr", "cloudformation")
    assert "!" not in text.split("Resources:", 1)[1]
    role = next(r for r in yaml.safe_load(text)["Resources"].values() if r["Type"] == "AWS::IAM::Role")
    assert role["Properties"]["RoleName"] == "pull" and role["Properties"]["Path"] == "/ci/"


@pytest.mark.parametrize("ref, n", [("default/acr", 1), ("default/azure-deploy", 2)])
@pytest.mark.parametrize("fmt", ["commands", "terraform"])
def test_every_azure_form_registers_the_json_credentials_for_the_app_and_the_managed_identity(config, ref, n, fmt):
    setup, target = setup_of(config, ref)
    wanted = [{k: c[k] for k in ("name", "issuer", "subject", "audiences")} for c in (setup if n > 1 else [setup])]
    text = printed(config, ref, fmt)
    got = azure_credentials(text, fmt)
    assert [{k: c[k] for k in ("name", "issuer", "subject", "audiences")} for c in got["app"]] == wanted
    assert got["identity"] == wanted
    assert f"{n} federated credential{'s' if n > 1 else ''} of the 20 Entra allows" in text


def test_the_azure_commands_are_for_the_targets_app(config):
    text = printed(config, "default/azure-deploy", "commands")
    ids = {flags(w)["--id"][0] for w in command(text, "az", "ad", "app", "federated-credential", "create")}
    assert ids == {"66666666-7777-8888-9999-000000000001"}
    for f in map(flags, command(text, "az", "identity", "federated-credential", "create")):
        assert f["--identity-name"] == ["$IDENTITY_NAME"] and f["--resource-group"] == ["$RESOURCE_GROUP"]


def test_the_azure_terraform_finds_the_app_by_its_client_id(config):
    blocks = terraform_blocks(printed(config, "default/acr", "terraform"))
    (app,) = [b for b in blocks if b["keyword"] == "data"]
    assert app["type"] == "azuread_application"
    assert app["attributes"] == {"client_id": "66666666-7777-8888-9999-000000000000"}
    (cred,) = resources(printed(config, "default/acr", "terraform"), "azuread_application_federated_identity_credential")
    assert cred["application_id"] == {"expression": f"data.azuread_application.{app['name']}.id"}


@pytest.mark.parametrize("ref", ["default/gar", "default/gsa"])
@pytest.mark.parametrize("fmt", ["commands", "terraform"])
def test_every_google_form_creates_the_json_provider(config, ref, fmt):
    assert gcp_provider(printed(config, ref, fmt), fmt) == gcp_provider(printed(config, ref, "json"), "json")


@pytest.mark.parametrize("fmt", ["commands", "terraform"])
def test_an_impersonated_target_lets_exactly_its_subject_use_the_service_account(config, fmt):
    setup, _ = setup_of(config, "default/gsa")
    member = ("principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/"
              "pipelines/subject/space:default:account:gsa")
    assert setup["bindings"][0]["members"] == [member]
    assert gcp_bindings(printed(config, "default/gsa", fmt), fmt) == [
        ("deploy@proj.iam.gserviceaccount.com", "roles/iam.workloadIdentityUser", member)]


@pytest.mark.parametrize("fmt", ["commands", "terraform"])
def test_a_directly_federated_target_grants_its_subject_the_role_the_operator_names(config, fmt):
    member = ("principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/"
              "pipelines/subject/space:default:feed:gar")
    role = "$ROLE" if fmt == "commands" else "var.role"
    assert gcp_bindings(printed(config, "default/gar", fmt), fmt) == [("123456789012", role, member)]


@pytest.mark.parametrize("ref", ["default/acr", "default/gar"])
def test_cloudformation_refuses_other_clouds_in_one_line_naming_what_can(config, ref):
    with pytest.raises(TrustFormatError) as e:
        printed(config, ref, "cloudformation")
    assert "CloudFormation cannot manage" in str(e.value) and "\n" not in str(e.value)
    assert "--format terraform" in str(e.value) and "--format commands" in str(e.value)


# -- untrusted text stays text ---------------------------------------------------------------------

HOSTILE = "x'; rm -rf / #$(id)`id`${path.module}%{if 1}\"\\\n"


class Target:
    ref = "s/t'$(id)\nrm -rf /"  # a newline in a comment would start a command
    audience = HOSTILE

    def __init__(self, settings: dict[str, str]):
        self.settings = settings

    def setting(self, key: str):
        return self.settings.get(key)


def test_aws_forms_carry_hostile_values_exactly():
    from oidc_broker.clouds.aws import trust_policy

    policy = trust_policy("123456789012", "https://id.example.com/" + HOSTILE, HOSTILE, [HOSTILE, "b"])
    target = Target({"role_arn": "arn:aws:iam::123456789012:role/x"})
    for fmt in ("commands", "terraform", "cloudformation"):
        text = render("aws", fmt, policy, target, "https://id.example.com/" + HOSTILE)
        assert aws_policies(text, fmt) == [policy] * len(aws_policies(text, fmt)), fmt
        assert aws_provider(text, fmt) == ("https://id.example.com/" + HOSTILE, [HOSTILE]), fmt
    assert {w[0] for w in shell_commands(render("aws", "commands", policy, target, HOSTILE))} == {"aws"}


def test_azure_forms_carry_hostile_values_exactly():
    made = {"name": HOSTILE, "issuer": HOSTILE, "subject": HOSTILE, "audiences": [HOSTILE], "description": HOSTILE}
    target = Target({"client_id": HOSTILE})
    for fmt in ("commands", "terraform"):
        got = azure_credentials(render("azure", fmt, made, target, HOSTILE), fmt)
        assert got["identity"] == [{k: made[k] for k in ("name", "issuer", "subject", "audiences")}], fmt
        assert got["app"][0]["subject"] == HOSTILE
    assert {w[0] for w in shell_commands(render("azure", "commands", made, target, HOSTILE))} == {"az"}


def test_google_forms_carry_hostile_values_exactly():
    name = "projects/1/locations/global/workloadIdentityPools/p/providers/x"
    setup = {"provider": {"name": name, "oidc": {"issuerUri": HOSTILE, "allowedAudiences": [HOSTILE]},
                          "attributeMapping": {"google.subject": "assertion.sub"}, "attributeCondition": HOSTILE},
             "bindings": [{"serviceAccount": "a@b", "role": "roles/iam.workloadIdentityUser", "members": [HOSTILE]}]}
    for fmt in ("commands", "terraform"):
        text = render("gcp", fmt, setup, Target({}), HOSTILE)
        got = gcp_provider(text, fmt)
        assert got["issuer_uri"] == HOSTILE and got["attribute_condition"] == HOSTILE, fmt
        assert got["allowed_audiences"] == [HOSTILE]
        assert gcp_bindings(text, fmt) == [("a@b", "roles/iam.workloadIdentityUser", HOSTILE)]
    assert {w[0] for w in shell_commands(render("gcp", "commands", setup, Target({}), HOSTILE))} == {"gcloud"}


# -- the command ------------------------------------------------------------------------------------

def cli(*args: str, config_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "trust-policy", *args,
                           "--config", str(config_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("trust") / "broker.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("cloud, ref", [("aws", "default/deploy"), ("azure", "default/azure-deploy"),
                                        ("gcp", "default/gsa")])
def test_json_stays_the_default_and_the_same_bytes(config, config_path, cloud, ref):
    setup, _ = setup_of(config, ref)
    plain = cli(cloud, "--target", ref, config_path=config_path)
    explicit = cli(cloud, "--target", ref, "--format", "json", config_path=config_path)
    assert plain.returncode == explicit.returncode == 0, plain.stderr
    assert plain.stdout == explicit.stdout == json.dumps(setup, indent=2) + "\n"


@pytest.mark.parametrize("cloud, ref, fmt", [("aws", "default/prod-ecr", "commands"),
                                             ("aws", "default/prod-ecr", "cloudformation"),
                                             ("azure", "default/acr", "terraform"), ("gcp", "default/gar", "commands")])
def test_the_command_prints_the_rendered_form(config, config_path, cloud, ref, fmt):
    result = cli(cloud, "--target", ref, "--format", fmt, config_path=config_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed(config, ref, fmt) + "\n"
    as_json = cli(cloud, "--target", ref, "--format", fmt, "--output", "json", config_path=config_path)
    assert json.loads(as_json.stdout) == {"target": ref, "format": fmt, "text": printed(config, ref, fmt)}


@pytest.mark.parametrize("cloud, ref", [("azure", "default/acr"), ("gcp", "default/gsa")])
def test_the_command_refuses_cloudformation_for_azure_and_google_in_one_line(config_path, cloud, ref):
    result = cli(cloud, "--target", ref, "--format", "cloudformation", config_path=config_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "CloudFormation cannot manage" in result.stderr and "--format terraform" in result.stderr


def test_an_unknown_format_is_a_usage_error_in_one_line(config_path):
    result = cli("aws", "--target", "default/prod-ecr", "--format", "pulumi", config_path=config_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "--format" in result.stderr


def test_formats_are_the_ones_the_command_offers():
    from oidc_broker_cli.main import build_parser

    parser = build_parser()[0]
    sub = next(a for a in parser._actions if a.dest == "command")
    (fmt,) = [a for a in sub.choices["trust-policy"]._actions if a.dest == "format"]
    assert tuple(fmt.choices) == FORMATS and fmt.default == "json"
