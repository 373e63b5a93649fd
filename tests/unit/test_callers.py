"""oidc_broker/callers.py: verifying CI tokens, the issuers' key cache, trust rules and context."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from builders import (
    BROKER,
    CI,
    NOW,
    CallerIssuer,
    Clock,
    caller_claims,
    config_doc,
    public_jwk,
    raw_rs256_token,
    space_doc,
)
from hypothesis import given
from hypothesis import strategies as st

from oidc_broker import callers, config
from oidc_broker.callers import AUDIENCE_HOWTO, IssuerKeys, VerifiedCaller
from oidc_broker.errors import InvalidGrant, InvalidRequest, Throttled
from oidc_broker.subject import is_slug

DISCOVERY = CI + "/.well-known/openid-configuration"
JWKS = CI + "/jwks"


@pytest.fixture
def cfg() -> config.Config:
    return config.parse(config_doc())


@pytest.fixture
def issuer_keys(ci, clock) -> IssuerKeys:
    return IssuerKeys(ci.fetch, clock)


def refusal(token, cfg, keys, now=NOW) -> InvalidGrant:
    with pytest.raises(InvalidGrant) as info:
        callers.verify(token, cfg, keys, now)
    return info.value


# -- verify: accepted tokens --------------------------------------------------------------------

def test_verify_accepts_an_rs256_token_from_a_trusted_issuer(ci, cfg, issuer_keys):
    caller = callers.verify(ci.token(), cfg, issuer_keys, NOW)
    assert caller.issuer is cfg.trusted_issuers["ci"]
    assert caller.claims == caller_claims()
    assert (caller.subject, caller.jti) == ("repo:acme/app:ref:refs/heads/main", "caller-jti-1")


def test_verify_accepts_an_es256_token_from_a_trusted_issuer(ci, cfg, issuer_keys):
    caller = callers.verify(ci.token(alg="ES256", kid="ec-1"), cfg, issuer_keys, NOW)
    assert caller.claims == caller_claims()


def test_verify_leaves_the_audience_to_the_trust_rules(ci, cfg, issuer_keys):
    caller = callers.verify(ci.token(caller_claims(aud="somebody-else")), cfg, issuer_keys, NOW)
    assert caller.claims["aud"] == "somebody-else"


def test_verify_accepts_a_token_with_no_nbf(ci, cfg, issuer_keys):
    assert "nbf" not in callers.verify(ci.token(caller_claims(nbf=None)), cfg, issuer_keys, NOW).claims


# -- verify: algorithms and keys ----------------------------------------------------------------

def test_verify_refuses_alg_none(ci, cfg, issuer_keys):
    token = jwt.encode(caller_claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert refusal(token, cfg, issuer_keys).reason == "bad_algorithm"


def test_verify_refuses_hs256(ci, cfg, issuer_keys):
    token = jwt.encode(caller_claims(), b"a shared secret of thirty-two bytes!", algorithm="HS256", headers={"kid": "rsa-1"})
    assert refusal(token, cfg, issuer_keys).reason == "bad_algorithm"


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES384"])
def test_verify_refuses_algorithms_outside_rs256_and_es256(ci, cfg, issuer_keys, alg, other_rsa_key):
    key = other_rsa_key if alg.startswith(("RS", "PS")) else None
    if key is None:
        from cryptography.hazmat.primitives.asymmetric import ec
        key = ec.generate_private_key(ec.SECP384R1())
    assert refusal(ci.token(alg=alg, key=key), cfg, issuer_keys).reason == "bad_algorithm"


def test_verify_refuses_an_es256_header_on_an_rsa_key(ci, cfg, issuer_keys):
    token = ci.token(alg="ES256", kid="rsa-1")
    assert refusal(token, cfg, issuer_keys).reason == "bad_signature"


def test_verify_refuses_an_rs256_header_on_an_ec_key(ci, cfg, issuer_keys):
    token = ci.token(alg="RS256", kid="ec-1")
    assert refusal(token, cfg, issuer_keys).reason == "bad_signature"


def test_verify_refuses_a_key_published_for_another_alg(ci, cfg, clock):
    ci.keys = [public_jwk(ci.rsa_key, "rsa-1", alg="RS512")]
    assert refusal(ci.token(), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


def test_verify_refuses_a_key_published_for_encryption(ci, cfg, clock):
    ci.keys = [public_jwk(ci.rsa_key, "rsa-1", use="enc")]
    assert refusal(ci.token(), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


def test_verify_refuses_an_ec_key_on_another_curve(ci, cfg, clock):
    ci.keys = [{**public_jwk(ci.ec_key, "ec-1"), "crv": "P-384"}]
    assert refusal(ci.token(alg="ES256", kid="ec-1"), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


def test_verify_refuses_a_signature_by_another_key(ci, cfg, issuer_keys, other_rsa_key):
    assert refusal(ci.token(key=other_rsa_key), cfg, issuer_keys).reason == "bad_signature"


def test_verify_refuses_a_tampered_payload(ci, cfg, issuer_keys):
    head, _, signature = ci.token().split(".")
    _, forged, _ = ci.token(caller_claims(repository="evil/app"), key=ci.ec_key, alg="ES256").split(".")
    assert refusal(f"{head}.{forged}.{signature}", cfg, issuer_keys).reason == "bad_signature"


def test_verify_refuses_a_token_without_kid(ci, cfg, issuer_keys):
    assert refusal(ci.token(kid=None), cfg, issuer_keys).reason == "missing_kid"


def test_verify_refuses_an_empty_kid(ci, cfg, issuer_keys):
    assert refusal(ci.token(kid=""), cfg, issuer_keys).reason == "missing_kid"


def test_verify_refuses_a_non_string_kid(ci, cfg, issuer_keys):
    token = raw_rs256_token({"kid": 7}, caller_claims(), ci.rsa_key)
    assert refusal(token, cfg, issuer_keys).reason == "missing_kid"


def test_verify_refuses_an_unknown_kid(ci, cfg, issuer_keys):
    assert refusal(ci.token(kid="made-up"), cfg, issuer_keys).reason == "unknown_kid"


def test_verify_refuses_a_critical_header_parameter_pyjwt_understands(ci, cfg, issuer_keys):
    token = raw_rs256_token({"kid": "rsa-1", "b64": True, "crit": ["b64"]}, caller_claims(), ci.rsa_key)
    assert refusal(token, cfg, issuer_keys).reason == "unknown_crit"


def test_verify_refuses_any_critical_header_parameter(ci, cfg, issuer_keys):
    token = raw_rs256_token({"kid": "rsa-1", "crit": ["exp"], "exp": 1}, caller_claims(), ci.rsa_key)
    assert refusal(token, cfg, issuer_keys).reason == "unknown_crit"


# -- verify: signatures, checked with cryptography from the JWK --------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _with_signature(token: str, signature: bytes) -> str:
    return token.rpartition(".")[0] + "." + _b64(signature)


def _signed(key, alg: str, kid: str, claims=None) -> str:
    """A JWS whose signature is whatever `key.sign` returns (DER for ECDSA), built by hand."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    message = f"{_b64(json.dumps({'alg': alg, 'kid': kid}).encode())}.{_b64(json.dumps(claims or caller_claims()).encode())}"
    if alg == "ES256":
        signature = key.sign(message.encode(), ec.ECDSA(hashes.SHA256()))
    else:
        signature = key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{message}.{_b64(signature)}"


