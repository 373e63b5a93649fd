"""tools/emulators/acr.py: /oauth2/exchange gives refresh tokens only for Entra tokens of the registry
scope whose app holds a role on the registry, never outliving the Entra token."""

from __future__ import annotations

import time

import pytest
import requests
from oidc_broker_emulators.acr import REGISTRY_SCOPE, AcrEmulator
from oidc_broker_emulators.entra import IssuedTokens, TestCA

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
REGISTRY = "acme.azurecr.io"


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture
def acr(ca):
    issued = IssuedTokens()
    emulator = AcrEmulator(issued, ca).start()
    emulator.grant(REGISTRY, CLIENT)
    emulator.issued_tokens = issued
    yield emulator
    emulator.stop()


def exchange(acr, ca, access_token, service=REGISTRY, **form):
    body = {"grant_type": "access_token", "service": service, "tenant": TENANT, "access_token": access_token, **form}
    return requests.post(f"{acr.url}/oauth2/exchange", data=body, verify=str(ca.ca_file), timeout=10)


def entra_token(acr, scope=REGISTRY_SCOPE, client=CLIENT, lifetime=3600):
    return acr.issued_tokens.issue(TENANT, client, scope, time.time() + lifetime)


def error_code(response) -> str:
    return response.json()["errors"][0]["code"]


def test_an_entra_token_for_the_registry_gets_a_refresh_token_no_longer_lived_than_it(acr, ca):
    response = exchange(acr, ca, entra_token(acr, lifetime=1800))
    assert response.status_code == 200
    claims = acr.verify_refresh_token(response.json()["refresh_token"])
    assert claims["aud"] == REGISTRY and claims["sub"] == CLIENT
    assert claims["exp"] <= time.time() + 1800


def test_a_refresh_token_lives_at_most_three_hours(acr, ca):
    claims = acr.verify_refresh_token(exchange(acr, ca, entra_token(acr, lifetime=86400)).json()["refresh_token"])
    assert claims["exp"] - claims["iat"] <= 3 * 3600


def test_a_token_entra_never_issued_is_401(acr, ca):
    response = exchange(acr, ca, "eyJ0eXAiOiJKV1QifQ.forged.sig")
    assert response.status_code == 401 and error_code(response) == "UNAUTHORIZED"


def test_a_token_for_another_scope_or_tenant_or_expired_is_401(acr, ca):
    assert exchange(acr, ca, entra_token(acr, scope="https://management.azure.com/.default")).status_code == 401
    assert exchange(acr, ca, entra_token(acr), tenant="99999999-2222-3333-4444-555555555555").status_code == 401
    assert exchange(acr, ca, entra_token(acr, lifetime=-1)).status_code == 401


def test_an_app_without_a_role_on_the_registry_is_401(acr, ca):
    response = exchange(acr, ca, entra_token(acr, client="99999999-7777-8888-9999-000000000000"))
    assert response.status_code == 401 and "no role" in response.json()["errors"][0]["message"]


def test_another_registry_or_grant_type_is_400(acr, ca):
    assert exchange(acr, ca, entra_token(acr), service="other.azurecr.io").status_code == 400
    response = exchange(acr, ca, entra_token(acr), grant_type="password")
    assert response.status_code == 400 and error_code(response) == "UNSUPPORTED"


def test_queued_faults_answer_first(acr, ca):
    acr.fail_next(503)
    assert exchange(acr, ca, entra_token(acr)).status_code == 503
    assert exchange(acr, ca, entra_token(acr)).status_code == 200
