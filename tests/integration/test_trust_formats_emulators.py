"""What `oidc-broker trust-policy --format ...` prints is accepted by the verifying emulators for that
target, and refused for a sibling target in the same space.

Local mode (in this process) is the broker: it mints real broker tokens at /token, signed with the key
its issuer publishes over HTTP. The cloud side is set up *only* from what the CLI printed, parsed
back (json, shlex, YAML, Terraform attributes): roles and the OIDC provider in moto's IAM behind the
STS emulator (replacing the provider and role local mode made for the target), federated credentials
in an Entra emulator, a workload identity provider in a Google STS emulator (of this test's own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from inprocess import ROOT, demo_config, local_broker
from oidc_broker_emulators.entra import JWT_BEARER, Directory, EntraEmulator, FederatedCredential, TestCA
from oidc_broker_emulators.entra import Verifier as EntraVerifier
from oidc_broker_emulators.google_sts import GoogleSts, GoogleStsEmulator, Provider
from oidc_broker_emulators.iamcredentials import IamCredentials, IamCredentialsEmulator
from oidc_broker_emulators.sts import IamDirectory, StsEmulator, Verifier

sys.path.insert(0, str(ROOT / "tests"))
from cli.test_trust_formats import (aws_policies, aws_provider, azure_credentials, command, flags,  # noqa: E402
                                    gcp_bindings, gcp_provider)

ACCOUNT = "123456789012"  # moto's (and local mode's) account
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "99999999-8888-7777-6666-555555555555"
PROVIDER = "projects/222233334444/locations/global/workloadIdentityPools/trust/providers/broker"
SERVICE_ACCOUNT = "deploy@proj.iam.gserviceaccount.com"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
EXTRA = f"""
      - name: aws-a
        kind: account
        provider: aws
        aws: {{role_arn: "arn:aws:iam::{ACCOUNT}:role/ci/aws-a", region: us-east-1}}
      - name: aws-b
        kind: account
        provider: aws
        aws: {{role_arn: "arn:aws:iam::{ACCOUNT}:role/ci/aws-b", region: us-east-1}}
      - name: az-a
        kind: account
        provider: azure
        azure: {{tenant_id: {TENANT}, client_id: {CLIENT}}}
      - name: az-b
        kind: account
        provider: azure
        azure: {{tenant_id: {TENANT}, client_id: {CLIENT}}}
      - name: g-a
        kind: account
        provider: gcp
        gcp: {{workload_identity_provider: {PROVIDER}, service_account: {SERVICE_ACCOUNT}}}
      - name: g-b
        kind: account
        provider: gcp
        gcp: {{workload_identity_provider: {PROVIDER}, service_account: {SERVICE_ACCOUNT}}}
"""
REFS = ["aws-a", "aws-b", "az-a", "az-b", "g-a", "g-b"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    directory = tmp_path_factory.mktemp("trust-formats")
    with local_broker(directory, demo_config(EXTRA, REFS)) as local:
        # The configuration as an operator reads it back: the deployment's issuer, the dev CI issuer's URL.
        text = demo_config(EXTRA, REFS).replace("${local_url}", local.broker.base_url)
        local.config_file = directory / "applied.yaml"
        local.config_file.write_text(f"issuer: {local.broker.issuer}\n{text}")
        yield local


def trust_policy(local, cloud: str, target: str, fmt: str) -> str:
    """What `oidc-broker trust-policy` prints for the target, run as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "trust-policy", cloud, "--target",
                             f"default/{target}", "--format", fmt, "--config", str(local.config_file),
                             "--allow-loopback-http"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def broker_token(local, target: str) -> str:
    """A broker token for default/<target>, for a fresh CI token (each is accepted once per target)."""
    response = local.http.post("/token", data={"grant_type": EXCHANGE, "subject_token": local.ci_token(),
                                               "subject_token_type": JWT_TYPE, "audience": f"default/{target}"})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


# -- AWS: moto's IAM behind the verifying STS emulator -----------------------------------------------

@pytest.fixture(scope="module")
def iam(local):
    return boto3.client("iam", region_name="us-east-1", endpoint_url=local.broker.aws_endpoint,
                        aws_access_key_id="local", aws_secret_access_key="local")


@pytest.fixture(scope="module")
def sts(iam):
    emulator = StsEmulator(Verifier(IamDirectory(iam, ACCOUNT))).start()
    yield boto3.client("sts", region_name="us-east-1", endpoint_url=emulator.url,
                       config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}))
    emulator.stop()


def set_up_aws(iam, text: str, fmt: str, role: str) -> str:
    """The provider and role `text` describes, created in IAM in place of what local mode set up
    (its own provider and role for the target are deleted first: only what was printed may count)."""
    url, client_ids = aws_provider(text, fmt) if fmt != "json" else (None, None)
    if url:
        arns = [p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]]
        for arn in arns:
            iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=arn)
        iam.create_open_id_connect_provider(Url=url, ClientIDList=client_ids, ThumbprintList=[])
    policy = aws_policies(text, fmt)[0]
    try:
        iam.delete_role(RoleName=role)
    except iam.exceptions.NoSuchEntityException:
        pass
    return iam.create_role(RoleName=role, Path="/ci/", AssumeRolePolicyDocument=json.dumps(policy))["Role"]["Arn"]


def assume(sts, arn: str, token: str):
    return sts.assume_role_with_web_identity(RoleArn=arn, RoleSessionName="trust-format", WebIdentityToken=token)


