"""docker login to local mode's registry stand-ins, with the credentials /exchange/<cloud> returned.

No Docker engine here, so `login` below speaks docker's own protocol over HTTP exactly as the
docker CLI does (distribution's auth client): `GET /v2/`, parse the `WWW-Authenticate` challenge,
call the realm with Basic auth and `service`/`scope`/`account`/`client_id`/`offline_token` (a
Basic challenge: resend with Basic), then `/v2/` again with the bearer token; `pull_check` does
what `docker pull` does first for a manifest. Each stand-in answers for its registry host on the
port the banner prints; what each accepts is the cloud emulator's (tests/emulators/).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

import httpx
import pytest
from inprocess import demo_config, local_broker
from oidc_broker_cli.local.clouds import registries
from oidc_broker_cli.local.clouds.aws import AwsWiring
from oidc_broker_cli.local.clouds.azure import AzureWiring
from oidc_broker_cli.local.clouds.gcp import GcpWiring
from oidc_broker_emulators.registry import Authority

ACR_USERNAME = "00000000-0000-0000-0000-000000000000"
EXTRA = """
      - name: other-acr         # another registry, another app
        kind: feed
        provider: azure
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 88888888-7777-8888-9999-000000000000, registry: other.azurecr.io}
      - name: us-gar            # another Artifact Registry location, through a service account
        kind: feed
        provider: gcp
        gcp:
          workload_identity_provider: projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker
          service_account: puller@acme-prod.iam.gserviceaccount.com
          registry: us-docker.pkg.dev
      - name: eu-ecr            # ECR in another region
        kind: feed
        provider: aws
        aws: {role_arn: "arn:aws:iam::123456789012:role/ecr-pull-eu", region: eu-west-1}
"""
HOSTS = {"prod-ecr": "123456789012.dkr.ecr.us-east-1.amazonaws.com", "eu-ecr": "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
         "prod-acr": "acme.azurecr.io", "other-acr": "other.azurecr.io",
         "prod-gar": "europe-docker.pkg.dev", "us-gar": "us-docker.pkg.dev"}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    config = demo_config(EXTRA, ["other-acr", "us-gar", "eu-ecr"])
    with local_broker(tmp_path_factory.mktemp("docker-login"), config) as mode:
        yield mode


# -- docker's side -------------------------------------------------------------------------------

@dataclass
class Outcome:
    ok: bool
    status: int  # the answer that decided it
    error: dict | None = None  # distribution's first error, when refused
    token: str = ""  # the bearer token obtained (a Bearer challenge)


def challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _refused(response: httpx.Response) -> Outcome:
    errors = response.json().get("errors") if response.content else None
    return Outcome(False, response.status_code, errors[0] if errors else None)


def authorize(http: httpx.Client, path: str, username: str, password: str) -> tuple[httpx.Response, Outcome | None]:
    """Docker's authorizer: the request unauthenticated, then answered as its 401 challenge asks."""
    first = http.get(path)
    if first.status_code != 401:
        return first, None
    scheme, params = challenge(first.headers["WWW-Authenticate"])
    if scheme == "basic":
        return http.get(path, auth=(username, password)), None
    assert scheme == "bearer" and params["realm"].startswith("http://127.0.0.1:"), first.headers
    query = [("service", params["service"])] if params.get("service") else []
    query += [("scope", params["scope"])] if params.get("scope") else []
    query += [("offline_token", "true"), ("client_id", "docker"), ("account", username)]
    answer = httpx.get(params["realm"], params=query, auth=(username, password), timeout=10)
    if answer.status_code != 200:
        return answer, _refused(answer)
    body = answer.json()
    token = body.get("access_token") or body.get("token")
    assert token, body
    retried = http.get(path, headers={"Authorization": f"Bearer {token}"})
    return retried, Outcome(retried.status_code == 200, retried.status_code, token=token)


