"""tools/emulators/google_sts.py: Google's STS emulator refuses what Google refuses, with Google's bodies,
fetching the issuer's keys over HTTP (or using an uploaded JWKS), and caps the federated lifetime."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fake_issuer import SUBJECT

from oidc_broker_emulators.google_sts import Fault, GoogleSts, GoogleStsEmulator, Provider, condition_holds

NAME = "projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker"
AUDIENCE = "https://iam.googleapis.com/" + NAME


@pytest.fixture
def sts():
    return GoogleSts()


@pytest.fixture
def provider(sts, issuer):
    return sts.add_provider(Provider(NAME, issuer.url, attribute_condition=f'assertion.sub == "{SUBJECT}"'))


@pytest.fixture
def emulator(sts, provider):
    emulator = GoogleStsEmulator(sts).start()
    yield emulator
    emulator.stop()


def form(token, audience="//iam.googleapis.com/" + NAME, **overrides):
    return {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": audience,
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token": token, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", **overrides}


def post(emulator, data):
    return httpx.post(emulator.token_url, data=data)


def refused(emulator, token, **kwargs) -> tuple[int, str, str]:
    response = post(emulator, form(token, **kwargs))
    body = response.json()
    assert set(body) == {"error", "error_description"}, body
    return response.status_code, body["error"], body["error_description"]


def test_a_token_the_provider_admits_gets_a_federated_token_for_its_remaining_lifetime(emulator, issuer, sts):
    response = post(emulator, form(issuer.token(aud=AUDIENCE)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["issued_token_type"].endswith("access_token")
    assert 295 <= body["expires_in"] <= 300  # the token's exp - now, not an hour
    federated = sts.principal_of(body["access_token"])
    assert federated.subject == SUBJECT and federated.principal.endswith(f"/pipelines/subject/{SUBJECT}")
    assert sts.federated(body["access_token"]) == federated and sts.federated("ya29.never-issued") is None


def test_the_federated_lifetime_is_capped_at_an_hour(emulator, issuer):
    token = issuer.token(aud=AUDIENCE, exp=int(time.time()) + 7200)
    assert post(emulator, form(token)).json()["expires_in"] == 3600


def test_the_provider_resource_name_without_https_is_an_audience_too(emulator, issuer):
    assert post(emulator, form(issuer.token(aud="//iam.googleapis.com/" + NAME))).status_code == 200


def test_allowed_audiences_replace_the_resource_name(emulator, issuer, provider):
    provider.allowed_audiences = ["oidc-broker"]
    assert post(emulator, form(issuer.token(aud="oidc-broker"))).status_code == 200
    status, error, description = refused(emulator, issuer.token(aud=AUDIENCE))
    assert (status, error) == (400, "invalid_grant") and "does not match the expected audience" in description


@pytest.mark.parametrize("make, error, description", [
    (lambda i, k: i.token(aud="https://elsewhere"), "invalid_grant",
     "The audience in ID Token [https://elsewhere] does not match the expected audience."),
    (lambda i, k: i.token(aud=AUDIENCE, iss="https://other.example.com"), "invalid_grant",
     "The issuer in ID Token https://other.example.com does not match the expected ones"),
    (lambda i, k: i.token(k, aud=AUDIENCE), "invalid_grant", "Unable to verify the ID Token signature."),
    (lambda i, k: i.token(aud=AUDIENCE, kid="unknown"), "invalid_grant", "Error connecting to the given credential's issuer."),
    (lambda i, k: i.token(aud=AUDIENCE, iat=int(time.time()) - 900, exp=int(time.time()) - 300), "invalid_grant",
     "is stale to sign-in."),
    (lambda i, k: i.token(aud=AUDIENCE, sub="space:acme:account:other"), "unauthorized_client",
     "The given credential is rejected by the attribute condition."),
    (lambda i, k: i.token(aud=AUDIENCE, sub="s" * 128), "unauthorized_client",
     "The size of mapped attribute exceeds the 127 bytes limit."),
    (lambda i, k: "not-a-jwt", "invalid_grant", "Unable to parse the ID Token."),
])
def test_what_google_refuses_is_refused_with_its_error(emulator, issuer, keys, make, error, description):
    status, got, text = refused(emulator, make(issuer, keys[1]))
    assert (status, got) == (400, error) and description in text


def test_a_missing_or_disabled_provider_is_an_invalid_target(emulator, issuer, provider):
    other = NAME.replace("oidc-broker", "missing")
    assert refused(emulator, issuer.token(aud=AUDIENCE), audience="//iam.googleapis.com/" + other)[1] == "invalid_target"
    provider.disabled = True
    assert refused(emulator, issuer.token(aud=AUDIENCE))[1] == "invalid_target"


def test_a_malformed_audience_or_token_type_is_an_invalid_request(emulator, issuer):
    assert refused(emulator, issuer.token(aud=AUDIENCE), audience="https://iam.googleapis.com/" + NAME)[2] == \
        "Invalid value for audience."
    assert refused(emulator, issuer.token(aud=AUDIENCE), subject_token_type="urn:x")[1] == "invalid_request"


def test_an_unreachable_issuer_cannot_be_verified(emulator, issuer, sts, provider):
    provider.issuer_uri = "http://127.0.0.1:9"
    token = issuer.token(aud=AUDIENCE, iss="http://127.0.0.1:9")
    assert refused(emulator, token)[2] == "Error connecting to the given credential's issuer."


def test_an_uploaded_jwks_is_used_instead_of_fetching(emulator, issuer, keys, provider):
    other = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys[1].public_key())), "kid": "k1"}
    provider.jwks_json = json.dumps({"keys": [other]})
    assert refused(emulator, issuer.token(aud=AUDIENCE))[2] == "Unable to verify the ID Token signature."
    assert post(emulator, form(issuer.token(keys[1], aud=AUDIENCE))).status_code == 200


def test_only_rs256_and_es256_are_accepted(emulator, issuer):
    key = ec.generate_private_key(ec.SECP384R1())
    token = jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "sub": SUBJECT, "exp": int(time.time()) + 60}, key,
                       algorithm="ES384", headers={"kid": "k1"})
    assert "unsupported algorithm" in refused(emulator, token)[2]


def test_queued_faults_answer_first(emulator, issuer):
    emulator.fail_next(Fault(503))
    assert post(emulator, form(issuer.token(aud=AUDIENCE))).status_code == 503
    assert post(emulator, form(issuer.token(aud=AUDIENCE))).status_code == 200


@pytest.mark.parametrize("condition, holds", [
    ('assertion.sub == "a:b"', True), ('assertion.sub == "a:c"', False),
    ('assertion.sub.startsWith("a:")', True), ('assertion.sub.matches("^a:[a-z]+$")', True),
    ('assertion.sub == "x" || assertion.sub == "a:b"', True), ('assertion.sub == "a:b" && assertion.aud == "y"', False),
    ("true", False), ('assertion.sub != "x"', False),
])
def test_attribute_conditions_know_a_small_cel_and_refuse_the_rest(condition, holds):
    assert condition_holds(condition, {"assertion.sub": "a:b", "assertion.aud": "z"}) is holds


# -- the broker's exchanger (google-auth over requests) against both emulators ---------------------------

SA = "pusher@acme-prod.iam.gserviceaccount.com"


@pytest.fixture
def google(sts, provider, emulator):
    from oidc_broker_emulators.iamcredentials import IamCredentials, IamCredentialsEmulator

    iam = IamCredentials(sts.principal_of)
    iam.bind(SA, f"principal://iam.googleapis.com/{NAME.split('/providers/')[0]}/subject/{SUBJECT}")
    server = IamCredentialsEmulator(iam).start()
    yield emulator, server, iam
    server.stop()


def broker_exchange(google, issuer, *, kind="feed", token=None, sleeps=None, **settings):
    from oidc_broker import validation
    from oidc_broker.clouds import Request, gcp

    emulator, iam_server, _ = google
    gcp_settings = {"workload_identity_provider": NAME, **({"registry": "gcr.io"} if kind == "feed" else {}), **settings}
    doc = {"issuer": "https://broker.example.com", "trusted_issuers": [{"name": "ci", "issuer": "https://ci.example.com"}],
           "spaces": [{"name": "acme", "targets": [{"name": "t", "kind": kind, "provider": "gcp", "gcp": gcp_settings}]}]}
    target = validation.parse(doc).spaces["acme"].targets["t"]
    built = gcp.exchanger()
    built.sts_endpoint, built.iamcredentials_endpoint = emulator.token_url, iam_server.url
    built.backoff = gcp.Backoff(base=0.5, sleep=(sleeps if sleeps is not None else []).append, jitter=lambda: 1.0)
    lifetime = built.token_lifetime(target) or 300
    presented = token or issuer.token(aud=AUDIENCE, exp=int(time.time()) + lifetime)
    return built.exchange(Request(target=target, token=presented, issuer=issuer.url, subject=SUBJECT, caller="ci"))


def test_the_exchanger_gets_docker_credentials_living_as_long_as_the_token_it_presents(google, issuer):
    credentials = broker_exchange(google, issuer)
    assert credentials.fields["username"] == "oauth2accesstoken" and credentials.fields["registry"] == "gcr.io"
    assert 3590 <= credentials.lifetime <= 3600


def test_the_exchanger_impersonates_a_bound_service_account(google, issuer):
    credentials = broker_exchange(google, issuer, kind="account", service_account=SA, token_lifetime="20m")
    assert credentials.fields["token_type"] == "Bearer" and credentials.fields["access_token"].startswith("ya29.emulated-sa-")
    assert 1190 <= credentials.lifetime <= 1200


@pytest.mark.parametrize("change, error, reason", [
    (lambda p, iam: setattr(p, "attribute_condition", 'assertion.sub == "someone-else"'), "AccessDenied",
     "gcp_attribute_condition"),
    (lambda p, iam: setattr(p, "allowed_audiences", ["other"]), "AccessDenied", "gcp_audience_mismatch"),
    (lambda p, iam: setattr(p, "issuer_uri", "https://elsewhere.example.com"), "CloudError", "gcp_issuer_mismatch"),
    (lambda p, iam: setattr(p, "jwks_json", json.dumps({"keys": []})), "CloudError", "gcp_issuer_unreachable"),
    (lambda p, iam: setattr(p, "disabled", True), "CloudError", "gcp_invalid_target"),
    (lambda p, iam: iam.accounts[SA].members.clear(), "AccessDenied", "gcp_impersonation_denied"),
])
def test_each_refusal_of_the_emulators_reaches_the_exchanger_as_its_own_error(google, issuer, provider, change, error,
                                                                             reason):
    from oidc_broker import errors

    change(provider, google[2])
    with pytest.raises(getattr(errors, error)) as raised:
        broker_exchange(google, issuer, kind="account", service_account=SA)
    assert raised.value.reason == reason
    assert SUBJECT in raised.value.description and issuer.url in raised.value.description


def test_a_google_that_does_not_answer_in_time_is_503_after_bounded_retries(google, issuer, monkeypatch):
    from oidc_broker.clouds import gcp
    from oidc_broker.errors import Throttled

    monkeypatch.setattr(gcp, "TIMEOUT", 0.2)
    emulator = google[0]
    emulator.fail_next(Fault(200, {}, delay=1.0), times=3)
    sleeps = []
    with pytest.raises(Throttled) as raised:
        broker_exchange(google, issuer, sleeps=sleeps)
    assert raised.value.headers == {"Retry-After": "2"} and len(sleeps) == 2 and emulator.calls == 3
