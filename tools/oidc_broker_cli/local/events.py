"""What Lambda hands a handler in local mode: API Gateway HTTP API events, scheduled events, a context.

Pure builders: no server, no AWS. Each event is shaped as the AWS service that sends it builds it,
so a handler cannot tell local mode from a deployment by its event.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from ..template import Route, Schedule
from .aws import ACCOUNT_ID, REGION

TEXT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/", "application/xml")


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


def scheduled_event(schedule: Schedule, now: float) -> dict[str, Any]:
    """The event a schedule delivers at `now`: EventBridge's "Scheduled Event" naming the rule.

    When the template gives the event an Input, that JSON is what the function receives instead,
    as in AWS. (EventBridge Scheduler, ScheduleV2, sends its own default notification when no
    Input is given; a handler should read nothing from the event but `time` and `resources`.)
    """
    if schedule.input is not None:
        return json.loads(schedule.input)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "region": REGION,
        "resources": [schedule.arn(REGION, ACCOUNT_ID)],
        "detail": {},
    }
