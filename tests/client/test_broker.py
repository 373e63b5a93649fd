"""The broker client's decisions without a broker: retries of 503 only, answers that are not the
broker's, and the cache's refresh and expiry boundaries."""

from __future__ import annotations

import json

import pytest

from oidc_broker_client.broker import MAX_RETRY_AFTER, Broker, Refusal
from oidc_broker_client.cache import EXPIRY_MARGIN, Entry
from oidc_broker_client.errors import ClientError
from oidc_broker_client.transport import Response

CREDENTIALS = {"access_key_id": "A", "secret_access_key": "S", "session_token": "T", "expires_at": "2030-01-01T00:00:00Z"}


def answers(*responses):
    sent = []

    def request(method, url, *, headers=None, body=None):
        sent.append((method, url, headers, body))
        return responses[len(sent) - 1]

    return request, sent


def response(status, body, **headers):
    return Response(status, {k.replace("_", "-"): v for k, v in headers.items()}, json.dumps(body).encode())


def test_a_503_is_retried_after_the_brokers_retry_after_bounded_and_nothing_else_is():
    busy = response(503, {"error": "temporarily_unavailable", "error_description": "busy"}, retry_after="600")
    request, sent = answers(busy, busy, response(200, CREDENTIALS))
    slept = []
    broker = Broker("https://id.example.com", request=request, sleep=slept.append)
    assert broker.exchange("aws", "default/x", "a.b.c") == CREDENTIALS
    assert slept == [MAX_RETRY_AFTER, MAX_RETRY_AFTER] and len(sent) == 3
    assert json.loads(sent[0][3]) == {"target": "default/x"} and sent[0][2]["Authorization"] == "Bearer a.b.c"

    refused = response(400, {"error": "invalid_grant", "error_description": "claim 'ref' does not match"})
    request, sent = answers(refused)
    with pytest.raises(Refusal) as caught:
        Broker("https://id.example.com", request=request, sleep=slept.append).exchange("aws", "default/x", "a.b.c")
    assert len(sent) == 1 and caught.value.error == "invalid_grant" and not caught.value.unavailable


def test_a_503_that_persists_is_reported_as_the_brokers_refusal():
    busy = response(503, {"error": "temporarily_unavailable", "error_description": "AWS throttled"}, retry_after="1")
    request, sent = answers(busy, busy, busy)
    with pytest.raises(Refusal) as caught:
        Broker("https://id.example.com", request=request, sleep=lambda s: None).exchange("aws", "default/x", "a.b.c")
    assert caught.value.unavailable and "AWS throttled" in str(caught.value) and "again shortly" in caught.value.next_step


@pytest.mark.parametrize("answer", [
    Response(404, {}, b'{"message": "Not Found"}'),
    Response(502, {}, b"<html>Bad Gateway</html>"),
    Response(200, {}, b'{"unexpected": true}'),
])
def test_an_answer_that_is_not_the_brokers_says_to_check_the_url(answer):
    request, _ = answers(answer)
    with pytest.raises(ClientError) as caught:
        Broker("https://id.example.com", request=request).exchange("aws", "default/x", "a.b.c")
    assert not isinstance(caught.value, Refusal) and "oidc-broker" in caught.value.diagnostics()


def test_a_cache_entry_is_fresh_until_half_its_lifetime_and_never_served_within_the_margin():
    entry = Entry(CREDENTIALS, fetched_at=0, expires_at=3600)
    assert entry.fresh(1799) and not entry.fresh(1800)
    assert entry.usable(3600 - EXPIRY_MARGIN - 1) and not entry.usable(3600 - EXPIRY_MARGIN)
    short = Entry(CREDENTIALS, fetched_at=0, expires_at=100)  # half of it lies within the margin
    assert short.fresh(39) and not short.fresh(40)
