"""Where the broker runs — a CloudFormation stack, or the local mode running on this machine — and
how an operator command invokes one of its functions there.

A stack is found by its outputs (DescribeStacks) and its functions are invoked with Lambda
`Invoke` (RequestResponse). Local mode records where it runs in a small JSON file while it runs
(`LocalRecord`), and invokes a function of template.yaml on request (POST /_local/invoke/<LogicalId>).
Every failure is a `DeploymentError` with one line for the operator, never a traceback.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

RECORD_ENV = "OIDC_BROKER_LOCAL_RECORD"  # where local mode records itself, if not under the project root
INVOKE_PREFIX = "/_local/invoke"
NOT_RUNNING = "local mode is not running (start it with `make run`), or name a deployment with --stack NAME"


class DeploymentError(Exception):
    """What went wrong finding or invoking the deployment, in one line for the operator."""


@dataclass(frozen=True)
class Function:
    """One of the stack's functions: its logical id in template.yaml and the stack output naming it."""

    logical_id: str
    output: str


def record_path(root: Path) -> Path:
    """The file a running local mode records itself in: $OIDC_BROKER_LOCAL_RECORD, else under the project."""
    return Path(os.environ.get(RECORD_ENV) or root / ".oidc-broker" / "local.json")


@dataclass(frozen=True)
class LocalRecord:
    """Where a running local mode is: what `oidc-broker` commands without --stack talk to."""

    url: str
    issuer: str
    table: str
    aws_endpoint: str
    pid: int

    def write(self, path: Path) -> bool:
        """Record this local mode unless another live one is recorded there (its record stays: False)."""
        other = LocalRecord.read(path)
        if other is not None and other.pid != self.pid and other.alive():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{self.pid}")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        temporary.replace(path)  # readers never see half a record
        return True

    def remove(self, path: Path) -> None:
        """Remove the record if it is this local mode's."""
        recorded = LocalRecord.read(path)
        if recorded is not None and recorded.pid == self.pid:
            path.unlink(missing_ok=True)

    @classmethod
    def read(cls, path: Path) -> LocalRecord | None:
        """The record at `path`, or None when there is none or it is not one."""
        try:
            data = json.loads(path.read_text())
            return cls(url=str(data["url"]), issuer=str(data["issuer"]), table=str(data["table"]),
                       aws_endpoint=str(data["aws_endpoint"]), pid=int(data["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process by that id: alive, not ours to judge
            return True
        except OSError:
            return False
        return True


class Deployment(Protocol):
    name: str  # how the operator named it: "stack NAME" or "local mode at URL"
    issuer: str | None

    def invoke(self, function: Function, event: dict[str, Any]) -> Any: ...


class LocalDeployment:
    """The local mode recorded at `path`, invoking functions through its adapter."""

    def __init__(self, path: Path, timeout: float = 30):
        record = LocalRecord.read(path)
        if record is None or not record.alive():
            raise DeploymentError(NOT_RUNNING)
        self.record = record
        self.name = f"local mode at {record.url}"
        self.issuer = record.issuer
        self.timeout = timeout

    def invoke(self, function: Function, event: dict[str, Any]) -> Any:
        request = urllib.request.Request(f"{self.record.url}{INVOKE_PREFIX}/{function.logical_id}", method="POST",
                                         data=json.dumps(event).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)["result"]
        except urllib.error.HTTPError as e:
            raise DeploymentError(f"{function.logical_id} in {self.name}: {_message(e)}") from None
        except (urllib.error.URLError, ConnectionError) as e:
            raise DeploymentError(f"{NOT_RUNNING} ({self.record.url}: {getattr(e, 'reason', e)})") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DeploymentError(f"{function.logical_id} in {self.name} gave no answer: {type(e).__name__}") from None


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(error)["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"HTTP {error.code}"


def _invoke_config() -> Any:
    import botocore.config

    # Wait out the longest function (60 s) and never send an invocation twice: a revoke retried
    # after a read timeout would be refused as an unknown kid although the first one did it.
    return botocore.config.Config(read_timeout=90, retries={"total_max_attempts": 1})


class StackDeployment:
    """A CloudFormation stack: its outputs name the functions, Lambda Invoke runs them.

    `session` is a boto3 Session (or anything with its `client(name)`)."""

    def __init__(self, session: Any, stack: str):
        self.session = session
        self.name = f"stack {stack}"
        self.stack = stack
        self.outputs = self._outputs()
        self.issuer = self.outputs.get("IssuerUrl")

    def _outputs(self) -> dict[str, str]:
        stacks = _aws(f"cannot describe {self.name}",
                      lambda: self.session.client("cloudformation").describe_stacks(StackName=self.stack))["Stacks"]
        if not stacks:
            raise DeploymentError(f"{self.name} does not exist")
        return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs") or []}

    def invoke(self, function: Function, event: dict[str, Any]) -> Any:
        name = self.outputs.get(function.output)
        if not name:
            raise DeploymentError(f"{self.name} has no output {function.output}: deploy this version of the "
                                  "template (sam deploy) first")
        def call() -> Any:
            return self.session.client("lambda", config=_invoke_config()).invoke(
                FunctionName=name, InvocationType="RequestResponse", Payload=json.dumps(event).encode())

        answer = _aws(f"cannot invoke {name} of {self.name}", call)
        try:
            payload = json.loads(answer["Payload"].read() or b"null")
        except (ValueError, KeyError, AttributeError):
            raise DeploymentError(f"{name} of {self.name} answered with something other than JSON") from None
        if answer.get("FunctionError"):
            detail = payload if isinstance(payload, dict) else {}
            what = ": ".join(str(detail[k]).splitlines()[0][:200] for k in ("errorType", "errorMessage") if detail.get(k))
            raise DeploymentError(f"{name} of {self.name} failed{': ' + what if what else ''}; "
                                  f"its log group is /aws/lambda/{name}")
        return payload


def _aws(doing: str, call: Any) -> Any:
    """Call AWS; any botocore failure (no region, no credentials, no such stack) becomes one line."""
    import botocore.exceptions

    try:
        return call()
    except botocore.exceptions.ClientError as e:
        error = e.response.get("Error", {})
        raise DeploymentError(f"{doing}: {error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")) from None
    except botocore.exceptions.BotoCoreError as e:
        raise DeploymentError(f"{doing}: {e}; check --region/--profile (or AWS_REGION/AWS_PROFILE) and your "
                              "AWS credentials") from None


def find(stack: str | None, region: str | None, profile: str | None, root: Path) -> Deployment:
    """The deployment an operator command names: `--stack` (with --region/--profile), else the running local mode."""
    if stack is None:
        if region or profile:
            raise DeploymentError("--region and --profile name where a stack is: give --stack NAME too")
        return LocalDeployment(record_path(root))
    import boto3
    import botocore.exceptions

    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.BotoCoreError as e:  # ProfileNotFound
        raise DeploymentError(str(e)) from None
    return StackDeployment(session, stack)


class TableDeployment(NamedTuple):
    """The broker's table as a command that reads or writes it directly finds it."""

    dynamodb: Any  # a boto3 DynamoDB client
    table: str
    issuer: str | None  # the deployment's issuer, when its stack outputs or local mode's record name it
    local_url: str | None = None  # local mode's base URL (what `${local_url}` in a configuration stands for)


def _session(region: str | None, profile: str | None) -> Any:
    import boto3
    import botocore.exceptions

    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.BotoCoreError as e:  # ProfileNotFound
        raise DeploymentError(str(e)) from None


def table_deployment(table: str | None, stack: str | None, region: str | None, profile: str | None,
                     root: Path) -> TableDeployment:
    """The table a command names: `--table` (or $TABLE_NAME), else `--stack` (its outputs TableName
    and IssuerUrl), else the running local mode's record (its table in the embedded AWS).

    Nothing is called yet but CloudFormation for a stack: an unreachable table fails at first use.
    A client that cannot be made (no region) raises botocore's error, for the caller to say what it
    was reading."""
    if table and stack:
        raise DeploymentError("name the deployment with --table or with --stack, not both")
    if table:
        session = _session(region, profile)
        return TableDeployment(session.client("dynamodb"), table, None)
    if stack:
        session = _session(region, profile)
        deployment = StackDeployment(session, stack)
        name = deployment.outputs.get("TableName")
        if not name:
            raise DeploymentError(f"{deployment.name} has no output TableName: deploy this version of the template "
                                  "(sam deploy) first, or name the table with --table")
        return TableDeployment(session.client("dynamodb"), name, deployment.issuer)
    if region or profile:
        raise DeploymentError("--region and --profile name where a stack is: give --stack NAME (or --table) too")
    record = LocalRecord.read(record_path(root))
    if record is None or not record.alive():
        raise DeploymentError(f"{NOT_RUNNING}, or the table with --table / TABLE_NAME")
    import boto3

    from .local.aws import REGION

    # Local mode's embedded AWS takes any credentials; never a real account's.
    client = boto3.client("dynamodb", endpoint_url=record.aws_endpoint, region_name=REGION,
                          aws_access_key_id="local", aws_secret_access_key="local")
    return TableDeployment(client, record.table, record.issuer, record.url)