def login(address: str, username: str, password: str) -> Outcome:
    """`docker login <address> -u <username> --password-stdin`."""
    with httpx.Client(base_url=f"http://{address}", timeout=10) as http:
        response, outcome = authorize(http, "/v2/", username, password)
        if outcome is not None and not outcome.ok:
            return outcome if outcome.error else _refused(response)
        if response.status_code == 200:
            assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
            return Outcome(True, 200, token=outcome.token if outcome else "")
        return _refused(response)


def pull_check(address: str, username: str, password: str, repository: str) -> Outcome:
    """What `docker pull <address>/<repository>:latest` asks first: the manifest, authorized for pull.
    The stand-ins hold no images, so an authorized pull ends in 404 MANIFEST_UNKNOWN."""
    with httpx.Client(base_url=f"http://{address}", timeout=10) as http:
        response, outcome = authorize(http, f"/v2/{repository}/manifests/latest", username, password)
        if outcome is not None and outcome.error:
            return outcome
        if response.status_code == 404 and response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN":
            return Outcome(True, 404)
        return _refused(response)


# -- helpers -------------------------------------------------------------------------------------

def credentials(local, cloud: str, target: str) -> dict:
    response = local.exchange(cloud, f"default/{target}")
    assert response.status_code == 200, response.text
    return response.json()


