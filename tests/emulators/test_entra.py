"""tools/emulators/entra.py: the Entra token endpoint verifies client assertions as Entra does, over
HTTPS, answering with AADSTS codes and Entra's error body; azure-identity is the client."""

from __future__ import annotations

import time

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientAssertionCredential
from cryptography.hazmat.primitives.asymmetric import ec
from oidc_broker_emulators.entra import (JWT_BEARER, Directory, EntraEmulator, FederatedCredential, IssuedTokens,
                                         TestCA, Verifier)

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
AUDIENCE = "api://AzureADTokenExchange"
SUBJECT = "space:acme:feed:acr"
SCOPE = "https://management.azure.com/.default"
BODY_KEYS = {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"}


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture
def entra(ca, issuer):
    directory, clock = Directory(), Clock()
    directory.add_credential(TENANT, CLIENT, FederatedCredential("broker", issuer.url, SUBJECT, (AUDIENCE,)))
    emulator = EntraEmulator(Verifier(directory, clock=clock), ca, IssuedTokens()).start()
    emulator.directory, emulator.clock = directory, clock
    yield emulator
    emulator.stop()


def assertion(issuer, **claims):
    return issuer.token(**{"aud": AUDIENCE, "sub": SUBJECT, **claims})


def post(entra, ca, client_assertion, tenant=TENANT, client_id=CLIENT):
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_assertion_type": JWT_BEARER,
            "client_assertion": client_assertion, "scope": SCOPE}
    return requests.post(f"{entra.url}/{tenant}/oauth2/v2.0/token", data=form, verify=str(ca.ca_file), timeout=10)


def refused(response, code: int) -> dict:
    body = response.json()
    assert response.status_code == 400 and body["error_codes"] == [code], body
    assert set(body) == BODY_KEYS and body["error_description"].startswith(f"AADSTS{code}: ")
    assert f"Trace ID: {body['trace_id']}" in body["error_description"]
    return body


def credential(entra, ca, func):
    return ClientAssertionCredential(TENANT, CLIENT, func, authority=entra.url, connection_verify=str(ca.ca_file),
                                     retry_total=0)


def test_azure_identity_gets_a_token_and_presents_a_fresh_assertion_for_each(entra, ca, issuer):
    made = []

    def mint():
        made.append(assertion(issuer, jti=str(len(made))))
        return made[-1]

    cred = credential(entra, ca, mint)
    first = cred.get_token(SCOPE)
    second = cred.get_token("https://containerregistry.azure.net/.default")
    assert first.token and second.token and first.token != second.token and len(made) == 2
    assert first.expires_on > time.time() + 3000


def test_azure_identity_refuses_an_http_authority_so_the_emulator_serves_tls():
    with pytest.raises(ValueError, match="https"):
        ClientAssertionCredential(TENANT, CLIENT, lambda: "x", authority="http://127.0.0.1:1")


def test_a_refusal_reaches_azure_identity_as_client_authentication_error_with_the_body(entra, ca, issuer):
    with pytest.raises(ClientAuthenticationError) as e:
        credential(entra, ca, lambda: assertion(issuer, sub=SUBJECT + "x")).get_token(SCOPE)
    assert "AADSTS700213" in str(e.value) and '"trace_id"' in e.value.response.text()


def test_an_app_without_federated_credentials_is_70021(entra, ca, issuer):
    entra.directory.add_app(TENANT, "99999999-7777-8888-9999-000000000000")
    body = refused(post(entra, ca, assertion(issuer), client_id="99999999-7777-8888-9999-000000000000"), 70021)
    assert f"Assertion Subject: '{SUBJECT}'" in body["error_description"]


def test_a_new_credential_is_70021_until_it_has_propagated(entra, ca, issuer):
    other = "99999999-7777-8888-9999-000000000001"
    entra.directory.add_credential(TENANT, other, FederatedCredential("new", issuer.url, SUBJECT, (AUDIENCE,),
                                                                      visible_after=entra.clock.now + 30))
    refused(post(entra, ca, assertion(issuer), client_id=other), 70021)
    entra.clock.now += 31
    assert post(entra, ca, assertion(issuer), client_id=other).status_code == 200


def test_an_unknown_app_is_700016(entra, ca, issuer):
    refused(post(entra, ca, assertion(issuer), client_id="00000000-1111-2222-3333-444444444444"), 700016)


@pytest.mark.parametrize("claims, code", [
    ({"iss": "https://other.example.com"}, 700211),
    ({"aud": "api://azureadtokenexchange"}, 700212),  # audiences match exactly
    ({"sub": "space:acme:feed:other"}, 700213),
    ({"sub": SUBJECT.upper()}, 7002138),
])
def test_each_federated_credential_mismatch_has_its_own_code(entra, ca, issuer, claims, code):
    refused(post(entra, ca, assertion(issuer, **claims)), code)


def test_a_case_only_mismatch_says_so(entra, ca, issuer):
    body = refused(post(entra, ca, assertion(issuer, sub="Space:acme:feed:acr")), 7002138)
    assert "case-insensitive" in body["error_description"] and body["error"] == "invalid_client"


def test_the_signature_is_checked_against_the_issuers_published_keys(entra, ca, issuer, keys):
    refused(post(entra, ca, assertion(issuer, key=keys[1])), 700027)
    refused(post(entra, ca, assertion(issuer, kid="unknown")), 700027)


def test_an_expired_or_future_assertion_is_700024(entra, ca, issuer):
    now = int(entra.clock.now)
    refused(post(entra, ca, assertion(issuer, iat=now - 7200, exp=now - 3600)), 700024)
    refused(post(entra, ca, assertion(issuer, nbf=now + 3600)), 700024)


def test_an_ec_signature_is_5002738(entra, ca, issuer):
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "sub": SUBJECT, "exp": int(time.time()) + 300}, key,
                       algorithm="ES256", headers={"kid": "k1"})
    refused(post(entra, ca, token), 5002738)


def test_an_unreachable_issuer_is_50166(entra, ca, issuer):
    entra.directory.add_credential(TENANT, CLIENT, FederatedCredential("gone", "http://127.0.0.1:9", SUBJECT, (AUDIENCE,)))
    refused(post(entra, ca, assertion(issuer, iss="http://127.0.0.1:9")), 50166)


def test_queued_faults_answer_before_anything_is_checked(entra, ca, issuer):
    entra.fail_next(503)
    assert post(entra, ca, assertion(issuer)).status_code == 503
    assert post(entra, ca, assertion(issuer)).status_code == 200
