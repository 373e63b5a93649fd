"""CloudFormation custom resources: the response protocol (a PUT to the pre-signed ResponseURL)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def respond(event: dict[str, Any], status: str, *, physical_id: str, reason: str = "", data: dict[str, str] | None = None,
            timeout: float = 10.0) -> None:
    payload = json.dumps(
        {
            "Status": status,
            "Reason": reason or status,
            "PhysicalResourceId": physical_id,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "NoEcho": False,
            "Data": data or {},
        }
    ).encode()
    # The pre-signed URL is signed for an empty Content-Type.
    request = urllib.request.Request(event["ResponseURL"], data=payload, method="PUT", headers={"Content-Type": ""})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
