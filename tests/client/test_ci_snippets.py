"""The GitHub Action (action.yml) and the GitLab CI/CD component (templates/login.yml) run as their CI
would run them — the action's step in bash with a GitHub job's variables, the component's
before_script with its inputs filled in and a GitLab ID token — against local mode. The client
they install is stood in for by this checkout's, so no index is needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from clientrun import MAIN, PRODUCTION
from standins import REQUEST_TOKEN, TokenService

ROOT = Path(__file__).resolve().parents[2]
CLIENT = f"#!/bin/sh\nexec {sys.executable} -m oidc_broker_client \"$@\"\n"


def installed_client(venv: Path) -> None:
    """What `pip install` leaves: bin/oidc-broker, here this checkout's client."""
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "oidc-broker").write_text(CLIENT)
    (venv / "bin" / "oidc-broker").chmod(0o755)


def test_the_action_documents_id_token_write_and_takes_its_inputs_through_the_environment():
    text = (ROOT / "action.yml").read_text()
    action = yaml.safe_load(text)
    assert "id-token: write" in text
    assert set(action["inputs"]) == {"url", "target", "cloud", "audience"}
    [step] = action["runs"]["steps"]
    assert action["runs"]["using"] == "composite" and "${{" not in step["run"]  # no input spliced into the script


def test_the_actions_step_logs_an_account_in_for_the_next_steps(local, tmp_path):
    [step] = yaml.safe_load((ROOT / "action.yml").read_text())["runs"]["steps"]
    installed_client(tmp_path / "oidc-broker-client")
    service = TokenService(local, PRODUCTION)
    github_env = tmp_path / "github_env"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RUNNER_TEMP": str(tmp_path),
           "GITHUB_ACTION_PATH": str(ROOT), "GITHUB_ACTIONS": "true", "GITHUB_ENV": str(github_env),
           "ACTIONS_ID_TOKEN_REQUEST_URL": service.url + "?api-version=2.0",
           "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
           **{name: value for name, value in zip(step["env"], (local.base_url, "default/prod-deploy", "aws", ""))}}
    try:
        done = subprocess.run(["bash", "-c", step["run"]], env=env, capture_output=True, text=True, timeout=60)
    finally:
        service.close()
    assert done.returncode == 0, done.stderr
    assert [r["query"]["audience"] for r in service.requests] == [local.base_url]
    assert re.findall(r"^(AWS_\w+)<<", github_env.read_text(), re.M) == [
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
    assert done.stdout.count("::add-mask::") == 3


def _component(inputs: dict) -> dict:
    spec, jobs = yaml.safe_load_all((ROOT / "templates" / "login.yml").read_text())
    assert set(spec["spec"]["inputs"]) >= {"url", "target", "cloud"}
    text = (ROOT / "templates" / "login.yml").read_text().split("\n---\n", 1)[1]
    for name, value in inputs.items():
        text = text.replace(f"$[[ inputs.{name} ]]", value)
    assert "$[[" not in text
    return yaml.safe_load(text)[".oidc-broker-login"]


def test_the_gitlab_components_job_requests_the_id_token_for_the_broker_and_logs_in(local, tmp_path):
    job = _component({"url": local.base_url, "target": "default/prod-deploy", "cloud": "aws", "version": ""})
    assert job["id_tokens"] == {"OIDC_BROKER_ID_TOKEN": {"aud": local.base_url}}
    venv = tmp_path / "oidc-broker-client"
    installed_client(venv)
    # GitLab runs before_script and script in one shell, stopping at the first failing line.
    lines = [line.replace("/tmp/oidc-broker-client", str(venv)) for line in job["before_script"]
             if "venv" not in line and "pip install" not in line]
    script = "set -eo pipefail\n" + "\n".join(lines) + '\necho "caller=$AWS_ACCESS_KEY_ID"\n'
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GITLAB_CI": "true", **job["variables"],
           "OIDC_BROKER_ID_TOKEN": local.ci_token(**PRODUCTION)}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"caller=ASIA\w+\n", done.stdout)
    # A refused login fails the job instead of going on without credentials.
    env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**{**MAIN, "repository": "evil/app"})
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "caller=" not in done.stdout and "does not match any trust rule" in done.stderr
