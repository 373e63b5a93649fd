"""The whole flow over HTTP: a CI token in, a broker token out, verified as a cloud would."""

import json
import subprocess
import time
from pathlib import Path

import jwt

INTEROP = Path(__file__).resolve().parents[1] / "interop"


def verify_with_pyjwt(local, token: str, audience: str) -> dict:
    discovery = local.http.get("/.well-known/openid-configuration").json()
    jwks = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=discovery["issuer"],
                      options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]})


def test_a_trusted_pipeline_gets_a_feed_token_with_the_default_subject(local):
    response = local.exchange(local.ci_token())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:id_token"
    assert body["token_type"] == "N_A"
    assert body["expires_in"] == 600
    assert response.headers["cache-control"] == "no-store"
    claims = verify_with_pyjwt(local, body["access_token"], "sts.amazonaws.com")
    assert claims["sub"] == "space:default:feed:prod-ecr"
    assert (claims["space"], claims["feed"]) == ("default", "prod-ecr")
    assert claims["exp"] - claims["iat"] == 600
    assert claims["act"] == {"iss": local.base_url + "/_dev/ci", "sub": "repo:acme/app:ref:refs/heads/main"}


def test_the_token_header_names_the_published_kid_and_rs256(local):
    token = local.exchange(local.ci_token()).json()["access_token"]
    header = jwt.get_unverified_header(token)
    published = [k["kid"] for k in local.http.get("/.well-known/jwks.json").json()["keys"]]
    assert header["alg"] == "RS256"
    assert header["kid"] in published


def test_an_account_target_takes_its_environment_from_the_verified_claim(local):
    response = local.exchange(local.ci_token(environment="production"), audience="default/prod-deploy")
    assert response.status_code == 200, response.text
    claims = verify_with_pyjwt(local, response.json()["access_token"], "sts.amazonaws.com")
    assert claims["sub"] == "space:default:environment:production:account:prod-deploy"
    assert claims["environment"] == "production"
    assert response.json()["expires_in"] == 900


def test_each_cloud_gets_its_own_audience(local):
    token = local.ci_token()
    azure = local.exchange(token, audience="default/prod-acr").json()["access_token"]
    gcp = local.exchange(token, audience="default/prod-gar").json()["access_token"]
    assert verify_with_pyjwt(local, azure, "api://AzureADTokenExchange")["sub"] == "space:default:feed:prod-acr"
    assert verify_with_pyjwt(local, gcp, "https://iam.googleapis.com/projects/123456789012/locations/global/"
                             "workloadIdentityPools/pipelines/providers/oidc-broker")["feed"] == "prod-gar"


def test_one_caller_token_is_accepted_once_per_target(local):
    token = local.ci_token()
    assert local.exchange(token, audience="default/prod-ecr").status_code == 200
    assert local.exchange(token, audience="default/prod-acr").status_code == 200
    again = local.exchange(token, audience="default/prod-ecr")
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert "already used" in again.json()["error_description"]


def test_a_verifier_outside_python_accepts_the_token(local):
    assert (INTEROP / "node_modules" / "jose").is_dir(), "run `make interop` (npm ci in tests/interop)"
    token = local.exchange(local.ci_token()).json()["access_token"]
    result = subprocess.run(
        ["node", str(INTEROP / "verify.mjs"), local.base_url, "sts.amazonaws.com", token],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    verified = json.loads(result.stdout)
    assert verified["claims"]["sub"] == "space:default:feed:prod-ecr"
    assert verified["header"]["alg"] == "RS256"


def test_the_outside_verifier_rejects_a_token_for_another_audience(local):
    token = local.exchange(local.ci_token(), audience="default/prod-acr").json()["access_token"]
    result = subprocess.run(
        ["node", str(INTEROP / "verify.mjs"), local.base_url, "sts.amazonaws.com", token],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "aud" in result.stderr


def test_the_minted_token_is_short_lived(local):
    before = int(time.time())
    token = local.exchange(local.ci_token()).json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert before - 5 <= claims["iat"] <= int(time.time()) + 5
    assert claims["nbf"] == claims["iat"]


def test_audit_answers_who_obtained_a_target_with_one_query(local):
    import os
    import sys

    repo = "acme/app"
    assert local.exchange(local.ci_token(actor="auditor-test"), audience="default/prod-acr").status_code == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=local.aws_endpoint, AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local",
               AWS_DEFAULT_REGION="us-east-1")
    result = subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "audit", "--target", "default/prod-acr",
                             "--table", "oidc-broker-local", "--since", "1h", "--json"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert records, "no audit record"
    newest = records[0]
    assert newest["target"] == "default/prod-acr"
    assert newest["caller_subject"] == f"repo:{repo}:ref:refs/heads/main"
    assert newest["subject"] == "space:default:feed:prod-acr"
    assert newest["trust_rule"] == "app-main"
    assert [r["issued_at"] for r in records] == sorted((r["issued_at"] for r in records), reverse=True)
