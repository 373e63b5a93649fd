"""oidc_broker_cli/local/adapter.py's POST /_local/invoke/<LogicalId>: any function of the template
invoked with a JSON event, as Lambda Invoke (RequestResponse) would; what the CLI's local
transport (deployment.LocalDeployment) uses."""

from __future__ import annotations

import pytest

from oidc_broker_cli.deployment import DeploymentError, Function, LocalDeployment, LocalRecord
from oidc_broker_cli.local.adapter import handler_for
from oidc_broker_cli.local.functions import Functions, UnknownFunction

from ..fakes import scheduled_template
from .fakes import FakeBroker, Served
from .test_adapter import request


class InvokingBroker(FakeBroker):
    """The template's real functions (tests/cli/fakes.py), invoked directly as LocalBroker does."""

    def __init__(self, functions):
        super().__init__(functions)
        self.direct = []

    def invoke_direct(self, function, event):
        self.direct.append((function, event))
        return self.functions.invoke(function, event)


@pytest.fixture
def served(tmp_path):
    broker = InvokingBroker(Functions(scheduled_template(tmp_path)))
    with Served(handler_for(broker)) as served:
        served.broker = broker
        yield served


def test_invoke_passes_the_json_event_and_answers_the_functions_result(served):
    status, body = request(served.address, "POST", "/_local/invoke/RotateFunction", body=b'{"action": "status"}')
    assert status == 200
    assert body == {"function": "RotateFunction", "result": {"function": "RotateFunction", "event": {"action": "status"}}}
    assert served.broker.direct == [("RotateFunction", {"action": "status"})]


def test_invoke_with_no_body_sends_an_empty_event(served):
    assert request(served.address, "POST", "/_local/invoke/RefreshFunction")[1]["result"]["event"] == {}


def test_invoke_of_an_unknown_function_is_a_404_naming_the_functions(served):
    status, body = request(served.address, "POST", "/_local/invoke/NoSuchFunction", body=b"{}")
    assert status == 404
    assert body["message"].startswith("NoSuchFunction is not a function in template.yaml; its functions: RotateFunction")


@pytest.mark.parametrize("method, path", [("GET", "/_local/invoke/RotateFunction"), ("POST", "/_local/invoke"),
                                          ("POST", "/_local/invoke/RotateFunction/extra")])
def test_invoke_is_post_to_one_function(served, method, path):
    status, body = request(served.address, method, path)
    assert status == 404 and "POST /_local/invoke/<FunctionLogicalId>" in body["message"]


@pytest.mark.parametrize("sent", [b"action=status", b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                                  b"\xff\xfe{}", b'{"action": "status"'])
def test_invoke_refuses_a_body_that_is_not_json(served, sent):
    status, body = request(served.address, "POST", "/_local/invoke/RotateFunction", body=sent)
    assert status == 400 and "JSON event" in body["message"]
    assert served.broker.direct == []


def test_a_function_that_raises_is_a_500_naming_it_and_its_error(served):
    served.broker.functions._handlers["RotateFunction"] = lambda event, context: {}["missing"]
    status, body = request(served.address, "POST", "/_local/invoke/RotateFunction", body=b"{}")
    assert status == 500 and body["message"].startswith("RotateFunction failed: KeyError")


def test_local_answers_loopback_clients_only(tmp_path):
    broker = InvokingBroker(Functions(scheduled_template(tmp_path)))

    class FromAfar(handler_for(broker)):
        def setup(self):
            self.client_address = ("203.0.113.7", 40000)  # as if the connection came from another host
            super().setup()

    with Served(FromAfar) as served:
        for method, path in (("POST", "/_local/invoke/RotateFunction"), ("POST", "/_local/schedule/RotateFunction"),
                             ("GET", "/_local/schedule")):
            assert request(served.address, method, path, body=b"{}") == (
                403, {"message": "Forbidden: /_local answers loopback clients only"})
    assert broker.direct == []


def test_functions_invoke_refuses_an_unknown_logical_id(tmp_path):
    with pytest.raises(UnknownFunction, match="NoSuch is not a function in template.yaml"):
        Functions(scheduled_template(tmp_path)).invoke("NoSuch", {})


def record_for(served, pid):
    host, port = served.address
    return LocalRecord(url=f"http://{host}:{port}", issuer=f"http://{host}:{port}", table="t", aws_endpoint="", pid=pid)


def test_the_cli_transport_invokes_through_the_route(served, tmp_path):
    import os

    path = tmp_path / "local.json"
    assert record_for(served, os.getpid()).write(path)
    result = LocalDeployment(path).invoke(Function("RotateFunction", "Unused"), {"action": "status"})
    assert result == {"function": "RotateFunction", "event": {"action": "status"}}


def test_the_cli_transport_says_what_the_route_refused(served, tmp_path):
    import os

    path = tmp_path / "local.json"
    record_for(served, os.getpid()).write(path)
    with pytest.raises(DeploymentError) as refused:
        LocalDeployment(path).invoke(Function("NoSuchFunction", "Unused"), {})
    assert str(refused.value).startswith(f"NoSuchFunction in local mode at {record_for(served, 0).url}: "
                                         "NoSuchFunction is not a function in template.yaml")


def test_the_route_answers_json_serialisable_results(served):
    served.broker.functions._handlers["RotateFunction"] = lambda event, context: {"at": __import__("datetime").date(2027, 1, 1)}
    status, body = request(served.address, "POST", "/_local/invoke/RotateFunction", body=b"{}")
    assert (status, body["result"]) == (200, {"at": "2027-01-01"})

