"""oidc_broker/api.py: parsing the token request from an API Gateway event, and response shapes."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest

from oidc_broker import api, errors
from oidc_broker.errors import InvalidRequest, InvalidTarget, UnsupportedGrantType

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJl"


def params(**overrides) -> dict[str, str]:
    values = {"grant_type": TOKEN_EXCHANGE, "subject_token": SUBJECT_TOKEN, "subject_token_type": JWT_TYPE,
              "audience": "acme/prod"}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def event(body: str | dict | None = None, *, content_type: str | None = api.FORM, base64_encoded: bool = False,
          headers: dict | None = None) -> dict:
    if body is None or isinstance(body, dict):
        body = urlencode(params(**(body or {})))
    if base64_encoded:
        body = base64.b64encode(body.encode()).decode()
    all_headers = {"content-type": content_type} if content_type is not None else {}
    all_headers.update(headers or {})
    return {"headers": all_headers, "body": body, "isBase64Encoded": base64_encoded,
            "requestContext": {"domainName": "broker.example.com"}}


def refused(evt, error=InvalidRequest):
    with pytest.raises(errors.BrokerError) as info:
        api.token_request(evt)
    assert type(info.value) is error
    return info.value


# -- a valid request ----------------------------------------------------------------------------

def test_token_request_returns_the_subject_token_and_audience():
    assert api.token_request(event()) == api.TokenRequest(subject_token=SUBJECT_TOKEN, audience="acme/prod")


@pytest.mark.parametrize("token_type", [JWT_TYPE, ID_TOKEN_TYPE])
def test_token_request_accepts_jwt_and_id_token_subject_tokens(token_type):
    assert api.token_request(event({"subject_token_type": token_type})).audience == "acme/prod"


@pytest.mark.parametrize("requested", [ID_TOKEN_TYPE, JWT_TYPE])
def test_token_request_accepts_id_token_or_jwt_as_requested_token_type(requested):
    assert api.token_request(event({"requested_token_type": requested})).audience == "acme/prod"


def test_token_request_ignores_unknown_parameters():
    assert api.token_request(event({"scope": "openid", "resource": "https://x"})).audience == "acme/prod"


# -- the form -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain", "multipart/form-data", ""])
def test_form_refuses_another_content_type(content_type):
    assert refused(event(content_type=content_type)).reason == "bad_content_type"


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded; charset=UTF-8", "Application/X-WWW-Form-Urlencoded"])
def test_form_accepts_the_form_type_with_parameters_and_any_case(content_type):
    assert api.token_request(event(content_type=content_type)).audience == "acme/prod"


def test_form_finds_the_content_type_header_in_any_case():
    evt = event(content_type=None, headers={"Content-Type": api.FORM})
    assert api.token_request(evt).audience == "acme/prod"


def test_form_refuses_a_repeated_parameter():
    body = urlencode(params()) + "&audience=acme%2Fother"
    error = refused(event(body))
    assert (error.reason, error.description) == ("repeated_parameter", "parameter 'audience' is repeated")


def test_form_refuses_a_repeated_empty_parameter():
    assert refused(event(urlencode(params()) + "&actor_token=&actor_token=")).reason == "repeated_parameter"


def test_form_reads_a_base64_encoded_body():
    assert api.token_request(event(base64_encoded=True)).subject_token == SUBJECT_TOKEN


@pytest.mark.parametrize("body", ["not base64!", "Z3JhbnRfdHlwZQ=", "Z3Jh\nbnQ=", "Zm9v☃"])
def test_form_refuses_a_body_that_is_not_valid_base64(body):
    evt = event(body)
    evt["isBase64Encoded"] = True
    assert refused(evt).reason == "malformed_body"


@pytest.mark.parametrize("body", ["grant_type", "grant_type=x&&audience=y", "audience=%ff%fe"])
def test_form_refuses_a_body_that_is_not_a_valid_form(body):
    assert refused(event(body)).reason == "malformed_body"


def test_form_refuses_a_base64_body_that_is_not_utf8():
    evt = event(base64.b64encode(b"grant_type=\xff").decode())
    evt["isBase64Encoded"] = True
    assert refused(evt).reason == "malformed_body"


def test_form_decodes_percent_encoding_and_plus():
    body = urlencode(params(audience="acme/prod")).replace("acme%2Fprod", "acme%2fprod") + "&note=a+b"
    assert api.form(event(body))["note"] == "a b"
    assert api.form(event(body))["audience"] == "acme/prod"


def test_body_of_exactly_64_kib_is_accepted():
    assert len(api.body({"body": "a" * api.MAX_BODY_BYTES})) == api.MAX_BODY_BYTES


def test_body_over_64_kib_is_refused():
    with pytest.raises(InvalidRequest) as info:
        api.body({"body": "a" * (api.MAX_BODY_BYTES + 1)})
    assert info.value.reason == "body_too_large"


def test_body_over_64_kib_in_multibyte_characters_is_refused():
    with pytest.raises(InvalidRequest) as info:
        api.body({"body": "é" * (api.MAX_BODY_BYTES // 2 + 1)})
    assert info.value.reason == "body_too_large"


def test_base64_body_decoding_to_over_64_kib_is_refused():
    encoded = base64.b64encode(b"a" * (api.MAX_BODY_BYTES + 1)).decode()
    with pytest.raises(InvalidRequest) as info:
        api.body({"body": encoded, "isBase64Encoded": True})
    assert info.value.reason == "body_too_large"


def test_a_huge_base64_body_is_refused_before_decoding():
    with pytest.raises(InvalidRequest) as info:
        api.body({"body": "!" * (10 * api.MAX_BODY_BYTES), "isBase64Encoded": True})
    assert info.value.reason == "body_too_large"


@pytest.mark.parametrize("evt", [{}, {"body": None}, {"body": ""}, {"body": "", "isBase64Encoded": True}])
def test_an_absent_body_is_empty(evt):
    assert api.body(evt) == b""


def test_an_empty_form_lacks_the_grant_type():
    assert refused(event("")).reason == "missing_grant_type"


# -- the token exchange parameters --------------------------------------------------------------

@pytest.mark.parametrize("grant_type", [None, ""])
def test_a_missing_grant_type_is_an_invalid_request(grant_type):
    # RFC 6749 section 5.2: a missing required parameter is invalid_request.
    assert refused(event({"grant_type": grant_type}), InvalidRequest).reason == "missing_grant_type"


@pytest.mark.parametrize("grant_type", ["client_credentials", "authorization_code", TOKEN_EXCHANGE.upper(), TOKEN_EXCHANGE + " "])
def test_another_grant_type_is_unsupported(grant_type):
    error = refused(event({"grant_type": grant_type}), UnsupportedGrantType)
    assert (error.status, error.error, error.reason) == (400, "unsupported_grant_type", "unsupported_grant_type")


@pytest.mark.parametrize("name", ["subject_token", "subject_token_type", "audience"])
@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_parameter_is_named(name, value):
    error = refused(event({name: value}))
    assert (error.reason, error.description) == (f"missing_{name}", f"{name} is required")


@pytest.mark.parametrize("token_type", ["urn:ietf:params:oauth:token-type:access_token", "jwt", JWT_TYPE.upper()])
def test_another_subject_token_type_is_refused(token_type):
    assert refused(event({"subject_token_type": token_type})).reason == "bad_subject_token_type"


def test_another_requested_token_type_is_refused():
    error = refused(event({"requested_token_type": "urn:ietf:params:oauth:token-type:access_token"}))
    assert error.reason == "bad_requested_token_type"


def test_an_actor_token_is_refused():
    assert refused(event({"actor_token": "x", "actor_token_type": JWT_TYPE})).reason == "actor_token"


@pytest.mark.parametrize("audience", ["acme", "acme/", "/prod", "acme/prod/x", "/", "acme//prod", "a/" + "b" * 199])
def test_a_malformed_audience_is_an_invalid_target(audience):
    error = refused(event({"audience": audience}), InvalidTarget)
    assert (error.error, error.reason) == ("invalid_target", "malformed_audience")


def test_an_audience_of_exactly_200_characters_is_accepted():
    audience = "a/" + "b" * 198
    assert api.token_request(event({"audience": audience})).audience == audience


def test_refusals_never_echo_the_subject_token():
    for overrides in ({"subject_token_type": "x"}, {"audience": "x"}, {"grant_type": "x"}, {"actor_token": "x"}):
        with pytest.raises(errors.BrokerError) as info:
            api.token_request(event(overrides))
        assert SUBJECT_TOKEN not in info.value.description


# -- event helpers ------------------------------------------------------------------------------

def test_header_lookup_ignores_case():
    assert api.header({"headers": {"X-Forwarded-For": "1.2.3.4"}}, "x-forwarded-for") == "1.2.3.4"


@pytest.mark.parametrize("evt", [{}, {"headers": None}, {"headers": {"other": "x"}}])
def test_header_is_none_when_absent(evt):
    assert api.header(evt, "content-type") is None


def test_request_domain_is_the_apis_domain_name():
    assert api.request_domain(event()) == "broker.example.com"


@pytest.mark.parametrize("evt", [{}, {"requestContext": None}, {"requestContext": {}}])
def test_request_domain_is_none_when_absent(evt):
    assert api.request_domain(evt) is None


# -- responses ----------------------------------------------------------------------------------

def test_json_response_shape():
    assert api.json_response(200, {"b": 1, "a": [1, 2]}) == {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        "body": '{"b":1,"a":[1,2]}',
        "isBase64Encoded": False,
    }


def test_json_response_takes_a_cache_control_and_extra_headers():
    response = api.json_response(200, {}, cache_control="public, max-age=300", headers={"ETag": '"x"'})
    assert response["headers"] == {"Content-Type": "application/json", "Cache-Control": "public, max-age=300",
                                   "X-Content-Type-Options": "nosniff", "ETag": '"x"'}


@pytest.mark.parametrize(
    "error_class, status, code",
    [
        (errors.InvalidRequest, 400, "invalid_request"),
        (errors.UnsupportedGrantType, 400, "unsupported_grant_type"),
        (errors.InvalidGrant, 400, "invalid_grant"),
        (errors.InvalidTarget, 400, "invalid_target"),
        (errors.ServerError, 500, "server_error"),
        (errors.TemporarilyUnavailable, 503, "temporarily_unavailable"),
        (errors.Unauthorized, 401, "invalid_request"),
        (errors.AccessDenied, 403, "access_denied"),
        (errors.CloudError, 502, "cloud_error"),
    ],
)
def test_error_response_is_exactly_error_and_description(error_class, status, code):
    response = api.error_response(error_class("what went wrong", "some_reason"))
    assert response["statusCode"] == status
    assert json.loads(response["body"]) == {"error": code, "error_description": "what went wrong"}


def test_error_response_is_never_cached():
    headers = api.error_response(InvalidRequest("x"))["headers"]
    assert (headers["Cache-Control"], headers["Pragma"], headers["Content-Type"]) == ("no-store", "no-cache", "application/json")


def test_an_unauthorized_response_asks_for_a_bearer_token():
    headers = api.error_response(errors.Unauthorized("x"))["headers"]
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_request"'


def test_a_throttled_response_says_when_to_retry():
    response = api.error_response(errors.Throttled("slow down", "throttled", retry_after=7))
    assert (response["statusCode"], response["headers"]["Retry-After"]) == (503, "7")


def test_error_response_does_not_expose_the_reason():
    assert "some_reason" not in api.error_response(InvalidRequest("x", "some_reason"))["body"]


def test_unexpected_error_is_a_generic_server_error():
    response = api.unexpected_error()
    assert response["statusCode"] == 500
    assert json.loads(response["body"])["error"] == "server_error"


def test_token_response_is_an_rfc8693_response():
    issued = SimpleNamespace(token="header.payload.signature", expires_in=900)
    response = api.token_response(issued)
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"access_token": "header.payload.signature", "issued_token_type": ID_TOKEN_TYPE,
                                            "token_type": "N_A", "expires_in": 900}
    assert (response["headers"]["Cache-Control"], response["headers"]["Pragma"]) == ("no-store", "no-cache")


# -- POST /exchange/<cloud> ---------------------------------------------------------------------

def exchange_event(body: str = '{"target": "acme/prod"}', *, authorization: str | None = "Bearer " + SUBJECT_TOKEN,
                   content_type: str | None = "application/json") -> dict:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    return {"headers": headers, "body": body, "isBase64Encoded": False}


def exchange_refused(evt, error=InvalidRequest) -> errors.BrokerError:
    with pytest.raises(errors.BrokerError) as info:
        api.exchange_request(evt)
    assert type(info.value) is error
    return info.value


def test_exchange_request_takes_the_bearer_token_and_target():
    assert api.exchange_request(exchange_event()) == api.ExchangeRequest(subject_token=SUBJECT_TOKEN, target="acme/prod")


def test_exchange_request_accepts_the_bearer_scheme_in_any_case():
    assert api.exchange_request(exchange_event(authorization="bearer " + SUBJECT_TOKEN)).subject_token == SUBJECT_TOKEN


def test_exchange_request_without_authorization_is_unauthorized():
    error = exchange_refused(exchange_event(authorization=None), errors.Unauthorized)
    assert (error.status, error.reason) == (401, "missing_bearer")


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "Bearer a b", SUBJECT_TOKEN])
def test_exchange_request_with_another_authorization_is_unauthorized(authorization):
    error = exchange_refused(exchange_event(authorization=authorization), errors.Unauthorized)
    assert error.reason == "malformed_bearer"
    assert SUBJECT_TOKEN not in error.description


@pytest.mark.parametrize("content_type", [None, api.FORM, "text/plain"])
def test_exchange_request_needs_a_json_body(content_type):
    assert exchange_refused(exchange_event(content_type=content_type)).reason == "bad_content_type"


@pytest.mark.parametrize("body", ["", "target=acme/prod", "[]", '"acme/prod"', "{"])
def test_exchange_request_refuses_a_body_that_is_not_a_json_object(body):
    assert exchange_refused(exchange_event(body)).reason == "malformed_body"


def test_exchange_request_refuses_a_repeated_field():
    assert exchange_refused(exchange_event('{"target": "acme/prod", "target": "acme/other"}')).reason == "repeated_parameter"


def test_exchange_request_refuses_an_unknown_field():
    assert exchange_refused(exchange_event('{"target": "acme/prod", "role": "admin"}')).reason == "unknown_field"


def test_exchange_request_needs_a_target():
    assert exchange_refused(exchange_event("{}")).reason == "missing_target"


@pytest.mark.parametrize("target", ['"acme"', '"acme/"', '"/prod"', '"acme/prod/x"', "5", '["acme/prod"]', json.dumps("a/" + "b" * 199)])
def test_exchange_request_refuses_a_malformed_target(target):
    error = exchange_refused(exchange_event('{"target": %s}' % target), InvalidTarget)
    assert error.reason == "malformed_target"


# -- hostile input: a refusal with its reason, never an exception, echoes bounded ----------------

@pytest.mark.parametrize("depth", [100, 30_000])  # 30 000: past the interpreter's stack, still under 64 KiB
@pytest.mark.parametrize("shape", ["[{}]", '{{"target": {}}}', '{{"a": {}}}'])
def test_exchange_request_refuses_a_deeply_nested_body(depth, shape):
    body = shape.format("[" * depth + "]" * depth)
    with pytest.raises(errors.BrokerError) as info:
        api.exchange_request(exchange_event(body))
    assert info.value.status == 400 and info.value.reason in ("malformed_body", "malformed_target", "unknown_field")


@pytest.mark.parametrize("audience", ["acme/pr\u00f6d", "acme/pr\nd", "acme/pr d", "acme/\x00",
                                      "acme/prod\x7f", "\u0430cme/prod"])
def test_an_audience_that_is_not_printable_ascii_is_an_invalid_target(audience):
    evt = event(body="&".join(f"{k}={v}" for k, v in params(audience="PLACEHOLDER").items()))
    evt["body"] = evt["body"].replace("PLACEHOLDER", audience)
    error = refused(evt, InvalidTarget)
    assert error.reason == "malformed_audience" and error.description.isascii()


@pytest.mark.parametrize("target", ["acme/pr\u00f6d", "acme/pr\\ud800d", "acme/pr\\nd", "acme/pr d", "acme/\\u0000",
                                    "\u0430cme/prod"])
def test_an_exchange_target_that_is_not_printable_ascii_is_an_invalid_target(target):
    error = exchange_refused(exchange_event('{"target": "%s"}' % target), InvalidTarget)
    assert error.reason == "malformed_target" and error.description.isascii()


@pytest.mark.parametrize("name", ["x" * 10_000, "\\ud800" * 3, "\u00e9\\n" * 1000])
def test_an_unknown_field_is_echoed_bounded_and_ascii(name):
    error = exchange_refused(exchange_event('{"target": "acme/prod", "%s": 1}' % name))
    assert error.reason == "unknown_field"
    assert len(error.description) < 150 and error.description.isascii()


def test_a_repeated_form_parameter_is_echoed_bounded_and_ascii():
    name = "\u00e9" + "p" * 10_000
    error = refused(event(body=urlencode(params()) + f"&{name}=1&{name}=2"))
    assert error.reason == "repeated_parameter"
    assert len(error.description) < 120 and error.description.isascii() and "'\\xe9ppp" in error.description


@pytest.mark.parametrize("body", ["%ff=1", "a=%ed%a0%80", "subject_token=\ud800", "a=1&&b"])
def test_a_form_that_is_not_utf8_or_not_a_form_is_malformed(body):
    assert refused(event(body=body)).reason == "malformed_body"
