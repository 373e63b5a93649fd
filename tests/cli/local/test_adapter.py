"""oidc_broker_cli/local/adapter.py: the HTTP adapter serves connections as API Gateway does,
and fires scheduled functions on demand."""

from __future__ import annotations

import http.client
import json
import socket
from http.server import ThreadingHTTPServer

import pytest

from oidc_broker_cli.local.adapter import handler_for
from oidc_broker_cli.local.functions import Functions

from ..fakes import scheduled_template
from .fakes import FakeBroker, Served


def request(address, method, path, headers=(), body=b""):
    connection = http.client.HTTPConnection(*address, timeout=5)
    try:
        connection.putrequest(method, path)
        for name, value in [*headers, ("Content-Length", str(len(body)))]:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_adapter_passes_every_repeated_header_to_the_event():
    broker = FakeBroker()
    with Served(handler_for(broker)) as served:
        assert request(served.address, "POST", "/exchange/aws",
                       [("Authorization", "Bearer one"), ("Authorization", "Bearer two"),
                        ("Content-Type", "application/json")], b"{}") == (200, {})
    assert broker.events[0]["headers"]["authorization"] == "Bearer one,Bearer two"


def test_each_accepted_connection_has_tcp_nodelay():
    seen = []

    class Probe(handler_for(FakeBroker())):
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


@pytest.fixture
def scheduled(tmp_path):
    with Served(handler_for(FakeBroker(Functions(scheduled_template(tmp_path))))) as served:
        yield served.address


def test_posting_to_a_scheduled_function_fires_it_with_its_schedules_event(scheduled):
    status, body = request(scheduled, "POST", "/_local/schedule/RotateFunction")
    assert status == 200
    assert (body["function"], body["event"]) == ("RotateFunction", "Daily")
    assert body["result"]["event"]["detail-type"] == "Scheduled Event"


def test_a_schedule_event_may_be_named_in_the_path(scheduled):
    status, body = request(scheduled, "POST", "/_local/schedule/RefreshFunction/Hourly")
    assert (status, body["result"]["event"]) == (200, {"scope": "all"})


def test_a_function_without_a_schedule_is_a_404_that_says_so(scheduled):
    status, body = request(scheduled, "POST", "/_local/schedule/TokenFunction")
    assert status == 404
    assert body["message"].startswith("TokenFunction has no Schedule or ScheduleV2 event in template.yaml")


def test_an_unknown_function_or_a_get_is_a_404_that_says_how_to_fire(scheduled):
    assert request(scheduled, "POST", "/_local/schedule/Nope") == (
        404, {"message": "Nope is not a function in template.yaml"})
    status, body = request(scheduled, "GET", "/_local/schedule/RotateFunction")
    assert status == 404 and "POST /_local/schedule/<FunctionLogicalId>" in body["message"]


def test_get_lists_the_schedules_with_how_to_fire_each(scheduled):
    status, body = request(scheduled, "GET", "/_local/schedule")
    assert status == 200
    assert [(s["function"], s["event"], s["enabled"], s["fire"]) for s in body["schedules"]] == [
        ("RotateFunction", "Daily", True, "POST /_local/schedule/RotateFunction/Daily"),
        ("RefreshFunction", "Hourly", True, "POST /_local/schedule/RefreshFunction/Hourly"),
        ("RefreshFunction", "Nightly", False, "POST /_local/schedule/RefreshFunction/Nightly"),
    ]


def test_a_scheduled_function_that_raises_is_a_500_naming_it(tmp_path):
    template = scheduled_template(tmp_path)
    (tmp_path / "functions" / "rotate" / "app.py").write_text("def handler(event, context):\n    raise KeyError('x')\n")
    with Served(handler_for(FakeBroker(Functions(template)))) as served:
        assert request(served.address, "POST", "/_local/schedule/RotateFunction") == (
            500, {"message": "RotateFunction failed on its scheduled event: KeyError"})
