"""The embedded AWS: moto's server, and the stack's own resources in it as template.yaml declares them.

One account in one region. Starting it points every boto3 client of the process at moto
(AWS_ENDPOINT_URL, local credentials) and removes every other AWS_* variable, so local mode never
reaches a real account. Provisioning creates the table and the KMS keys from the template, sets
the functions' environment from it, and sends each custom resource its Create event as
CloudFormation would. A cloud's own emulators (STS, ECR Public) are wired in by local/clouds/.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Callable

from ..template import Template

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
STACK = "oidc-broker-local"
TABLE_NAME = "oidc-broker-local"
# `oidc-broker local`'s key lifecycle, through the variables the template sets from its parameters:
# shortened so that `oidc-broker keys rotate` takes effect within seconds (publication delay = JWKS
# max-age + key ring cache + margin). The rotation period stays the template's: keys never rotate unasked.
LIFECYCLE = {"JWKS_MAX_AGE": "5", "KEY_RING_TTL": "2", "KEY_ROTATION_MARGIN": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_server(port: int) -> Any:
    """moto's threaded server, answering one request at a time.

    moto's backends hold no locks: two conditional writes to one DynamoDB item at once can both
    pass their condition, which DynamoDB never allows. Serialized, each request is atomic as in
    AWS, so a race the broker relies on losing (a replayed caller token, two rotation runs) is
    decided as it would be in a deployment.
    """
    import threading

    from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
    from werkzeug.serving import make_server

    class SerializedMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app, lock = DomainDispatcherApplication(create_backend_app), threading.Lock()

            def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
                with lock:
                    return list(app(environ, start_response))  # the whole answer, within the lock

            self._server = make_server(self._ip_address, self._port, serialized, True)
            self._server_ready_event.set()
            self._server.serve_forever()

    return SerializedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)


class EmbeddedAws:
    def __init__(self) -> None:
        self.endpoint = ""
        self._cfn_responses: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = free_port()
        self._moto = moto_server(port)
        self._moto.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        # The handlers' boto3 clients reach the embedded AWS, never a real account.
        for name in list(os.environ):
            if name.startswith("AWS_") and name != "AWS_DEFAULT_REGION":
                del os.environ[name]
        os.environ.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
        )

    def client(self, service: str) -> Any:
        """A boto3 client of moto itself (not of an emulator in front of it)."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint)

    def stop(self) -> None:
        self._moto.stop()

    def provision(self, template: Template, issuer: str, invoke: Callable[[str, Any], Any],
                  response_url: str, overrides: dict[str, str] | None = None) -> Any:
        """Create the stack's table, keys and custom resources; the broker's Store on that table.

        `invoke` calls a function's handler; `response_url` is where custom resources PUT their
        answer (`record_response` receives it, as CloudFormation's presigned URL would);
        `overrides` are function variables set differently from the template's (LIFECYCLE).
        """
        import boto3

        table_id, table = template.one("AWS::DynamoDB::Table")
        props = table["Properties"]
        dynamodb = boto3.client("dynamodb")
        create = {k: props[k] for k in ("KeySchema", "AttributeDefinitions", "BillingMode") if k in props}
        if "GlobalSecondaryIndexes" in props:
            create["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        dynamodb.create_table(TableName=TABLE_NAME, **create)
        if "TimeToLiveSpecification" in props:
            dynamodb.update_time_to_live(TableName=TABLE_NAME, TimeToLiveSpecification=props["TimeToLiveSpecification"])

        kms = boto3.client("kms")
        keys: dict[str, str] = {}
        for key_id, key in template.of_type("AWS::KMS::Key").items():
            props = key["Properties"]
            spec = {"KeySpec": props["KeySpec"]} if "KeySpec" in props else {}
            keys[key_id] = kms.create_key(
                KeyUsage=props.get("KeyUsage", "ENCRYPT_DECRYPT"), Description=f"oidc-broker local {key_id}", **spec
            )["KeyMetadata"]["Arn"]

        refs = {table_id: TABLE_NAME, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID,
                "AWS::StackName": STACK, "AWS::Partition": "aws"}
        for key_id, key_arn in keys.items():
            refs[key_id] = refs[f"{key_id}.Arn"] = key_arn
        # Each function's execution role, as SAM names it (<Function>Role): key policies name them.
        for function in template.of_type("AWS::Serverless::Function"):
            refs[f"{function}Role"] = f"{STACK}-{function}Role"
            refs[f"{function}Role.Arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{STACK}-{function}Role"
        for name in template.doc.get("Parameters", {}):
            refs[name] = template.parameter_default(name)
        refs["IssuerUrl"] = issuer
        os.environ.update(template.environment(refs))
        # Function-level variables (CACHE_KEY_ID) too: local mode runs every function in one process.
        for resource in template.of_type("AWS::Serverless::Function").values():
            variables = ((resource["Properties"].get("Environment") or {}).get("Variables")) or {}
            os.environ.update({k: template.resolve(v, refs) for k, v in variables.items()})
        os.environ["BROKER_ALLOW_LOOPBACK_HTTP"] = "true"
        os.environ.update(overrides or {})

        from oidc_broker.store import Store

        store = Store(dynamodb, TABLE_NAME)
        self._create_custom_resources(template, refs, invoke, response_url)
        return store

    def record_response(self, request_id: str, document: dict[str, Any]) -> None:
        self._cfn_responses[request_id] = document

    def _create_custom_resources(self, template: Template, refs: dict[str, str], invoke: Callable[[str, Any], Any],
                                 response_url: str) -> None:
        """Send each custom resource its Create event, as CloudFormation would, and await SUCCESS."""
        for logical_id, resource in template.resources.items():
            if not resource.get("Type", "").startswith("Custom::"):
                continue
            props = dict(resource.get("Properties") or {})
            service = props.pop("ServiceToken")["Fn::GetAtt"][0]
            request_id = str(uuid.uuid4())
            event = {
                "RequestType": "Create",
                "ResponseURL": f"{response_url}/{request_id}",
                "StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{STACK}/local",
                "RequestId": request_id,
                "ResourceType": resource["Type"],
                "LogicalResourceId": logical_id,
                "ResourceProperties": {"ServiceToken": service,
                                       **{k: template.resolve(v, refs) for k, v in props.items()}},
            }
            invoke(service, event)
            response = self._cfn_responses.get(request_id)
            if not response or response.get("Status") != "SUCCESS":
                raise RuntimeError(f"custom resource {logical_id} failed: {response and response.get('Reason')}")
