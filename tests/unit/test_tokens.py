"""oidc_broker/tokens.py: the broker token's claims, header and signing input."""

from __future__ import annotations

import base64
import json

import pytest

from oidc_broker import subject, tokens
from oidc_broker.config import Target

TARGET = Target(space="acme", name="prod", kind="account", provider="aws", audience="sts.amazonaws.com",
                subject_keys=("space", "environment", "account"), lifetime=900)
SUBJECT = subject.build(TARGET.subject_keys, {"space": "acme", "environment": "production", "account": "prod"})
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


def test_a_signing_input_too_large_is_a_too_large_error_with_its_size():
    with pytest.raises(tokens.TooLarge) as info:
        tokens.signing_input(*_input_of_length(5000))
    assert info.value.size == 5000 and isinstance(info.value, ValueError)


@pytest.mark.parametrize("value, length", [("abc", 5), ("\u4e00", 8), ("\U0001f600", 14), ('"\n', 6), ({"a": 1}, 7)])
def test_encoded_length_counts_the_escaped_json_bytes_a_token_carries(value, length):
    assert tokens.encoded_length(value) == length


# The caller's sub is the only caller-chosen value of unbounded shape in the token (callers.MAX_SUB_BYTES bounds it):
# at its limit, with the longest audience config allows and a long subject, the token still fits what KMS signs.
@pytest.mark.parametrize("sub", ["\U0001f600" * (1024 // 12), "\u4e00" * (1024 // 6), "s" * 1024])
def test_a_caller_sub_at_its_limit_fits_beside_long_configured_values(sub):
    from oidc_broker.callers import MAX_SUB_BYTES

    assert tokens.encoded_length(sub) - 2 <= MAX_SUB_BYTES
    target = Target(space="a" * 63, name="b" * 63, kind="account", provider="aws", audience="c" * 512,
                    subject_keys=TARGET.subject_keys, lifetime=3600)
    subj = subject.build(target.subject_keys, {"space": "a" * 63, "environment": "e" * 63, "account": "b" * 63})
    body = make_claims(issuer="https://" + "i" * 192, target=target, subject=subj,
                       caller=tokens.Caller(issuer="https://" + "c" * 192, subject=sub), jti=None)
    assert len(tokens.signing_input(tokens.header("k" * 43), body)) <= tokens.MAX_SIGNING_INPUT
