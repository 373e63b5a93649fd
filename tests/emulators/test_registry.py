"""tools/emulators/registry.py: docker's registry login (challenge, token service, bearer tokens bound to
the registry host, scopes and times), with an Authority that knows one user."""

from __future__ import annotations

import base64

import httpx
import jwt
import pytest
from oidc_broker_emulators.registry import Authority, DockerRegistry, RegistryError, Scope, basic_credentials, parse_scopes

HOST = "registry.example"


class OneUser(Authority):
    realm_path = "/token"

    def authenticate(self, host, username, password):
        if host == HOST and username in ("alice", None) and password == "secret":
            return "alice"
        raise RegistryError(401, "UNAUTHORIZED", "bad credentials")

    def permitted(self, host, principal, scope):
        return frozenset({"pull"}) if scope.repository == "team/app" else frozenset()


@pytest.fixture
def registry(clock):
    r = DockerRegistry(HOST, OneUser(), clock=clock).start()
    yield r
    r.stop()


def token(registry, *scopes, auth=("alice", "secret")):
    params = [("service", HOST)] + [("scope", s) for s in scopes]
    return httpx.get(f"{registry.url}/token", params=params, auth=auth)


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


def test_the_ping_challenges_with_the_token_service_and_the_registry_host(registry):
    response = httpx.get(f"{registry.url}/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="{registry.url}/token",service="{HOST}"'
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert response.json() == {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": None}]}


def test_a_login_gets_a_token_that_opens_v2(registry):
    answer = token(registry)
    assert answer.status_code == 200 and set(answer.json()) == {"token", "access_token", "expires_in", "issued_at"}
    assert httpx.get(f"{registry.url}/v2/", headers=bearer(answer.json()["token"])).status_code == 200


def test_wrong_credentials_get_the_authoritys_refusal(registry):
    answer = token(registry, auth=("alice", "guess"))
    assert answer.status_code == 401 and answer.json()["errors"][0]["message"] == "bad credentials"
    assert token(registry, auth=None).status_code == 401


def test_a_token_for_another_service_is_not_asked_of_this_one(registry):
    answer = httpx.get(f"{registry.url}/token", params={"service": "other.example"}, auth=("alice", "secret"))
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "BAD_REQUEST"


def test_the_oauth2_form_takes_a_password_or_a_refresh_token(registry):
    for form in ({"grant_type": "password", "username": "alice", "password": "secret", "service": HOST},
                 {"grant_type": "refresh_token", "refresh_token": "secret", "service": HOST}):
        answer = httpx.post(f"{registry.url}/token", data=form)
        assert answer.status_code == 200, answer.text
    assert httpx.post(f"{registry.url}/token", data={"grant_type": "client_credentials"}).status_code == 400


def test_a_token_expires_by_the_registrys_clock(registry, clock):
    value = token(registry).json()["token"]
    clock.now += 301
    response = httpx.get(f"{registry.url}/v2/", headers=bearer(value))
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_a_token_of_another_registry_or_signed_with_another_key_is_refused(registry, clock):
    class AnyHost(OneUser):
        def authenticate(self, host, username, password):
            return "alice"

    other = DockerRegistry("other.example", AnyHost(), clock=clock).start()
    try:
        foreign = httpx.get(f"{other.url}/token", auth=("alice", "secret")).json()["token"]
    finally:
        other.stop()
    assert httpx.get(f"{registry.url}/v2/", headers=bearer(foreign)).status_code == 401
    forged = jwt.encode({"aud": HOST, "sub": "alice", "nbf": 0, "exp": 2**31, "access": []}, "a-key-this-registry-never-had-32b", algorithm="HS256")
    assert httpx.get(f"{registry.url}/v2/", headers=bearer(forged)).status_code == 401


def test_a_pull_needs_a_token_holding_its_scope(registry):
    path = f"{registry.url}/v2/team/app/manifests/latest"
    challenge = httpx.get(path)
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"] == (f'Bearer realm="{registry.url}/token",service="{HOST}",'
                                                     'scope="repository:team/app:pull"')
    scoped = token(registry, "repository:team/app:pull,push").json()["token"]
    assert jwt.decode(scoped, options={"verify_signature": False})["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]}]  # push is not permitted
    response = httpx.get(path, headers=bearer(scoped))
    assert response.status_code == 404 and response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    login_only = token(registry).json()["token"]
    denied = httpx.get(path, headers=bearer(login_only))
    assert denied.status_code == 401 and 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    other = httpx.get(f"{registry.url}/v2/team/other/manifests/latest",
                      headers=bearer(token(registry, "repository:team/other:pull").json()["token"]))
    assert other.status_code == 401


def test_only_reads_are_served(registry):
    assert httpx.put(f"{registry.url}/v2/team/app/manifests/latest").status_code == 405
    assert httpx.get(f"{registry.url}/elsewhere").status_code == 404
    assert httpx.head(f"{registry.url}/v2/").status_code == 401


def test_a_basic_registry_takes_the_credentials_on_every_request(clock):
    class Basic(OneUser):
        scheme, basic_service = "basic", "basic.example"

    r = DockerRegistry(HOST, Basic(), clock=clock).start()
    try:
        response = httpx.get(f"{r.url}/v2/")
        assert response.headers["WWW-Authenticate"] == f'Basic realm="https://{HOST}/",service="basic.example"'
        assert httpx.get(f"{r.url}/v2/", auth=("alice", "secret")).status_code == 200
        assert httpx.get(f"{r.url}/v2/", auth=("alice", "guess")).status_code == 401
        assert httpx.get(f"{r.url}/v2/team/app/manifests/1", auth=("alice", "secret")).status_code == 404
        assert httpx.get(f"{r.url}/v2/team/other/manifests/1", auth=("alice", "secret")).status_code == 401
    finally:
        r.stop()


def test_a_taken_port_is_left_for_a_free_one_only_when_asked(registry):
    port = int(registry.address.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        DockerRegistry(HOST, OneUser(), port=port)
    moved = DockerRegistry(HOST, OneUser(), port=port, fallback=True)
    try:
        assert moved.address != registry.address
    finally:
        moved.stop()


def test_scopes_and_basic_credentials_parse_as_docker_sends_them():
    assert parse_scopes(["repository:a/b:pull,push registry:catalog:*", "repository:c:pull"]) == [
        Scope("a/b", frozenset({"pull", "push"})), Scope("c", frozenset({"pull"}))]
    assert str(Scope("a/b", frozenset({"push", "pull"}))) == "repository:a/b:pull,push"
    header = "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert basic_credentials(header) == ("user", "pa:ss")
    assert basic_credentials("Basic !!!") is None and basic_credentials("Bearer x") is None
    assert basic_credentials("Basic " + base64.b64encode(b"user:").decode()) is None
