"""Local mode: the real handlers behind an HTTP adapter, with an embedded AWS.

Starts moto's server on a free loopback port and points boto3 at it through AWS_ENDPOINT_URL,
a verifying STS emulator in front of it through AWS_ENDPOINT_URL_STS, and an ECR Public emulator
(moto has none; it accepts only credentials that STS issued) through AWS_ENDPOINT_URL_ECR_PUBLIC;
creates the table and the KMS keys as template.yaml declares them, registers the signing key
through the key ring function's own custom resource handler, applies the configuration, registers the broker as an
IAM OIDC provider with a role per AWS target whose trust policy admits the subjects the broker
mints for it, and serves every HttpApi route of template.yaml by building API Gateway HTTP API
(payload 2.0) events. The production code is the same code; only its environment differs.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from oidc_broker import config as config_module

from . import apply as apply_module
from .devci import PREFIX as DEV_CI_PREFIX
from .devci import DevCI
from .template import Route, Template

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
TEXT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/", "application/xml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LambdaContext:
    """What Powertools reads from a Lambda context object."""

    def __init__(self, function_name: str, timeout_s: int = 10):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def http_api_event(route: Route, method: str, raw_path: str, query: str,
                   headers: Mapping[str, str] | Iterable[tuple[str, str]],
                   body: bytes, source_ip: str, path_params: dict[str, str]) -> dict[str, Any]:
    """An API Gateway HTTP API payload 2.0 event, as API Gateway builds it.

    `headers` as received, repeated ones included: API Gateway joins a repeated header's values
    with commas (so two Authorization headers reach the handler as one value it refuses), and
    moves every Cookie header's cookies into `cookies`.
    """
    now = time.time()
    lowered: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    content_type = lowered.get("content-type", "")
    is_text = not body or content_type.startswith(TEXT_TYPES)
    if is_text:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            is_text = False
    route_key = f"{route.method} {route.path}"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": lowered.get("host", "127.0.0.1").split(".")[0],
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not is_text,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        params: dict[str, str] = {}
        for k, v in parse_qsl(query, keep_blank_values=True):
            params[k] = f"{params[k]},{v}" if k in params else v
        event["queryStringParameters"] = params
    if path_params:
        event["pathParameters"] = path_params
    if body:
        event["body"] = text if is_text else base64.b64encode(body).decode()
    return event


@dataclass
class LocalBroker:
    """Everything local mode runs, started by `start()` and stopped by `stop()`."""

    root: Path
    config_path: Path
    port: int = 3000
    host: str = "127.0.0.1"
    log: Callable[[str], None] = print
    base_url: str = ""
    issuer: str = ""
    aws_endpoint: str = ""
    targets: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.template = Template(self.root / "template.yaml")
        self._start_aws()
        self._server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}"
        self._handlers: dict[str, Callable] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._cfn_responses: dict[str, dict[str, Any]] = {}
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-http", daemon=True)
        self._thread.start()

        document = apply_module.read(self.config_path, local_url=self.base_url)
        document.setdefault("issuer", self.base_url)
        self.issuer = document["issuer"]
        self.dev_ci = DevCI(self.base_url, audience=self.issuer)
        config_module.parse(document, str(self.config_path), allow_loopback_http=True)  # fail before provisioning
        self._provision()
        config = apply_module.apply(document, str(self.config_path), self._store, allow_loopback_http=True)
        self.targets = [t.ref for s in config.spaces.values() for t in s.targets.values()]
        self.aws_roles = _trust_aws_targets(config, self._iam, self.issuer)
        self.routes = self.template.routes()

    def _start_aws(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = free_port()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._moto.start()
        self.aws_endpoint = f"http://127.0.0.1:{port}"
        # The handlers' boto3 clients reach the embedded AWS, never a real account.
        for name in list(os.environ):
            if name.startswith("AWS_") and name != "AWS_DEFAULT_REGION":
                del os.environ[name]
        os.environ.update(
            AWS_ENDPOINT_URL=self.aws_endpoint,
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
        )
        self._start_sts()

    def _start_sts(self) -> None:
        """STS verifies web identity tokens (moto's does not): the emulator does, then asks moto."""
        import boto3
        from oidc_broker_emulators.ecr import patch_moto_ecr_expiry
        from oidc_broker_emulators.sts import IamDirectory, StsEmulator, Verifier, moto_credentials

        patch_moto_ecr_expiry()
        self._iam = boto3.client("iam", endpoint_url=self.aws_endpoint)
        moto_sts = boto3.client("sts", endpoint_url=self.aws_endpoint)
        from oidc_broker_emulators.ecr_public import IssuedCredentials

        self._issued = IssuedCredentials()  # what STS hands out is what ECR Public accepts
        self._sts = StsEmulator(Verifier(IamDirectory(self._iam, ACCOUNT_ID)),
                                self._issued.recording(moto_credentials(moto_sts)),
                                passthrough=self.aws_endpoint).start()
        self.sts_endpoint = self._sts.url
        os.environ["AWS_ENDPOINT_URL_STS"] = self.sts_endpoint
        self._start_ecr_public()

    def _start_ecr_public(self) -> None:
        """moto has no ECR Public: the emulator serves registry tokens to requests signed with role credentials."""
        from oidc_broker_emulators.ecr_public import EcrPublicEmulator

        self._ecr_public = EcrPublicEmulator(self._issued).start()
        self.ecr_public_endpoint = self._ecr_public.url
        os.environ["AWS_ENDPOINT_URL_ECR_PUBLIC"] = self.ecr_public_endpoint

    def _provision(self) -> None:
        import boto3

        table_id, table = self.template.one("AWS::DynamoDB::Table")
        props = table["Properties"]
        dynamodb = boto3.client("dynamodb")
        table_name = "oidc-broker-local"
        create = {k: props[k] for k in ("KeySchema", "AttributeDefinitions", "BillingMode") if k in props}
        if "GlobalSecondaryIndexes" in props:
            create["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        dynamodb.create_table(TableName=table_name, **create)
        if "TimeToLiveSpecification" in props:
            dynamodb.update_time_to_live(TableName=table_name, TimeToLiveSpecification=props["TimeToLiveSpecification"])

        kms = boto3.client("kms")
        keys: dict[str, str] = {}
        for key_id, key in self.template.of_type("AWS::KMS::Key").items():
            props = key["Properties"]
            spec = {"KeySpec": props["KeySpec"]} if "KeySpec" in props else {}
            keys[key_id] = kms.create_key(
                KeyUsage=props.get("KeyUsage", "ENCRYPT_DECRYPT"), Description=f"oidc-broker local {key_id}", **spec
            )["KeyMetadata"]["Arn"]

        refs = {table_id: table_name, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID,
                "AWS::StackName": "oidc-broker-local", "AWS::Partition": "aws"}
        for key_id, key_arn in keys.items():
            refs[key_id] = refs[f"{key_id}.Arn"] = key_arn
        for name in self.template.doc.get("Parameters", {}):
            refs[name] = self.template.parameter_default(name)
        refs["IssuerUrl"] = self.issuer
        os.environ.update(self.template.environment(refs))
        # Function-level variables (CACHE_KEY_ID) too: local mode runs every function in one process.
        from .template import _resolve

        for resource in self.template.of_type("AWS::Serverless::Function").values():
            variables = ((resource["Properties"].get("Environment") or {}).get("Variables")) or {}
            os.environ.update({k: _resolve(v, refs) for k, v in variables.items()})
        os.environ["BROKER_ALLOW_LOOPBACK_HTTP"] = "true"

        from oidc_broker.store import Store

        self._store = Store(dynamodb, table_name)
        self._create_custom_resources(refs)

    def _create_custom_resources(self, refs: dict[str, str]) -> None:
        """Send each custom resource its Create event, as CloudFormation would, and await SUCCESS."""
        for logical_id, resource in self.template.resources.items():
            if not resource.get("Type", "").startswith("Custom::"):
                continue
            props = dict(resource.get("Properties") or {})
            service = props.pop("ServiceToken")["Fn::GetAtt"][0]
            request_id = str(uuid.uuid4())
            event = {
                "RequestType": "Create",
                "ResponseURL": f"{self.base_url}/_local/cloudformation/{request_id}",
                "StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/oidc-broker-local/local",
                "RequestId": request_id,
                "ResourceType": resource["Type"],
                "LogicalResourceId": logical_id,
                "ResourceProperties": {"ServiceToken": service,
                                       **{k: self.template.resolve(v, refs) for k, v in props.items()}},
            }
            self.invoke(service, event)
            response = self._cfn_responses.get(request_id)
            if not response or response.get("Status") != "SUCCESS":
                raise RuntimeError(f"custom resource {logical_id} failed: {response and response.get('Reason')}")

    def invoke(self, logical_id: str, event: dict[str, Any]) -> Any:
        """Call a function's handler as Lambda would: one request at a time per function.

        Lambda runs each function in its own process. Here they share one, so each function gets
        its own lock (one warm container) and, when first imported, its own logger: Powertools
        keys its logger by service name, and functions would otherwise share keys mid-request.
        """
        with self._guard:
            lock = self._locks.setdefault(logical_id, threading.Lock())
        with lock:
            handler = self._handlers.get(logical_id)
            if handler is None:
                handler = self._handlers[logical_id] = self._load(logical_id)
            return handler(event, LambdaContext(logical_id))

    def _load(self, logical_id: str) -> Callable:
        import logging

        code_uri, spec = self.template.function(logical_id)
        module_name, func = spec.rsplit(".", 1)
        logging.Logger.manager.loggerDict.pop(os.environ.get("POWERTOOLS_SERVICE_NAME", "service_undefined"), None)
        spec_obj = importlib.util.spec_from_file_location(f"functions.{logical_id}.{module_name}", code_uri / f"{module_name}.py")
        module = importlib.util.module_from_spec(spec_obj)
        spec_obj.loader.exec_module(module)
        return getattr(module, func)

    def openapi(self) -> dict[str, Any]:
        """The API description (docs/openapi.yaml), served as /openapi.json."""
        from .yamlfile import load

        return load((self.root / "docs" / "openapi.yaml").read_text())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._sts.stop()
        self._ecr_public.stop()
        self._moto.stop()

    def banner(self) -> str:
        b = self.base_url
        target = self.targets[0] if self.targets else "default/prod-ecr"
        aws_target = next(iter(self.aws_roles), "default/prod-ecr")
        return f"""
oidc-broker local mode
  issuer         {self.issuer}
  discovery      {self.issuer}/.well-known/openid-configuration
  embedded AWS   {self.aws_endpoint} (moto)
  AWS STS        {self.sts_endpoint} (verifying emulator; OIDC provider {self.issuer})
  ECR Public     {self.ecr_public_endpoint} (emulator; signed with role credentials from AWS STS only)
  dev CI issuer  {self.dev_ci.issuer}
  targets        {', '.join(self.targets)}

Walk the flow:
  # 1. a CI token from the development CI issuer (GitHub Actions-shaped; pick the claims)
  CI_TOKEN=$(curl -s -X POST '{b}{DEV_CI_PREFIX}/token?format=raw' -d '{{"repository": "acme/app", "ref": "refs/heads/main"}}')
  # 2. trade it for a broker token scoped to a target
  curl -s {b}/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt -d audience={target} \\
    --data-urlencode "subject_token=$CI_TOKEN"
  # 3. the keys a cloud verifies it with
  curl -s {b}/.well-known/jwks.json
  # 4. decode the access_token from step 2
  .venv/bin/oidc-broker decode ACCESS_TOKEN
  # 5. AWS credentials for a target (a fresh CI token: each is accepted once per target)
  CI_TOKEN=$(curl -s -X POST '{b}{DEV_CI_PREFIX}/token?format=raw' -d '{{"repository": "acme/app", "ref": "refs/heads/main"}}')
  curl -s {b}/exchange/aws -H "Authorization: Bearer $CI_TOKEN" -H 'Content-Type: application/json' \\
    -d '{{"target": "{aws_target}"}}'
"""


def _handler_for(broker: LocalBroker) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "oidc-broker-local"
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY on each accepted connection: with Nagle, a keep-alive client waits ~45 ms a request.
        disable_nagle_algorithm = True

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write(f"local: {self.command} {urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}\n")

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def do_PUT(self) -> None:
            self._dispatch()

        def do_DELETE(self) -> None:
            self._dispatch()

        def do_PATCH(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                return self._send(413, {"message": "Request Entity Too Large"})
            body = self.rfile.read(length) if length else b""
            try:
                if parts.path.startswith("/_local/cloudformation/") and self.command == "PUT":
                    broker._cfn_responses[parts.path.rsplit("/", 1)[1]] = json.loads(body)
                    return self._send(200, {})
                if parts.path == "/openapi.json" and self.command == "GET":
                    return self._send(200, broker.openapi())
                if parts.path.startswith(DEV_CI_PREFIX + "/"):
                    return self._dev_ci(parts.path[len(DEV_CI_PREFIX):], parts.query, body)
                for route in broker.routes:
                    params = route.match(self.command if self.command != "HEAD" else "GET", parts.path)
                    if params is None:
                        continue
                    event = http_api_event(route, self.command, parts.path, parts.query, self.headers.items(),
                                           body, self.client_address[0], params)
                    return self._lambda_response(broker.invoke(route.function, event))
                return self._send(404, {"message": "Not Found"})
            except Exception as e:  # the adapter itself failed: say so like API Gateway would
                sys.stderr.write(f"local: {type(e).__name__}: {e}\n")
                return self._send(500, {"message": "Internal Server Error"})

        def _dev_ci(self, path: str, query: str, body: bytes) -> None:
            dev = broker.dev_ci
            if path == "/.well-known/openid-configuration" and self.command == "GET":
                return self._send(200, dev.discovery())
            if path == "/.well-known/jwks" and self.command == "GET":
                return self._send(200, dev.jwks())
            if path == "/token" and self.command == "POST":
                try:
                    overrides = json.loads(body or b"{}")
                except ValueError:
                    overrides = None
                if not isinstance(overrides, dict):
                    return self._send(400, {"error": "invalid_request", "error_description": "body must be a JSON object of claims"})
                token = dev.mint(overrides)
                if dict(parse_qsl(query)).get("format") == "raw":
                    return self._send_bytes(200, token.encode(), "text/plain")
                return self._send(200, {"token": token})
            return self._send(404, {"message": "Not Found"})

        def _lambda_response(self, result: Any) -> None:
            if not isinstance(result, dict) or "statusCode" not in result:
                return self._send(200, result)
            body = result.get("body") or ""
            data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
            headers = result.get("headers") or {}
            self.send_response(int(result["statusCode"]))
            for name, value in headers.items():
                self.send_header(name, str(value))
            for cookie in result.get("cookies") or []:
                self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _send(self, status: int, payload: Any) -> None:
            self._send_bytes(status, json.dumps(payload).encode(), "application/json")

        def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def run(root: Path, config_path: Path, port: int) -> int:
    broker = LocalBroker(root=root, config_path=config_path, port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    broker.start()
    print(broker.banner(), flush=True)
    print(f"ready: {broker.base_url} (Ctrl-C to stop)", flush=True)
    stop.wait()
    broker.stop()
    print("stopped", flush=True)
    return 0


def _trust_aws_targets(config: config_module.Config, iam: Any, issuer: str) -> dict[str, str]:
    """Register the issuer as an IAM OIDC provider and give each AWS target's role a trust policy.

    Each role trusts exactly the subjects the broker mints for its targets: literal subject values
    as they are, values a trust rule takes from a caller claim as `*` (StringLike). Roles in other
    accounts are left alone (the broker then meets STS's "no OIDC provider" answer, as in AWS).
    Returns target ref -> role ARN for the targets set up.
    """
    from oidc_broker.clouds.aws import trust_policy
    from oidc_broker_emulators.sts import ROLE_ARN

    subjects: dict[str, set[str]] = {}
    audiences: dict[str, set[str]] = {}
    set_up: dict[str, str] = {}
    for space in config.spaces.values():
        for target in space.targets.values():
            role_arn = target.setting("role_arn")
            m = ROLE_ARN.fullmatch(role_arn or "")
            if target.provider != "aws" or not m or m.group(1) != ACCOUNT_ID:
                continue
            subjects.setdefault(role_arn, set()).update(config.subject_patterns(target))
            audiences.setdefault(role_arn, set()).add(target.audience)
            set_up[target.ref] = role_arn
    if not set_up:
        return set_up
    client_ids = sorted({a for auds in audiences.values() for a in auds})
    iam.create_open_id_connect_provider(Url=issuer, ClientIDList=client_ids, ThumbprintList=[])
    for role_arn, subs in subjects.items():
        policy = trust_policy(ACCOUNT_ID, issuer, sorted(audiences[role_arn]), sorted(subs), like=True)
        path, _, name = role_arn.split(":role", 1)[1].rpartition("/")
        iam.create_role(RoleName=name, Path=f"{path}/" if path else "/", AssumeRolePolicyDocument=json.dumps(policy),
                        MaxSessionDuration=43200)
    return set_up