@pytest.mark.parametrize("fmt", ["commands", "terraform", "cloudformation", "json"])
def test_the_printed_aws_trust_admits_its_target_and_refuses_the_sibling(local, iam, sts, fmt):
    text = trust_policy(local, "aws", "aws-a", fmt)
    if fmt == "commands":
        (create,) = command(text, "aws", "iam", "create-role")
        assert flags(create)["--role-name"] == ["aws-a"] and flags(create)["--path"] == ["/ci/"]
    arn = set_up_aws(iam, text, fmt, "aws-a")
    assert arn == f"arn:aws:iam::{ACCOUNT}:role/ci/aws-a"
    answer = assume(sts, arn, broker_token(local, "aws-a"))
    assert answer["SubjectFromWebIdentityToken"] == "space:default:account:aws-a"
    with pytest.raises(ClientError) as refused:
        assume(sts, arn, broker_token(local, "aws-b"))
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


# -- Azure: federated credentials in the Entra emulator ----------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return TestCA()


def entra_token(entra, ca, assertion: str) -> requests.Response:
    form = {"grant_type": "client_credentials", "client_id": CLIENT, "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion, "scope": "https://management.azure.com/.default"}
    return requests.post(f"{entra.url}/{TENANT}/oauth2/v2.0/token", data=form, verify=str(ca.ca_file), timeout=10)


@pytest.mark.parametrize("fmt, variant", [("commands", "app"), ("commands", "identity"), ("terraform", "app"),
                                          ("terraform", "identity"), ("json", "app")])
def test_the_printed_azure_credentials_admit_their_target_and_refuse_the_sibling(local, ca, fmt, variant):
    text = trust_policy(local, "azure", "az-a", fmt)
    if fmt == "commands":
        assert {flags(w)["--id"][0] for w in command(text, "az", "ad", "app", "federated-credential")} == {CLIENT}
    credentials = azure_credentials(text, fmt)[variant]
    assert len(credentials) == 1
    directory = Directory()
    for c in credentials:
        directory.add_credential(TENANT, CLIENT, FederatedCredential(c["name"], c["issuer"], c["subject"],
                                                                     tuple(c["audiences"])))
    entra = EntraEmulator(EntraVerifier(directory), ca).start()
    try:
        accepted = entra_token(entra, ca, broker_token(local, "az-a"))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["access_token"]
        refused = entra_token(entra, ca, broker_token(local, "az-b"))
        # Same issuer and audience, another subject: Entra's "no matching federated identity record".
        assert refused.status_code == 400 and refused.json()["error_codes"] == [700213], refused.text
    finally:
        entra.stop()


# -- Google Cloud: the provider in the Google STS emulator -------------------------------------------

def google_exchange(emulator, token: str) -> requests.Response:
    form = {"grant_type": EXCHANGE, "subject_token_type": JWT_TYPE, "subject_token": token,
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "audience": "//iam.googleapis.com/" + PROVIDER, "scope": "https://www.googleapis.com/auth/cloud-platform"}
    return requests.post(emulator.token_url, data=form, timeout=10)


@pytest.mark.parametrize("fmt", ["commands", "terraform", "json"])
def test_the_printed_google_provider_admits_its_target_and_refuses_the_sibling(local, fmt):
    text = trust_policy(local, "gcp", "g-a", fmt)
    spec = gcp_provider(text, fmt)
    assert spec["name"] == PROVIDER
    google = GoogleSts()
    google.add_provider(Provider(spec["name"], spec["issuer_uri"], list(spec["allowed_audiences"]),
                                 dict(spec["attribute_mapping"]), spec["attribute_condition"]))
    emulator = GoogleStsEmulator(google).start()
    try:
        accepted = google_exchange(emulator, broker_token(local, "g-a"))
        assert accepted.status_code == 200, accepted.text
        federated = google.federated(accepted.json()["access_token"])
        if fmt != "json":
            # The binding printed beside the provider names exactly the principal Google federated.
            assert gcp_bindings(text, fmt) == [(SERVICE_ACCOUNT, "roles/iam.workloadIdentityUser", federated.principal)]
        refused = google_exchange(emulator, broker_token(local, "g-b"))
        assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client", refused.text
    finally:
        emulator.stop()


def generate_access_token(emulator, federated_token: str) -> requests.Response:
    return requests.post(f"{emulator.url}/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateAccessToken",
                         json={"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "600s"},
                         headers={"Authorization": f"Bearer {federated_token}"}, timeout=10)


@pytest.mark.parametrize("fmt", ["commands", "terraform"])
def test_the_printed_binding_lets_its_target_impersonate_and_not_the_sibling_even_past_the_pool(local, fmt):
    text = trust_policy(local, "gcp", "g-a", fmt)
    spec = gcp_provider(text, fmt)
    google = GoogleSts()
    # A provider with no condition at all: only the printed binding stands between the sibling and the account.
    google.add_provider(Provider(spec["name"], spec["issuer_uri"], list(spec["allowed_audiences"]),
                                 dict(spec["attribute_mapping"])))
    iam = IamCredentials(google.principal_of)
    for account, role, member in gcp_bindings(text, fmt):
        assert role == "roles/iam.workloadIdentityUser"
        iam.bind(account, member)
    sts, iamcredentials = GoogleStsEmulator(google).start(), IamCredentialsEmulator(iam).start()
    try:
        federated = {t: google_exchange(sts, broker_token(local, t)).json()["access_token"] for t in ("g-a", "g-b")}
        accepted = generate_access_token(iamcredentials, federated["g-a"])
        assert accepted.status_code == 200, accepted.text
        refused = generate_access_token(iamcredentials, federated["g-b"])
        assert refused.status_code == 403, refused.text
    finally:
        sts.stop()
        iamcredentials.stop()
