"""tools/emulators/oidc.py: a token is verified against keys fetched from its issuer over HTTP.

The issuer (fake_issuer.py) serves discovery and JWKS on loopback, so every check runs against
real HTTP fetches, as the cloud services make them.
"""

from __future__ import annotations

import time

import pytest
from fake_issuer import AUDIENCE, SUBJECT

from oidc_broker_emulators import oidc
from oidc_broker_emulators.oidc import OidcError, OidcVerifier


def failed_check(issuer, token, audiences=(AUDIENCE,), **kwargs) -> str:
    with pytest.raises(OidcError) as e:
        OidcVerifier(**kwargs).verify(token, issuer.url, audiences)
    return e.value.check


def test_a_token_signed_by_the_issuers_published_key_is_verified(issuer):
    claims, audience = OidcVerifier().verify(issuer.token(), issuer.url, [AUDIENCE])
    assert (claims["sub"], claims["iss"], audience) == (SUBJECT, issuer.url, AUDIENCE)


def test_the_audience_that_matched_is_the_one_returned_from_a_list(issuer):
    token = issuer.token(aud=["api://other", AUDIENCE])
    assert OidcVerifier().verify(token, issuer.url, [AUDIENCE, "x"])[1] == AUDIENCE


def test_a_kid_the_key_set_does_not_hold_is_refused(issuer):
    assert failed_check(issuer, issuer.token(kid="k2")) == "kid"


def test_a_token_signed_by_another_key_under_the_published_kid_is_refused(issuer, keys):
    assert failed_check(issuer, issuer.token(key=keys[1])) == "signature"


def test_a_token_with_a_tampered_payload_is_refused(issuer):
    head, _, sig = issuer.token().split(".")
    _, other, _ = issuer.token(sub="space:acme:account:other").split(".")
    assert failed_check(issuer, f"{head}.{other}.{sig}") == "signature"


def test_a_token_from_another_issuer_is_refused_before_any_fetch(issuer):
    fetched = []
    token = issuer.token(iss="https://elsewhere.example.com")
    assert failed_check(issuer, token, fetch=lambda url: fetched.append(url) or {}) == "issuer"
    assert fetched == []


def test_a_plain_http_issuer_is_refused_unless_on_loopback():
    assert oidc.secure_issuer("https://id.example.com")
    assert oidc.secure_issuer("http://127.0.0.1:3000") and oidc.secure_issuer("http://localhost:3000")
    assert not oidc.secure_issuer("http://id.example.com")
    assert not oidc.secure_issuer("https://id.example.com?x=1")
    assert not oidc.secure_issuer(None)


def test_an_audience_not_accepted_is_refused(issuer):
    assert failed_check(issuer, issuer.token(aud="api://AzureADTokenExchange")) == "audience"
    assert failed_check(issuer, issuer.token(aud=None)) == "audience"


def test_an_expired_token_is_refused_beyond_the_skew_and_accepted_within(issuer):
    now = int(time.time())
    assert failed_check(issuer, issuer.token(iat=now - 900, exp=now - 301)) == "expired"
    OidcVerifier().verify(issuer.token(iat=now - 900, exp=now - 200), issuer.url, [AUDIENCE])


def test_a_token_without_exp_is_refused(issuer):
    assert failed_check(issuer, issuer.token(exp=None)) == "exp"


def test_a_token_not_yet_valid_or_issued_in_the_future_is_refused(issuer):
    now = int(time.time())
    assert failed_check(issuer, issuer.token(nbf=now + 600)) == "nbf"
    assert failed_check(issuer, issuer.token(iat=now + 600, exp=now + 900)) == "iat"


def test_times_are_judged_by_the_injected_clock(issuer):
    later = time.time() + 3600
    assert failed_check(issuer, issuer.token(), clock=lambda: later) == "expired"


def test_a_discovery_document_naming_another_issuer_is_refused(issuer):
    issuer.claimed_issuer = "https://elsewhere.example.com"
    assert failed_check(issuer, issuer.token()) == "discovery"


def test_an_unreachable_issuer_is_refused_as_unreachable():
    with pytest.raises(OidcError) as e:
        oidc.signing_key("http://127.0.0.1:9", "k1")  # discard port: nothing listens
    assert e.value.check == "unreachable"


def test_a_symmetric_or_unsigned_token_is_refused_before_any_fetch(issuer):
    import jwt

    hs = jwt.encode({"iss": issuer.url, "aud": AUDIENCE}, "s" * 32, algorithm="HS256")
    none = jwt.encode({"iss": issuer.url, "aud": AUDIENCE}, None, algorithm="none")
    assert failed_check(issuer, hs, fetch=lambda url: pytest.fail(url)) == "algorithm"
    assert failed_check(issuer, none, fetch=lambda url: pytest.fail(url)) == "algorithm"


@pytest.mark.parametrize("token", ["", "a.b", "not.a.token", "e30.e30.x.y"])
def test_what_is_not_a_jws_is_refused_as_a_token(issuer, token):
    assert failed_check(issuer, token) == "token"
