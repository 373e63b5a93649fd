"""`docker-credential-oidc-broker` through docker's credential helper protocol, as a separate process:
driven by docker's own Python SDK (its config's credHelpers, its helper client) and byte for byte
on stdin/stdout, against local mode."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import docker.auth
import docker.credentials
import pytest
from clientrun import MAIN

from oidc_broker_client.cache import Cache, EXPIRY_MARGIN
from oidc_broker_client.docker import registry_host

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
ACR = "acme.azurecr.io"
BIN = Path(sys.executable).parent
HELPER = str(BIN / "docker-credential-oidc-broker")


@pytest.fixture
def helper_env(local, tmp_path, monkeypatch):
    """HOME with docker's config sending ECR and ACR to the helper, and the registries file mapping them."""
    home = tmp_path / "home"
    (home / ".config" / "oidc-broker").mkdir(parents=True)
    (home / ".config" / "oidc-broker" / "registries.json").write_text(json.dumps({"registries": {
        ECR: {"url": local.base_url, "target": "default/prod-ecr", "cloud": "aws"},
        f"https://{ACR}/v2/": {"url": local.base_url, "target": "default/prod-acr", "cloud": "azure"},
        "wrong.example.com": {"url": local.base_url, "target": "default/prod-ecr", "cloud": "aws"},
    }}))
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(json.dumps({"credHelpers": {ECR: "oidc-broker", ACR: "oidc-broker"}}))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # docker finds helpers on PATH
    return {"HOME": str(home), "PATH": os.environ["PATH"], "OIDC_BROKER_ID_TOKEN": local.ci_token(**MAIN)}


def helper(env: dict, action: str, stdin: str = "") -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OIDC_BROKER", "GITHUB_", "XDG_"))}
    return subprocess.run([HELPER, action], input=stdin, capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


def docker_auth(env: dict, registry: str) -> dict | None:
    config = docker.auth.load_config(str(Path(env["HOME"]) / ".docker" / "config.json"), credstore_env=env)
    return config.resolve_authconfig(registry)


def test_docker_gets_a_feeds_login_from_the_helper_its_config_names(helper_env):
    ecr = docker_auth(helper_env, ECR)
    assert ecr["Username"] == "AWS" and ecr["Password"] and ecr["ServerAddress"] == ECR
    acr = docker_auth(helper_env, ACR)  # mapped in the registries file with scheme and path
    assert acr["Username"] == "00000000-0000-0000-0000-000000000000" and acr["Password"]


def test_a_registry_no_target_serves_is_docker_not_found(helper_env):
    with pytest.raises(docker.credentials.CredentialsNotFound):
        docker.credentials.Store("oidc-broker", environment=helper_env).get("ghcr.io")
    done = helper(helper_env, "get", "ghcr.io\n")
    assert (done.returncode, done.stdout) == (1, "credentials not found in native keychain\n")


@pytest.mark.parametrize("server", [ECR, f"https://{ECR}", f"https://{ECR}/v2/", f"{ECR}/v2/", ECR.upper(), f"  {ECR}\n"])
def test_server_urls_with_or_without_scheme_and_path_are_the_same_registry(helper_env, server):
    done = helper(helper_env, "get", server)
    assert done.returncode == 0, done.stdout
    answer = json.loads(done.stdout)
    assert answer["ServerURL"] == server.strip() and answer["Username"] == "AWS" and answer["Secret"]


def test_registry_host_drops_scheme_and_path_and_keeps_the_port():
    assert registry_host("https://Registry.Example.com:5000/v2/x") == "registry.example.com:5000"
    assert registry_host("registry.example.com:5000/v2/") == "registry.example.com:5000"
    assert registry_host("http://localhost/x") == "localhost"
    assert registry_host("public.ecr.aws") == "public.ecr.aws"


def test_the_same_credentials_serve_again_from_an_owner_only_cache_with_one_ci_token(helper_env):
    first = json.loads(helper(helper_env, "get", ECR).stdout)
    second = helper(helper_env, "get", f"https://{ECR}")  # the CI token is spent for prod-ecr: the cache serves
    assert second.returncode == 0, second.stdout
    assert json.loads(second.stdout)["Secret"] == first["Secret"]
    directory = Path(helper_env["HOME"]) / ".cache" / "oidc-broker"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()] == [0o600]


