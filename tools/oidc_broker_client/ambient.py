"""The job's own OIDC token, from the CI system it runs in, requested for the broker's audience.

Sources, in order: a token file or standard input (`--token-file`, `--token -`); the environment
variable `--token-env` names (default OIDC_BROKER_ID_TOKEN: GitLab's `id_tokens:` and any CI that
puts a token in the environment); then the CI detected from its own variables — GitHub Actions,
GitLab CI, Buildkite, CircleCI, Azure Pipelines. When a CI gives no token the error says exactly
why and what to add. Written on the standard library (the `id` package covers fewer of these and
needs urllib3). A token is never printed or logged: only its audience may be named.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import transport
from .errors import ClientError

DEFAULT_TOKEN_ENV = "OIDC_BROKER_ID_TOKEN"
AZURE_DEVOPS_AUDIENCE = "api://AzureADTokenExchange"  # Azure Pipelines' tokens always carry this one
AZURE_DEVOPS_API_VERSION = "7.1"
COMMAND_TIMEOUT = 30  # seconds for buildkite-agent / circleci to answer


class NoCiToken(ClientError):
    """No CI token could be had; the message says why, the next step what to add."""


@dataclass(frozen=True)
class Source:
    """Where the CI token comes from, as the user chose it."""

    token_file: str | None = None  # a path, or "-" for standard input
    token_env: str = DEFAULT_TOKEN_ENV
    azure_service_connection: str | None = None  # Azure Pipelines' serviceConnectionId


@dataclass(frozen=True)
class CiToken:
    value: str
    source: str  # where it came from, for messages
    note: str | None = None  # a warning worth showing (an audience the CI chose, not the broker's)


@dataclass
class Environment:
    """What ambient detection reads and runs: the process's by default, a test's when given."""

    env: Mapping[str, str]
    http: Callable[..., transport.Response] = transport.request
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run
    stdin: Callable[[], str] | None = None

    def which(self, command: str) -> str | None:
        """`command`'s path on this environment's PATH."""
        return shutil.which(command, path=self.env.get("PATH"))


def ci_token(source: Source, audience: str, where: Environment) -> CiToken:
    """The CI token for `audience`, from the first source that has one."""
    if source.token_file is not None:
        if source.token_file == "-":
            text, origin = (where.stdin() if where.stdin else ""), "standard input"
        else:
            origin = source.token_file
            try:
                text = Path(source.token_file).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise NoCiToken(f"cannot read the CI token file {source.token_file}: {getattr(e, 'strerror', e)}",
                                "give the path of a file holding the job's OIDC token") from None
        return _checked(text, origin, audience)
    if where.env.get(source.token_env):
        return _checked(where.env[source.token_env], f"${source.token_env}", audience)
    for variable, detect in DETECTORS:
        if where.env.get(variable, "").lower() in ("true", "1", "yes"):
            return detect(source, audience, where)
    raise NoCiToken(
        "no CI token: this is not a CI job this client recognizes (none of "
        + ", ".join(v for v, _ in DETECTORS) + f" is set) and ${source.token_env} is empty",
        "run it in GitHub Actions, GitLab CI, Buildkite, CircleCI or Azure Pipelines, or pass a token with "
        "--token-file FILE or --token - (standard input)")


def _checked(text: str, origin: str, audience: str, note: str | None = None) -> CiToken:
    """The token from `origin` if it looks like a JWT (three base64url parts); never echoed."""
    token = text.strip()
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]) or not all(_is_b64url(p) for p in parts):
        raise NoCiToken(f"the CI token from {origin} is not a JWT (three base64url parts separated by '.')",
                        "pass the job's OIDC ID token itself")
    if note is None:
        aud = audiences(token)
        if aud and audience not in aud:
            note = (f"the CI token from {origin} has audience {', '.join(map(repr, aud))}, not {audience!r}: the "
                    "broker accepts it only if the trust rule sets that `audience:`")
    return CiToken(token, origin, note)


def _is_b64url(part: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in part)


def audiences(token: str) -> list[str]:
    """The `aud` of a JWT, unverified (to tell the user; never to decide anything)."""
    try:
        payload = token.split(".")[1]
        claims: Any = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        aud = claims.get("aud") if isinstance(claims, dict) else None
    except (ValueError, IndexError):
        return []
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


# -- GitHub Actions -----------------------------------------------------------------------------

def _github(source: Source, audience: str, where: Environment) -> CiToken:
    env = where.env
    url, bearer = env.get("ACTIONS_ID_TOKEN_REQUEST_URL"), env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    if not url or not bearer:
        raise NoCiToken("GitHub Actions gave this job no OIDC token (ACTIONS_ID_TOKEN_REQUEST_URL is not set)",
                        _github_why(env))
    # The URL already carries ?api-version=…: the audience is one more parameter.
    value = _token_service(where, "GET", url, "ACTIONS_ID_TOKEN_REQUEST_URL", {"audience": audience}, bearer,
                           "value", "GitHub's OIDC token service",
                           "run the job again; if it persists, check https://www.githubstatus.com")
    return _checked(value, "GitHub Actions", audience)


def _github_why(env: Mapping[str, str]) -> str:
    fork = _fork_pull_request(env)
    if fork:
        return (f"this run is for a pull request from the fork {fork}: GitHub gives such runs no OIDC token, "
                "whatever their permissions; run the step on push, or after the change is merged")
    return ("give the job `permissions: id-token: write` (a job's `permissions:` replaces the workflow's, so "
            "list `contents: read` there too if it needs it); runs for pull requests from forks never get one")


def _fork_pull_request(env: Mapping[str, str]) -> str | None:
    """The fork's name when this run is for a pull request from a fork, from the event payload."""
    if not env.get("GITHUB_EVENT_NAME", "").startswith("pull_request") or not env.get("GITHUB_EVENT_PATH"):
        return None
    try:
        event = json.loads(Path(env["GITHUB_EVENT_PATH"]).read_text())
        head = event["pull_request"]["head"]["repo"]
        base = event["pull_request"]["base"]["repo"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(head, dict) and isinstance(base, dict) and (head.get("fork") or head.get("full_name") != base.get("full_name")):
        return str(head.get("full_name"))
    return None


# -- GitLab CI ----------------------------------------------------------------------------------

def _gitlab(source: Source, audience: str, where: Environment) -> CiToken:
    # A token in source.token_env was taken before detection: here there is none.
    raise NoCiToken(
        f"GitLab CI gave this job no ID token in ${source.token_env}",
        f"declare it in the job (or name another variable with --token-env):\n"
        f"id_tokens:\n  {source.token_env}:\n    aud: {audience}")


# -- Buildkite ----------------------------------------------------------------------------------

def _buildkite(source: Source, audience: str, where: Environment) -> CiToken:
    agent = where.which("buildkite-agent")
    if not agent:
        raise NoCiToken("Buildkite: buildkite-agent is not on PATH, so no OIDC token can be requested",
                        "run the step where the agent's binary is on PATH (in a Docker plugin container, "
                        "mount it), or pass a token with --token-file")
    output = _command(where, [agent, "oidc", "request-token", "--audience", audience], "buildkite-agent")
    return _checked(output, "buildkite-agent oidc request-token", audience)


# -- CircleCI -----------------------------------------------------------------------------------

def _circleci(source: Source, audience: str, where: Environment) -> CiToken:
    cli = where.which("circleci")
    if cli:
        # CircleCI's CLI issues a token with the audience asked for.
        output = _command(where, [cli, "run", "oidc", "get", "--claims", json.dumps({"aud": audience})],
                          "circleci")
        return _checked(output, "circleci run oidc get", audience)
    for name in ("CIRCLE_OIDC_TOKEN_V2", "CIRCLE_OIDC_TOKEN"):
        if where.env.get(name):
            token = where.env[name]
            aud = audiences(token)
            note = None
            if audience not in aud:
                note = (f"CircleCI's ${name} has audience {', '.join(aud) or '(none)'} (the organization ID), "
                        f"not {audience!r}, which CircleCI fixes: the broker accepts it only if the trust rule "
                        "sets that `audience:`, or put the circleci CLI in the job's image to ask for the "
                        "broker's audience")
            return _checked(token, f"${name}", audience, note)
    raise NoCiToken("CircleCI gave this job no OIDC token (CIRCLE_OIDC_TOKEN_V2 is not set)",
                    "CircleCI issues OIDC tokens only to jobs that use a context: add `context:` to the job "
                    "in the workflow")


# -- Azure Pipelines ----------------------------------------------------------------------------

def _azure_pipelines(source: Source, audience: str, where: Environment) -> CiToken:
    env = where.env
    uri, bearer = env.get("SYSTEM_OIDCREQUESTURI"), env.get("SYSTEM_ACCESSTOKEN")
    if not uri:
        raise NoCiToken("Azure Pipelines offers this job no OIDC token (SYSTEM_OIDCREQUESTURI is not set)",
                        "Azure DevOps Services sets it in every job; elsewhere pass a token with --token-file")
    if not bearer:
        raise NoCiToken("Azure Pipelines: the job's access token is not in this step's environment, so no OIDC "
                        "token can be requested (SYSTEM_ACCESSTOKEN is not set)",
                        "map it into the step:\nenv:\n  SYSTEM_ACCESSTOKEN: $(System.AccessToken)")
    query = {"api-version": AZURE_DEVOPS_API_VERSION}
    if source.azure_service_connection:
        query["serviceConnectionId"] = source.azure_service_connection
    value = _token_service(where, "POST", uri, "SYSTEM_OIDCREQUESTURI", query, bearer, "oidcToken",
                           "Azure DevOps' OIDC token service",
                           "check --azure-service-connection (the service connection's ID) and that the "
                           "pipeline may use it", body=b"{}")
    note = None
    if audience != AZURE_DEVOPS_AUDIENCE:
        note = (f"Azure Pipelines' tokens always have audience {AZURE_DEVOPS_AUDIENCE!r}, not {audience!r}: the "
                f"broker accepts them only if the trust rule sets `audience: {AZURE_DEVOPS_AUDIENCE}`")
    return _checked(value, "Azure Pipelines", audience, note)


def _token_service(where: Environment, method: str, url: str, what: str, query: dict[str, str], bearer: str,
                   field: str, service: str, next_step: str, body: bytes | None = None) -> str:
    """A token from a CI's token service: `url` with `query` added, the job's bearer, the token in `field`."""
    url = transport.checked_url(url, what)
    url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    answer = where.http(method, url, headers=headers, body=body)
    try:
        value = answer.json().get(field) if answer.status == 200 else None
    except (ValueError, AttributeError):
        value = None
    if not isinstance(value, str):
        raise NoCiToken(f"{service} answered HTTP {answer.status} without a token", next_step)
    return value


def _command(where: Environment, argv: list[str], name: str) -> str:
    try:
        done = where.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, env=dict(where.env))
    except (OSError, subprocess.SubprocessError) as e:
        raise NoCiToken(f"{name} could not be run: {e}", "check the CI agent's installation") from None
    if done.returncode != 0:
        said = (done.stderr or "").strip().splitlines()[-1:] or ["(nothing on stderr)"]
        raise NoCiToken(f"{name} refused to issue an OIDC token (exit {done.returncode}): {said[0][:300]}",
                        "check the job's OIDC settings in the CI")
    return done.stdout


# The CI systems, by the variable each sets in every job, in the order they are tried.
DETECTORS: tuple[tuple[str, Callable[[Source, str, Environment], CiToken]], ...] = (
    ("GITHUB_ACTIONS", _github),
    ("GITLAB_CI", _gitlab),
    ("BUILDKITE", _buildkite),
    ("CIRCLECI", _circleci),
    ("TF_BUILD", _azure_pipelines),
)
