"""POST /exchange/azure over HTTP against local mode: Entra and ACR are the verifying emulators (HTTPS
with a CA local mode made; the broker trusts it through REQUESTS_CA_BUNDLE, set as configuration).

The demo configuration serves the ACR feed (default/prod-acr); a second local mode adds an account
target, for an Entra access token of the management scope; a third, in this process (inprocess.py),
has identities whose federated credentials an operator got wrong, so Entra's refusals are seen
over HTTP as a pipeline sees them.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from localmode import ROOT, start_local, stop_local

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}
ZERO = "00000000-0000-0000-0000-000000000000"


def post(local, target, token: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return local.http.post("/exchange/azure", content=json.dumps({"target": target}), headers=headers)


def exchanged(local, target: str, **claims):
    response = post(local, target, local.ci_token(**{**MAIN, **claims}))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def claims_of(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_an_acr_feed_gets_docker_credentials_from_the_registrys_refresh_token(local):
    body = exchanged(local, "default/prod-acr")
    assert set(body) == {"registry", "username", "password", "expires_at"}
    assert body["registry"] == "acme.azurecr.io" and body["username"] == ZERO
    refresh = claims_of(body["password"])
    assert refresh["aud"] == "acme.azurecr.io" and refresh["sub"] == "66666666-7777-8888-9999-000000000000"
    assert RFC3339.fullmatch(body["expires_at"])
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(refresh["exp"])) == body["expires_at"]


def test_a_second_caller_is_served_the_cached_docker_credentials(local):
    first = exchanged(local, "default/prod-acr")
    second = exchanged(local, "default/prod-acr")
    assert second == first
    served = [r for r in local.log_records() if r.get("message") == "credentials issued"
              and r.get("target") == "default/prod-acr"]
    assert served[-1]["from_cache"] is True and served[-1]["subject"] == "space:default:feed:prod-acr"


def test_secrets_never_reach_the_logs(local):
    token = local.ci_token(**MAIN)
    body = post(local, "default/prod-acr", token).json()
    time.sleep(0.05)  # the log line is written after the response
    assert body["password"] not in local.logs() and token not in local.logs()


def test_a_replayed_ci_token_is_refused(local):
    token = local.ci_token(**MAIN)
    assert post(local, "default/prod-acr", token).status_code == 200
    response = post(local, "default/prod-acr", token)
    assert response.status_code == 400 and "already used" in response.json()["error_description"]


def test_a_missing_bearer_is_401(local):
    assert post(local, "default/prod-acr").status_code == 401


def test_a_target_of_another_cloud_is_invalid_target(local):
    response = post(local, "default/prod-ecr", local.ci_token(**MAIN))
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"
    assert "/exchange/azure serves azure targets only" in response.json()["error_description"]


def test_the_banner_shows_the_emulators_and_the_azure_walk(local):
    logs = local.logs()
    assert re.search(r"Entra ID\s+https://127\.0\.0\.1:\d+ \(verifying emulator", logs)
    assert "/exchange/azure" in logs and '{"target": "default/prod-acr"}' in logs


# -- an account target ---------------------------------------------------------------------------

AZURE_ACCOUNT = """
      - name: prod-azure
        kind: account
        provider: azure
        subject: [space, environment, account]
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 77777777-7777-8888-9999-000000000000}"""


@pytest.fixture(scope="module")
def with_account(tmp_path_factory):
    text = (ROOT / "examples" / "local.yaml").read_text()
    assert text.count("    targets:\n") == 1 and text.count("targets: [prod-deploy]") == 1
    text = text.replace("    targets:\n", "    targets:" + AZURE_ACCOUNT + "\n", 1)
    text = text.replace("targets: [prod-deploy]", "targets: [prod-deploy, prod-azure]")
    directory = tmp_path_factory.mktemp("azure-account")
    config = directory / "broker.yaml"
    config.write_text(text)
    mode = start_local(directory / "local.log", "--config", str(config))
    yield mode
    stop_local(mode)


def test_an_account_target_gets_an_entra_access_token_for_the_management_scope(with_account):
    body = exchanged(with_account, "default/prod-azure", environment="production")
    assert set(body) == {"access_token", "token_type", "expires_at", "scope"}
    assert body["token_type"] == "Bearer" and body["access_token"]
    assert body["scope"] == "https://management.azure.com/.default"
    assert RFC3339.fullmatch(body["expires_at"])


def test_an_account_token_is_cached_per_subject(with_account):
    first = exchanged(with_account, "default/prod-azure", environment="production")
    assert exchanged(with_account, "default/prod-azure", environment="production") == first


# -- Entra refusing over HTTP: an identity whose federated credential an operator got wrong ---------

REFUSED = """
      - name: case-acr          # its federated credential names the subject in upper case
        kind: feed
        provider: azure
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 99999999-1111-8888-9999-000000000000, registry: case.azurecr.io}
      - name: slash-acr         # its federated credential names the issuer with a trailing slash
        kind: feed
        provider: azure
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 99999999-2222-8888-9999-000000000000, registry: slash.azurecr.io}
"""
TENANT = "11111111-2222-3333-4444-555555555555"
TRACE = re.compile(r"Trace ID [0-9a-f-]{36}, Correlation ID [0-9a-f-]{36}")


@pytest.fixture(scope="module")
def miswired(tmp_path_factory):
    from dataclasses import replace

    from inprocess import demo_config, local_broker
    from oidc_broker_cli.local.clouds.azure import AzureWiring

    with local_broker(tmp_path_factory.mktemp("entra-refusals"), demo_config(REFUSED, ["case-acr", "slash-acr"])) as mode:
        apps = mode.wiring(AzureWiring).directory.apps
        for client, change in (("99999999-1111-8888-9999-000000000000", lambda c: replace(c, subject=c.subject.upper())),
                               ("99999999-2222-8888-9999-000000000000", lambda c: replace(c, issuer=c.issuer + "/"))):
            apps[(TENANT, client)] = [change(c) for c in apps[(TENANT, client)]]
        yield mode


def entra_refusal(mode, target: str) -> str:
    response = mode.exchange("azure", target)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "access_denied", body
    description = body["error_description"]
    # What the broker sent, so the operator can compare it with the federated credential.
    assert f"issuer '{mode.broker.issuer}'" in description
    assert f"subject 'space:default:feed:{target.split('/')[1]}'" in description
    assert "audience 'api://AzureADTokenExchange'" in description
    assert TRACE.search(description), description  # what Microsoft support asks for
    assert f"oidc-broker trust-policy azure --target {target}" in description
    return description


def test_a_credential_whose_subject_differs_only_in_letter_case_is_explained_as_such(miswired):
    description = entra_refusal(miswired, "default/case-acr")
    assert "AADSTS7002138" in description and "case-sensitively" in description


def test_a_credential_naming_another_issuer_is_aadsts700211(miswired):
    description = entra_refusal(miswired, "default/slash-acr")
    assert "AADSTS700211" in description and "no federated credential names the issuer" in description


def test_a_refused_exchange_consumes_no_ci_token(miswired):
    token = miswired.ci_token()
    response = miswired.http.post("/exchange/azure", json={"target": "default/case-acr"},
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    retried = miswired.http.post("/exchange/azure", json={"target": "default/case-acr"},
                                 headers={"Authorization": f"Bearer {token}"})
    assert retried.status_code == 403 and "already used" not in retried.text
