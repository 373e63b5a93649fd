"""`oidc-broker trust-policy --format`: a target's cloud-side trust, ready to paste.

Each cloud's `trust_setup` (layers/broker/oidc_broker/clouds/) decides *what* the cloud must trust:
exactly the subjects the broker mints for one target. This module only renders that decision in
the forms an operator pastes: `json` (the setup itself), `commands` (the cloud's CLI), `terraform`
and `cloudformation`. Pure functions: a setup dict, the target and the issuer in, text out.

Every value comes from configuration, and configuration is text someone typed: shell words are
quoted with shlex.quote, Terraform strings escape `${` and `%{`, YAML scalars are JSON strings.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Callable

FORMATS = ("json", "commands", "terraform", "cloudformation")
MAX_FEDERATED_CREDENTIALS = 20  # Entra, per app registration or managed identity
TITLES = {"aws": "AWS", "azure": "Azure", "gcp": "Google Cloud"}


class TrustFormatError(ValueError):
    """A format the cloud cannot take (one line, naming the formats it can)."""


def render(cloud: str, fmt: str, setup: Any, target: Any, issuer: str) -> str:
    """The target's trust setup as `fmt` for `cloud` (aws, azure or gcp); TrustFormatError if it has none."""
    if fmt == "json":
        return json.dumps(setup, indent=2)
    renderer = RENDERERS.get((cloud, fmt))
    if renderer is None:
        raise TrustFormatError(f"CloudFormation cannot manage {TITLES.get(cloud, cloud)} resources: use "
                               "--format terraform or --format commands")
    return renderer(setup, target, issuer).rstrip("\n")


# -- quoting ---------------------------------------------------------------------------------------

def sh(*words: str) -> str:
    """One shell command line, each word quoted as needed."""
    return " ".join(shlex.quote(str(w)) for w in words)


def said(value: Any) -> str:
    """A value as a comment may show it: one line, no control characters (a newline would end the comment)."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", str(value))


def hcl(value: Any) -> str:
    """A Terraform (HCL) literal: JSON, with template sequences escaped so no value interpolates."""
    return json.dumps(value).replace("${", "$${").replace("%{", "%%{")


def yaml_scalar(value: Any) -> str:
    """A YAML flow value: JSON is YAML, so a JSON string or object can hold any text safely."""
    return json.dumps(value)


def slug(text: str) -> str:
    """A name Terraform and CloudFormation accept for a resource: letters, digits, underscores."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "target"


def camel(text: str) -> str:
    """A CloudFormation logical ID: alphanumeric only."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text)) or "Target"


def tf_block(kind: str, name: str, attributes: list[tuple[str, Any]], keyword: str = "resource") -> str:
    """A Terraform block whose attributes are literals (a nested block is given as a str body)."""
    lines = [f'{keyword} "{kind}" "{name}" {{']
    for key, value in attributes:
        if isinstance(value, Raw):
            lines.append(f"  {key} = {value.text}")
        elif isinstance(value, Block):
            lines.append(f"  {key} {{")
            lines += [f"    {k} = {v.text if isinstance(v, Raw) else hcl(v)}" for k, v in value.attributes]
            lines.append("  }")
        else:
            lines.append(f"  {key} = {hcl(value)}")
    lines.append("}")
    return "\n".join(lines)


class Raw:
    """A Terraform expression written as is (a reference or a function call)."""

    def __init__(self, text: str):
        self.text = text


class Block:
    """A nested Terraform block."""

    def __init__(self, attributes: list[tuple[str, Any]]):
        self.attributes = attributes


# -- AWS -------------------------------------------------------------------------------------------

def _role(target: Any) -> tuple[str, str]:
    """(name, path) of the target's role ARN."""
    rest = target.setting("role_arn").split(":role", 1)[1]
    path, _, name = rest.rpartition("/")
    return name, f"{path}/" if path else "/"


def _aws_audiences(setup: dict[str, Any]) -> list[str]:
    aud = next(v for k, v in setup["Statement"][0]["Condition"]["StringEquals"].items() if k.endswith(":aud"))
    return aud if isinstance(aud, list) else [aud]


def aws_commands(setup: dict[str, Any], target: Any, issuer: str) -> str:
    name, path = _role(target)
    policy_file = f"trust-policy-{slug(target.ref).replace('_', '-')}.json"
    return "\n".join([
        "# The broker's issuer as an IAM OIDC provider (once per account; EntityAlreadyExists: it is there)",
        sh("aws", "iam", "create-open-id-connect-provider", "--url", issuer,
           "--client-id-list", *_aws_audiences(setup)),
        f"# Role {said(name)}'s trust policy: only tokens for target {said(target.ref)}",
        f"cat > {shlex.quote(policy_file)} <<'EOF'",
        json.dumps(setup, indent=2),
        "EOF",
        "# A new role:",
        sh("aws", "iam", "create-role", "--role-name", name, "--path", path,
           "--assume-role-policy-document", f"file://{policy_file}"),
        "# Or, for the role as it exists:",
        sh("aws", "iam", "update-assume-role-policy", "--role-name", name, "--policy-document", f"file://{policy_file}"),
    ])


