"""tools/emulators/ecr.py: moto's GetAuthorizationToken answers with passwords bound to the registry and
12 hours, and docker's Basic login (EcrLogin behind registry.py) takes only those."""

from __future__ import annotations

import base64
import time

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from oidc_broker_emulators.ecr import EcrLogin, EcrTokens, patch_moto_ecr
from oidc_broker_emulators.registry import DockerRegistry

HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture
def tokens(clock):
    return EcrTokens(clock)


@pytest.fixture
def registry(tokens):
    served = DockerRegistry(HOST, EcrLogin(tokens)).start()
    yield served
    served.stop()


def test_ecr_challenges_for_basic_credentials(registry):
    response = httpx.get(f"{registry.url}/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'Basic realm="https://{HOST}/",service="ecr.amazonaws.com"'


def test_a_signed_password_logs_in_and_pulls(tokens, registry):
    password = tokens.sign(HOST, int(time.time()) + 3600)
    assert httpx.get(f"{registry.url}/v2/", auth=("AWS", password)).status_code == 200
    assert httpx.get(f"{registry.url}/v2/app/manifests/latest", auth=("AWS", password)).status_code == 404


def test_a_forged_tampered_or_other_registrys_password_is_401(tokens, registry):
    good = tokens.sign(HOST, int(time.time()) + 3600)
    payload, _, signature = good.partition(".")
    for password in (EcrTokens().sign(HOST, int(time.time()) + 3600), f"{payload}x.{signature}",
                     tokens.sign("123456789012.dkr.ecr.eu-west-1.amazonaws.com", int(time.time()) + 3600),
                     "123456789012-auth-token"):
        response = httpx.get(f"{registry.url}/v2/", auth=("AWS", password))
        assert response.status_code == 401 and response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert httpx.get(f"{registry.url}/v2/", auth=("admin", good)).status_code == 401


def test_an_expired_password_is_403_denied(tokens, registry):
    password = tokens.sign(HOST, int(tokens.clock()) + 60)
    tokens.clock.now += 61
    response = httpx.get(f"{registry.url}/v2/", auth=("AWS", password))
    assert response.status_code == 403
    assert response.json()["errors"][0]["message"] == "Your authorization token has expired. Reauthenticate and try again."


def test_mocked_get_authorization_token_hands_out_signed_passwords_for_twelve_hours(tokens, registry):
    patch_moto_ecr(tokens)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        ecr = boto3.client("ecr", region_name="us-east-1", endpoint_url=f"http://{host}:{port}",
                           aws_access_key_id="k", aws_secret_access_key="s")
        data = ecr.get_authorization_token()["authorizationData"][0]
    finally:
        server.stop()
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    assert username == "AWS" and data["proxyEndpoint"] == f"https://{HOST}"
    assert 12 * 3600 - 60 <= data["expiresAt"].timestamp() - time.time() <= 12 * 3600 + 5
    assert httpx.get(f"{registry.url}/v2/", auth=("AWS", password)).status_code == 200
