"""oidc_broker/runtime.py: one boto3 session per container, shared by every client a function makes."""

from __future__ import annotations

from oidc_broker import runtime


class Session:
    """A boto3 session that records the clients made from it."""

    instances = 0

    def __init__(self):
        Session.instances += 1
        self.clients: list[str] = []

    def client(self, service, **kwargs):
        self.clients.append(service)
        return object()


def test_the_token_functions_clients_are_the_lean_ones_and_no_boto3_session(monkeypatch):
    from oidc_broker import awsjson

    monkeypatch.setenv("TABLE_NAME", "t")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setattr(runtime, "session", lambda: (_ for _ in ()).throw(AssertionError("a boto3 session")))
    broker = runtime.broker()
    assert isinstance(broker._store._db, awsjson.Client)
    assert isinstance(broker._signer._kms, awsjson.Client)


def test_a_broker_given_a_session_makes_every_client_from_it(monkeypatch):
    monkeypatch.setenv("TABLE_NAME", "t")
    monkeypatch.setattr(runtime, "session", Session)
    Session.instances = 0
    runtime.broker(boto3_session=Session())
    assert Session.instances == 1


def test_the_exchange_functions_clients_all_come_from_the_session_it_is_given(monkeypatch):
    monkeypatch.setenv("TABLE_NAME", "t")
    monkeypatch.setenv("CACHE_KEY_ID", "alias/cache")
    monkeypatch.setattr(runtime, "session", lambda: (_ for _ in ()).throw(AssertionError("a second session")))
    session = Session()
    exchange = runtime.exchange("aws", session)
    exchange._exchanger.clients("sts", "us-east-1", None)
    assert session.clients == ["dynamodb", "kms", "sts"]


def test_a_cloud_without_an_exchanger_has_no_exchange():
    import pytest

    from oidc_broker.clouds import Cloud, refresh_at, registered

    with registered(Cloud(name="nowhere", title="Nowhere", settings={"refresh_at": refresh_at()})), \
            pytest.raises(ValueError, match="no exchanger"):
        runtime.exchange("nowhere", Session())
