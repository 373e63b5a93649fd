"""Hostile input on every public route: a 2xx or a 4xx with its reason, never a 5xx, never a secret.

The real handlers run in-process behind local mode's LocalBroker (moto as the embedded AWS, the
development CI issuer trusted through examples/local.yaml) and hypothesis builds their API Gateway
HTTP API (payload 2.0) events: random and structured bodies, odd headers, and CI tokens signed by
the development CI issuer with hostile claims. Each function writes its log to a stream that
encodes UTF-8 strictly, as Lambda's stdout does, so a line that cannot be written is a failure.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oidc_broker_cli.local import LocalBroker

ROOT = Path(__file__).resolve().parents[2]
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
FORM = "application/x-www-form-urlencoded"
TARGETS = ["default/prod-ecr", "default/prod-deploy", "default/prod-acr", "default/prod-gar", "default/nope", "nope/prod-ecr"]
# Every cloud's exchange function: one shared handler, each driven with the same hostile inputs.
EXCHANGES = [("ExchangeAwsFunction", "/exchange/aws"), ("ExchangeAzureFunction", "/exchange/azure"),
             ("ExchangeGcpFunction", "/exchange/gcp")]
# Fields of a 2xx response that are secrets: no log line may carry their values.
SECRET_FIELDS = ("access_token", "password", "secret_access_key", "session_token", "SecretAccessKey", "SessionToken")

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class StrictUtf8Lines(io.TextIOBase):
    """stdout as Lambda has it: text is encoded to UTF-8 strictly; what cannot be is lost (and counted)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lost = 0
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.lost += 1
            raise
        *complete, self._partial = (self._partial + text).split("\n")
        self.lines.extend(line for line in complete if line)
        return len(text)


