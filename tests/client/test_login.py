"""`oidc-broker login` against local mode: the CI token from each CI's own mechanism, the exchange, and
what is written or printed — docker's config read back by docker's own SDK, environment lines,
$GITHUB_ENV with masks — plus every way of having no token explained."""

from __future__ import annotations

import base64
import json
import os
import re
import stat

import docker.auth
import pytest
from clientrun import MAIN, PRODUCTION
from standins import REQUEST_TOKEN, TokenService

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture
def github(local, client):
    service = TokenService(local, MAIN)
    client.env.update({"GITHUB_ACTIONS": "true", "ACTIONS_ID_TOKEN_REQUEST_URL": service.url + "?api-version=2.0",
                       "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN})
    yield service
    service.close()


def docker_config(client) -> dict:
    return json.loads((client.home / ".docker" / "config.json").read_text())


def login(client, local, target="default/prod-ecr", cloud="aws", *extra, stdin=""):
    return client("login", "--url", local.base_url, "--target", target, "--cloud", cloud, *extra, stdin=stdin)


# -- GitHub Actions ------------------------------------------------------------------------------

def test_in_github_actions_login_asks_for_a_token_for_the_brokers_issuer_and_writes_dockers_config(local, client, github):
    ran = login(client, local)
    assert ran.code == 0, ran.err
    assert [r["query"]["audience"] for r in github.requests] == [local.base_url]
    assert github.requests[0]["query"]["api-version"] == "2.0"
    assert f"logged in to {ECR} as AWS until " in ran.err and ran.out == ""
    auth = docker.auth.load_config(str(client.home / ".docker" / "config.json")).resolve_authconfig(ECR)
    assert auth["username"] == "AWS" and auth["password"]
    path = client.home / ".docker" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_explicit_audience_is_the_one_asked_for_and_the_brokers_refusal_says_what_it_expected(local, client, github):
    ran = login(client, local, "default/prod-ecr", "aws", "--audience", "sts.amazonaws.com")
    assert github.requests[0]["query"]["audience"] == "sts.amazonaws.com"
    assert ran.code == 1
    assert "the broker refused (HTTP 400 invalid_grant): aud does not match" in ran.err
    assert "oidc-broker explain --target default/prod-ecr" in ran.err  # the next step


def test_github_without_id_token_permission_says_to_add_it(local, client, github):
    del client.env["ACTIONS_ID_TOKEN_REQUEST_URL"]
    ran = login(client, local)
    assert ran.code == 1
    assert "GitHub Actions gave this job no OIDC token (ACTIONS_ID_TOKEN_REQUEST_URL is not set)" in ran.err
    assert "permissions: id-token: write" in ran.err and github.requests == []


def test_github_for_a_pull_request_from_a_fork_says_forks_get_no_token(local, client, github, tmp_path):
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"head": {"repo": {"full_name": "mallory/app", "fork": True}},
                                                  "base": {"repo": {"full_name": "acme/app"}}}}))
    for name in ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        del client.env[name]
    client.env.update({"GITHUB_EVENT_NAME": "pull_request", "GITHUB_EVENT_PATH": str(event)})
    ran = login(client, local)
    assert ran.code == 1
    assert "pull request from the fork mallory/app: GitHub gives such runs no OIDC token" in ran.err


def test_github_refusing_the_request_token_is_reported_without_a_token(local, client, github):
    client.env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = "expired"
    ran = login(client, local)
    assert ran.code == 1 and "GitHub's OIDC token service answered HTTP 401 without a token" in ran.err


