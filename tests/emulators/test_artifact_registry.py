"""tools/emulators/artifact_registry.py: docker login with Google access tokens the STS and IAM Credentials
emulators issued, and pulls only for principals holding artifactregistry.reader on the registry."""

from __future__ import annotations

import httpx
import pytest
from oidc_broker_emulators.artifact_registry import ArtifactRegistry
from oidc_broker_emulators.google_sts import Federated
from oidc_broker_emulators.iamcredentials import Impersonated
from oidc_broker_emulators.registry import DockerRegistry

HOST = "europe-docker.pkg.dev"
POOL = "projects/123456789012/locations/global/workloadIdentityPools/pipelines"
SUBJECT = "space:acme:feed:gar"
PRINCIPAL = f"principal://iam.googleapis.com/{POOL}/subject/{SUBJECT}"
SA = "puller@acme-prod.iam.gserviceaccount.com"
REPOSITORY = "acme-prod/images/app"


@pytest.fixture
def world(clock):
    federated = {"ya29.fed": Federated(POOL + "/providers/p", POOL, SUBJECT, {"google.subject": SUBJECT}, (),
                                       clock.now + 600)}
    impersonated = {"ya29.sa": Impersonated(SA, ("https://www.googleapis.com/auth/cloud-platform",), clock.now + 600)}
    authority = ArtifactRegistry(federated.get, impersonated.get, clock)
    registry = DockerRegistry(HOST, authority).start()
    yield registry, authority, clock
    registry.stop()


def token(registry, password, username="oauth2accesstoken", scope=None):
    params = {"scope": scope} if scope else {}
    return httpx.get(f"{registry.url}/v2/token", params=params, auth=(username, password))


def pull(registry, password, repository=REPOSITORY):
    bearer = token(registry, password, scope=f"repository:{repository}:pull").json()["token"]
    return httpx.get(f"{registry.url}/v2/{repository}/manifests/latest", headers={"Authorization": f"Bearer {bearer}"})


def test_the_ping_challenge_names_the_token_service_but_no_service(world):
    registry, _, _ = world
    assert httpx.get(f"{registry.url}/v2/").headers["WWW-Authenticate"] == f'Bearer realm="{registry.url}/v2/token"'


def test_federated_and_service_account_tokens_log_in(world):
    registry, _, _ = world
    for password in ("ya29.fed", "ya29.sa"):
        answer = token(registry, password)
        assert answer.status_code == 200 and set(answer.json()) == {"token", "expires_in", "issued_at"}
        v2 = httpx.get(f"{registry.url}/v2/", headers={"Authorization": f"Bearer {answer.json()['token']}"})
        assert v2.status_code == 200


def test_an_unknown_expired_or_misnamed_token_is_401(world):
    registry, _, clock = world
    assert token(registry, "ya29.never-issued").status_code == 401
    assert token(registry, "ya29.fed", username="_json_key").status_code == 401
    clock.now += 601
    answer = token(registry, "ya29.fed")
    assert answer.status_code == 401 and answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert token(registry, "ya29.sa").status_code == 401


def test_a_pull_needs_the_reader_role_for_the_principal(world):
    registry, authority, _ = world
    denied = pull(registry, "ya29.fed")
    assert denied.status_code == 403
    assert denied.json()["errors"][0]["message"] == (
        "Permission 'artifactregistry.repositories.downloadArtifacts' denied on resource "
        "'projects/acme-prod/locations/europe/repositories/images' (or it may not exist)")
    authority.grant(HOST, PRINCIPAL)
    assert pull(registry, "ya29.fed").status_code == 404  # allowed: no images are stored
    assert pull(registry, "ya29.sa").status_code == 403
    authority.grant(HOST, f"serviceAccount:{SA}")
    assert pull(registry, "ya29.sa").status_code == 404


def test_a_pool_wide_member_admits_every_principal_of_the_pool_only(world):
    registry, authority, _ = world
    authority.grant(HOST, f"principalSet://iam.googleapis.com/{POOL}/*")
    assert pull(registry, "ya29.fed").status_code == 404
    authority.readers[HOST] = {"principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/x/*"}
    assert pull(registry, "ya29.fed").status_code == 403


def test_a_reader_of_another_registry_may_not_pull_here(world):
    registry, authority, _ = world
    authority.grant("us-docker.pkg.dev", PRINCIPAL)
    assert pull(registry, "ya29.fed").status_code == 403
