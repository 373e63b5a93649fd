"""POST /exchange/aws over HTTP against local mode: STS is the verifying emulator, ECR is moto.

The demo configuration serves the flows; a second local mode adds targets whose AWS side is
wrong (a role that trusts another subject, a role in an account with no OIDC provider).
"""

from __future__ import annotations

import json
import re
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from localmode import ROOT, start_local, stop_local

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}


def post(local, target, token: str | None = None, *, body=None, headers=None):
    sent = {"Content-Type": "application/json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    content = json.dumps({"target": target}) if body is None else body
    return local.http.post("/exchange/aws", content=content, headers=sent)


def refused(response, status: int, error: str, mentions: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error, body
    if mentions:
        assert mentions in body["error_description"], body
    return body["error_description"]


def exchanged(local, target: str, **claims):
    response = post(local, target, local.ci_token(**{**MAIN, **claims}))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def moto(local, service: str, credentials=None):
    keys = credentials or {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    return boto3.client(service, region_name="us-east-1", endpoint_url=local.aws_endpoint, **keys)


# -- the flows -----------------------------------------------------------------------------------

def test_a_feed_target_gets_docker_credentials_for_its_ecr_registry(local):
    body = exchanged(local, "default/prod-ecr")
    assert set(body) == {"registry", "username", "password", "expires_at"}
    assert body["registry"] == "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert body["username"] == "AWS" and body["password"]
    assert RFC3339.fullmatch(body["expires_at"])


def test_an_ecr_public_feed_gets_docker_credentials_for_public_ecr_aws(local):
    # moto has no ECR Public: this was 503 with Retry-After (moto's HTML 500 page), forever.
    body = exchanged(local, "default/prod-public")
    assert set(body) == {"registry", "username", "password", "expires_at"}
    assert body["registry"] == "public.ecr.aws" and body["username"] == "AWS" and body["password"]
    assert RFC3339.fullmatch(body["expires_at"])


def test_ecr_public_in_local_mode_accepts_only_credentials_that_sts_issued(local):
    endpoint = re.search(r"ECR Public\s+(http://\S+)", local.logs()).group(1)
    role = exchanged(local, "default/prod-deploy", environment="production")
    signed = {"aws_access_key_id": role["access_key_id"], "aws_secret_access_key": role["secret_access_key"],
              "aws_session_token": role["session_token"]}
    public = boto3.client("ecr-public", region_name="us-east-1", endpoint_url=endpoint, **signed)
    assert public.get_authorization_token()["authorizationData"]["authorizationToken"]
    other = boto3.client("ecr-public", region_name="us-east-1", endpoint_url=endpoint,
                         aws_access_key_id="local", aws_secret_access_key="local")
    with pytest.raises(ClientError) as refused:
        other.get_authorization_token()
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_an_account_target_gets_role_credentials_that_aws_accepts_as_the_role(local):
    body = exchanged(local, "default/prod-deploy", environment="production")
    assert set(body) == {"access_key_id", "secret_access_key", "session_token", "expires_at"}
    expires = time.mktime(time.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3000 < expires - time.time() <= 3600 + 5
    sts = moto(local, "sts", {"aws_access_key_id": body["access_key_id"],
                              "aws_secret_access_key": body["secret_access_key"],
                              "aws_session_token": body["session_token"]})
    arn = sts.get_caller_identity()["Arn"]
    assert arn.startswith("arn:aws:sts::123456789012:assumed-role/deploy/default.prod-deploy@repo-acme-app")


def test_a_second_caller_is_served_the_cached_credentials(local):
    first = exchanged(local, "default/prod-deploy", environment="production")
    second = exchanged(local, "default/prod-deploy", environment="production")
    assert second == first
    served = [r for r in local.log_records() if r.get("message") == "credentials issued"]
    assert served[-1]["from_cache"] is True and served[-1]["subject"] == \
        "space:default:environment:production:account:prod-deploy"


def test_secrets_never_reach_the_logs(local):
    token = local.ci_token(**MAIN)
    body = post(local, "default/prod-ecr", token).json()
    time.sleep(0.05)  # the log line is written after the response
    logs = local.logs()
    assert body["password"] not in logs and token not in logs


# -- refusals: each a 4xx, never a 5xx -------------------------------------------------------------

def test_a_replayed_ci_token_is_refused(local):
    token = local.ci_token(**MAIN)
    assert post(local, "default/prod-ecr", token).status_code == 200
    refused(post(local, "default/prod-ecr", token), 400, "invalid_grant", "already used")


def test_a_missing_bearer_is_401(local):
    response = post(local, "default/prod-ecr")
    refused(response, 401, "invalid_request", "Authorization: Bearer")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer  two-spaces", "token"])
def test_a_malformed_authorization_header_is_401(local, value):
    refused(post(local, "default/prod-ecr", headers={"Authorization": value}), 401, "invalid_request")


def test_two_authorization_headers_are_joined_as_api_gateway_does_and_refused(local):
    # API Gateway joins a repeated header with commas; the last one must not silently win.
    token = local.ci_token(**MAIN)
    before = sum(r.get("reason") == "malformed_bearer" for r in local.log_records())
    response = local.http.post("/exchange/aws", content=json.dumps({"target": "default/prod-ecr"}), headers=[
        ("Content-Type", "application/json"),
        ("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    refused(response, 401, "invalid_request", "Authorization must be")
    time.sleep(0.05)  # the log line is written after the response
    assert sum(r.get("reason") == "malformed_bearer" for r in local.log_records()) > before
    # Nothing was consumed: the same CI token, sent once, is accepted.
    assert post(local, "default/prod-ecr", token).status_code == 200


def test_a_bearer_that_is_not_a_jwt_is_an_invalid_grant(local):
    refused(post(local, "default/prod-ecr", "not-a-jwt"), 400, "invalid_grant")


@pytest.mark.parametrize("body", ["{", "[]", '"default/prod-ecr"', '{"target": 7}', "{}",
                                  '{"target": "default/prod-ecr", "role": "admin"}',
                                  '{"target": "a", "target": "b"}'])
def test_a_body_that_is_not_the_request_object_is_refused(local, body):
    response = post(local, None, local.ci_token(**MAIN), body=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_request", "invalid_target")


def test_a_form_body_is_refused(local):
    response = post(local, None, local.ci_token(**MAIN), body="target=default/prod-ecr",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    refused(response, 400, "invalid_request", "application/json")


@pytest.mark.parametrize("target", ["default/nope", "nope/prod-ecr", "prod-ecr", "default/prod-ecr/x"])
def test_an_unknown_or_malformed_target_is_invalid_target(local, target):
    refused(post(local, target, local.ci_token(**MAIN)), 400, "invalid_target")


def test_a_target_of_another_cloud_is_invalid_target(local):
    refused(post(local, "default/prod-acr", local.ci_token(**MAIN)), 400, "invalid_target", "provider azure")


def test_a_caller_no_trust_rule_admits_is_refused_before_anything_else(local):
    refused(post(local, "default/prod-ecr", local.ci_token(repository="evil/app", ref="refs/heads/main")),
            400, "invalid_grant")


# -- what AWS refuses ------------------------------------------------------------------------------

AWS_TARGETS = """
      - name: other-team
        kind: account
        provider: aws
        aws: {role_arn: "arn:aws:iam::123456789012:role/other-team", region: us-east-1}
      - name: foreign
        kind: account
        provider: aws
        aws: {role_arn: "arn:aws:iam::210987654321:role/deploy", region: us-east-1}
"""


@pytest.fixture(scope="module")
def wrong_aws(tmp_path_factory):
    text = (ROOT / "examples" / "local.yaml").read_text()
    assert text.count("    targets:\n") == 1 and text.count("targets: [prod-ecr, ") == 1
    text = text.replace("    targets:\n", "    targets:" + AWS_TARGETS, 1)
    text = text.replace("targets: [prod-ecr, ", "targets: [other-team, foreign, prod-ecr, ")
    directory = tmp_path_factory.mktemp("wrong-aws")
    config = directory / "broker.yaml"
    config.write_text(text)
    mode = start_local(directory / "local.log", "--config", str(config))
    # The role trusts another subject than the one the broker mints for the target.
    iam = moto(mode, "iam")
    document = json.loads(json.dumps(iam.get_role(RoleName="other-team")["Role"]["AssumeRolePolicyDocument"]))
    host = mode.base_url.removeprefix("http://")
    document["Statement"][0]["Condition"]["StringLike"][f"{host}:sub"] = "space:default:account:someone-else"
    iam.update_assume_role_policy(RoleName="other-team", PolicyDocument=json.dumps(document))
    yield mode
    stop_local(mode)


def test_a_role_that_trusts_another_subject_is_403_naming_role_subject_and_audience(wrong_aws):
    token = wrong_aws.ci_token(**MAIN)
    text = refused(post(wrong_aws, "default/other-team", token), 403, "access_denied")
    assert "arn:aws:iam::123456789012:role/other-team" in text
    assert "space:default:account:other-team" in text and "sts.amazonaws.com" in text and "AccessDenied" in text
    assert token not in text
    # Nothing was consumed: once the role trusts the subject, the same CI token works.
    iam = moto(wrong_aws, "iam")
    document = iam.get_role(RoleName="other-team")["Role"]["AssumeRolePolicyDocument"]
    host = wrong_aws.base_url.removeprefix("http://")
    document["Statement"][0]["Condition"]["StringLike"][f"{host}:sub"] = "space:default:account:other-team"
    iam.update_assume_role_policy(RoleName="other-team", PolicyDocument=json.dumps(document))
    assert post(wrong_aws, "default/other-team", token).status_code == 200


def test_a_role_in_an_account_without_our_oidc_provider_is_502(wrong_aws):
    text = refused(post(wrong_aws, "default/foreign", wrong_aws.ci_token(**MAIN)), 502, "cloud_error")
    assert "InvalidIdentityToken" in text and "OIDC provider" in text and wrong_aws.base_url in text
