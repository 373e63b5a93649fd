"""oidc_broker/tokens.py: the broker token's claims, header and signing input."""

from __future__ import annotations

import base64
import json

import pytest

from oidc_broker import subject, tokens
from oidc_broker.config import Target

TARGET = Target(space="acme", name="prod", kind="account", provider="aws", audience="sts.amazonaws.com",
                subject_keys=("space", "environment", "account"), lifetime=900)
SUBJECT = subject.build(TARGET.subject_keys, {"space": "acme", "environment": "production", "account": "prod"}, "aws")
CALLER = tokens.Caller(issuer="https://ci.example.com", subject="repo:acme/app:ref:refs/heads/main")


def make_claims(**kwargs):
    args = dict(issuer="https://broker.example.com", target=TARGET, subject=SUBJECT, caller=CALLER, now=1_700_000_000,
                jti="jti-1")
    args.update(kwargs)
    return tokens.claims(**args)


def decode_segment(segment: bytes) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))


def test_claims_name_issuer_subject_audience_and_times():
    body = make_claims()
    assert {k: body[k] for k in ("iss", "sub", "aud", "iat", "nbf", "exp", "jti")} == {
        "iss": "https://broker.example.com",
        "sub": "space:acme:environment:production:account:prod",
        "aud": "sts.amazonaws.com",
        "iat": 1_700_000_000,
        "nbf": 1_700_000_000,
        "exp": 1_700_000_900,
        "jti": "jti-1",
    }


def test_claims_name_the_caller_as_actor():
    assert make_claims()["act"] == {"iss": "https://ci.example.com", "sub": "repo:acme/app:ref:refs/heads/main"}


def test_claims_carry_one_claim_per_subject_part():
    body = make_claims()
    assert {k: body[k] for k in SUBJECT.claims()} == {"space": "acme", "environment": "production", "account": "prod"}


def test_claims_hold_nothing_else():
    assert set(make_claims()) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "act", "space", "environment", "account"}


def test_claims_do_not_reveal_the_trust_rule():
    assert "deploy" not in json.dumps(make_claims())


def test_claims_get_a_fresh_jti_when_none_is_given():
    first, second = make_claims(jti=None), make_claims(jti=None)
    assert first["jti"] and first["jti"] != second["jti"]


def test_header_names_rs256_jwt_and_the_kid():
    assert tokens.header("kid-1") == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}


def test_signing_input_is_base64url_header_dot_payload():
    head, body = tokens.header("kid-1"), make_claims()
    message = tokens.signing_input(head, body)
    encoded_head, encoded_body = message.split(b".")
    assert (decode_segment(encoded_head), decode_segment(encoded_body)) == (head, body)
    assert b"=" not in message


def test_signing_input_is_canonical_json():
    message = tokens.signing_input({"kid": "k", "alg": "RS256"}, {"b": 1, "a": [1, 2]})
    head, body = (base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4)) for s in message.split(b"."))
    assert (head, body) == (b'{"alg":"RS256","kid":"k"}', b'{"a":[1,2],"b":1}')


def _input_of_length(length: int) -> tuple[dict, dict]:
    """A header and body whose signing input is exactly `length` bytes long.

    Base64url cannot reach every length from one body, so a header member is padded too.
    """
    def encoded(value: dict) -> int:
        return len(tokens.b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode()))

    for pad in range(3):
        head = {**tokens.header("k"), "x": "y" * pad}
        for n in range(length):
            body = {"p": "x" * n}
            if encoded(head) + 1 + encoded(body) == length:
                return head, body
    raise AssertionError(f"no signing input of {length} bytes")


def test_signing_input_of_exactly_4096_bytes_is_accepted():
    assert len(tokens.signing_input(*_input_of_length(4096))) == tokens.MAX_SIGNING_INPUT == 4096


def test_signing_input_of_4097_bytes_is_refused():
    with pytest.raises(ValueError, match="token is 4097 bytes before signing; KMS signs at most 4096"):
        tokens.signing_input(*_input_of_length(4097))


def test_assemble_appends_the_base64url_signature():
    assert tokens.assemble(b"h.p", b"\xfb\xff") == "h.p.-_8"


def test_b64url_has_no_padding():
    assert tokens.b64url(b"a") == "YQ"