@pytest.mark.parametrize("alg,kid", [("RS256", "rsa-1"), ("ES256", "ec-1")])
def test_verify_refuses_a_signature_with_one_bit_flipped(ci, cfg, issuer_keys, alg, kid):
    token = ci.token(alg=alg, kid=kid)
    signature = bytearray(_unb64(token.rpartition(".")[2]))
    signature[len(signature) // 2] ^= 0x01
    assert refusal(_with_signature(token, bytes(signature)), cfg, issuer_keys).reason == "bad_signature"


@pytest.mark.parametrize("alg,kid", [("RS256", "rsa-1"), ("ES256", "ec-1")])
@pytest.mark.parametrize("change", ["truncated", "extended", "empty"])
def test_verify_refuses_a_signature_of_the_wrong_length(ci, cfg, issuer_keys, alg, kid, change):
    token = ci.token(alg=alg, kid=kid)
    signature = _unb64(token.rpartition(".")[2])
    signature = {"truncated": signature[:-1], "extended": signature + b"\0", "empty": b""}[change]
    assert refusal(_with_signature(token, signature), cfg, issuer_keys).reason == "bad_signature"


def test_verify_refuses_an_es256_signature_in_der_form(ci, cfg, issuer_keys):
    token = _signed(ci.ec_key, "ES256", "ec-1")
    assert len(_unb64(token.rpartition(".")[2])) != 64
    assert refusal(token, cfg, issuer_keys).reason == "bad_signature"


def test_verify_accepts_the_same_es256_signature_in_raw_form(ci, cfg, issuer_keys):
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    token = _signed(ci.ec_key, "ES256", "ec-1")
    r, s = decode_dss_signature(_unb64(token.rpartition(".")[2]))
    raw = _with_signature(token, r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    assert callers.verify(raw, cfg, issuer_keys, NOW).subject == caller_claims()["sub"]


def test_verify_refuses_a_1024_bit_rsa_key(ci, cfg, clock):
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ci.keys = [public_jwk(weak, "rsa-1")]
    assert refusal(ci.token(key=weak), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


def test_verify_refuses_a_forgery_for_an_rsa_key_with_exponent_one(ci, cfg, clock):
    # With e = 1 the signature is its own padded digest: anyone can forge one.
    import hashlib

    n = int.from_bytes(_unb64(public_jwk(ci.rsa_key, "rsa-1")["n"]), "big")
    message = ci.token().rpartition(".")[0]
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(message.encode()).digest()
    padded = b"\x00\x01" + b"\xff" * (256 - 3 - len(digest_info)) + b"\x00" + digest_info
    assert int.from_bytes(padded, "big") < n
    ci.keys = [{**public_jwk(ci.rsa_key, "rsa-1"), "e": _b64(b"\x01")}]
    forged = f"{message}.{_b64(padded)}"
    assert refusal(forged, cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


@pytest.mark.parametrize("e", [b"\x01", b"\x02", b"\x01\x00\x00", b""])
def test_verify_refuses_an_rsa_key_whose_exponent_is_one_even_or_empty(ci, cfg, clock, e):
    ci.keys = [{**public_jwk(ci.rsa_key, "rsa-1"), "e": _b64(e)}]
    assert refusal(ci.token(), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


@pytest.mark.parametrize("member", ["n", "e"])
def test_verify_refuses_an_rsa_key_member_with_a_leading_zero_octet(ci, cfg, clock, member):
    jwk = public_jwk(ci.rsa_key, "rsa-1")
    ci.keys = [{**jwk, member: _b64(b"\0" + _unb64(jwk[member]))}]
    assert refusal(ci.token(), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


@pytest.mark.parametrize("value", [None, 65537, "", "a", "AQAB=", "AQ+B"])
def test_verify_refuses_an_rsa_exponent_that_is_not_base64url(ci, cfg, clock, value):
    ci.keys = [{**public_jwk(ci.rsa_key, "rsa-1"), "e": value}]
    assert refusal(ci.token(), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


@pytest.mark.parametrize("member", ["x", "y"])
@pytest.mark.parametrize("change", ["leading zero", "short"])
def test_verify_refuses_an_ec_coordinate_that_is_not_32_bytes(ci, cfg, clock, member, change):
    jwk = public_jwk(ci.ec_key, "ec-1")
    raw = _unb64(jwk[member])
    ci.keys = [{**jwk, member: _b64(b"\0" + raw if change == "leading zero" else raw[1:])}]
    assert refusal(ci.token(alg="ES256", kid="ec-1"), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


def test_verify_refuses_an_ec_point_off_the_curve(ci, cfg, clock):
    jwk = public_jwk(ci.ec_key, "ec-1")
    y = (int.from_bytes(_unb64(jwk["y"]), "big") ^ 1).to_bytes(32, "big")
    ci.keys = [{**jwk, "y": _b64(y)}]
    assert refusal(ci.token(alg="ES256", kid="ec-1"), cfg, IssuerKeys(ci.fetch, clock)).reason == "bad_signature"


def test_verify_refuses_a_signature_over_a_re_encoded_header(ci, cfg, issuer_keys):
    head, payload, signature = ci.token().split(".")
    padded_head = _b64(_unb64(head) + b" ")  # the same header JSON, other bytes
    assert refusal(f"{padded_head}.{payload}.{signature}", cfg, issuer_keys).reason == "bad_signature"


def test_verify_builds_each_public_key_once_while_its_jwk_is_unchanged(ci, cfg, clock, monkeypatch):
    built = []
    build = callers._build_key
    monkeypatch.setattr(callers, "_build_key", lambda jwk, kty: built.append(jwk["kid"]) or build(jwk, kty))
    monkeypatch.setattr(callers, "_public_keys", {})
    keys = IssuerKeys(ci.fetch, clock)
    for _ in range(3):
        callers.verify(ci.token(), cfg, keys, NOW)
    assert built == ["rsa-1"]


def test_verify_uses_the_new_key_when_a_kid_is_reused_for_another_key(ci, cfg, clock, other_rsa_key, monkeypatch):
    monkeypatch.setattr(callers, "_public_keys", {})
    callers.verify(ci.token(), cfg, IssuerKeys(ci.fetch, clock), NOW)
    ci.keys = [public_jwk(other_rsa_key, "rsa-1")]
    keys = IssuerKeys(ci.fetch, clock)
    assert callers.verify(ci.token(key=other_rsa_key), cfg, keys, NOW)
    assert refusal(ci.token(), cfg, keys).reason == "bad_signature"


def test_verify_keeps_a_bounded_number_of_public_keys(ci, cfg, clock, monkeypatch):
    from cryptography.hazmat.primitives.asymmetric import ec

    monkeypatch.setattr(callers, "_public_keys", {})
    for i in range(callers.MAX_CACHED_KEYS + 5):
        key = ec.generate_private_key(ec.SECP256R1())
        ci.keys = [public_jwk(key, f"ec-{i}")]
        callers.verify(ci.token(alg="ES256", kid=f"ec-{i}", key=key), cfg, IssuerKeys(ci.fetch, clock), NOW)
    assert len(callers._public_keys) == callers.MAX_CACHED_KEYS


def test_importing_callers_does_not_import_pyjwt():
    import subprocess
    import sys

    code = "import sys, oidc_broker.callers; print('jwt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": callers.__file__.rsplit("/oidc_broker/", 1)[0]}).stdout
    assert out.strip() == "False"


# -- verify: issuers ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "iss",
    [
        "https://gitlab.example.com",
        CI + "/",  # trailing slash
        "https://ci.example",  # a prefix of the trusted issuer
        CI + ".evil.example",  # the trusted issuer as a prefix
        CI + "/org",
        "HTTPS://CI.EXAMPLE.COM",
        None,
    ],
)
def test_verify_refuses_an_issuer_that_is_not_trusted_byte_for_byte(ci, cfg, issuer_keys, iss):
    assert refusal(ci.token(caller_claims(iss=iss)), cfg, issuer_keys).reason == "untrusted_issuer"


@pytest.mark.parametrize("iss", [123, [CI], {"iss": CI}])
def test_verify_refuses_an_issuer_that_is_not_a_string(ci, cfg, issuer_keys, iss):
    token = raw_rs256_token({"kid": "rsa-1"}, caller_claims(iss=iss), ci.rsa_key)
    assert refusal(token, cfg, issuer_keys).reason == "untrusted_issuer"


def test_verify_never_fetches_keys_for_an_untrusted_issuer(ci, cfg, issuer_keys):
    refusal(ci.token(caller_claims(iss="https://attacker.example")), cfg, issuer_keys)
    assert ci.fetched == []


def test_verify_refuses_a_trusted_issuers_token_signed_by_another_trusted_issuers_key(ci, clock, other_rsa_key):
    gitlab = CallerIssuer(rsa_key=other_rsa_key, ec_key=ci.ec_key, issuer="https://gitlab.example.com")
    gitlab.keys = [public_jwk(other_rsa_key, "gl-1")]
    cfg = config.parse(config_doc(trusted_issuers=[{"name": "ci", "issuer": CI}, {"name": "gl", "issuer": gitlab.issuer}]))
    fetch = lambda url, deadline: (gitlab if url.startswith(gitlab.issuer) else ci).fetch(url)  # noqa: E731
    token = ci.token(caller_claims(), kid="gl-1", key=other_rsa_key)  # claims iss=ci, key of gitlab
    assert refusal(token, cfg, IssuerKeys(fetch, clock)).reason == "unknown_kid"


# -- verify: token shape and claims -------------------------------------------------------------

def test_verify_requires_a_subject_token():
    with pytest.raises(InvalidRequest):
        callers.verify("", config.parse(config_doc()), IssuerKeys(lambda url, deadline: {}, Clock()), NOW)


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "e30.e30"])
def test_verify_refuses_a_token_that_is_not_a_jwt(cfg, issuer_keys, token):
    assert refusal(token, cfg, issuer_keys).reason == "malformed_token"


def test_verify_refuses_a_token_over_16_kib(ci, cfg, issuer_keys):
    token = ci.token(caller_claims(padding="x" * 16 * 1024))
    assert refusal(token, cfg, issuer_keys).reason == "token_too_large"


@pytest.mark.parametrize("claim", ["sub", "aud", "exp", "iat", "jti"])
def test_verify_refuses_a_token_missing_a_required_claim(ci, cfg, issuer_keys, claim):
    token = ci.token(caller_claims(**{claim: None}))
    assert refusal(token, cfg, issuer_keys).reason == f"missing_{claim}"


@pytest.mark.parametrize("claim, value", [("exp", "soon"), ("exp", True), ("iat", "now"), ("nbf", [1])])
def test_verify_refuses_time_claims_that_are_not_numbers(ci, cfg, issuer_keys, claim, value):
    token = ci.token(caller_claims(**{claim: value}))
    assert refusal(token, cfg, issuer_keys).reason == f"invalid_{claim}"


@pytest.mark.parametrize("jti", ["", "j" * 257])
def test_verify_refuses_an_empty_or_overlong_jti(ci, cfg, issuer_keys, jti):
    assert refusal(ci.token(caller_claims(jti=jti)), cfg, issuer_keys).reason == "invalid_jti"


def test_verify_refuses_an_empty_sub(ci, cfg, issuer_keys):
    assert refusal(ci.token(caller_claims(sub="")), cfg, issuer_keys).reason == "invalid_sub"


@pytest.mark.parametrize("claim, reason", [("sub", "invalid_sub"), ("jti", "invalid_jti")])
def test_verify_reports_a_non_string_sub_or_jti_as_such(ci, cfg, issuer_keys, claim, reason):
    assert refusal(ci.token(caller_claims(**{claim: 12345})), cfg, issuer_keys).reason == reason


# -- verify: time -------------------------------------------------------------------------------

@pytest.mark.parametrize("exp", [NOW - 60, NOW - 61, NOW - 3600])
def test_verify_refuses_a_token_expired_at_or_past_the_leeway(ci, cfg, issuer_keys, exp):
    token = ci.token(caller_claims(exp=exp, iat=exp - 300, nbf=exp - 300))
    assert refusal(token, cfg, issuer_keys).reason == "expired"


def test_verify_accepts_a_token_expired_within_the_leeway(ci, cfg, issuer_keys):
    token = ci.token(caller_claims(exp=NOW - 59, iat=NOW - 300, nbf=NOW - 300))
    assert callers.verify(token, cfg, issuer_keys, NOW).claims["exp"] == NOW - 59


@pytest.mark.parametrize("nbf", [NOW + 61, NOW + 3600])
def test_verify_refuses_a_token_not_valid_yet(ci, cfg, issuer_keys, nbf):
    assert refusal(ci.token(caller_claims(nbf=nbf)), cfg, issuer_keys).reason == "not_yet_valid"


def test_verify_accepts_a_not_before_within_the_leeway(ci, cfg, issuer_keys):
    assert callers.verify(ci.token(caller_claims(nbf=NOW + 60)), cfg, issuer_keys, NOW)


def test_verify_refuses_a_token_issued_in_the_future(ci, cfg, issuer_keys):
    token = ci.token(caller_claims(iat=NOW + 61, nbf=NOW))
    assert refusal(token, cfg, issuer_keys).reason == "issued_in_future"


def test_verify_refuses_a_future_iat_when_nbf_is_absent(ci, cfg, issuer_keys):
    token = ci.token(caller_claims(iat=NOW + 61, nbf=None))
    assert refusal(token, cfg, issuer_keys).reason == "issued_in_future"


def test_verify_accepts_an_iat_within_the_leeway(ci, cfg, issuer_keys):
    assert callers.verify(ci.token(caller_claims(iat=NOW + 60, nbf=None)), cfg, issuer_keys, NOW)


def issuer_config(**settings) -> config.Config:
    return config.parse(config_doc(trusted_issuers=[{"name": "ci", "issuer": CI, **settings}]))


def test_verify_uses_the_issuers_leeway(ci, issuer_keys):
    token = ci.token(caller_claims(exp=NOW - 5))
    assert refusal(token, issuer_config(leeway=0), issuer_keys).reason == "expired"
    assert callers.verify(ci.token(caller_claims(exp=NOW - 299)), issuer_config(leeway="5m"), issuer_keys, NOW)


@pytest.mark.parametrize("age", [3600 + 61, 86400])
def test_verify_refuses_a_token_older_than_the_issuers_max_age(ci, cfg, issuer_keys, age):
    token = ci.token(caller_claims(iat=NOW - age, nbf=NOW - age, exp=NOW + 60))
    assert refusal(token, cfg, issuer_keys).reason == "too_old"


def test_verify_accepts_a_token_at_the_max_age_plus_leeway(ci, cfg, issuer_keys):
    token = ci.token(caller_claims(iat=NOW - 3660, nbf=None, exp=NOW + 60))
    assert callers.verify(token, cfg, issuer_keys, NOW)


def test_verify_uses_the_issuers_max_token_age(ci, issuer_keys):
    token = ci.token(caller_claims(iat=NOW - 200, nbf=None))
    assert refusal(token, issuer_config(max_token_age=120), issuer_keys).reason == "too_old"


# JSON allows NaN and Infinity, and every comparison with NaN is false: a NaN exp would never expire.
@pytest.mark.parametrize("claim, value", [("exp", float("nan")), ("exp", float("inf")), ("iat", float("nan")),
                                          ("nbf", float("nan"))])
def test_verify_refuses_a_non_finite_time_claim(ci, cfg, issuer_keys, claim, value):
    assert refusal(ci.token(caller_claims(**{claim: value})), cfg, issuer_keys).reason == f"invalid_{claim}"


def test_verify_refuses_a_token_with_nan_exp_and_iat_a_year_later(ci, cfg, issuer_keys):
    token = ci.token(caller_claims(exp=float("nan"), iat=float("nan"), nbf=None))
    assert refusal(token, cfg, issuer_keys, now=NOW + 365 * 86400).reason == "invalid_exp"


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [10**400, -10**400, 1e200, -1e200, -1, -0.5, callers.MAX_TIME + 1])
def test_verify_refuses_a_time_claim_outside_the_sane_range(ci, cfg, issuer_keys, claim, value):
    token = raw_rs256_token({"kid": "rsa-1"}, caller_claims(**{claim: value}), ci.rsa_key)
    assert refusal(token, cfg, issuer_keys).reason == f"invalid_{claim}"


def test_verify_accepts_time_claims_with_fractions_and_an_exp_at_the_range_end(ci, cfg, issuer_keys):
    token = ci.token(caller_claims(iat=NOW - 0.5, nbf=NOW - 0.5, exp=callers.MAX_TIME))
    assert callers.verify(token, cfg, issuer_keys, NOW).claims["exp"] == callers.MAX_TIME


def test_verify_refuses_an_integer_too_long_for_json(ci, cfg, issuer_keys):
    payload = json.dumps(caller_claims(exp=None)).encode()[:-1] + b',"exp":1' + b"0" * 5000 + b"}"
    token = signed_raw(HEADER, payload, ci.rsa_key)
    assert refusal(token, cfg, issuer_keys).reason == "malformed_token"


# -- verify: hostile shapes, each a refusal and never an exception ------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_raw(header: bytes, payload: bytes, key) -> str:
    """An RS256 JWS over header and payload bytes exactly as given (JSON a library would not write)."""
    message = f"{_b64(header)}.{_b64(payload)}"
    signature = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(message.encode(), key)
    return f"{message}.{_b64(signature)}"


HEADER = b'{"alg":"RS256","kid":"rsa-1"}'


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [callers.MAX_JSON_DEPTH, 5000])  # one level too deep; past the interpreter's stack
def test_verify_refuses_a_payload_nested_too_deep(ci, cfg, issuer_keys, depth):
    payload = json.dumps(caller_claims()).encode()[:-1] + b',"x":' + nested(depth) + b"}"
    error = refusal(signed_raw(HEADER, payload, ci.rsa_key), cfg, issuer_keys)
    assert (error.reason, error.description) == ("malformed_token", "subject_token payload is nested deeper than 32 levels")


@pytest.mark.parametrize("depth", [callers.MAX_JSON_DEPTH, 5000])
def test_verify_refuses_a_header_nested_too_deep(ci, cfg, issuer_keys, depth):
    header = HEADER[:-1] + b',"x":' + nested(depth) + b"}"
    error = refusal(signed_raw(header, json.dumps(caller_claims()).encode(), ci.rsa_key), cfg, issuer_keys)
    assert (error.reason, error.description) == ("malformed_token", "subject_token header is nested deeper than 32 levels")


def test_verify_accepts_a_claim_nested_to_the_depth_limit(ci, cfg, issuer_keys):
    payload = json.dumps(caller_claims()).encode()[:-1] + b',"x":' + nested(callers.MAX_JSON_DEPTH - 1) + b"}"
    assert callers.verify(signed_raw(HEADER, payload, ci.rsa_key), cfg, issuer_keys, NOW)


@pytest.mark.parametrize("token", ["e30.e30.sig\ud800", "e30.e\ud80030.sig", "e30.e30.s\u00efg", "\u00e9" * 10])
def test_verify_refuses_a_token_that_is_not_ascii(cfg, issuer_keys, token):
    assert refusal(token, cfg, issuer_keys).reason == "malformed_token"


@pytest.mark.parametrize("token", ["e30=.e30.sig", "e30.e30.sig=", "e3!0.e30.sig", "e30.e 30.sig", "e30.e30.si+g"])
def test_verify_refuses_a_token_with_characters_outside_base64url(cfg, issuer_keys, token):
    assert refusal(token, cfg, issuer_keys).reason == "malformed_token"


@pytest.mark.parametrize("claims", [caller_claims(sub="repo:\ud800"), caller_claims(jti="\udfff-1"),
                                    caller_claims(**{"\ud800": "x"}), caller_claims(extra={"a": ["\udc00"]})])
def test_verify_refuses_a_payload_with_a_lone_surrogate(ci, cfg, issuer_keys, claims):
    error = refusal(raw_rs256_token({"kid": "rsa-1"}, claims, ci.rsa_key), cfg, issuer_keys)
    assert (error.reason, error.description) == ("malformed_token", "subject_token payload has a string that is not valid Unicode")


def test_verify_refuses_a_header_with_a_lone_surrogate(ci, cfg, issuer_keys):
    error = refusal(raw_rs256_token({"kid": "rsa-\ud800"}, caller_claims(), ci.rsa_key), cfg, issuer_keys)
    assert error.description == "subject_token header has a string that is not valid Unicode"


@pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"\xff", b"\xc3"])  # an encoded surrogate; not UTF-8 at all
def test_verify_refuses_a_payload_that_is_not_utf8(ci, cfg, issuer_keys, raw):
    payload = json.dumps(caller_claims()).encode()[:-1] + b',"x":"' + raw + b'"}'
    error = refusal(signed_raw(HEADER, payload, ci.rsa_key), cfg, issuer_keys)
    assert (error.reason, error.description) == ("malformed_token", "subject_token payload is not UTF-8")


