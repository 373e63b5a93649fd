"""The CI token from Buildkite, CircleCI and Azure Pipelines, each by its own mechanism (the agent's
command, CircleCI's CLI or job variable, Azure DevOps' token request), and what is said when a CI
gives none; `login` against local mode throughout."""

from __future__ import annotations

import json

import pytest
from clientrun import MAIN
from standins import REQUEST_TOKEN, TokenService

FAKE_COMMAND = """#!/bin/sh
printf '%s\\n' "$@" > "$ARGS_FILE"
if [ -n "$FAIL" ]; then echo "error: $FAIL" >&2; exit 1; fi
cat "$TOKEN_FILE"
"""


@pytest.fixture
def command(client, tmp_path):
    """Put a stand-in for a CI's command on PATH: it records its arguments and prints TOKEN_FILE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    client.env.update({"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGS_FILE": str(tmp_path / "args"),
                       "TOKEN_FILE": str(tmp_path / "token")})

    def install(name: str, token: str) -> None:
        (bin_dir / name).write_text(FAKE_COMMAND)
        (bin_dir / name).chmod(0o755)
        (tmp_path / "token").write_text(token + "\n")

    install.args = lambda: (tmp_path / "args").read_text().splitlines()
    return install


def login(client, local, *extra):
    return client("login", "--url", local.base_url, "--target", "default/prod-ecr", "--cloud", "aws", *extra)


def test_buildkite_asks_the_agent_for_a_token_for_the_brokers_issuer(local, client, command):
    client.env["BUILDKITE"] = "true"
    command("buildkite-agent", local.ci_token(**MAIN))
    ran = login(client, local, "--print")
    assert ran.code == 0, ran.err
    assert command.args() == ["oidc", "request-token", "--audience", local.base_url]


def test_buildkite_without_the_agent_or_with_the_agent_refusing_says_which(local, client, command):
    client.env["BUILDKITE"] = "true"
    ran = login(client, local)
    assert ran.code == 1 and "buildkite-agent is not on PATH" in ran.err
    command("buildkite-agent", "")
    client.env["FAIL"] = "OIDC tokens are not enabled for this pipeline"
    ran = login(client, local)
    assert ran.code == 1
    assert "buildkite-agent refused to issue an OIDC token (exit 1): error: OIDC tokens are not enabled" in ran.err


def test_circleci_asks_its_cli_for_the_brokers_audience(local, client, command):
    client.env["CIRCLECI"] = "true"
    command("circleci", local.ci_token(**MAIN))
    ran = login(client, local, "--print")
    assert ran.code == 0, ran.err
    args = command.args()
    assert args[:4] == ["run", "oidc", "get", "--claims"] and json.loads(args[4]) == {"aud": local.base_url}


def test_circleci_without_its_cli_uses_the_jobs_token_and_says_its_audience_is_fixed(local, client):
    client.env.update({"CIRCLECI": "true", "CIRCLE_OIDC_TOKEN_V2": local.ci_token(**MAIN, aud="org-1234")})
    ran = login(client, local)
    assert "warning: CircleCI's $CIRCLE_OIDC_TOKEN_V2 has audience org-1234 (the organization ID)" in ran.err
    assert ran.code == 1 and "aud does not match" in ran.err  # the broker's rule expects its issuer


def test_circleci_without_a_token_says_a_context_is_needed(local, client):
    client.env["CIRCLECI"] = "true"
    ran = login(client, local)
    assert ran.code == 1 and "only to jobs that use a context" in ran.err


@pytest.fixture
def azure_devops(local, client):
    service = TokenService(local, MAIN, kind="azure")
    client.env.update({"TF_BUILD": "True", "SYSTEM_OIDCREQUESTURI": service.url, "SYSTEM_ACCESSTOKEN": REQUEST_TOKEN})
    yield service
    service.close()


def test_azure_pipelines_posts_for_a_token_with_the_service_connection_and_warns_of_its_fixed_audience(
        local, client, azure_devops):
    ran = login(client, local, "--azure-service-connection", "sc-0001")
    [request] = azure_devops.requests
    assert request["method"] == "POST" and request["authorization"] == f"Bearer {REQUEST_TOKEN}"
    assert request["query"] == {"api-version": "7.1", "serviceConnectionId": "sc-0001"}
    assert "always have audience 'api://AzureADTokenExchange'" in ran.err
    assert "audience: api://AzureADTokenExchange" in ran.err
    assert ran.code == 1 and "aud does not match" in ran.err  # this rule expects the broker's issuer


def test_azure_pipelines_without_the_access_token_mapped_shows_the_mapping(local, client, azure_devops):
    del client.env["SYSTEM_ACCESSTOKEN"]
    ran = login(client, local)
    assert ran.code == 1 and "SYSTEM_ACCESSTOKEN: $(System.AccessToken)" in ran.err and azure_devops.requests == []