def tampered_jwt(token: str, **changes) -> str:
    """The token with claims changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def tampered_ecr(password: str) -> str:
    payload, _, signature = password.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 86400
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + "." + signature


def later(monkeypatch, obj, seconds: int) -> None:
    monkeypatch.setattr(obj, "clock", lambda: time.time() + seconds)


# -- the banner ----------------------------------------------------------------------------------

def test_the_banner_prints_a_docker_login_line_for_each_clouds_first_feed(local):
    # The extra targets come first in the configuration: each cloud's walk shows its first feed.
    for cloud, target, username in (("aws", "eu-ecr", "AWS"), ("azure", "other-acr", ACR_USERNAME),
                                    ("gcp", "us-gar", "oauth2accesstoken")):
        address = local.registry_address(HOSTS[target])
        assert f"# docker login: {address} answers for {HOSTS[target]}" in local.banner
        assert (f"/exchange/{cloud} -H \"Authorization: Bearer $CI_TOKEN\" -H 'Content-Type: application/json' \\\n"
                f"    -d '{{\"target\": \"default/{target}\"}}' | python3 -c") in local.banner
        assert f"| docker login {address} -u {username} --password-stdin" in local.banner
    users = {"ecr": "AWS", "acr": ACR_USERNAME, "gar": "oauth2accesstoken"}
    for target, host in HOSTS.items():  # every registry host has its stand-in and its exact login line
        line = f"\n{' ' * 17}docker login {local.registry_address(host)} -u {users[target.split('-')[1]]} --password-stdin\n"
        assert line in local.banner


def test_a_clouds_first_registry_takes_the_port_next_to_the_brokers_and_the_others_free_ones():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    started = registries(["a.example", "b.example", "a.example"], Authority(), free - 2, 2)
    try:
        assert list(started) == ["a.example", "b.example"]
        assert started["a.example"].address == f"127.0.0.1:{free}"
        assert started["b.example"].address != started["a.example"].address
    finally:
        for registry in started.values():
            registry.stop()


def test_a_taken_port_falls_back_to_a_free_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = registries(["a.example"], Authority(), port - 1, 1)
        try:
            assert started["a.example"].address != f"127.0.0.1:{port}"
            assert httpx.get(f"{started['a.example'].url}/v2/").status_code == 401
        finally:
            started["a.example"].stop()


# -- Azure Container Registry ----------------------------------------------------------------------

def test_docker_login_to_acr_succeeds_with_the_refresh_token_from_exchange_azure(local):
    body = credentials(local, "azure", "prod-acr")
    assert body["username"] == ACR_USERNAME
    outcome = login(local.registry_address(body["registry"]), body["username"], body["password"])
    assert outcome.ok and outcome.token
    assert pull_check(local.registry_address(body["registry"]), body["username"], body["password"], "app/web").ok


def test_acrs_challenge_names_its_token_service_and_the_registry_host(local):
    address = local.registry_address("acme.azurecr.io")
    response = httpx.get(f"http://{address}/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="http://{address}/oauth2/token",service="acme.azurecr.io"'
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_acr_refuses_a_tampered_refresh_token(local):
    body = credentials(local, "azure", "prod-acr")
    outcome = login(local.registry_address(body["registry"]), ACR_USERNAME,
                    tampered_jwt(body["password"], exp=int(time.time()) + 86400))
    assert not outcome.ok and outcome.status == 401 and outcome.error["code"] == "UNAUTHORIZED"
    assert "aka.ms/acr/authorization" in outcome.error["message"]


def test_acr_refuses_another_registrys_refresh_token(local):
    other = credentials(local, "azure", "other-acr")
    assert other["registry"] == "other.azurecr.io"
    assert login(local.registry_address("other.azurecr.io"), ACR_USERNAME, other["password"]).ok
    outcome = login(local.registry_address("acme.azurecr.io"), ACR_USERNAME, other["password"])
    assert not outcome.ok and outcome.status == 401


def test_acr_refuses_an_expired_refresh_token(local, monkeypatch):
    body = credentials(local, "azure", "prod-acr")
    later(monkeypatch, local.wiring(AzureWiring).acr, 4 * 3600)  # refresh tokens live at most 3 h
    outcome = login(local.registry_address(body["registry"]), ACR_USERNAME, body["password"])
    assert not outcome.ok and outcome.status == 401


def test_acr_refuses_a_username_other_than_the_null_guid(local):
    body = credentials(local, "azure", "prod-acr")
    assert not login(local.registry_address(body["registry"]), "admin", body["password"]).ok


def test_acr_refuses_a_bearer_token_it_did_not_issue(local):
    address = local.registry_address("acme.azurecr.io")
    token = login(address, ACR_USERNAME, credentials(local, "azure", "prod-acr")["password"]).token
    forged = tampered_jwt(token, sub="someone-else")
    response = httpx.get(f"http://{address}/v2/", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]


# -- Artifact Registry ---------------------------------------------------------------------------

def test_docker_login_to_artifact_registry_succeeds_with_the_federated_access_token(local):
    body = credentials(local, "gcp", "prod-gar")
    assert body["username"] == "oauth2accesstoken" and body["password"].startswith("ya29.emulated-federated-")
    address = local.registry_address(body["registry"])
    assert login(address, body["username"], body["password"]).ok
    assert pull_check(address, body["username"], body["password"], "acme-prod/images/app").ok


def test_docker_login_to_artifact_registry_succeeds_with_a_service_accounts_token(local):
    body = credentials(local, "gcp", "us-gar")
    assert body["password"].startswith("ya29.emulated-sa-")
    address = local.registry_address("us-docker.pkg.dev")
    assert login(address, "oauth2accesstoken", body["password"]).ok
    assert pull_check(address, "oauth2accesstoken", body["password"], "acme-prod/images/app").ok


def test_artifact_registrys_challenge_names_no_service_on_the_ping_as_google_does(local):
    address = local.registry_address("europe-docker.pkg.dev")
    response = httpx.get(f"http://{address}/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="http://{address}/v2/token"'
    scoped = httpx.get(f"http://{address}/v2/acme-prod/images/app/manifests/latest")
    assert scoped.headers["WWW-Authenticate"] == (f'Bearer realm="http://{address}/v2/token",service='
                                                  '"europe-docker.pkg.dev",scope="repository:acme-prod/images/app:pull"')


def test_artifact_registry_refuses_a_tampered_access_token(local):
    body = credentials(local, "gcp", "prod-gar")
    outcome = login(local.registry_address(body["registry"]), "oauth2accesstoken", body["password"][:-4] + "AAAA")
    assert not outcome.ok and outcome.status == 401 and outcome.error["code"] == "UNAUTHORIZED"


def test_artifact_registry_refuses_an_expired_access_token(local, monkeypatch):
    body = credentials(local, "gcp", "prod-gar")
    later(monkeypatch, local.wiring(GcpWiring).artifact_registry, 2 * 3600)  # federated tokens live at most 1 h
    outcome = login(local.registry_address(body["registry"]), "oauth2accesstoken", body["password"])
    assert not outcome.ok and outcome.status == 401


def test_another_registrys_principal_logs_in_but_may_not_pull(local):
    """As with Google: a valid token without artifactregistry.reader logs in; the pull is denied."""
    body = credentials(local, "gcp", "prod-gar")  # a reader of europe-docker.pkg.dev only
    address = local.registry_address("us-docker.pkg.dev")
    assert login(address, "oauth2accesstoken", body["password"]).ok
    outcome = pull_check(address, "oauth2accesstoken", body["password"], "acme-prod/images/app")
    assert not outcome.ok and outcome.status == 403 and outcome.error["code"] == "DENIED"
    assert "artifactregistry.repositories.downloadArtifacts" in outcome.error["message"]
    assert "projects/acme-prod/locations/us/repositories/images" in outcome.error["message"]


def test_artifact_registry_refuses_another_username(local):
    body = credentials(local, "gcp", "prod-gar")
    assert not login(local.registry_address(body["registry"]), "_json_key", body["password"]).ok


# -- ECR -----------------------------------------------------------------------------------------

def test_docker_login_to_ecr_succeeds_with_the_authorization_token_from_exchange_aws(local):
    body = credentials(local, "aws", "prod-ecr")
    assert body["registry"] == f"https://{HOSTS['prod-ecr']}" and body["username"] == "AWS"
    address = local.registry_address(HOSTS["prod-ecr"])
    response = httpx.get(f"http://{address}/v2/")
    assert response.headers["WWW-Authenticate"] == f'Basic realm="https://{HOSTS["prod-ecr"]}/",service="ecr.amazonaws.com"'
    assert login(address, "AWS", body["password"]).ok
    assert pull_check(address, "AWS", body["password"], "app").ok


def test_ecr_refuses_a_tampered_password(local):
    body = credentials(local, "aws", "prod-ecr")
    outcome = login(local.registry_address(HOSTS["prod-ecr"]), "AWS", tampered_ecr(body["password"]))
    assert not outcome.ok and outcome.status == 401


def test_ecr_refuses_another_regions_password(local):
    body = credentials(local, "aws", "eu-ecr")
    assert login(local.registry_address(HOSTS["eu-ecr"]), "AWS", body["password"]).ok
    assert not login(local.registry_address(HOSTS["prod-ecr"]), "AWS", body["password"]).ok


def test_ecr_refuses_an_expired_password(local, monkeypatch):
    body = credentials(local, "aws", "prod-ecr")
    later(monkeypatch, local.wiring(AwsWiring).ecr_tokens, 13 * 3600)  # ECR's tokens live 12 h
    outcome = login(local.registry_address(HOSTS["prod-ecr"]), "AWS", body["password"])
    assert not outcome.ok and outcome.status == 403 and outcome.error["code"] == "DENIED"


# -- the docker CLI itself, where it is installed (it needs no engine for `docker login`) --------

DOCKER = shutil.which("docker")


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
@pytest.mark.parametrize(("cloud", "target", "host"), [("aws", "prod-ecr", HOSTS["prod-ecr"]),
                                                       ("azure", "prod-acr", "acme.azurecr.io"),
                                                       ("gcp", "prod-gar", "europe-docker.pkg.dev")])
def test_the_docker_cli_logs_in_with_what_the_exchange_returned_and_not_with_anything_else(local, tmp_path, cloud,
                                                                                          target, host):
    body = credentials(local, cloud, target)
    address = local.registry_address(host)

    def docker_login(password: str) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER, "login", address, "-u", body["username"], "--password-stdin"],
                              input=password, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker")})

    done = docker_login(body["password"])
    assert done.returncode == 0 and "Login Succeeded" in done.stdout, done.stderr
    stored = json.loads((tmp_path / "docker" / "config.json").read_text())["auths"][address]["auth"]
    assert base64.b64decode(stored).decode() == f"{body['username']}:{body['password']}"
    refused = docker_login(body["password"][:-4] + ("AAAA" if not body["password"].endswith("AAAA") else "BBBB"))
    assert refused.returncode != 0
