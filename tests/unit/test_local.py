"""oidc_broker_cli/local.py: the HTTP adapter builds events and serves connections as API Gateway does."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from oidc_broker_cli.local import _handler_for, http_api_event
from oidc_broker_cli.template import Route

ROUTE = Route("POST", "/exchange/aws", "ExchangeAwsFunction", Path("."), "app.handler")


def event(headers):
    return http_api_event(ROUTE, "POST", "/exchange/aws", "", headers, b"", "127.0.0.1", {})


def test_a_repeated_header_reaches_the_handler_as_its_values_joined_with_commas():
    headers = event([("Authorization", "Bearer a"), ("authorization", "Bearer b"),
                     ("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "192.0.2.2"), ("Host", "broker")])["headers"]
    assert headers == {"authorization": "Bearer a,Bearer b", "x-forwarded-for": "192.0.2.1,192.0.2.2",
                       "host": "broker"}


def test_cookie_headers_become_the_cookies_list_and_leave_the_headers():
    built = event([("Cookie", "a=1; b=2"), ("Host", "broker"), ("cookie", "c=3")])
    assert built["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in built["headers"]
    assert "cookies" not in event({"Host": "broker"})


def test_headers_given_as_a_mapping_are_still_accepted():
    assert event({"Host": "broker", "Content-Type": "application/json"})["headers"] == {
        "host": "broker", "content-type": "application/json"}


class FakeBroker:
    """What the adapter needs of LocalBroker: routes, and a function to invoke."""

    routes = [ROUTE]

    def __init__(self):
        self.events = []

    def invoke(self, function, built):
        self.events.append(built)
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}


def serve(handler_class):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


def test_the_adapter_passes_every_repeated_header_to_the_event():
    broker = FakeBroker()
    server = serve(_handler_for(broker))
    try:
        connection = http.client.HTTPConnection(*server.server_address, timeout=5)
        connection.putrequest("POST", "/exchange/aws")
        for name, value in [("Authorization", "Bearer one"), ("Authorization", "Bearer two"),
                            ("Content-Type", "application/json"), ("Content-Length", "2")]:
            connection.putheader(name, value)
        connection.endheaders(b"{}")
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {})
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
    assert broker.events[0]["headers"]["authorization"] == "Bearer one,Bearer two"


def test_each_accepted_connection_has_tcp_nodelay():
    seen = []

    class Probe(_handler_for(FakeBroker())):
        def handle(self):  # the real setup() ran on the accepted socket; look at it from the server side
            seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Probe)
    server.timeout = 5
    try:
        with socket.create_connection(server.server_address, timeout=5):
            server.handle_request()
    finally:
        server.server_close()  # joins the handler thread
    assert seen and seen[0] != 0
