"""Bad requests and hostile caller tokens: each a 4xx with the right error, none a 5xx, nothing consumed."""

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def dev_claims(local, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "iss": local.base_url + "/_dev/ci", "aud": local.base_url, "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app", "ref": "refs/heads/main", "iat": now, "nbf": now, "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return claims


def dev_kid(local) -> str:
    return local.http.get("/_dev/ci/.well-known/jwks").json()["keys"][0]["kid"]


def assert_refused(response, status: int, error: str, mentions: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    if mentions:
        assert mentions in body["error_description"]


# -- malformed requests ------------------------------------------------------------------------

def test_a_json_body_is_refused_as_invalid_request(local):
    response = local.http.post("/token", json={"grant_type": EXCHANGE})
    assert_refused(response, 400, "invalid_request", "Content-Type")


def test_an_empty_body_is_refused_as_invalid_request(local):
    response = local.http.post("/token", content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response, 400, "invalid_request", "grant_type")


def test_a_body_that_is_not_a_form_is_refused(local):
    response = local.http.post("/token", content=b"\xff\xfe%%%", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response, 400, "invalid_request")


def test_a_repeated_parameter_is_refused(local):
    token = local.ci_token()
    body = f"grant_type={EXCHANGE}&subject_token={token}&subject_token_type=urn:ietf:params:oauth:token-type:jwt&audience=default/prod-ecr&audience=default/prod-acr"
    response = local.http.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response, 400, "invalid_request", "repeated")


def test_an_oversized_body_is_refused(local):
    response = local.exchange("x" * 70_000)
    assert_refused(response, 400, "invalid_request", "larger")


def test_the_wrong_grant_type_is_unsupported(local):
    assert_refused(local.exchange(local.ci_token(), grant_type="client_credentials"), 400, "unsupported_grant_type")


def test_a_missing_subject_token_is_invalid_request(local):
    assert_refused(local.exchange(None), 400, "invalid_request", "subject_token")


def test_an_unknown_subject_token_type_is_invalid_request(local):
    response = local.exchange(local.ci_token(), subject_token_type="urn:ietf:params:oauth:token-type:saml2")
    assert_refused(response, 400, "invalid_request", "subject_token_type")


def test_a_missing_audience_is_invalid_request(local):
    assert_refused(local.exchange(local.ci_token(), audience=None), 400, "invalid_request", "audience")


def test_an_unknown_target_is_invalid_target(local):
    assert_refused(local.exchange(local.ci_token(), audience="default/nope"), 400, "invalid_target")


def test_an_unknown_space_is_invalid_target(local):
    assert_refused(local.exchange(local.ci_token(), audience="elsewhere/prod-ecr"), 400, "invalid_target")


def test_a_malformed_audience_is_invalid_target(local):
    assert_refused(local.exchange(local.ci_token(), audience="prod-ecr"), 400, "invalid_target")


def test_a_wrong_method_finds_no_route(local):
    assert local.http.get("/token").status_code == 404


# -- hostile caller tokens ---------------------------------------------------------------------

def test_a_string_that_is_not_a_jwt_is_invalid_grant(local):
    assert_refused(local.exchange("not-a-jwt"), 400, "invalid_grant")


def test_an_untrusted_issuer_is_invalid_grant(local):
    token = jwt.encode(dev_claims(local, iss="https://token.example.net"), OTHER_KEY, "RS256", headers={"kid": "k1"})
    assert_refused(local.exchange(token), 400, "invalid_grant", "not a trusted issuer")


def test_an_issuer_with_a_trailing_slash_is_not_trusted(local):
    token = jwt.encode(dev_claims(local, iss=local.base_url + "/_dev/ci/"), OTHER_KEY, "RS256", headers={"kid": dev_kid(local)})
    assert_refused(local.exchange(token), 400, "invalid_grant", "not a trusted issuer")


def test_alg_none_is_refused(local):
    token = f"{b64({'alg': 'none', 'kid': dev_kid(local)})}.{b64(dev_claims(local))}."
    assert_refused(local.exchange(token), 400, "invalid_grant", "alg")


def test_hs256_signed_with_the_public_key_is_refused(local):
    jwk = local.http.get("/_dev/ci/.well-known/jwks").json()["keys"][0]
    secret = json.dumps(jwk).encode()
    head = b64({"alg": "HS256", "kid": jwk["kid"], "typ": "JWT"})
    body = b64(dev_claims(local))
    import hashlib
    import hmac
    sig = base64.urlsafe_b64encode(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert_refused(local.exchange(f"{head}.{body}.{sig}"), 400, "invalid_grant", "alg")


def test_es256_header_on_an_rsa_key_is_refused_generically(local):
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(dev_claims(local), key, "ES256", headers={"kid": dev_kid(local)})
    assert_refused(local.exchange(token), 400, "invalid_grant", "signature is not valid")


def test_a_token_signed_by_another_key_under_the_issuers_kid_is_refused(local):
    token = jwt.encode(dev_claims(local), OTHER_KEY, "RS256", headers={"kid": dev_kid(local)})
    assert_refused(local.exchange(token), 400, "invalid_grant", "signature is not valid")


def test_a_token_without_kid_is_refused(local):
    token = jwt.encode(dev_claims(local), OTHER_KEY, "RS256")
    assert_refused(local.exchange(token), 400, "invalid_grant", "kid")


def test_a_token_with_an_unknown_kid_is_refused(local):
    token = jwt.encode(dev_claims(local), OTHER_KEY, "RS256", headers={"kid": "made-up"})
    assert_refused(local.exchange(token), 400, "invalid_grant", "kid")


def test_an_expired_token_is_refused(local):
    now = int(time.time())
    token = local.ci_token(iat=now - 900, nbf=now - 900, exp=now - 120)
    assert_refused(local.exchange(token), 400, "invalid_grant", "expired")


def test_a_token_expired_within_the_leeway_is_accepted(local):
    now = int(time.time())
    token = local.ci_token(iat=now - 900, nbf=now - 900, exp=now - 20)
    assert local.exchange(token).status_code == 200


def test_a_token_not_valid_yet_is_refused(local):
    now = int(time.time())
    token = local.ci_token(nbf=now + 600, exp=now + 900)
    assert_refused(local.exchange(token), 400, "invalid_grant", "not valid yet")


def test_a_token_issued_in_the_future_is_refused(local):
    now = int(time.time())
    token = local.ci_token(iat=now + 600, nbf=None, exp=now + 900)
    assert_refused(local.exchange(token), 400, "invalid_grant", "future")


def test_a_token_for_another_audience_is_refused(local):
    token = local.ci_token(aud="https://somewhere.example")
    assert_refused(local.exchange(token), 400, "invalid_grant", "aud")


def test_an_audience_list_must_contain_the_broker(local):
    assert local.exchange(local.ci_token(aud=["https://x.example", local.base_url])).status_code == 200
    assert_refused(local.exchange(local.ci_token(aud=["https://x.example"])), 400, "invalid_grant", "aud")


def test_a_token_without_jti_is_refused(local):
    assert_refused(local.exchange(local.ci_token(jti=None)), 400, "invalid_grant", "jti")


def test_a_claim_that_does_not_match_the_rule_is_refused(local):
    token = local.ci_token(ref="refs/heads/feature")
    assert_refused(local.exchange(token), 400, "invalid_grant", "'ref'")


def test_a_claim_of_another_type_does_not_match(local):
    assert_refused(local.exchange(local.ci_token(repository=["acme/app"])), 400, "invalid_grant", "'repository'")


def test_a_target_no_rule_lists_for_the_caller_is_refused(local):
    # app-deploy admits prod-deploy only with environment=production.
    assert_refused(local.exchange(local.ci_token(environment="staging"), audience="default/prod-deploy"),
                   400, "invalid_grant", "'environment'")


def test_a_subject_value_from_a_claim_is_never_rewritten(local):
    # The rule matches environment=production exactly; a claim shaped like a subject is refused.
    token = local.ci_token(environment="production:account:other")
    assert_refused(local.exchange(token, audience="default/prod-deploy"), 400, "invalid_grant")


def test_a_replayed_token_is_refused(local):
    token = local.ci_token()
    assert local.exchange(token).status_code == 200
    assert_refused(local.exchange(token), 400, "invalid_grant", "already used")


# -- refusals consume nothing, are logged and counted, and never echo a token -----------------

@pytest.mark.parametrize(
    "spoil",
    [
        {"grant_type": "client_credentials"},
        {"audience": "default/nope"},
        {"audience": "prod-ecr"},
        {"subject_token_type": "urn:x"},
        {"audience": "default/prod-deploy"},  # no rule admits this caller there
    ],
)
def test_a_refused_request_leaves_the_caller_token_unused(local, spoil):
    token = local.ci_token()
    assert local.exchange(token, **spoil).status_code == 400
    assert local.exchange(token).status_code == 200


def test_refusals_are_logged_and_counted_with_their_reason(local):
    local.exchange(local.ci_token(), audience="default/unheard-of")
    time.sleep(0.2)
    records = local.log_records()
    refused = [r for r in records if r.get("message") == "token refused" and r.get("reason") == "unknown_target"]
    assert refused, "no refusal log line"
    assert refused[-1]["target"] == "default/unheard-of"
    metrics = [r for r in records if "_aws" in r and r.get("reason") == "unknown_target"]
    assert metrics, "no refusal metric"
    assert metrics[-1]["Refusals"] == [1.0]
    assert metrics[-1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["reason", "service"]]


def test_no_token_appears_in_any_log_line(local):
    ci_token = local.ci_token()
    minted = local.exchange(ci_token).json()["access_token"]
    local.exchange(ci_token)  # refused: replay
    time.sleep(0.2)
    logs = local.logs()
    for secret in (ci_token, minted, ci_token.split(".")[2], minted.split(".")[2]):
        assert secret not in logs


def test_no_caller_mistake_is_a_5xx(local):
    bodies = [b"", b"grant_type=", b"a=%ZZ", b"subject_token=&audience=/", "é=ü".encode(), b"\x00\x01"]
    for body in bodies:
        for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/octet-stream"):
            response = local.http.post("/token", content=body, headers={"Content-Type": content_type})
            assert 400 <= response.status_code < 500, (body, content_type, response.text)