def test_verify_accepts_non_ascii_unicode_claims(ci, cfg, issuer_keys):
    claims = callers.verify(ci.token(caller_claims(sub="repo:\u00e9t\u00e9/\U0001f600")), cfg, issuer_keys, NOW).claims
    assert claims["sub"] == "repo:\u00e9t\u00e9/\U0001f600"


def test_verify_echoes_a_duplicate_member_name_bounded_and_ascii(ci, cfg, issuer_keys):
    name = "\u00e9" + "k" * 5000
    payload = json.dumps(caller_claims()).encode()[:-1] + f',"{name}":1,"{name}":2}}'.encode()
    error = refusal(signed_raw(HEADER, payload, ci.rsa_key), cfg, issuer_keys)
    assert error.reason == "duplicate_member"
    assert len(error.description) < 150 and error.description.isascii() and "\\xe9kkk" in error.description


@pytest.mark.parametrize("sub", ["s" * callers.MAX_SUB_BYTES, "\u4e00" * (callers.MAX_SUB_BYTES // 6)])
def test_verify_accepts_a_sub_of_the_serialized_limit(ci, cfg, issuer_keys, sub):
    assert callers.verify(ci.token(caller_claims(sub=sub)), cfg, issuer_keys, NOW).subject == sub


# The minted token escapes non-ASCII (\u4e00 is 6 bytes): the limit counts what KMS signs, not characters.
@pytest.mark.parametrize("sub", ["s" * (callers.MAX_SUB_BYTES + 1), "\u4e00" * (callers.MAX_SUB_BYTES // 6 + 1),
                                 "\n" * (callers.MAX_SUB_BYTES // 2 + 1)])
def test_verify_refuses_a_sub_over_the_serialized_limit(ci, cfg, issuer_keys, sub):
    assert refusal(ci.token(caller_claims(sub=sub)), cfg, issuer_keys).reason == "invalid_sub"


def test_verify_bounds_the_jti_in_utf8_bytes(ci, cfg, issuer_keys):
    assert callers.verify(ci.token(caller_claims(jti="\u4e00" * 85)), cfg, issuer_keys, NOW)
    assert refusal(ci.token(caller_claims(jti="\u4e00" * 86)), cfg, issuer_keys).reason == "invalid_jti"


# -- IssuerKeys ---------------------------------------------------------------------------------

def test_issuer_keys_fetches_discovery_then_the_key_set(ci, cfg, issuer_keys):
    assert issuer_keys.key(cfg.trusted_issuers["ci"], "rsa-1") == public_jwk(ci.rsa_key, "rsa-1")
    assert ci.fetched == [DISCOVERY, JWKS]


def test_issuer_keys_uses_a_configured_jwks_uri_without_discovery(ci, clock):
    trusted = config.TrustedIssuer(name="ci", issuer=CI, jwks_uri=JWKS)
    assert IssuerKeys(ci.fetch, clock).key(trusted, "ec-1")["kid"] == "ec-1"
    assert ci.fetched == [JWKS]


def test_issuer_keys_serves_a_known_kid_from_cache(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.JWKS_TTL - 1)
    issuer_keys.key(trusted, "ec-1")
    assert ci.fetched == [DISCOVERY, JWKS]


def test_issuer_keys_refetches_a_known_kid_after_the_ttl(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.JWKS_TTL)
    ci.keys = [public_jwk(ci.ec_key, "ec-1")]  # the issuer dropped rsa-1
    assert issuer_keys.key(trusted, "rsa-1") is None
    assert len(ci.fetched) == 4


def test_issuer_keys_refetches_for_an_unknown_kid_at_most_once_per_cooldown(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.REFRESH_COOLDOWN)
    for _ in range(5):
        assert issuer_keys.key(trusted, "made-up") is None
        clock.advance(callers.REFRESH_COOLDOWN / 10)
    assert ci.fetched == [DISCOVERY, JWKS] * 2


def test_issuer_keys_refetches_again_once_the_cooldown_has_passed(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(1)
    assert issuer_keys.key(trusted, "rotated") is None  # within the cooldown of the first fetch
    ci.keys.append(public_jwk(ci.rsa_key, "rotated"))
    clock.advance(callers.REFRESH_COOLDOWN)
    assert issuer_keys.key(trusted, "rotated")["kid"] == "rotated"


def test_issuer_keys_cooldown_is_per_issuer(ci, clock, other_rsa_key):
    gitlab = CallerIssuer(rsa_key=other_rsa_key, ec_key=ci.ec_key, issuer="https://gitlab.example.com")
    fetch = lambda url, deadline: (gitlab if url.startswith(gitlab.issuer) else ci).fetch(url)  # noqa: E731
    keys = IssuerKeys(fetch, clock)
    keys.key(config.TrustedIssuer("ci", CI), "made-up")
    assert keys.key(config.TrustedIssuer("gl", gitlab.issuer), "rsa-1") is not None


def test_issuer_keys_keeps_the_last_good_set_when_a_fetch_fails(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.JWKS_TTL)
    ci.failing = True
    assert issuer_keys.key(trusted, "rsa-1")["kid"] == "rsa-1"
    assert len(ci.fetched) == 3  # it did try


@pytest.mark.parametrize("published", [[], [{"kty": "RSA", "n": "x", "e": "AQAB"}], [{"kid": 5}], ["rsa-1"]])
def test_issuer_keys_never_replaces_the_last_good_set_with_an_empty_one(ci, cfg, issuer_keys, clock, published):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.JWKS_TTL)
    ci.keys = published
    assert issuer_keys.key(trusted, "rsa-1")["kid"] == "rsa-1"


def test_issuer_keys_does_not_cache_an_empty_first_set(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    good, ci.keys = ci.keys, []
    assert "no usable keys" in unavailable(issuer_keys, trusted, "rsa-1").log["fetch_error"]
    ci.keys = good
    clock.advance(callers.REFRESH_COOLDOWN)
    assert issuer_keys.key(trusted, "rsa-1")["kid"] == "rsa-1"


@pytest.mark.parametrize("named", [CI + "/", "https://attacker.example", "HTTPS://CI.EXAMPLE.COM"])
def test_issuer_keys_refuses_discovery_naming_another_issuer(ci, cfg, issuer_keys, named):
    ci.discovery_issuer = named
    assert "names another issuer" in unavailable(issuer_keys, cfg.trusted_issuers["ci"], "rsa-1").log["fetch_error"]
    assert ci.fetched == [DISCOVERY]


def test_issuer_keys_refuses_discovery_without_jwks_uri(cfg, clock):
    keys = IssuerKeys(lambda url, deadline: {"issuer": CI}, clock)
    assert "no jwks_uri" in unavailable(keys, cfg.trusted_issuers["ci"], "rsa-1").log["fetch_error"]


def test_issuer_keys_refuses_a_key_set_without_keys(cfg, clock):
    keys = IssuerKeys(lambda url, deadline: {"issuer": CI, "jwks_uri": JWKS} if url == DISCOVERY else {"kys": []}, clock)
    assert "has no keys" in unavailable(keys, cfg.trusted_issuers["ci"], "rsa-1").log["fetch_error"]


@pytest.mark.parametrize("bad", [
    {"kty": "oct", "k": "c2VjcmV0"},  # a symmetric key is never a caller's key
    {"d": "private-exponent"},  # a private key published by mistake
])
def test_issuer_keys_ignores_unusable_keys(ci, cfg, clock, bad):
    ci.keys = [{**public_jwk(ci.rsa_key, "rsa-1"), **bad}, public_jwk(ci.ec_key, "ec-1")]
    keys = IssuerKeys(ci.fetch, clock)
    assert keys.key(cfg.trusted_issuers["ci"], "rsa-1") is None
    assert keys.key(cfg.trusted_issuers["ci"], "ec-1") is not None


def test_issuer_keys_reads_at_most_max_keys_keys(ci, cfg, clock):
    ci.keys = [public_jwk(ci.ec_key, f"k{i}") for i in range(callers.MAX_KEYS + 1)]
    keys = IssuerKeys(ci.fetch, clock)
    assert keys.key(cfg.trusted_issuers["ci"], f"k{callers.MAX_KEYS - 1}") is not None
    assert keys.key(cfg.trusted_issuers["ci"], f"k{callers.MAX_KEYS}") is None


class SharedSets:
    """The table's copy of issuer key sets, as other containers left it."""

    def __init__(self, failing: bool = False):
        self.items: dict[str, tuple[float, list[dict]]] = {}
        self.max_ages: dict[str, float] = {}
        self.reads = 0
        self.failing = failing

    def get_issuer_keys(self, issuer):
        self.reads += 1
        if self.failing:
            raise RuntimeError("table unavailable")
        return self.items.get(issuer)

    def put_issuer_keys(self, issuer, keys, fetched_at, max_age):
        if self.failing:
            raise RuntimeError("table unavailable")
        self.items[issuer] = (fetched_at, keys)
        self.max_ages[issuer] = max_age


def test_a_fetched_key_set_is_shared(ci, cfg, clock):
    shared = SharedSets()
    IssuerKeys(ci.fetch, clock, shared=shared).key(cfg.trusted_issuers["ci"], "rsa-1")
    assert shared.items[CI] == (NOW, ci.keys)
    assert shared.max_ages[CI] == cfg.trusted_issuers["ci"].max_key_set_age  # the table's ttl


def test_a_shared_key_set_saves_the_fetch(ci, cfg, clock):
    shared = SharedSets()
    shared.items[CI] = (NOW - 10, ci.keys)
    keys = IssuerKeys(ci.fetch, clock, shared=shared)
    assert keys.key(cfg.trusted_issuers["ci"], "rsa-1")["kid"] == "rsa-1"
    assert (ci.fetched, keys.fetches) == ([], 0)


def test_the_refresh_cooldown_counts_another_containers_fetch(ci, cfg, clock):
    shared = SharedSets()
    shared.items[CI] = (NOW - 10, ci.keys)
    assert IssuerKeys(ci.fetch, clock, shared=shared).key(cfg.trusted_issuers["ci"], "made-up") is None
    assert ci.fetched == []


def test_a_stale_shared_key_set_is_refetched(ci, cfg, clock):
    shared = SharedSets()
    shared.items[CI] = (NOW - callers.JWKS_TTL, [public_jwk(ci.rsa_key, "rsa-1")])
    keys = IssuerKeys(ci.fetch, clock, shared=shared)
    assert keys.key(cfg.trusted_issuers["ci"], "rsa-1")["kid"] == "rsa-1"
    assert keys.fetches == 1 and shared.items[CI][0] == NOW


def test_made_up_kids_read_the_shared_copy_at_most_once_per_recheck(ci, cfg, clock):
    shared = SharedSets()
    keys = IssuerKeys(ci.fetch, clock, shared=shared)
    for _ in range(5):
        keys.key(cfg.trusted_issuers["ci"], "made-up")
        clock.advance(1)
    assert shared.reads == 1


def test_an_unavailable_shared_copy_falls_back_to_the_issuer(ci, cfg, clock):
    keys = IssuerKeys(ci.fetch, clock, shared=SharedSets(failing=True))
    assert keys.key(cfg.trusted_issuers["ci"], "rsa-1")["kid"] == "rsa-1"


def test_an_empty_key_set_is_never_shared(ci, cfg, clock):
    shared = SharedSets()
    ci.keys = []
    unavailable(IssuerKeys(ci.fetch, clock, shared=shared), cfg.trusted_issuers["ci"], "rsa-1")
    assert shared.items == {}


def test_verify_answers_503_for_an_issuer_whose_discovery_names_another_issuer(ci, cfg, issuer_keys):
    ci.discovery_issuer = CI + "/"
    with pytest.raises(Throttled) as info:
        callers.verify(ci.token(), cfg, issuer_keys, NOW)
    assert (info.value.status, info.value.error) == (503, "temporarily_unavailable")


# -- IssuerKeys: how old a last good key set may be (max_key_set_age) --------------------------

def unavailable(keys: IssuerKeys, trusted: config.TrustedIssuer, kid: str) -> Throttled:
    with pytest.raises(Throttled) as info:
        keys.key(trusted, kid)
    assert (info.value.status, info.value.error, info.value.reason) == (503, "temporarily_unavailable", "issuer_unavailable")
    assert int(info.value.headers["Retry-After"]) >= 1
    return info.value


def remove_rsa_1(ci, how: str) -> None:
    ci.keys = [public_jwk(ci.ec_key, "ec-1")]  # the issuer dropped rsa-1 ...
    if how == "error":
        ci.failing = True  # ... then fails (or times out: a FetchError either way)
    elif how == "empty":
        ci.keys = []  # ... then serves an empty set


@pytest.mark.parametrize("how", ["error", "empty"])
def test_a_removed_key_is_accepted_until_the_last_good_set_is_max_age_old(ci, cfg, issuer_keys, clock, how):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    remove_rsa_1(ci, how)
    clock.advance(trusted.max_key_set_age - 1)
    assert issuer_keys.key(trusted, "rsa-1")["kid"] == "rsa-1"  # the issuer is down: the last good set serves
    clock.advance(1)
    refused = unavailable(issuer_keys, trusted, "rsa-1")
    assert repr(CI) in refused.description and "longer than the broker trusts" in refused.description
    assert refused.log["key_set_age"] == trusted.max_key_set_age


def test_a_last_good_set_too_old_refuses_every_kid_of_the_issuer(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    ci.failing = True
    clock.advance(trusted.max_key_set_age)
    for kid in ("rsa-1", "ec-1", "made-up"):
        unavailable(issuer_keys, trusted, kid)


def test_the_max_key_set_age_is_the_issuers_own(ci, clock):
    trusted = config.TrustedIssuer("ci", CI, max_key_set_age=15 * 60)
    keys = IssuerKeys(ci.fetch, clock)
    keys.key(trusted, "rsa-1")
    ci.failing = True
    clock.advance(15 * 60)
    unavailable(keys, trusted, "rsa-1")


def test_a_removed_key_from_the_shared_copy_is_accepted_until_it_is_max_age_old(ci, cfg, clock):
    trusted = cfg.trusted_issuers["ci"]
    shared = SharedSets()
    # Another container fetched the set; its age counts from then, not from when this one read it.
    shared.items[CI] = (NOW - trusted.max_key_set_age + 30, [public_jwk(ci.rsa_key, "rsa-1")])
    ci.failing = True
    keys = IssuerKeys(ci.fetch, clock, shared=shared)
    assert keys.key(trusted, "rsa-1")["kid"] == "rsa-1"
    clock.advance(30)
    unavailable(keys, trusted, "rsa-1")


def test_a_shared_copy_older_than_the_max_age_is_ignored(ci, cfg, clock):
    trusted = cfg.trusted_issuers["ci"]
    shared = SharedSets()
    shared.items[CI] = (NOW - trusted.max_key_set_age, [public_jwk(ci.rsa_key, "rsa-1")])
    ci.failing = True
    unavailable(IssuerKeys(ci.fetch, clock, shared=shared), trusted, "rsa-1")
    ci.failing = False
    clock.advance(callers.SHARED_RECHECK + callers.REFRESH_COOLDOWN)
    keys = IssuerKeys(ci.fetch, clock, shared=shared)
    assert keys.key(trusted, "rsa-1")["kid"] == "rsa-1" and keys.fetches == 1  # fetched, not taken from the table


# -- IssuerKeys: an issuer that cannot be fetched is a dependency failure (503) -----------------

def test_no_key_set_and_a_failed_fetch_is_a_503_with_the_fetch_error_in_the_log_only(ci, cfg, issuer_keys):
    ci.failing = True
    refused = unavailable(issuer_keys, cfg.trusted_issuers["ci"], "rsa-1")
    assert refused.log["fetch_error"] == f"could not fetch {DISCOVERY}"
    assert "could not fetch" not in refused.description
    assert repr(CI) in refused.description and "'ci'" not in refused.description  # the URL, not the configured name
    assert refused.log["key_set_age"] is None


def test_a_cached_set_without_the_kid_and_a_failed_refetch_is_a_503(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.REFRESH_COOLDOWN)
    ci.failing = True
    unavailable(issuer_keys, trusted, "rotated")  # a new key and a made-up kid look alike
    assert issuer_keys.fetches == 2


def test_a_successful_refetch_without_the_kid_is_unknown_kid(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.REFRESH_COOLDOWN)
    assert issuer_keys.key(trusted, "made-up") is None
    assert issuer_keys.fetches == 2


def test_within_the_cooldown_after_a_failed_fetch_an_unknown_kid_is_still_a_503(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    clock.advance(callers.REFRESH_COOLDOWN)
    ci.failing = True
    unavailable(issuer_keys, trusted, "made-up")
    ci.failing = False  # back up, but within the cooldown nobody asks it
    clock.advance(callers.REFRESH_COOLDOWN - 1)
    refused = unavailable(issuer_keys, trusted, "made-up-2")
    assert refused.headers["Retry-After"] == "1"  # when the next fetch may be made
    assert refused.log["fetch_error"] == f"could not fetch {DISCOVERY}"  # the last error, remembered
    assert issuer_keys.fetches == 2
    assert issuer_keys.key(trusted, "rsa-1")["kid"] == "rsa-1"  # a known kid still serves


def test_within_the_cooldown_after_a_successful_fetch_an_unknown_kid_is_unknown_kid(ci, cfg, issuer_keys, clock):
    trusted = cfg.trusted_issuers["ci"]
    issuer_keys.key(trusted, "rsa-1")
    for _ in range(5):
        clock.advance(1)
        assert issuer_keys.key(trusted, "made-up") is None
    assert issuer_keys.fetches == 1


def test_a_newer_shared_set_clears_the_remembered_error(ci, cfg, clock):
    trusted = cfg.trusted_issuers["ci"]
    shared = SharedSets()
    ci.failing = True
    keys = IssuerKeys(ci.fetch, clock, shared=shared)
    unavailable(keys, trusted, "rsa-1")
    clock.advance(callers.SHARED_RECHECK)
    shared.items[CI] = (clock.now - 1, [public_jwk(ci.rsa_key, "rsa-1")])  # another container got through
    assert keys.key(trusted, "made-up") is None  # the issuer's latest word: no such kid


def test_verify_refuses_an_unknown_kid_naming_the_issuer_url_not_its_name(ci, cfg, issuer_keys):
    refused = refusal(ci.token(kid="made-up"), cfg, issuer_keys)
    assert repr(CI) in refused.description and "'ci'" not in refused.description


def test_verify_answers_503_when_the_issuer_cannot_be_fetched(ci, cfg, issuer_keys):
    ci.failing = True
    with pytest.raises(Throttled) as info:
        callers.verify(ci.token(), cfg, issuer_keys, NOW)
    assert info.value.body()["error"] == "temporarily_unavailable"
    assert "Retry-After" in info.value.headers


# -- IssuerKeys: one deadline for discovery and key set; issuers do not wait on each other ------

def test_discovery_and_the_key_set_share_one_deadline(ci, cfg, clock):
    deadlines = []

    def fetch(url, deadline):
        deadlines.append(deadline)
        return ci.fetch(url)

    IssuerKeys(fetch, clock).key(cfg.trusted_issuers["ci"], "rsa-1")
    assert len(deadlines) == 2 and deadlines[0] is deadlines[1]
    assert deadlines[0].seconds == callers.FETCH_DEADLINE


def test_a_deadline_counts_down_and_then_gives_up():
    now = [100.0]
    deadline = callers.Deadline(3.0, timer=lambda: now[0])
    now[0] += 2.5
    assert deadline.remaining() == 0.5
    now[0] += 0.5
    with pytest.raises(TimeoutError):
        deadline.remaining()


def test_the_http_fetcher_gives_up_at_a_passed_deadline():
    passed = callers.Deadline(0.0)
    with pytest.raises(callers.FetchError, match="gave up after"):
        callers.HttpFetcher(allow_loopback_http=True)("http://127.0.0.1:9/jwks", passed)


def test_a_slow_issuer_does_not_hold_up_another_issuer(ci, clock, other_rsa_key):
    import threading

    gitlab = CallerIssuer(rsa_key=other_rsa_key, ec_key=ci.ec_key, issuer="https://gitlab.example.com")
    started, release = threading.Event(), threading.Event()

    def fetch(url, deadline):
        if url.startswith(CI):
            started.set()
            release.wait(10)
            return ci.fetch(url)
        return gitlab.fetch(url)

    keys = IssuerKeys(fetch, clock)
    slow = threading.Thread(target=keys.key, args=(config.TrustedIssuer("ci", CI), "rsa-1"), daemon=True)
    slow.start()
    assert started.wait(5)
    found = []
    other = threading.Thread(target=lambda: found.append(keys.key(config.TrustedIssuer("gl", gitlab.issuer), "rsa-1")),
                             daemon=True)
    other.start()
    other.join(5)
    release.set()
    slow.join(5)
    assert found and found[0]["kid"] == "rsa-1"


# -- trust rules --------------------------------------------------------------------------------

def rules_config(*rules: dict, issuers: tuple[str, ...] = ("ci",)) -> config.Config:
    doc = config_doc(trusted_issuers=[{"name": n, "issuer": f"https://{n}.example.com"} for n in issuers])
    space_doc(doc)["trust"] = list(rules)
    return config.parse(doc)


def rule(name="r", claims=None, targets=("images",), **extra) -> dict:
    return {"name": name, "issuer": "ci", "claims": claims or {"repository": "acme/app"}, "targets": list(targets), **extra}


def verified(cfg: config.Config, issuer: str = "ci", **claims) -> VerifiedCaller:
    return VerifiedCaller(issuer=cfg.trusted_issuers[issuer], claims=caller_claims(**claims))


def report(cfg: config.Config, caller: VerifiedCaller, target: str = "acme/images", index: int = 0) -> callers.RuleReport:
    return callers.evaluate(cfg.spaces["acme"].trust[index], caller.issuer, caller.claims, cfg.target(target))


def failure(cfg: config.Config, caller: VerifiedCaller, target: str = "acme/images") -> str | None:
    failed = report(cfg, caller, target).first_failure()
    return failed.name if failed else None


def admit_refusal(cfg: config.Config, caller: VerifiedCaller, target: str = "acme/images") -> InvalidGrant:
    with pytest.raises(InvalidGrant) as info:
        callers.admit(cfg, caller, cfg.target(target))
    return info.value


def test_a_rule_admits_a_caller_whose_claims_and_audience_match():
    cfg = rules_config(rule())
    assert report(cfg, verified(cfg)).admits


@pytest.mark.parametrize(
    "expected, actual",
    [(123, "123"), ("123", 123), (True, 1), (1, True), (False, 0), (True, "true"), (1, 1.0), ("a", ["a"])],
)
def test_a_rule_compares_claims_with_strict_types(expected, actual):
    cfg = rules_config(rule(claims={"repository_id": expected}))
    assert failure(cfg, verified(cfg, repository_id=actual)) == "claim repository_id"


@pytest.mark.parametrize("value", [123, True, False, "acme/app"])
def test_a_rule_admits_a_claim_of_the_same_type_and_value(value):
    cfg = rules_config(rule(claims={"repository_id": value}))
    assert report(cfg, verified(cfg, repository_id=value)).admits


@pytest.mark.parametrize("actual", [None, ""])
def test_a_rule_refuses_a_caller_missing_a_claim(actual):
    cfg = rules_config(rule(claims={"environment": "production", "repository": "acme/app"}))
    assert failure(cfg, verified(cfg, environment=actual)) == "claim environment"


def test_claim_comparison_is_case_sensitive_for_a_generic_issuer():
    cfg = rules_config(rule())
    assert failure(cfg, verified(cfg, repository="Acme/App")) == "claim repository"


def test_every_claim_condition_must_hold():
    cfg = rules_config(rule(claims={"repository": "acme/app", "ref": "refs/heads/main"}))
    assert failure(cfg, verified(cfg, ref="refs/heads/dev")) == "claim ref"


def test_a_rule_admits_an_aud_list_containing_its_audience():
    cfg = rules_config(rule())
    assert report(cfg, verified(cfg, aud=["https://other.example.com", BROKER])).admits


@pytest.mark.parametrize("aud", [["https://other.example.com"], [], BROKER + "/", [BROKER, 5], {"aud": BROKER}, None])
def test_a_rule_refuses_an_aud_without_its_audience(aud):
    cfg = rules_config(rule())
    assert failure(cfg, verified(cfg, aud=aud)) == "aud"


def test_a_rule_with_its_own_audience_refuses_the_brokers_issuer():
    cfg = rules_config(rule(audience="oidc-broker"))
    assert failure(cfg, verified(cfg, aud=BROKER)) == "aud"


def test_a_rule_refuses_a_target_it_does_not_list():
    cfg = rules_config(rule())
    assert failure(cfg, verified(cfg), "acme/prod") == "target"


def test_a_rule_refuses_a_caller_of_another_issuer():
    cfg = rules_config(rule(), issuers=("ci", "gl"))
    assert failure(cfg, verified(cfg, issuer="gl")) == "issuer"


def test_admit_returns_the_first_rule_that_admits():
    cfg = rules_config(rule("strict", claims={"repository": "other/app"}), rule("first"), rule("second"))
    assert callers.admit(cfg, verified(cfg), cfg.target("acme/images")).name == "first"


def test_admit_names_the_failed_check_but_no_rule_name_and_no_configured_value():
    cfg = rules_config(rule("alpha", claims={"repository": "other/app"}), rule("beta", claims={"ref": "refs/heads/dev"}))
    refusal_ = admit_refusal(cfg, verified(cfg))
    assert refusal_.reason == "claim_mismatch"
    assert refusal_.description == "claim 'repository' does not match any trust rule for target 'acme/images'"


def test_admit_logs_each_rules_first_failure_for_the_operator():
    cfg = rules_config(rule("alpha", claims={"repository": "other/app"}), rule("beta", claims={"ref": "refs/heads/dev"}))
    assert admit_refusal(cfg, verified(cfg)).log == {"trust_rules": [
        {"rule": "alpha", "check": "claim repository", "detail": "rule expects 'other/app'"},
        {"rule": "beta", "check": "claim ref", "detail": "rule expects 'refs/heads/dev'"},
    ]}


def test_admit_reports_a_wrong_audience_with_the_brokers_public_issuer():
    cfg = rules_config(rule())
    refusal_ = admit_refusal(cfg, verified(cfg, aud="https://other.example.com"))
    assert (refusal_.reason, refusal_.description) == (
        "audience_mismatch", f"aud does not match: tokens for this broker must have aud {BROKER!r}" + AUDIENCE_HOWTO.format(issuer=BROKER))


def test_admit_never_reveals_a_rules_own_audience():
    cfg = rules_config(rule(audience="private-audience"))
    refusal_ = admit_refusal(cfg, verified(cfg))
    assert refusal_.reason == "audience_mismatch"
    assert "private-audience" not in refusal_.description and BROKER not in refusal_.description


def test_admit_refuses_when_no_rule_is_for_the_issuer_and_target():
    cfg = rules_config(rule(targets=("prod",), context={"environment": "production"}))
    assert admit_refusal(cfg, verified(cfg)).reason == "no_matching_rule"


def test_admit_refuses_a_caller_of_an_issuer_no_rule_names():
    cfg = rules_config(rule(), issuers=("ci", "gl"))
    assert admit_refusal(cfg, verified(cfg, issuer="gl")).reason == "no_matching_rule"


def test_no_matching_rule_names_the_tokens_issuer_url_not_the_trusted_issuers_name():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": CI}, {"name": "internal-name", "issuer": "https://x.example.com"}])
    space_doc(doc)["trust"] = [rule()]
    cfg = config.parse(doc)
    refusal_ = admit_refusal(cfg, verified(cfg, issuer="internal-name"))
    assert refusal_.description == "no trust rule admits tokens of issuer 'https://x.example.com' to target 'acme/images'"
    assert refusal_.log == {"trusted_issuer": "internal-name"}


def test_admit_refusals_never_echo_claim_values():
    cfg = rules_config(rule(claims={"repository": "acme/app"}))
    assert "secret-looking" not in admit_refusal(cfg, verified(cfg, repository="secret-looking/value")).description


# -- dangerous events and tenant order (GitHub preset) ------------------------------------------

GITHUB = "https://token.actions.githubusercontent.com"


def github_config(*claims: dict) -> config.Config:
    doc = config_doc(trusted_issuers=[{"name": "gh", "issuer": GITHUB}])
    space_doc(doc)["trust"] = [rule(f"r{i}", claims=c) | {"issuer": "gh"} for i, c in enumerate(claims)]
    return config.parse(doc)


def github_caller(cfg: config.Config, **claims) -> VerifiedCaller:
    return verified(cfg, issuer="gh", iss=GITHUB, repository_id="42", **claims)


@pytest.mark.parametrize("event", ["pull_request_target", "PULL_REQUEST_TARGET", "Workflow_Run",
                                   ["push", "pull_request_target"], ["workflow_run"]])
def test_a_dangerous_event_is_refused_whatever_its_case_and_inside_a_list(event):
    cfg = github_config({"repository_id": "42"})
    assert failure(cfg, github_caller(cfg, event_name=event)) == "event_name value"
    assert admit_refusal(cfg, github_caller(cfg, event_name=event)).reason == "dangerous_event"


@pytest.mark.parametrize("event", ["push", "", 1, True, ["push", "schedule"], {"pull_request_target": 1}])
def test_other_event_values_are_not_dangerous(event):
    cfg = github_config({"repository_id": "42"})
    assert report(cfg, github_caller(cfg, event_name=event)).admits


def test_a_rule_names_a_dangerous_event_case_insensitively():
    cfg = github_config({"repository_id": "42", "event_name": ["push", "PULL_REQUEST_TARGET"]})
    checks = {c.name: c.ok for c in report(cfg, github_caller(cfg, event_name="pull_request_target")).checks}
    assert checks["event_name value"] is True


def test_a_rule_naming_a_dangerous_event_admits_it():
    cfg = github_config({"repository_id": "42", "event_name": ["push", "pull_request_target"]})
    assert report(cfg, github_caller(cfg, event_name="pull_request_target")).admits


def test_a_glob_does_not_name_a_dangerous_event():
    cfg = github_config({"repository_id": "42", "event_name": "pull_request*"})
    assert failure(cfg, github_caller(cfg, event_name="pull_request_target")) == "event_name value"


def test_a_list_claim_holding_one_named_and_one_unnamed_dangerous_event_is_refused():
    cfg = github_config({"repository_id": "42", "event_name": "pull_request_target"})
    checks = {c.name: c.ok for c in report(cfg, github_caller(cfg, event_name=["pull_request_target", "workflow_run"])).checks}
    assert checks["event_name value"] is False


def test_a_strangers_refusal_names_the_tenant_check_first():
    cfg = github_config({"ref": "refs/heads/main", "environment": "production", "repository_id": "42"})
    stranger = verified(cfg, issuer="gh", iss=GITHUB, repository_id="99", ref="refs/heads/dev")
    assert admit_refusal(cfg, stranger).description == (
        "claim 'repository_id' does not match any trust rule for target 'acme/images'")


# -- context values -----------------------------------------------------------------------------

PROD = config.Target(space="acme", name="prod", kind="account", provider="aws", audience="sts.amazonaws.com",
                     subject_keys=("space", "environment", "account"), lifetime=900)


def context_rule(**context) -> config.TrustRule:
    return config.TrustRule(space="acme", name="r", issuer="ci", audience=BROKER, claims={},
                            targets=("prod",), context=context)


def values_of(rule_: config.TrustRule, caller: VerifiedCaller, target: config.Target = PROD) -> dict[str, str]:
    return callers.context_values(rule_, caller, target)


def caller_with(**claims) -> VerifiedCaller:
    return VerifiedCaller(issuer=config.TrustedIssuer("ci", CI), claims=caller_claims(**claims))


def test_context_values_supply_a_literal():
    rule_ = context_rule(environment=config.ContextValue(literal="production"))
    assert values_of(rule_, caller_with(environment="staging")) == {"environment": "production"}


def test_context_values_supply_a_claims_value():
    rule_ = context_rule(environment=config.ContextValue(claim="deploy_env"))
    assert values_of(rule_, caller_with(deploy_env="staging")) == {"environment": "staging"}


def test_context_values_skip_keys_the_target_does_not_use():
    rule_ = context_rule(environment=config.ContextValue(claim="deploy_env"), project=config.ContextValue(literal="web"))
    images = config.Target(space="acme", name="images", kind="feed", provider="aws", audience="sts.amazonaws.com",
                           subject_keys=("space", "feed"), lifetime=600)
    assert values_of(rule_, caller_with(deploy_env="Not A Slug"), images) == {}


def test_context_values_of_a_rule_without_context_are_empty():
    assert values_of(context_rule(), caller_with()) == {}


@pytest.mark.parametrize("value", [None, ""])
def test_context_values_refuse_a_missing_or_empty_claim(value):
    rule_ = context_rule(environment=config.ContextValue(claim="deploy_env"))
    with pytest.raises(InvalidGrant) as info:
        values_of(rule_, caller_with(deploy_env=value))
    assert info.value.reason == "missing_context"


@pytest.mark.parametrize("value", ["Prod", "a:b", "prod ", "-prod", "x" * 64, "prod/eu", 5, True, ["prod"]])
def test_context_values_refuse_a_claim_that_is_not_a_slug(value):
    rule_ = context_rule(environment=config.ContextValue(claim="deploy_env"))
    with pytest.raises(InvalidGrant) as info:
        values_of(rule_, caller_with(deploy_env=value))
    assert info.value.reason == "invalid_context"


def test_context_values_name_the_claim_never_its_value():
    rule_ = context_rule(environment=config.ContextValue(claim="deploy_env"))
    with pytest.raises(InvalidGrant) as info:
        values_of(rule_, caller_with(deploy_env="Secret Value"))
    assert "deploy_env" in info.value.description and "Secret" not in info.value.description


@given(st.text(min_size=1))
def test_context_values_return_a_claim_unchanged_or_refuse_it(value):
    rule_ = context_rule(environment=config.ContextValue(claim="deploy_env"))
    try:
        values = values_of(rule_, caller_with(deploy_env=value))
    except InvalidGrant as e:
        assert e.reason == "invalid_context" and not is_slug(value)
    else:
        assert values == {"environment": value} and is_slug(value)
