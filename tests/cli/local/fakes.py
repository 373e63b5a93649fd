"""What the local package's tests share: a stand-in for LocalBroker and a server to put it behind.

One module (not a test file others import from)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from oidc_broker_cli.local.functions import Functions
from oidc_broker_cli.template import Route

ROUTE = Route("POST", "/exchange/aws", "ExchangeAwsFunction", Path("."), "app.handler")


class FakeBroker:
    """What the adapter needs of LocalBroker: routes to invoke, and schedules from `functions` if given."""

    routes = [ROUTE]

    def __init__(self, functions: Functions | None = None):
        self.events = []
        self.functions = functions
        self.schedules = functions.schedules if functions else []

    def invoke(self, function, built):
        self.events.append(built)
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}

    def fire(self, function, event_id=None):
        return self.functions.fire(function, event_id)


class Served:
    """A handler class on a loopback port, shut down by `close()` (or as a context manager)."""

    def __init__(self, handler_class: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.address = self.server.server_address
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