def test_github_env_output_masks_each_secret_and_appends_to_github_env(local, client, tmp_path):
    service = TokenService(local, PRODUCTION)
    github_env = tmp_path / "github_env"
    github_env.write_text("EARLIER=1\n")
    client.env.update({"GITHUB_ACTIONS": "true", "ACTIONS_ID_TOKEN_REQUEST_URL": service.url + "?api-version=2.0",
                       "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN, "GITHUB_ENV": str(github_env)})
    try:
        ran = login(client, local, "default/prod-deploy", "aws", "--github-env")
    finally:
        service.close()
    assert ran.code == 0, ran.err
    written = github_env.read_text()
    assert written.startswith("EARLIER=1\n")
    # GitHub's multiline form: NAME<<DELIMITER, the value, DELIMITER.
    entries = re.findall(r"^(\w+)<<(ghadelimiter_[0-9a-f-]+)\n(.*)\n\2$", written, re.M)
    values = {name: value for name, _, value in entries}
    assert list(values) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
    # Every value is masked, and stdout holds nothing but the mask commands.
    assert ran.out.splitlines() == [f"::add-mask::{v}" for v in values.values()]
    assert "set for the job's next steps" in ran.err and not any(v in ran.err for v in values.values())


# -- GitLab CI and other token sources -----------------------------------------------------------

def test_in_gitlab_the_id_token_variable_is_used_and_an_account_prints_aws_environment_lines(local, client):
    client.env.update({"GITLAB_CI": "true", "OIDC_BROKER_ID_TOKEN": local.ci_token(**PRODUCTION)})
    ran = login(client, local, "default/prod-deploy")
    assert ran.code == 0, ran.err
    lines = dict(line.split("=", 1) for line in ran.out.splitlines())
    assert set(lines) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert lines["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN printed, valid until" in ran.err


def test_gitlab_with_another_variable_name_uses_token_env(local, client):
    client.env.update({"GITLAB_CI": "true", "BROKER_TOKEN": local.ci_token(**PRODUCTION)})
    ran = login(client, local, "default/prod-deploy", "aws", "--token-env", "BROKER_TOKEN", "--format", "shell")
    assert ran.code == 0, ran.err
    assert [line.split("=", 1)[0] for line in ran.out.splitlines()] == [
        "export AWS_ACCESS_KEY_ID", "export AWS_SECRET_ACCESS_KEY", "export AWS_SESSION_TOKEN"]


def test_gitlab_without_an_id_token_shows_the_id_tokens_block_to_add(local, client):
    client.env["GITLAB_CI"] = "true"
    ran = login(client, local)
    assert ran.code == 1
    assert "GitLab CI gave this job no ID token in $OIDC_BROKER_ID_TOKEN" in ran.err
    assert f"id_tokens:\n    OIDC_BROKER_ID_TOKEN:\n      aud: {local.base_url}" in ran.err


def test_outside_any_ci_it_says_so_and_how_to_pass_a_token(local, client):
    ran = login(client, local)
    assert ran.code == 1
    assert "not a CI job this client recognizes" in ran.err and "--token-file FILE or --token -" in ran.err


def test_a_token_on_standard_input_and_json_output(local, client):
    ran = login(client, local, "default/prod-deploy", "aws", "--token", "-", "--format", "json",
                stdin=local.ci_token(**PRODUCTION) + "\n")
    assert ran.code == 0, ran.err
    assert set(json.loads(ran.out)) == {"access_key_id", "secret_access_key", "session_token", "expires_at"}


def test_a_token_on_the_command_line_is_refused_before_anything_is_sent(local, client):
    ran = login(client, local, "default/prod-ecr", "aws", "--token", local.ci_token(**MAIN))
    assert ran.code == 1 and "--token takes only '-'" in ran.err


def test_a_token_file_that_is_not_a_jwt_is_refused_without_echoing_it(local, client, tmp_path):
    (tmp_path / "token").write_text("not-a-token-secret")
    ran = login(client, local, "default/prod-ecr", "aws", "--token-file", str(tmp_path / "token"))
    assert ran.code == 1 and "is not a JWT" in ran.err and "not-a-token-secret" not in ran.err


# -- feeds of every cloud, and docker's config ---------------------------------------------------

@pytest.mark.parametrize("target, cloud, registry, username", [
    ("default/prod-public", "aws", "public.ecr.aws", "AWS"),
    ("default/prod-acr", "azure", "acme.azurecr.io", "00000000-0000-0000-0000-000000000000"),
    ("default/prod-gar", "gcp", "europe-docker.pkg.dev", "oauth2accesstoken"),
])
def test_each_clouds_feed_is_written_as_a_docker_login(local, client, target, cloud, registry, username):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = login(client, local, target, cloud)
    assert ran.code == 0, ran.err
    auth = docker.auth.load_config(str(client.home / ".docker" / "config.json")).resolve_authconfig(registry)
    assert auth["username"] == username and auth["password"]


def test_dockers_other_entries_are_kept_and_the_same_registry_with_a_scheme_is_replaced(local, client):
    directory = client.home / "docker"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "auths": {"ghcr.io": {"auth": "a2VlcDptZQ=="}, f"https://{ECR}": {"auth": "b2xkOm9sZA=="}},
        "psFormat": "table {{.ID}}"}))
    client.env.update({"DOCKER_CONFIG": str(directory), "OIDC_BROKER_ID_TOKEN": local.ci_token(**MAIN)})
    ran = login(client, local)
    assert ran.code == 0, ran.err
    config = json.loads((directory / "config.json").read_text())
    assert config["psFormat"] == "table {{.ID}}" and config["auths"]["ghcr.io"] == {"auth": "a2VlcDptZQ=="}
    assert set(config["auths"]) == {"ghcr.io", ECR}
    assert base64.b64decode(config["auths"][ECR]["auth"]).startswith(b"AWS:")
    assert stat.S_IMODE(os.stat(directory / "config.json").st_mode) == 0o600
    assert not [p for p in directory.iterdir() if p.name != "config.json"]  # no temporary file left