def aws_terraform(setup: dict[str, Any], target: Any, issuer: str) -> str:
    name, path = _role(target)
    provider = tf_block("aws_iam_openid_connect_provider", "oidc_broker",
                        [("url", issuer), ("client_id_list", _aws_audiences(setup))])
    role = "\n".join([
        f'resource "aws_iam_role" "{slug(target.ref)}" {{',
        f"  name = {hcl(name)}",
        f"  path = {hcl(path)}",
        f"  # Only tokens for target {said(target.ref)}",
        f"  assume_role_policy = jsonencode({hcl(setup)})",
        "}",
    ])
    return "\n".join([f"# The broker's issuer (once per account) and the role for target {said(target.ref)}",
                      provider, "", role])


def aws_cloudformation(setup: dict[str, Any], target: Any, issuer: str) -> str:
    name, path = _role(target)
    return "\n".join([
        'AWSTemplateFormatVersion: "2010-09-09"',
        f"Description: {yaml_scalar(f'oidc-broker: trust for target {said(target.ref)}')}",
        "Resources:",
        "  OidcBrokerProvider:  # once per account: drop it where the provider exists",
        "    Type: AWS::IAM::OIDCProvider",
        "    Properties:",
        f"      Url: {yaml_scalar(issuer)}",
        f"      ClientIdList: {yaml_scalar(_aws_audiences(setup))}",
        f"  {camel(target.ref)}Role:",
        "    Type: AWS::IAM::Role",
        "    Properties:",
        f"      RoleName: {yaml_scalar(name)}",
        f"      Path: {yaml_scalar(path)}",
        f"      AssumeRolePolicyDocument: {yaml_scalar(setup)}",
    ])


# -- Azure -----------------------------------------------------------------------------------------

def _credentials(setup: Any) -> list[dict[str, Any]]:
    return setup if isinstance(setup, list) else [setup]


def _count_line(target: Any, credentials: list[dict[str, Any]]) -> str:
    n = len(credentials)
    return (f"# Target {said(target.ref)}: {n} federated credential{'s' if n != 1 else ''} of the "
            f"{MAX_FEDERATED_CREDENTIALS} Entra allows per app or managed identity "
            "(other targets sharing the identity count too)")


def azure_commands(setup: Any, target: Any, issuer: str) -> str:
    credentials = _credentials(setup)
    client_id = target.setting("client_id")
    lines = [_count_line(target, credentials), f"# App registration {said(client_id)}:"]
    lines += [sh("az", "ad", "app", "federated-credential", "create", "--id", client_id,
                 "--parameters", json.dumps(c)) for c in credentials]
    lines += ["# Or, for a user-assigned managed identity: set IDENTITY_NAME and RESOURCE_GROUP, then",
              ': "${IDENTITY_NAME:?the managed identity\'s name}" "${RESOURCE_GROUP:?its resource group}"']
    for c in credentials:
        words = [sh("az", "identity", "federated-credential", "create", "--name", c["name"]),
                 '--identity-name "$IDENTITY_NAME" --resource-group "$RESOURCE_GROUP"',
                 sh("--issuer", c["issuer"], "--subject", c["subject"], "--audiences", *c["audiences"])]
        lines.append(" ".join(words))
    return "\n".join(lines)


def azure_terraform(setup: Any, target: Any, issuer: str) -> str:
    credentials = _credentials(setup)
    base = slug(target.ref)
    blocks = [_count_line(target, credentials),
              tf_block("azuread_application", base, [("client_id", target.setting("client_id"))], keyword="data")]
    for i, c in enumerate(credentials):
        blocks.append(tf_block("azuread_application_federated_identity_credential", f"{base}_{i}", [
            ("application_id", Raw(f"data.azuread_application.{base}.id")),
            ("display_name", c["name"]), ("description", c["description"]),
            ("issuer", c["issuer"]), ("subject", c["subject"]), ("audiences", c["audiences"])]))
    blocks.append("# Or, for a user-assigned managed identity (azurerm), instead of the app's credentials:")
    blocks.append('variable "managed_identity_id" {\n  type = string\n}')
    blocks.append('variable "resource_group_name" {\n  type = string\n}')
    for i, c in enumerate(credentials):
        blocks.append(tf_block("azurerm_federated_identity_credential", f"{base}_identity_{i}", [
            ("name", c["name"]), ("resource_group_name", Raw("var.resource_group_name")),
            ("parent_id", Raw("var.managed_identity_id")),
            ("issuer", c["issuer"]), ("subject", c["subject"]), ("audience", c["audiences"])]))
    return "\n\n".join(blocks)


