"""POST /exchange/gcp over HTTP against local mode: Google's STS and IAM Credentials are the verifying
emulators, which fetch the broker's discovery and JWKS over HTTP.

The demo configuration serves the feed flow; a second local mode adds an account target that
impersonates a service account, and a target whose Google STS never answers; a third, in this
process (inprocess.py), a provider whose attribute condition refuses the subject. Each
refusal class against the emulators is proven in tests/emulators/test_google_sts.py, each against
Google's documented answers in tests/unit/clouds/test_gcp.py.
"""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time

import pytest
from localmode import ROOT, start_local, stop_local

MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}
WIP = "projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker"
GCP_TARGETS = f"""
      - name: gcp-deploy
        kind: account
        provider: gcp
        gcp:
          workload_identity_provider: {WIP}
          service_account: deployer@acme-prod.iam.gserviceaccount.com
          token_lifetime: 30m
          scopes: [https://www.googleapis.com/auth/cloud-platform]
      - name: gcp-down          # a Google STS that never answers
        kind: feed
        provider: gcp
        gcp: {{workload_identity_provider: {WIP}, registry: gcr.io, sts_endpoint: "https://127.0.0.1:9/v1/token"}}
"""


def post(local, target, token):
    return local.http.post("/exchange/gcp", content=json.dumps({"target": target}),
                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})


def epoch(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def refused(response, status, error, mentions):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and mentions in body["error_description"], body
    return body["error_description"]


@pytest.fixture(scope="module")
def gcp_local(tmp_path_factory):
    text = (ROOT / "examples" / "local.yaml").read_text()
    assert text.count("    targets:\n") == 1 and text.count("targets: [prod-ecr, ") == 1
    text = text.replace("    targets:\n", "    targets:" + GCP_TARGETS, 1)
    text = text.replace("targets: [prod-ecr, ", "targets: [gcp-deploy, gcp-down, prod-ecr, ")
    directory = tmp_path_factory.mktemp("gcp")
    config = directory / "broker.yaml"
    config.write_text(text)
    mode = start_local(directory / "local.log", "--config", str(config))
    yield mode
    stop_local(mode)


def test_a_feed_target_gets_artifact_registry_credentials_for_an_hour_not_the_broker_tokens_ten_minutes(local):
    before = time.time()
    response = post(local, "default/prod-gar", local.ci_token(**MAIN))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"registry", "username", "password", "expires_at"}
    assert body["registry"] == "europe-docker.pkg.dev" and body["username"] == "oauth2accesstoken"
    assert body["password"].startswith("ya29.emulated-federated-")
    # The target's broker tokens live 10 minutes; Google's token lives as long as the one presented.
    assert 3500 <= epoch(body["expires_at"]) - before <= 3610


def test_a_second_caller_is_served_the_cached_credentials(local):
    first = post(local, "default/prod-gar", local.ci_token(**MAIN)).json()
    second = post(local, "default/prod-gar", local.ci_token(**MAIN)).json()
    assert first["password"] == second["password"]


def test_a_caller_no_rule_admits_is_refused_before_google_is_asked(local):
    refused(post(local, "default/prod-gar", local.ci_token(repository="evil/app", ref="refs/heads/main")),
            400, "invalid_grant", "does not match any trust rule")


def test_an_aws_target_is_not_served_by_the_google_exchange(local):
    refused(post(local, "default/prod-ecr", local.ci_token(**MAIN)), 400, "invalid_target", "/exchange/gcp serves gcp")