def _plant(env: dict, local, target: str, cloud: str, expires_in: float) -> None:
    """A cache entry for `target` whose password is 'planted', expiring in `expires_in` seconds."""
    now = time.time()
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + expires_in))
    cache = Cache(Path(env["HOME"]) / ".cache" / "oidc-broker", clock=lambda: now)
    cache.put(Cache.key(local.base_url, cloud, target),
              {"registry": f"https://{ECR}", "username": "AWS", "password": "planted", "expires_at": expires},
              fetched_at=now - 3600)


def test_expired_cached_credentials_are_never_served(helper_env, local):
    _plant(helper_env, local, "default/prod-ecr", "aws", expires_in=EXPIRY_MARGIN - 5)
    done = helper(helper_env, "get", ECR)
    assert done.returncode == 0 and json.loads(done.stdout)["Secret"] != "planted"
    # With no CI token to refresh with, the stale entry is still not served: the failure is.
    _plant(helper_env, local, "default/prod-ecr", "aws", expires_in=EXPIRY_MARGIN - 5)
    done = helper({**helper_env, "OIDC_BROKER_ID_TOKEN": ""}, "get", ECR)
    assert done.returncode == 1 and "planted" not in done.stdout and "no CI token" in done.stdout


def test_fresh_cached_credentials_are_served_without_asking_the_broker(helper_env, local):
    _plant(helper_env, local, "default/prod-ecr", "aws", expires_in=7200)  # fetched an hour ago, 3 h lifetime
    done = helper({**helper_env, "OIDC_BROKER_ID_TOKEN": ""}, "get", ECR)
    assert done.returncode == 0 and json.loads(done.stdout)["Secret"] == "planted"


def test_credentials_are_never_handed_to_a_registry_they_are_not_for(helper_env):
    done = helper(helper_env, "get", "wrong.example.com")
    assert done.returncode == 1
    assert f"serves the registry https://{ECR}, not wrong.example.com" in done.stdout
    assert "Secret" not in done.stdout


def test_store_is_refused_and_keeps_nothing_erase_drops_the_cache_list_names_both_forms(helper_env):
    done = helper(helper_env, "store", json.dumps({"ServerURL": ECR, "Username": "u", "Secret": "kept-nowhere"}))
    assert done.returncode == 1 and "stores no credentials" in done.stdout and "kept-nowhere" not in done.stdout
    assert helper(helper_env, "get", ECR).returncode == 0
    listed = json.loads(helper(helper_env, "list").stdout)
    assert listed[ECR] == listed[f"https://{ECR}"] == "AWS" and listed[ACR] == ""
    assert docker.credentials.Store("oidc-broker", environment=helper_env).list() == listed
    done = helper(helper_env, "erase", f"https://{ECR}\n")
    assert done.returncode == 0
    assert not list((Path(helper_env["HOME"]) / ".cache" / "oidc-broker").iterdir())
    # Erased: the next get asks the broker, which refuses the CI token already spent on prod-ecr.
    again = helper(helper_env, "get", ECR)
    assert again.returncode == 1 and "already used" in again.stdout


def test_usage_errors_and_a_broken_registries_file_are_one_line_on_stdout(helper_env):
    assert helper(helper_env, "fetch").stdout == "Unknown credential action `fetch`\n"
    done = subprocess.run([HELPER], capture_output=True, text=True, env=helper_env)
    assert done.returncode == 1 and done.stdout.startswith("Usage: docker-credential-oidc-broker")
    registries = Path(helper_env["HOME"]) / ".config" / "oidc-broker" / "registries.json"
    registries.write_text(json.dumps({"registries": {ECR: {"url": "https://id.example.com", "cloud": "aws"}}}))
    done = helper(helper_env, "get", ECR)
    assert done.returncode == 1 and f"registries.{ECR}: needs target" in done.stdout
    assert done.stdout.count("\n") == 1