def test_a_docker_config_with_a_credential_store_is_left_alone_and_print_is_offered(local, client):
    directory = client.home / ".docker"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"credsStore": "desktop"}))
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = login(client, local)
    assert ran.code == 1 and "credential store docker-credential-desktop" in ran.err and "--password-stdin" in ran.err
    assert json.loads((directory / "config.json").read_text()) == {"credsStore": "desktop"}


def test_an_unreadable_docker_config_is_never_overwritten(local, client):
    directory = client.home / ".docker"
    directory.mkdir()
    (directory / "config.json").write_text("{not json")
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = login(client, local)
    assert ran.code == 1 and "is not a JSON object, so it is left as it is" in ran.err
    assert (directory / "config.json").read_text() == "{not json"


def test_print_gives_the_password_for_docker_login_password_stdin(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = login(client, local, "default/prod-ecr", "aws", "--print")
    assert ran.code == 0, ran.err
    assert ran.out.count("\n") == 1 and ran.out.strip()
    assert f"docker login --username AWS --password-stdin https://{ECR}" in ran.err
    assert not (client.home / ".docker").exists()


# -- refusals, with the broker's description and the next step -----------------------------------

def test_a_replayed_token_says_each_token_serves_one_exchange_per_target(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    assert login(client, local, "default/prod-ecr", "aws", "--print").code == 0
    ran = login(client, local, "default/prod-ecr", "aws", "--print")
    assert ran.code == 1 and "already used" in ran.err and "once per target" in ran.err and ran.out == ""


def test_the_wrong_cloud_is_the_brokers_invalid_target_with_what_to_check(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = login(client, local, "default/prod-ecr", "gcp")
    assert ran.code == 1
    assert "invalid_target): target 'default/prod-ecr' has provider aws" in ran.err
    assert "check --target (<space>/<target>) and --cloud" in ran.err


def test_a_caller_no_rule_admits_gets_the_check_that_failed(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(repository="evil/app", ref="refs/heads/main")
    ran = login(client, local)
    assert ran.code == 1 and "does not match any trust rule" in ran.err


def test_a_url_that_is_not_a_broker_says_so(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = client("login", "--url", local.base_url + "/nowhere", "--target", "default/prod-ecr", "--cloud", "aws")
    assert ran.code == 1 and "without an issuer" in ran.err and "is --url the broker's URL" in ran.err


def test_plain_http_to_a_remote_host_is_refused_before_a_token_is_sent(client):
    client.env["OIDC_BROKER_ID_TOKEN"] = "a.b.c"
    ran = client("login", "--url", "http://id.example.com", "--target", "default/prod-ecr", "--cloud", "aws")
    assert ran.code == 1 and "is plain http" in ran.err


def test_the_ci_token_never_appears_in_what_login_says(local, client):
    token = local.ci_token(**MAIN)
    client.env["OIDC_BROKER_ID_TOKEN"] = token
    for _ in range(2):  # a success, then a refusal (replay)
        ran = login(client, local)
        assert token not in ran.out + ran.err


def test_one_invocation_serves_both_kinds_a_feed_with_an_account_format_writes_dockers_config(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = login(client, local, "default/prod-ecr", "aws", "--format", "shell")
    assert ran.code == 0 and ran.out == "", ran.err
    assert ECR in docker_config(client)["auths"]
    ran = login(client, local, "default/prod-public", "aws", "--format", "json")
    assert ran.code == 0 and set(json.loads(ran.out)) == {"registry", "username", "password", "expires_at"}


def test_github_format_outside_github_actions_is_refused_before_the_token_is_spent(local, client):
    token = local.ci_token(**PRODUCTION)
    client.env["OIDC_BROKER_ID_TOKEN"] = token
    ran = login(client, local, "default/prod-deploy", "aws", "--format", "github")
    assert ran.code == 1 and "$GITHUB_ENV, which is not set" in ran.err
    assert login(client, local, "default/prod-deploy").code == 0  # the same token still works