def test_an_account_target_gets_the_service_accounts_token_with_its_lifetime(gcp_local):
    before = time.time()
    response = post(gcp_local, "default/gcp-deploy", gcp_local.ci_token(**MAIN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_at", "scope"}
    assert body["token_type"] == "Bearer" and body["access_token"].startswith("ya29.emulated-sa-")
    assert body["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert 1700 <= epoch(body["expires_at"]) - before <= 1810


def test_a_google_that_cannot_be_reached_is_503_with_retry_after_and_consumes_no_ci_token(gcp_local):
    token = gcp_local.ci_token(**MAIN)
    response = post(gcp_local, "default/gcp-down", token)
    refused(response, 503, "temporarily_unavailable", "try again")
    assert response.headers["Retry-After"] == "2"
    # The refused exchange withdrew its grant: the same CI token is still good for another target.
    assert post(gcp_local, "default/prod-gar", token).status_code == 200


def test_no_token_reaches_the_log(gcp_local):
    token = gcp_local.ci_token(**MAIN)
    body = post(gcp_local, "default/gcp-deploy", token).json()
    logs = gcp_local.logs()
    assert token not in logs and body["access_token"] not in logs


def test_keys_jwks_prints_the_key_set_as_googles_jwks_json_takes_it(local):
    out = subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "keys", "jwks", "--issuer", local.base_url],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    jwks = json.loads(out)
    assert jwks["keys"] and all(set(k) <= {"kty", "kid", "use", "alg", "n", "e", "crv", "x", "y"} for k in jwks["keys"])
    published = local.http.get("/.well-known/jwks.json").json()
    assert [k["kid"] for k in jwks["keys"]] == [k["kid"] for k in published["keys"]]


def test_trust_policy_gcp_prints_the_provider_condition_and_binding(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text(f"""
issuer: https://id.example.com
trusted_issuers:
  - {{name: github, issuer: https://token.actions.githubusercontent.com}}
spaces:
  - name: default
    targets:
      - name: gcp-deploy
        kind: account
        provider: gcp
        gcp: {{workload_identity_provider: {WIP}, service_account: deployer@acme-prod.iam.gserviceaccount.com}}
    trust:
      - name: app-main
        issuer: github
        claims: {{repository_owner_id: "7", repository: acme/app, ref: refs/heads/main}}
        targets: [gcp-deploy]
""")
    out = subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "trust-policy", "gcp", "--target",
                          "default/gcp-deploy", "--config", str(config)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    setup = json.loads(out.stdout)
    assert setup["provider"]["oidc"] == {"issuerUri": "https://id.example.com", "allowedAudiences": []}
    assert setup["provider"]["attributeCondition"] == 'assertion.sub == "space:default:account:gcp-deploy"'
    assert setup["commands"][0].startswith("gcloud iam workload-identity-pools providers create-oidc oidc-broker")
    assert setup["bindings"][0]["members"] == [
        "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/pipelines"
        "/subject/space:default:account:gcp-deploy"]


# -- Google STS refusing over HTTP: a provider whose attribute condition does not admit the subject ---

REFUSING_WIP = "projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/refusing"
REFUSED = f"""
      - name: gar-refused       # its provider's attribute condition admits another subject
        kind: feed
        provider: gcp
        gcp: {{workload_identity_provider: {REFUSING_WIP}, registry: europe-docker.pkg.dev}}
"""


@pytest.fixture(scope="module")
def miswired(tmp_path_factory):
    from inprocess import demo_config, local_broker
    from oidc_broker_cli.local.clouds.gcp import GcpWiring

    with local_broker(tmp_path_factory.mktemp("gcp-refusals"), demo_config(REFUSED, ["gar-refused"])) as mode:
        provider = mode.wiring(GcpWiring).google.providers[REFUSING_WIP]
        provider.attribute_condition = 'assertion.sub == "space:default:feed:someone-else"'
        yield mode


def test_an_attribute_condition_that_does_not_admit_the_subject_is_unauthorized_client_explained(miswired):
    response = miswired.exchange("gcp", "default/gar-refused")
    description = refused(response, 403, "access_denied", "unauthorized_client")
    assert "rejected by the attribute condition" in description
    assert f"issuer {miswired.broker.issuer}" in description
    assert "subject 'space:default:feed:gar-refused'" in description
    assert f"audience 'https://iam.googleapis.com/{REFUSING_WIP}'" in description
    assert "attributeCondition must admit subject 'space:default:feed:gar-refused'" in description
    assert "oidc-broker trust-policy gcp --target default/gar-refused" in description
    # Another target of the same pool, whose provider admits it, is unaffected.
    assert miswired.exchange("gcp", "default/prod-gar").status_code == 200
