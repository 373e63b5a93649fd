"""tools/emulators/sts.py: the STS emulator refuses what AWS refuses, fetching keys over HTTP.

A small issuer (fake_issuer.py) serves discovery and JWKS on loopback; tokens are signed with its key
(or not). The OIDC checks themselves are tested in test_oidc.py; these prove STS's codes and order.
"""

from __future__ import annotations

import time

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from fake_issuer import AUDIENCE, SUBJECT
from oidc_broker.clouds.aws import trust_policy  # the broker's policies are what the emulator must accept
from oidc_broker_emulators.sts import StaticDirectory, StsEmulator, Verifier, trust_allows

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/deploy"


@pytest.fixture
def directory(issuer):
    directory = StaticDirectory()
    directory.add_provider(ACCOUNT, issuer.url, [AUDIENCE])
    directory.add_role(ROLE, trust_policy(ACCOUNT, issuer.url, AUDIENCE, SUBJECT))
    return directory


@pytest.fixture
def emulator(directory):
    emulator = StsEmulator(Verifier(directory)).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def sts(emulator):
    return boto3.client("sts", region_name="us-east-1", endpoint_url=emulator.url,
                        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}))


def assume(sts, token, role=ROLE, session="acme.prod@caller", duration=3600):
    return sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName=session, WebIdentityToken=token,
                                             DurationSeconds=duration)


def refused(sts, token, **kwargs) -> tuple[str, int]:
    with pytest.raises(ClientError) as e:
        assume(sts, token, **kwargs)
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_a_token_the_role_trusts_gets_credentials(sts, issuer):
    response = assume(sts, issuer.token())
    assert response["SubjectFromWebIdentityToken"] == SUBJECT and response["Audience"] == AUDIENCE
    assert response["Credentials"]["AccessKeyId"].startswith("ASIA")
    assert response["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/deploy/acme.prod@caller"


def test_an_issuer_with_no_registered_provider_is_an_invalid_identity_token(sts, issuer, directory):
    directory.providers.clear()
    assert refused(sts, issuer.token()) == ("InvalidIdentityToken", 400)


def test_a_role_in_another_account_finds_no_provider(sts, issuer):
    assert refused(sts, issuer.token(), role="arn:aws:iam::210987654321:role/deploy") == ("InvalidIdentityToken", 400)


def test_an_iss_with_a_trailing_slash_finds_no_provider(sts, issuer):
    assert refused(sts, issuer.token(iss=issuer.url + "/")) == ("InvalidIdentityToken", 400)


def test_an_audience_not_in_the_providers_client_ids_is_refused(sts, issuer):
    assert refused(sts, issuer.token(aud="api://AzureADTokenExchange")) == ("InvalidIdentityToken", 400)


def test_a_kid_missing_from_the_jwks_is_refused(sts, issuer):
    assert refused(sts, issuer.token(kid="k2")) == ("InvalidIdentityToken", 400)


def test_a_token_signed_by_another_key_is_refused(sts, issuer, keys):
    assert refused(sts, issuer.token(key=keys[1])) == ("InvalidIdentityToken", 400)


def test_an_unreachable_issuer_is_an_idp_communication_error(sts, issuer, directory):
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    directory.add_provider(ACCOUNT, url, [AUDIENCE])
    assert refused(sts, issuer.token(iss=url)) == ("IDPCommunicationError", 400)


def test_a_discovery_document_naming_another_issuer_is_an_invalid_identity_token(sts, issuer):
    issuer.claimed_issuer = "https://elsewhere.example.com"
    assert refused(sts, issuer.token()) == ("InvalidIdentityToken", 400)


def test_a_token_expired_beyond_five_minutes_is_refused_within_them_accepted(sts, issuer):
    now = int(time.time())
    assert refused(sts, issuer.token(iat=now - 900, exp=now - 301)) == ("ExpiredTokenException", 400)
    assume(sts, issuer.token(iat=now - 900, exp=now - 200))


def test_a_subject_the_trust_policy_does_not_name_is_access_denied(sts, issuer):
    assert refused(sts, issuer.token(sub="space:acme:account:other")) == ("AccessDenied", 403)


def test_an_unknown_role_is_access_denied(sts, issuer):
    assert refused(sts, issuer.token(), role=f"arn:aws:iam::{ACCOUNT}:role/nobody") == ("AccessDenied", 403)


def test_a_session_name_outside_the_sts_pattern_is_a_validation_error(sts, issuer):
    assert refused(sts, issuer.token(), session="has spaces") == ("ValidationError", 400)


def test_a_duration_above_the_roles_maximum_is_a_validation_error(sts, issuer):
    assert refused(sts, issuer.token(), duration=7200) == ("ValidationError", 400)


def test_queued_faults_come_first(sts, issuer, emulator):
    emulator.fail_next("Throttling", "Rate exceeded")
    assert refused(sts, issuer.token()) == ("Throttling", 400)
    assume(sts, issuer.token())


# -- trust policies ------------------------------------------------------------------------------

PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/id.example.com"
CONTEXT = {"id.example.com:aud": AUDIENCE, "id.example.com:sub": "space:acme:environment:prod:account:deploy"}


def test_string_like_matches_wildcards_only_where_written():
    like = trust_policy(ACCOUNT, "https://id.example.com", AUDIENCE, "space:acme:environment:*:account:deploy", like=True)
    assert trust_allows(like, PROVIDER, CONTEXT)
    assert not trust_allows(like, PROVIDER, {**CONTEXT, "id.example.com:sub": "space:acme:account:deploy"})
    exact = trust_policy(ACCOUNT, "https://id.example.com", AUDIENCE, "space:acme:environment:*:account:deploy")
    assert not trust_allows(exact, PROVIDER, CONTEXT)


def test_an_explicit_deny_wins():
    policy = trust_policy(ACCOUNT, "https://id.example.com", AUDIENCE, "space:acme:*", like=True)
    policy["Statement"].append({**policy["Statement"][0], "Effect": "Deny",
                                "Condition": {"StringLike": {"id.example.com:sub": "*:environment:prod:*"}}})
    assert not trust_allows(policy, PROVIDER, CONTEXT)


def test_another_providers_principal_or_an_unknown_operator_grants_nothing():
    policy = trust_policy(ACCOUNT, "https://other.example.com", AUDIENCE, "*", like=True)
    assert not trust_allows(policy, PROVIDER, CONTEXT)
    policy = trust_policy(ACCOUNT, "https://id.example.com", AUDIENCE, "*", like=True)
    policy["Statement"][0]["Condition"] = {"StringEqualsIgnoreCaseOrWhatever": {"id.example.com:sub": "x"}}
    assert not trust_allows(policy, PROVIDER, CONTEXT)
