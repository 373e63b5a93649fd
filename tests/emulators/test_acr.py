"""tools/emulators/acr.py: /oauth2/exchange gives refresh tokens only for Entra tokens of the registry
scope whose app holds a role on the registry, never outliving the Entra token."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
import requests
from oidc_broker_emulators.acr import DOCKER_USERNAME, REGISTRY_SCOPE, UNAUTHORIZED, AcrEmulator, AcrLogin
from oidc_broker_emulators.entra import IssuedTokens, TestCA
from oidc_broker_emulators.registry import DockerRegistry

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


# -- docker login with the refresh token (AcrLogin behind registry.py) -------------------------------

def stand_in(acr, host=REGISTRY):
    acr.serve(host)
    return DockerRegistry(host, AcrLogin(acr)).start()


@pytest.fixture
def registry(acr):
    served = stand_in(acr)
    yield served
    served.stop()


def refresh_token(acr, ca) -> str:
    return exchange(acr, ca, entra_token(acr)).json()["refresh_token"]


def docker_token(registry, password, username=DOCKER_USERNAME):
    return httpx.get(f"{registry.url}/oauth2/token", params={"service": registry.host, "scope": "repository:app:pull"},
                     auth=(username, password))


def test_acrs_challenge_names_its_oauth2_token_service(registry):
    assert httpx.get(f"{registry.url}/v2/").headers["WWW-Authenticate"] == (
        f'Bearer realm="{registry.url}/oauth2/token",service="{REGISTRY}"')


def test_the_refresh_token_logs_in_and_the_access_token_holds_pull(acr, ca, registry):
    answer = docker_token(registry, refresh_token(acr, ca))
    assert answer.status_code == 200 and set(answer.json()) == {"access_token"}
    access = answer.json()["access_token"]
    assert httpx.get(f"{registry.url}/v2/", headers={"Authorization": f"Bearer {access}"}).status_code == 200
    assert jwt.decode(access, options={"verify_signature": False})["access"] == [
        {"type": "repository", "name": "app", "actions": ["pull"]}]


def test_the_oauth2_refresh_token_grant_works_as_the_basic_login(acr, ca, registry):
    form = {"grant_type": "refresh_token", "service": REGISTRY, "scope": "repository:app:pull",
            "refresh_token": refresh_token(acr, ca)}
    assert httpx.post(f"{registry.url}/oauth2/token", data=form).status_code == 200


def test_a_forged_tampered_or_other_registrys_refresh_token_is_acrs_401(acr, ca, registry):
    good = refresh_token(acr, ca)
    header, payload, signature = good.split(".")
    forged = jwt.encode({**jwt.decode(good, options={"verify_signature": False}), "exp": int(time.time()) + 86400},
                        "k" * 32, algorithm="HS256")
    other = stand_in(acr, "other.azurecr.io")
    try:
        for password, where in ((forged, registry), (f"{header}.{payload}x.{signature}", registry), (good, other)):
            answer = docker_token(where, password)
            assert answer.status_code == 401
            assert answer.json()["errors"][0] == {"code": "UNAUTHORIZED", "message": UNAUTHORIZED, "detail": None}
    finally:
        other.stop()
    assert docker_token(registry, good, username="admin").status_code == 401


def test_an_expired_refresh_token_is_401_by_the_emulators_clock(acr, ca, registry, monkeypatch):
    good = refresh_token(acr, ca)
    monkeypatch.setattr(acr, "clock", lambda: time.time() + 3 * 3600 + 1)
    assert docker_token(registry, good).status_code == 401


def test_a_pull_needs_the_apps_role_on_the_registry(acr, ca, registry):
    password = refresh_token(acr, ca)
    granted = docker_token(registry, password).json()["access_token"]
    acr.grants.clear()  # the role assignment removed: the refresh token still logs in, pulls are refused
    revoked = docker_token(registry, password).json()["access_token"]
    manifest = f"{registry.url}/v2/app/manifests/latest"
    assert httpx.get(manifest, headers={"Authorization": f"Bearer {granted}"}).status_code == 404
    assert httpx.get(manifest, headers={"Authorization": f"Bearer {revoked}"}).status_code == 401
