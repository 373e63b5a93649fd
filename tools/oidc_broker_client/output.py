"""An account's credentials as the tools that use them read them: environment variables, GitHub's
`$GITHUB_ENV`, and AWS's `credential_process` JSON.

The variables are the ones each cloud's own tools read: the AWS CLI and SDKs and Terraform's aws
provider the three `AWS_*`; `gcloud` reads `CLOUDSDK_AUTH_ACCESS_TOKEN` and Terraform's google
provider `GOOGLE_OAUTH_ACCESS_TOKEN`. Azure's tools take no access token from the environment (`az`
and Terraform's azurerm cannot use one at all), so Azure's is `AZURE_ACCESS_TOKEN`, for
`Authorization: Bearer` calls to the token's scope and for `Connect-AzAccount -AccessToken`.
"""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path
from typing import Any

from .errors import ClientError

# cloud -> (variable, field of the /exchange/<cloud> answer), for account targets.
ACCOUNT_VARIABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "aws": (("AWS_ACCESS_KEY_ID", "access_key_id"), ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
            ("AWS_SESSION_TOKEN", "session_token")),
    "azure": (("AZURE_ACCESS_TOKEN", "access_token"),),
    "gcp": (("CLOUDSDK_AUTH_ACCESS_TOKEN", "access_token"), ("GOOGLE_OAUTH_ACCESS_TOKEN", "access_token")),
}
FORMATS = ("env", "shell", "json", "github")


def variables(cloud: str, credentials: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        return [(name, str(credentials[field])) for name, field in ACCOUNT_VARIABLES[cloud]]
    except KeyError:
        raise ClientError(f"the broker's answer is not {cloud} account credentials",
                          "check --cloud against the target's provider") from None


def render(form: str, cloud: str, credentials: dict[str, Any], env: dict[str, str] | Any) -> str:
    """What `login --format <form>` prints for an account; `github` also appends to $GITHUB_ENV."""
    if form == "json":
        return json.dumps(credentials, indent=2) + "\n"
    pairs = variables(cloud, credentials)
    if form == "env":
        return "".join(f"{name}={value}\n" for name, value in pairs)
    if form == "shell":
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in pairs)
    return github_env(pairs, env)


def github_env_path(env: dict[str, str] | Any) -> str:
    """The file $GITHUB_ENV names, where a step sets variables for the job's next steps."""
    if not env.get("GITHUB_ENV"):
        raise ClientError("--format github writes to $GITHUB_ENV, which is not set: this is not a GitHub "
                          "Actions step", "use --format env or shell")
    return env["GITHUB_ENV"]


def github_env(pairs: list[tuple[str, str]], env: dict[str, str] | Any) -> str:
    """Append the variables to the file $GITHUB_ENV names (later steps get them); return the
    `::add-mask::` commands that make the runner hide each value in the job's log from now on."""
    path = github_env_path(env)
    lines = []
    for name, value in pairs:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"  # GitHub's multiline form: no value can end the entry early
        lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    try:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write("".join(lines))
    except OSError as e:
        raise ClientError(f"cannot append to $GITHUB_ENV ({path}): {e.strerror}", "run it as a step of the job") from None
    return "".join(f"::add-mask::{value}\n" for value in dict.fromkeys(v for _, v in pairs) if value)


def credential_process(credentials: dict[str, Any]) -> str:
    """AWS's credential_process output for role credentials."""
    if "access_key_id" not in credentials:
        raise ClientError("credential-process serves AWS account targets; the broker answered with "
                          + ("registry credentials (a feed)" if "registry" in credentials else "no AWS credentials"),
                          "name an account target of provider aws with --target")
    return json.dumps({"Version": 1, "AccessKeyId": credentials["access_key_id"],
                       "SecretAccessKey": credentials["secret_access_key"],
                       "SessionToken": credentials["session_token"], "Expiration": credentials["expires_at"]}) + "\n"
