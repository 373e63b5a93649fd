"""oidc_broker/api.py: parsing POST /exchange/<cloud> and shaping its responses."""

from __future__ import annotations

import base64
import json

import pytest

from oidc_broker import api
from oidc_broker.clouds import Credentials
from oidc_broker.errors import BrokerError, InvalidRequest, InvalidTarget, Throttled, Unauthorized


def event(body="{\"target\": \"default/prod-ecr\"}", *, authorization="Bearer eyJ.a.b", content_type="application/json",
          b64=False):
    headers = {"content-type": content_type} if content_type else {}
    if authorization is not None:
        headers["authorization"] = authorization
    raw = base64.b64encode(body.encode()).decode() if b64 else body
    return {"headers": headers, "body": raw, "isBase64Encoded": b64}


def test_a_request_yields_the_bearer_token_and_the_target():
    assert api.exchange_request(event()) == api.ExchangeRequest(subject_token="eyJ.a.b", target="default/prod-ecr")
    assert api.exchange_request(event(b64=True, authorization="bearer eyJ.a.b")).target == "default/prod-ecr"


@pytest.mark.parametrize(("authorization", "reason"), [(None, "missing_bearer"), ("", "missing_bearer"),
                                                         ("Basic abc", "malformed_bearer"), ("Bearer", "malformed_bearer"),
                                                         ("Bearer a b", "malformed_bearer")])
def test_a_missing_or_malformed_bearer_is_401_with_a_challenge(authorization, reason):
    with pytest.raises(Unauthorized) as refused:
        api.exchange_request(event(authorization=authorization))
    assert refused.value.reason == reason and refused.value.status == 401
    response = api.error_response(refused.value)
    assert response["statusCode"] == 401 and response["headers"]["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("body", "error"), [
    ("{", InvalidRequest), ("[]", InvalidRequest), ("{}", InvalidRequest), ('{"target": 1}', InvalidTarget),
    ('{"target": "x"}', InvalidTarget), ('{"target": "a/b/c"}', InvalidTarget), ('{"target": "/b"}', InvalidTarget),
    ('{"target": "a/b", "extra": 1}', InvalidRequest), ('{"target": "a/b", "target": "a/c"}', InvalidRequest),
])
def test_a_body_that_is_not_the_request_object_is_refused(body, error):
    with pytest.raises(error):
        api.exchange_request(event(body))


def test_only_json_is_accepted():
    with pytest.raises(InvalidRequest, match="application/json"):
        api.exchange_request(event(content_type="application/x-www-form-urlencoded"))


def test_credentials_are_returned_with_an_rfc3339_expiry_and_never_cached():
    response = api.credentials_response(Credentials({"registry": "r", "username": "AWS", "password": "p"}, 0, 1_700_000_000))
    assert json.loads(response["body"]) == {"registry": "r", "username": "AWS", "password": "p",
                                            "expires_at": "2023-11-14T22:13:20Z"}
    assert response["headers"]["Cache-Control"] == "no-store"


def test_throttling_answers_503_with_retry_after():
    response = api.error_response(Throttled("AWS STS is throttling", "aws_throttled", 2))
    assert response["statusCode"] == 503 and response["headers"]["Retry-After"] == "2"
    assert json.loads(response["body"])["error"] == "temporarily_unavailable"


def test_errors_without_extra_headers_get_none():
    assert "Retry-After" not in api.error_response(BrokerError("x"))["headers"]