# -- Google Cloud ----------------------------------------------------------------------------------

def _gcp_parts(setup: dict[str, Any]) -> tuple[str, str, str]:
    """(project number, pool, provider id) of the provider's resource name."""
    parts = setup["provider"]["name"].split("/")
    return parts[1], parts[5], parts[7]


def _members(setup: dict[str, Any]) -> list[str]:
    """The principals to bind: the setup's own (impersonation), else those its provider condition admits:
    a literal subject's principal, and the pool (narrowed by the condition) where a caller's claim
    chooses part of the subject."""
    if setup.get("bindings"):
        return [m for b in setup["bindings"] for m in b["members"]]
    pool_name = setup["provider"]["name"].rsplit("/providers/", 1)[0]
    members, open_ended = [], False
    for term in setup["provider"]["attributeCondition"].split(" || "):
        if term.startswith("assertion.sub == "):
            members.append(f"principal://iam.googleapis.com/{pool_name}/subject/"
                           + json.loads(term.removeprefix("assertion.sub == ")))
        else:
            open_ended = True
    return members + ([f"principalSet://iam.googleapis.com/{pool_name}/*"] if open_ended else [])


def gcp_commands(setup: dict[str, Any], target: Any, issuer: str) -> str:
    number, pool, name = _gcp_parts(setup)
    spec = setup["provider"]
    create = ["gcloud", "iam", "workload-identity-pools", "providers", "create-oidc", name,
              f"--project={number}", "--location=global", f"--workload-identity-pool={pool}",
              f"--issuer-uri={spec['oidc']['issuerUri']}",
              "--attribute-mapping=" + ",".join(f"{k}={v}" for k, v in spec["attributeMapping"].items()),
              f"--attribute-condition={spec['attributeCondition']}"]
    if spec["oidc"]["allowedAudiences"]:
        create.append("--allowed-audiences=" + ",".join(spec["oidc"]["allowedAudiences"]))
    lines = [f"# Provider {said(name)} in pool {said(pool)}: only tokens for target {said(target.ref)}", sh(*create)]
    if setup.get("bindings"):
        lines.append("# Who may impersonate the service account:")
        lines += [sh("gcloud", "iam", "service-accounts", "add-iam-policy-binding", b["serviceAccount"],
                     f"--role={b['role']}", f"--member={m}") for b in setup["bindings"] for m in b["members"]]
    else:
        lines += ["# Directly federated: grant the role the target needs (set ROLE, e.g. roles/artifactregistry.reader)",
                  ': "${ROLE:?the role the target needs}"']
        lines += [sh("gcloud", "projects", "add-iam-policy-binding", number) + ' --role="$ROLE" ' + sh(f"--member={m}")
                  for m in _members(setup)]
    return "\n".join(lines)


def gcp_terraform(setup: dict[str, Any], target: Any, issuer: str) -> str:
    number, pool, name = _gcp_parts(setup)
    spec = setup["provider"]
    base = slug(target.ref)
    oidc: list[tuple[str, Any]] = [("issuer_uri", spec["oidc"]["issuerUri"])]
    if spec["oidc"]["allowedAudiences"]:
        oidc.append(("allowed_audiences", spec["oidc"]["allowedAudiences"]))
    blocks = [f"# Provider {said(name)} in pool {said(pool)}: only tokens for target {said(target.ref)}",
              tf_block("google_iam_workload_identity_pool_provider", base, [
                  ("project", number), ("workload_identity_pool_id", pool),
                  ("workload_identity_pool_provider_id", name),
                  ("attribute_mapping", spec["attributeMapping"]),
                  ("attribute_condition", spec["attributeCondition"]),
                  ("oidc", Block(oidc))])]
    if setup.get("bindings"):
        for i, (b, m) in enumerate((b, m) for b in setup["bindings"] for m in b["members"]):
            blocks.append(tf_block("google_service_account_iam_member", f"{base}_{i}", [
                ("service_account_id", f"projects/-/serviceAccounts/{b['serviceAccount']}"),
                ("role", b["role"]), ("member", m)]))
    else:
        blocks.append('# Directly federated: the role the target needs (e.g. roles/artifactregistry.reader)\n'
                      'variable "role" {\n  type = string\n}')
        for i, m in enumerate(_members(setup)):
            blocks.append(tf_block("google_project_iam_member", f"{base}_{i}", [
                ("project", number), ("role", Raw("var.role")), ("member", m)]))
    return "\n\n".join(blocks)


RENDERERS: dict[tuple[str, str], Callable[[Any, Any, str], str]] = {
    ("aws", "commands"): aws_commands,
    ("aws", "terraform"): aws_terraform,
    ("aws", "cloudformation"): aws_cloudformation,
    ("azure", "commands"): azure_commands,
    ("azure", "terraform"): azure_terraform,
    ("gcp", "commands"): gcp_commands,
    ("gcp", "terraform"): gcp_terraform,
}
