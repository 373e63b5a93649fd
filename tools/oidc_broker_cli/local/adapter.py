"""API Gateway's part of local mode: HTTP requests in, the routes' Lambda events out, responses back.

Serves every HttpApi route of template.yaml by building its payload 2.0 event and invoking the
route's function, plus what only local mode has: the development CI issuer (/_dev/ci), the
custom resources' CloudFormation answers (/_local/cloudformation), scheduled functions fired on
demand (/_local/schedule), any function invoked with a JSON event as Lambda Invoke would
(/_local/invoke: what `oidc-broker keys` uses without --stack) and /openapi.json. /_local answers
loopback clients only. It knows the broker only through `Broker`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import sys
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from ..devci import PREFIX as DEV_CI_PREFIX
from ..deployment import INVOKE_PREFIX
from ..devci import DevCI
from ..template import Route, Schedule
from .aws import EmbeddedAws
from .events import http_api_event
from .functions import NotScheduled, UnknownFunction, result_json

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
SCHEDULE_PREFIX = "/_local/schedule"
CLOUDFORMATION_PREFIX = "/_local/cloudformation"


class Broker(Protocol):
    """What the adapter needs of LocalBroker (a test's fake needs only what its requests reach)."""

    routes: list[Route]
    schedules: list[Schedule]
    dev_ci: DevCI
    aws: EmbeddedAws  # records the custom resources' answers

    def invoke(self, logical_id: str, event: Any) -> Any: ...
    def fire(self, logical_id: str, event_id: str | None = None) -> tuple[Schedule, Any]: ...
    def invoke_direct(self, logical_id: str, event: Any) -> Any: ...
    def openapi(self) -> dict[str, Any]: ...


def json_body(body: bytes) -> Any:
    """A request body as JSON; ValueError for anything else, nesting too deep to parse included."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def handler_for(broker: Broker) -> type[BaseHTTPRequestHandler]:
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
                if parts.path.startswith("/_local/") and not ipaddress.ip_address(self.client_address[0]).is_loopback:
                    return self._send(403, {"message": "Forbidden: /_local answers loopback clients only"})
                if parts.path.startswith(CLOUDFORMATION_PREFIX + "/") and self.command == "PUT":
                    broker.aws.record_response(parts.path.rsplit("/", 1)[1], json.loads(body))
                    return self._send(200, {})
                if parts.path == "/openapi.json" and self.command == "GET":
                    return self._send(200, broker.openapi())
                if parts.path.startswith(DEV_CI_PREFIX + "/"):
                    return self._dev_ci(parts.path[len(DEV_CI_PREFIX):], parts.query, body)
                if parts.path == SCHEDULE_PREFIX or parts.path.startswith(SCHEDULE_PREFIX + "/"):
                    return self._schedule(parts.path[len(SCHEDULE_PREFIX):].strip("/"))
                if parts.path == INVOKE_PREFIX or parts.path.startswith(INVOKE_PREFIX + "/"):
                    return self._invoke(parts.path[len(INVOKE_PREFIX):].strip("/"), body)
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

        def _schedule(self, rest: str) -> None:
            """GET lists the schedules; POST <function>[/<event>] fires one now, as EventBridge would."""
            if not rest and self.command == "GET":
                return self._send(200, {"schedules": [
                    {"function": s.function, "event": s.event, "kind": s.kind, "expression": s.expression,
                     "enabled": s.enabled, "fire": f"POST {SCHEDULE_PREFIX}/{s.function}/{s.event}"}
                    for s in broker.schedules]})
            if self.command != "POST" or not rest or rest.count("/") > 1:
                return self._send(404, {"message": f"Not Found: POST {SCHEDULE_PREFIX}/<FunctionLogicalId> fires a "
                                                   f"scheduled function, GET {SCHEDULE_PREFIX} lists them"})
            function, _, event_id = rest.partition("/")
            try:
                schedule, result = broker.fire(function, event_id or None)
            except NotScheduled as e:
                return self._send(404, {"message": str(e)})
            except Exception as e:  # the function failed: an EventBridge invocation would record it; say which
                sys.stderr.write(f"local: {function} failed on its scheduled event: {type(e).__name__}: {e}\n")
                return self._send(500, {"message": f"{function} failed on its scheduled event: {type(e).__name__}"})
            return self._send(200, {"function": schedule.function, "event": schedule.event,
                                    "result": result_json(result)})

        def _invoke(self, function: str, body: bytes) -> None:
            """POST <function> with a JSON event: the function's answer, as Lambda Invoke (RequestResponse) gives it."""
            if self.command != "POST" or not function or "/" in function:
                return self._send(404, {"message": f"Not Found: POST {INVOKE_PREFIX}/<FunctionLogicalId> with a JSON "
                                                   "event invokes a function of template.yaml"})
            try:
                event = json_body(body) if body.strip() else {}
            except ValueError:
                return self._send(400, {"message": "the body must be the JSON event to invoke the function with"})
            try:
                result = broker.invoke_direct(function, event)
            except UnknownFunction as e:
                return self._send(404, {"message": str(e)})
            except Exception as e:  # the function failed: Lambda would answer FunctionError; say which
                sys.stderr.write(f"local: {function} failed on an invocation: {type(e).__name__}: {e}\n")
                return self._send(500, {"message": f"{function} failed: {type(e).__name__} (local mode's output has "
                                                   "its log)"})
            return self._send(200, {"function": function, "result": result_json(result)})

        def _dev_ci(self, path: str, query: str, body: bytes) -> None:
            dev = broker.dev_ci
            if path == "/.well-known/openid-configuration" and self.command == "GET":
                return self._send(200, dev.discovery())
            if path == "/.well-known/jwks" and self.command == "GET":
                return self._send(200, dev.jwks())
            if path == "/token" and self.command == "POST":
                try:
                    overrides = json_body(body or b"{}")
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