class Harness:
    def __init__(self, broker: LocalBroker):
        self.broker = broker
        self.out = StrictUtf8Lines()
        self.host = broker.base_url.removeprefix("http://")
        # The development CI issuer's signing key: tokens over bytes no JWT library would write.
        self._ci_key = broker.dev_ci._key

    def call(self, function: str, event: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Invoke one function; its response and the log lines it wrote. Loggers created here write to `out`."""
        before, lost = len(self.out.lines), self.out.lost
        with contextlib.redirect_stdout(self.out):
            response = self.broker.invoke(function, event)
        assert self.out.lost == lost, "a log line could not be written"
        return response, self.out.lines[before:]

    def event(self, method: str, path: str, headers: dict[str, str], body: str | None = None,
              b64: bool = False) -> dict[str, Any]:
        headers = {"host": self.host, **headers}
        event = {
            "version": "2.0",
            "routeKey": f"{method} {path}",
            "rawPath": path,
            "rawQueryString": "",
            "headers": headers,
            "requestContext": {"domainName": self.host, "requestId": str(uuid.uuid4()), "stage": "$default",
                               "http": {"method": method, "path": path, "sourceIp": "127.0.0.1"}},
            "isBase64Encoded": b64,
        }
        if body is not None:
            event["body"] = body
        return event

    def ci_token(self, overrides: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        claims = self.broker.dev_ci.default_claims(int(time.time()))
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        # By hand, not jwt.encode: PyJWT refuses to write some of what a hostile token carries (an iss that is no string).
        head = {"alg": "RS256", "typ": "JWT", "kid": self.broker.dev_ci.kid, **(header or {})}
        return self.signed_raw(json.dumps(head).encode(), json.dumps(claims).encode())

    def signed_raw(self, header: bytes, payload: bytes) -> str:
        def b64url(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        message = f"{b64url(header)}.{b64url(payload)}"
        signature = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(message.encode(), self._ci_key)
        return f"{message}.{b64url(signature)}"

    def kid_header(self, extra: bytes = b"") -> bytes:
        return b'{"alg":"RS256","kid":"' + self.broker.dev_ci.kid.encode() + b'"' + extra + b"}"


@pytest.fixture(scope="module")
def harness():
    saved = dict(os.environ)
    broker = LocalBroker(root=ROOT, config_path=ROOT / "examples" / "local.yaml", port=0, log=lambda line: None)
    try:
        broker.start()
        yield Harness(broker)
    finally:
        with contextlib.suppress(Exception):
            broker.stop()
        os.environ.clear()
        os.environ.update(saved)


def check(response: Any, lines: list[str], secrets: list[str], *, logs: bool = True) -> dict[str, Any]:
    """Never a 5xx; errors are RFC 6749 shapes; every log line is JSON; no secret in either."""
    assert isinstance(response, dict) and isinstance(response.get("statusCode"), int)
    status = response["statusCode"]
    body = json.loads(response["body"])
    assert status < 500, body
    if status >= 400:
        assert set(body) == {"error", "error_description"}, body
    records = [json.loads(line) for line in lines]
    if logs:
        assert any("message" in r for r in records), "the request left no log line"
    for record in records:
        assert "exception" not in record, record.get("exception")
    if status < 300 and isinstance(body, dict):
        secrets = secrets + [str(v) for k, v in body.items() if k in SECRET_FIELDS]
    text = response["body"] + "".join(str(v) for v in (response.get("headers") or {}).values())
    for secret in secrets:
        if not _sensitive(secret):
            continue
        assert secret not in "\n".join(lines), "a token or secret was logged"
        if status >= 300:
            assert secret not in text, "a token or secret was echoed"
    return body


def _sensitive(secret: str) -> bool:
    # A short or one-letter random string occurs anywhere by chance; tokens and secrets do not.
    return len(secret) >= 20 and len(set(secret)) > 4


def token_secrets(token: str) -> list[str]:
    return [token, *[part for part in token.split(".")[1:] if len(part) >= 20]]


# -- strategies ----------------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())  # surrogates included
hostile_text = st.one_of(
    st.text(any_char, max_size=40),
    st.sampled_from(["\ud800", "x\udfff", "\x00", "\u202e", "é", "😀", "%ff", "a,b", "Bearer", "", " "]),
    st.builds(lambda c, n: c * n, st.sampled_from(["s", "é", "\u4e00", "😀", "\\", '"', "\ud800"]), st.integers(170, 1400)),
)
# Claims mostly without surrogates, so that other hostile values reach the checks past the parse.
claim_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "\x00", "\u202e", "é", "😀", "a,b", "", " ", "*", "acme/*", "refs/heads/main\n"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["s", "é", "\u4e00", "😀", "\\", '"']), st.integers(170, 1400)),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**40), 10**40), st.floats(allow_nan=True),
                         claim_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(claim_text, inner, max_size=3)),
                           max_leaves=8)
time_values = st.one_of(
    st.sampled_from([10**400, -(10**400), 10**39, 1e200, -1, 0, 1.5, float("nan"), float("inf"), float("-inf"),
                     True, False, "soon", [1], {"t": 1}]),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
)
HOSTILE_CLAIMS = {
    "exp": time_values, "iat": time_values, "nbf": time_values,
    "sub": st.one_of(claim_text, json_values), "jti": st.one_of(claim_text, json_values),
    "aud": st.one_of(claim_text, st.lists(claim_text, max_size=3), json_values),
    "iss": st.one_of(claim_text, json_values),
    "repository": st.one_of(st.just("acme/app"), claim_text), "environment": st.one_of(st.just("production"), claim_text),
    "ref": st.one_of(st.just("refs/heads/main"), json_values), "extra": json_values, "\ud800": st.just(1),
}
# A few hostile claims at a time, so that each one meets the check meant for it.
claim_overrides = st.lists(st.sampled_from(sorted(HOSTILE_CLAIMS)), max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: HOSTILE_CLAIMS[name] for name in names}))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def subject_tokens(draw, harness: Harness) -> str:
    """A CI token: signed by the trusted development issuer (mostly), with hostile claims or bytes."""
    kind = draw(st.sampled_from(["claims", "claims", "claims", "raw", "header", "text", "segments"]))
    if kind == "claims":
        return harness.ci_token(draw(claim_overrides))
    if kind == "header":
        header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "crit", "typ", "b64", "jku", "x"]), json_values,
                                      max_size=3))
        return harness.ci_token({}, header=header)
    if kind == "raw":
        claims = json.dumps(harness.broker.dev_ci.default_claims(int(time.time()))).encode()
        where = draw(st.sampled_from(["payload", "header"]))
        insert = draw(st.one_of(
            st.integers(1, 6000).map(nested),
            st.sampled_from([b'"\xed\xa0\x80"', b'"\xff"', b'"\\ud800"', b"1" + b"0" * 5000, b"1e999", b"NaN"]),
            st.binary(max_size=30),
        ))
        if where == "payload":
            return harness.signed_raw(harness.kid_header(), claims[:-1] + b',"x":' + insert + b"}")
        return harness.signed_raw(harness.kid_header(b',"x":' + insert), claims)
    if kind == "segments":
        parts = draw(st.lists(st.binary(max_size=60), min_size=1, max_size=4))
        return ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts)
    return draw(hostile_text)


def form_encode(pairs: list[tuple[str, str]], raw: bool) -> str:
    if raw:
        return "&".join(f"{k}={v}" for k, v in pairs)
    return "&".join(f"{quote(k.encode('utf-8', 'surrogatepass'))}={quote(v.encode('utf-8', 'surrogatepass'))}"
                    for k, v in pairs)


hostile_headers = st.dictionaries(
    st.one_of(st.sampled_from(["content-type", "Content-Type", "authorization", "Authorization", "x-forwarded-for",
                               "cookie", "user-agent"]), hostile_text),
    st.one_of(hostile_text, st.sampled_from([FORM, "application/json", f"{FORM}, {FORM}", "application/json; charset=utf-16"])),
    max_size=4,
)


def beside(usual: dict[str, str], odd: dict[str, str]) -> dict[str, str]:
    """Odd headers next to the usual ones, never replacing them."""
    return {**{k: v for k, v in odd.items() if k.lower() not in usual}, **usual}


def body_as_sent(text: str, b64: bool, broken: bool) -> str:
    if not b64:
        return text
    encoded = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
    return encoded[:-1] + "!" if broken and encoded else encoded


# -- POST /token ---------------------------------------------------------------------------------
# Two properties per route: an odd request around a CI token, and a well-formed request carrying a
# hostile CI token (an odd request stops at its first check, so the token needs a test of its own).

def token_form(token: str, audience: str) -> list[tuple[str, str]]:
    return [("grant_type", EXCHANGE), ("subject_token", token), ("subject_token_type", JWT_TYPE), ("audience", audience)]


@SETTINGS
@given(data=st.data())
def test_the_token_endpoint_answers_odd_requests_with_a_4xx(harness, data):
    token = data.draw(subject_tokens(harness))
    names = st.sampled_from(["grant_type", "subject_token", "subject_token_type", "audience", "requested_token_type",
                             "actor_token", "scope"])
    base = token_form(token, data.draw(st.one_of(st.sampled_from(TARGETS), hostile_text)))
    extra = data.draw(st.lists(st.tuples(st.one_of(names, hostile_text), st.one_of(hostile_text, st.just(token))),
                               max_size=3))
    pairs = data.draw(st.one_of(st.just(base + extra), st.permutations(base + extra), st.lists(st.sampled_from(base + extra))))
    text = data.draw(st.one_of(st.builds(form_encode, st.just(pairs), st.booleans()), hostile_text), label="body")
    content_type = data.draw(st.one_of(st.just(FORM), hostile_text))
    headers = data.draw(st.one_of(hostile_headers.map(lambda odd: beside({"content-type": content_type}, odd)),
                                  hostile_headers.map(lambda odd: {"content-type": content_type, **odd})))
    b64, broken = data.draw(st.booleans()), data.draw(st.booleans())
    response, lines = harness.call("TokenFunction", harness.event("POST", "/token", headers, body_as_sent(text, b64, broken), b64))
    check(response, lines, token_secrets(token))


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_the_token_endpoint_answers_hostile_ci_tokens_with_a_4xx_or_a_token(harness, data):
    token = data.draw(subject_tokens(harness))
    text = form_encode(token_form(token, data.draw(st.sampled_from(TARGETS))), raw=False)
    headers = beside({"content-type": FORM}, data.draw(hostile_headers))
    b64 = data.draw(st.booleans())
    response, lines = harness.call("TokenFunction", harness.event("POST", "/token", headers, body_as_sent(text, b64, False), b64))
    check(response, lines, token_secrets(token))


# -- POST /exchange/<cloud> ----------------------------------------------------------------------

exchange_bodies = st.one_of(
    st.sampled_from(TARGETS).map(lambda t: json.dumps({"target": t})),
    json_values.map(json.dumps),
    st.dictionaries(st.one_of(st.just("target"), hostile_text), json_values, max_size=3).map(json.dumps),
    st.integers(1, 30_000).map(lambda d: '{"target": ' + "[" * d + "]" * d + "}"),
    st.sampled_from(['{"target": "default/\\ud800"}', '{"\\ud800": 1}', '{"target": "a", "target": "b"}',
                     '{"' + "k" * 5000 + '": 1}', "[" * 40_000 + "]" * 40_000]),
    hostile_text,
)


@SETTINGS
@given(data=st.data())
def test_every_exchange_answers_odd_requests_with_a_4xx(harness, data):
    function, path = data.draw(st.sampled_from(EXCHANGES))
    token = data.draw(subject_tokens(harness))
    scheme = data.draw(st.sampled_from(["Bearer ", "bearer ", "Bearer  ", "Basic ", "", "Bearer \ud800", "Bearer a,Bearer "]))
    usual = {"content-type": data.draw(st.one_of(st.just("application/json"), hostile_text)), "authorization": scheme + token}
    headers = data.draw(st.one_of(hostile_headers.map(lambda odd: beside(usual, odd)),
                                  hostile_headers.map(lambda odd: {**usual, **odd})))
    text = data.draw(exchange_bodies, label="body")
    b64, broken = data.draw(st.booleans()), data.draw(st.booleans())
    response, lines = harness.call(function, harness.event("POST", path, headers, body_as_sent(text, b64, broken), b64))
    check(response, lines, token_secrets(token))


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_every_exchange_answers_hostile_ci_tokens_with_a_4xx_or_credentials(harness, data):
    function, path = data.draw(st.sampled_from(EXCHANGES))
    token = data.draw(subject_tokens(harness))
    headers = beside({"content-type": "application/json", "authorization": "Bearer " + token}, data.draw(hostile_headers))
    text = json.dumps({"target": data.draw(st.sampled_from(TARGETS))})
    b64 = data.draw(st.booleans())
    response, lines = harness.call(function, harness.event("POST", path, headers, body_as_sent(text, b64, False), b64))
    check(response, lines, token_secrets(token))


# -- discovery and JWKS --------------------------------------------------------------------------

@settings(SETTINGS, max_examples=25)
@given(headers=hostile_headers, body=st.one_of(st.none(), hostile_text), b64=st.booleans())
def test_discovery_and_jwks_answer_any_request(harness, headers, body, b64):
    for function, path in (("DiscoveryFunction", "/.well-known/openid-configuration"),
                           ("JwksFunction", "/.well-known/jwks.json")):
        response, lines = harness.call(function, harness.event("GET", path, headers, body, b64))
        assert check(response, lines, [], logs=False)


# -- the refusal's own log line survives ---------------------------------------------------------

def refusal_record(lines: list[str]) -> dict[str, Any]:
    (record,) = [r for r in map(json.loads, lines) if r.get("message", "").endswith("refused")]
    return record


def exchange(harness: Harness, token: str, body: str) -> tuple[dict[str, Any], list[str]]:
    headers = {"authorization": "Bearer " + token, "content-type": "application/json"}
    return harness.call("ExchangeAwsFunction", harness.event("POST", "/exchange/aws", headers, body))


@pytest.mark.parametrize("claims", [{"sub": "repo:acme/app:\ud800"}, {"jti": "\udfff"}, {"repository": "acme/\ud800"}])
def test_a_signed_token_with_a_lone_surrogate_is_refused_and_logged(harness, claims):
    response, lines = exchange(harness, harness.ci_token(claims), '{"target": "default/prod-ecr"}')
    assert response["statusCode"] == 400
    record = refusal_record(lines)
    assert (record["reason"], record["error_description"]) == ("malformed_token", "subject_token payload has a string that is not valid Unicode")


@pytest.mark.parametrize("body", ['{"target": "default/prod-ecr\\ud800"}', '{"target": "default/pr\\u00f6d"}'])
def test_a_target_that_is_not_printable_ascii_is_refused_and_logged(harness, body):
    response, lines = exchange(harness, harness.ci_token({}), body)
    assert response["statusCode"] == 400
    assert refusal_record(lines)["reason"] == "malformed_target"


def test_an_unknown_field_with_a_lone_surrogate_is_refused_and_logged(harness):
    response, lines = exchange(harness, harness.ci_token({}), '{"target": "default/prod-ecr", "\\ud800' + "x" * 500 + '": 1}')
    assert response["statusCode"] == 400
    record = refusal_record(lines)
    assert record["reason"] == "unknown_field" and len(record["error_description"]) < 150


@pytest.mark.parametrize("exp", [10**400, 1e200, -1], ids=["10**400", "1e200", "-1"])
def test_an_absurd_exp_is_refused_as_invalid(harness, exp):
    response, lines = exchange(harness, harness.ci_token({"exp": exp}), '{"target": "default/prod-ecr"}')
    assert response["statusCode"] == 400
    assert refusal_record(lines)["reason"] == "invalid_exp"


@pytest.mark.parametrize("sub", ["\u4e00" * 300, "😀" * 300, "\\" * 600])
def test_a_sub_too_large_once_serialized_is_refused(harness, sub):
    response, lines = exchange(harness, harness.ci_token({"sub": sub}), '{"target": "default/prod-ecr"}')
    assert response["statusCode"] == 400
    assert refusal_record(lines)["reason"] == "invalid_sub"


@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_token_nested_past_the_stack_is_refused(harness, where):
    claims = json.dumps(harness.broker.dev_ci.default_claims(int(time.time()))).encode()
    if where == "header":
        token = harness.signed_raw(harness.kid_header(b',"x":' + nested(5000)), claims)
    else:
        token = harness.signed_raw(harness.kid_header(), claims[:-1] + b',"x":' + nested(5000) + b"}")
    response, lines = exchange(harness, token, '{"target": "default/prod-ecr"}')
    assert response["statusCode"] == 400
    assert refusal_record(lines)["reason"] == "malformed_token"


@pytest.mark.parametrize("target, claims, secret", [("default/prod-ecr", {}, "password"),
                                                     ("default/prod-deploy", {"environment": "production"}, "secret_access_key")])
def test_a_valid_exchange_still_returns_credentials_and_logs_no_secret(harness, target, claims, secret):
    token = harness.ci_token(claims)
    response, lines = exchange(harness, token, json.dumps({"target": target}))
    body = check(response, lines, token_secrets(token))
    assert response["statusCode"] == 200 and _sensitive(body[secret])


def test_a_valid_token_request_still_returns_a_token_and_logs_neither(harness):
    token = harness.ci_token({})
    text = form_encode(token_form(token, "default/prod-ecr"), raw=False)
    response, lines = harness.call("TokenFunction", harness.event("POST", "/token", {"content-type": FORM}, text))
    body = check(response, lines, token_secrets(token))
    assert response["statusCode"] == 200 and _sensitive(body["access_token"])
