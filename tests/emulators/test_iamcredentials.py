"""tools/emulators/iamcredentials.py: generateAccessToken checks who may impersonate whom, and the lifetime."""

from __future__ import annotations

import time

import httpx
import pytest

from oidc_broker_emulators.google_sts import Fault, Federated
from oidc_broker_emulators.iamcredentials import IamCredentials, IamCredentialsEmulator

POOL = "projects/123456789012/locations/global/workloadIdentityPools/pipelines"
SA = "pusher@acme-prod.iam.gserviceaccount.com"
SUBJECT = "space:acme:feed:gar"


class Issued:
    def __init__(self):
        self.tokens = {}

    def add(self, token, subject=SUBJECT, expires_in=600, attributes=None):
        self.tokens[token] = Federated(POOL + "/providers/p", POOL, subject, {"google.subject": subject, **(attributes or {})},
                                       (), time.time() + expires_in)

    def __call__(self, token):
        federated = self.tokens.get(token)
        return federated if federated and federated.expires_at > time.time() else None


@pytest.fixture
def issued():
    issued = Issued()
    issued.add("fed-1")
    return issued


@pytest.fixture
def iam(issued):
    iam = IamCredentials(issued)
    iam.bind(SA, f"principal://iam.googleapis.com/{POOL}/subject/{SUBJECT}")
    return iam


@pytest.fixture
def emulator(iam):
    emulator = IamCredentialsEmulator(iam).start()
    yield emulator
    emulator.stop()


def generate(emulator, token="fed-1", account=SA, body=None):
    return httpx.post(f"{emulator.url}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
                      headers={"Authorization": f"Bearer {token}"},
                      json=body if body is not None else {"scope": ["https://www.googleapis.com/auth/cloud-platform"],
                                                          "lifetime": "3600s"})


def error(response):
    body = response.json()["error"]
    return response.status_code, body["status"], body["message"]


def test_a_bound_principal_gets_the_accounts_token_with_the_lifetime_asked(emulator):
    response = generate(emulator)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accessToken"].startswith("ya29.")
    expire = time.mktime(time.strptime(body["expireTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3590 <= expire - time.time() <= 3610


def test_the_tokens_it_issued_are_remembered_with_their_account_and_expiry(emulator, iam):
    body = generate(emulator).json()
    record = iam.impersonated(body["accessToken"])
    assert record.email == SA and record.scopes == ("https://www.googleapis.com/auth/cloud-platform",)
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.expires_at)) == body["expireTime"]
    assert iam.impersonated("ya29.never-issued") is None


def test_an_unbound_subject_is_denied_as_google_denies_it(emulator, issued):
    issued.add("fed-other", subject="space:acme:feed:other")
    assert error(generate(emulator, "fed-other")) == (
        403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).")


def test_a_pool_wide_or_attribute_binding_admits_its_members(emulator, iam, issued):
    issued.add("fed-other", subject="space:acme:feed:other", attributes={"attribute.space": "acme"})
    iam.bind(SA, f"principalSet://iam.googleapis.com/{POOL}/attribute.space/acme")
    assert generate(emulator, "fed-other").status_code == 200
    issued.add("fed-third", subject="space:zeta:feed:x")
    assert generate(emulator, "fed-third").status_code == 403
    iam.bind(SA, f"principalSet://iam.googleapis.com/{POOL}/*")
    assert generate(emulator, "fed-third").status_code == 200


def test_an_unknown_or_expired_federated_token_is_unauthenticated(emulator, issued):
    issued.add("fed-old", expires_in=-1)
    assert error(generate(emulator, "fed-old"))[:2] == (401, "UNAUTHENTICATED")
    assert error(generate(emulator, "made-up"))[:2] == (401, "UNAUTHENTICATED")


def test_an_unknown_account_is_not_found(emulator):
    assert error(generate(emulator, account="ghost@acme-prod.iam.gserviceaccount.com"))[:2] == (404, "NOT_FOUND")


def test_lifetimes_over_an_hour_need_the_org_policy(emulator, iam):
    long = {"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "43200s"}
    status, state, message = error(generate(emulator, body=long))
    assert (status, state) == (400, "INVALID_ARGUMENT") and "lifetime" in message
    iam.accounts[SA].extended_lifetime = True
    assert generate(emulator, body=long).status_code == 200


def test_a_scope_is_required_and_faults_answer_first(emulator):
    assert error(generate(emulator, body={"lifetime": "60s"}))[:2] == (400, "INVALID_ARGUMENT")
    emulator.fail_next(Fault(500, {"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}))
    assert generate(emulator).status_code == 500
    assert generate(emulator).status_code == 200
