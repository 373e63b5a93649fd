"""tools/emulators/ecr_public.py: registry tokens only for requests signed with credentials STS issued."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from oidc_broker_emulators.ecr_public import TOKEN_LIFETIME, EcrPublicEmulator, IssuedCredentials

ISSUED = {"AccessKeyId": "ASIAISSUEDBYSTS0001", "SecretAccessKey": "issued-secret", "SessionToken": "issued-session",
          "Expiration": datetime.fromtimestamp(time.time() + 3600, tz=timezone.utc)}
NO_RETRIES = Config(retries={"total_max_attempts": 1})


@pytest.fixture(scope="module")
def issued():
    issued = IssuedCredentials()
    issued.record(ISSUED)
    issued.record({**ISSUED, "AccessKeyId": "ASIAEXPIRED00000001",
                   "Expiration": datetime.fromtimestamp(time.time() - 1, tz=timezone.utc)})
    return issued


@pytest.fixture(scope="module")
def emulator(issued):
    emulator = EcrPublicEmulator(issued).start()
    yield emulator
    emulator.stop()


def client(emulator, region="us-east-1", config=NO_RETRIES, **credentials):
    keys = credentials or {"aws_access_key_id": ISSUED["AccessKeyId"],
                           "aws_secret_access_key": ISSUED["SecretAccessKey"],
                           "aws_session_token": ISSUED["SessionToken"]}
    return boto3.client("ecr-public", region_name=region, endpoint_url=emulator.url, config=config, **keys)


def refusal(call) -> tuple[str, int]:
    with pytest.raises(ClientError) as refused:
        call()
    return refused.value.response["Error"]["Code"], refused.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_credentials_sts_issued_get_an_aws_user_password_token_for_12_hours(emulator):
    data = client(emulator).get_authorization_token()["authorizationData"]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    assert username == "AWS" and len(password) > 40
    assert abs(data["expiresAt"].timestamp() - (time.time() + TOKEN_LIFETIME)) < 60
    assert "proxyEndpoint" not in data  # ECR Public answers one object, with no endpoint


def test_an_unsigned_request_is_refused(emulator):
    unsigned = client(emulator, config=NO_RETRIES.merge(Config(signature_version=UNSIGNED)),
                      aws_access_key_id="x", aws_secret_access_key="x")
    assert refusal(unsigned.get_authorization_token) == ("MissingAuthenticationTokenException", 403)


def test_credentials_sts_did_not_issue_are_refused(emulator):
    other = client(emulator, aws_access_key_id="local", aws_secret_access_key="local")
    assert refusal(other.get_authorization_token) == ("UnrecognizedClientException", 403)


def test_an_issued_key_without_its_session_token_is_refused(emulator):
    bare = client(emulator, aws_access_key_id=ISSUED["AccessKeyId"], aws_secret_access_key=ISSUED["SecretAccessKey"])
    assert refusal(bare.get_authorization_token) == ("UnrecognizedClientException", 403)


def test_an_issued_key_signed_with_the_wrong_secret_is_refused(emulator):
    forged = client(emulator, aws_access_key_id=ISSUED["AccessKeyId"], aws_secret_access_key="guessed",
                    aws_session_token=ISSUED["SessionToken"])
    assert refusal(forged.get_authorization_token) == ("InvalidSignatureException", 403)


def test_expired_credentials_are_refused(emulator):
    expired = client(emulator, aws_access_key_id="ASIAEXPIRED00000001", aws_secret_access_key=ISSUED["SecretAccessKey"],
                     aws_session_token=ISSUED["SessionToken"])
    assert refusal(expired.get_authorization_token) == ("ExpiredTokenException", 403)


def test_a_request_signed_for_another_region_is_refused(emulator):
    assert refusal(client(emulator, region="eu-west-1").get_authorization_token) == ("InvalidSignatureException", 403)


def test_a_signed_request_whose_body_was_changed_is_refused(emulator):
    c = client(emulator)
    c.meta.events.register("before-send.ecr-public.GetAuthorizationToken",
                           lambda request, **kwargs: setattr(request, "body", b'{"x": 1}') or None)
    assert refusal(c.get_authorization_token) == ("InvalidSignatureException", 403)


def test_a_stale_signature_is_refused(issued):
    late = EcrPublicEmulator(issued, clock=lambda: time.time() + 16 * 60).start()
    try:
        assert refusal(client(late).get_authorization_token) == ("InvalidSignatureException", 403)
    finally:
        late.stop()


def test_other_operations_are_refused_as_unknown(emulator):
    assert refusal(client(emulator).describe_registries) == ("UnknownOperationException", 400)


def test_errors_are_aws_json_and_nothing_is_served(emulator):
    served = emulator.served
    request = urllib.request.Request(emulator.url + "/", data=b"{}", method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SpencerFrontendService.GetAuthorizationToken"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403
    assert refused.value.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert json.loads(refused.value.read()) == {"__type": "MissingAuthenticationTokenException",
                                                "message": "Missing Authentication Token"}
    assert emulator.served == served


def test_recording_wraps_a_credentials_source():
    issued = IssuedCredentials()
    obtain = issued.recording(lambda verified, token: dict(ISSUED))
    assert obtain("verified", "token")["AccessKeyId"] == ISSUED["AccessKeyId"]
    assert issued.get(ISSUED["AccessKeyId"]).session_token == ISSUED["SessionToken"]
    assert issued.get("local") is None
