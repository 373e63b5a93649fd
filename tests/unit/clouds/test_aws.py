"""oidc_broker/clouds/aws.py: the AWS description (a target's aws: settings, its trust policy) and the
exchanger: STS and ECR calls, retries, and errors a user can act on (botocore Stubber)."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone

import boto3
import pytest
from botocore import UNSIGNED
from botocore.stub import Stubber
from builders import BROKER, NOW, config_doc, space_doc
from hypothesis import given
from hypothesis import strategies as st

from oidc_broker import config
from oidc_broker.clouds import Request
from oidc_broker.clouds import CLOUDS, TrustSetupError
from oidc_broker.clouds import aws
from oidc_broker.clouds.aws import AwsExchanger, Backoff, boto3_clients, retryable, session_name, target_trust_policy
from oidc_broker.errors import AccessDenied, CloudError, InvalidTarget, Throttled
from oidc_broker.model import Target

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJicm9rZXIifQ.c2lnbmF0dXJl"
ROLE = "arn:aws:iam::123456789012:role/deploy"
PULL = "arn:aws:iam::123456789012:role/pull"
SUBJECT = "space:acme:environment:production:account:prod"
SESSION_END = datetime.fromtimestamp(NOW + 3600, tz=timezone.utc)
ROLE_CREDENTIALS = {"AccessKeyId": "ASIAEXAMPLE12345", "SecretAccessKey": "s" * 40, "SessionToken": "t" * 100,
                    "Expiration": SESSION_END}


def _config(images=None, prod=None):
    doc = config_doc()
    targets = space_doc(doc)["targets"]
    targets[0]["aws"].update(prod or {})
    targets[1]["aws"] = {"role_arn": PULL, "region": "eu-west-1", **(images or {})}
    return config.parse(doc)


def request(target, subject=SUBJECT) -> Request:
    return Request(target=target, token=TOKEN, issuer=BROKER, subject=subject, caller="repo:acme/app:ref:refs/heads/main")


class Clients:
    """The client factory port: real botocore clients with Stubbers, and a record of who asked for what."""

    def __init__(self):
        self.stubs: dict[str, Stubber] = {}
        self.clients: dict[str, object] = {}
        self.asked: list[tuple[str, str, bool]] = []

    def stub(self, service: str, region: str = "us-east-1") -> Stubber:
        client = boto3.client(service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x")
        self.clients[service] = client
        self.stubs[service] = Stubber(client)
        self.stubs[service].activate()
        return self.stubs[service]

    def __call__(self, service, region, credentials):
        self.asked.append((service, region, credentials is not None))
        return self.clients[service]


@pytest.fixture
def clients():
    return Clients()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def exchanger(clients, clock, sleeps):
    return AwsExchanger(clients, default_region="us-east-1", clock=clock,
                        backoff=Backoff(sleep=sleeps.append, jitter=lambda: 1.0))


def assume_role(stub: Stubber, target, duration=3600, credentials=ROLE_CREDENTIALS):
    stub.add_response(
        "assume_role_with_web_identity",
        {"Credentials": credentials, "SubjectFromWebIdentityToken": SUBJECT, "Audience": "sts.amazonaws.com"},
        {"RoleArn": target.setting("role_arn"), "RoleSessionName": "acme.prod@repo-acme-app-ref-refs-heads-main"
         if target.name == "prod" else "acme.images@repo-acme-app-ref-refs-heads-main",
         "WebIdentityToken": TOKEN, "DurationSeconds": duration},
    )


def sts_error(stub: Stubber, code: str, status: int = 400, message: str = "refused"):
    stub.add_client_error("assume_role_with_web_identity", service_error_code=code, service_message=message,
                          http_status_code=status)


# -- what comes back ------------------------------------------------------------------------------

def test_an_account_target_gets_role_credentials_until_the_session_ends(exchanger, clients):
    target = _config().target("acme/prod")
    assume_role(clients.stub("sts"), target)
    credentials = exchanger.exchange(request(target))
    assert dict(credentials.fields) == {"access_key_id": "ASIAEXAMPLE12345", "secret_access_key": "s" * 40,
                                        "session_token": "t" * 100}
    assert (credentials.issued_at, credentials.expires_at) == (NOW, NOW + 3600)
    assert clients.asked == [("sts", "us-east-1", False)]  # STS unsigned: no credentials of ours


def test_the_session_duration_comes_from_the_target(exchanger, clients):
    target = _config(prod={"session_duration": "12h"}).target("acme/prod")
    assume_role(clients.stub("sts"), target, duration=43200)
    exchanger.exchange(request(target))
    clients.stubs["sts"].assert_no_pending_responses()


def test_a_feed_gets_docker_credentials_for_the_ecr_registry(exchanger, clients):
    target = _config().target("acme/images")
    assume_role(clients.stub("sts", "eu-west-1"), target)
    ecr = clients.stub("ecr", "eu-west-1")
    ecr.add_response("get_authorization_token", {"authorizationData": [{
        "authorizationToken": base64.b64encode(b"AWS:registry-password").decode(),
        "expiresAt": datetime.fromtimestamp(NOW + 12 * 3600, tz=timezone.utc),
        "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    }]}, {})
    credentials = exchanger.exchange(request(target))
    assert dict(credentials.fields) == {"registry": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                                        "username": "AWS", "password": "registry-password"}
    # The registry token is counted on no longer than the role session it came from.
    assert credentials.expires_at == NOW + 3600
    assert clients.asked == [("sts", "eu-west-1", False), ("ecr", "eu-west-1", True)]


def test_an_ecr_public_feed_asks_us_east_1_and_logs_in_to_public_ecr_aws(exchanger, clients):
    target = _config(images={"registry": "ecr-public"}).target("acme/images")
    assume_role(clients.stub("sts", "eu-west-1"), target)
    public = clients.stub("ecr-public", "us-east-1")
    public.add_response("get_authorization_token", {"authorizationData": {
        "authorizationToken": base64.b64encode(b"AWS:public-password").decode(),
        "expiresAt": datetime.fromtimestamp(NOW + 1800, tz=timezone.utc),
    }}, {})
    credentials = exchanger.exchange(request(target))
    assert dict(credentials.fields) == {"registry": "public.ecr.aws", "username": "AWS", "password": "public-password"}
    assert credentials.expires_at == NOW + 1800
    assert clients.asked[-1] == ("ecr-public", "us-east-1", True)


def test_a_registry_token_that_is_not_aws_user_password_is_refused(exchanger, clients):
    target = _config().target("acme/images")
    assume_role(clients.stub("sts", "eu-west-1"), target)
    clients.stub("ecr", "eu-west-1").add_response("get_authorization_token", {"authorizationData": [{
        "authorizationToken": base64.b64encode(b"nobody").decode(), "expiresAt": SESSION_END,
        "proxyEndpoint": "https://x"}]}, {})
    with pytest.raises(CloudError, match="cannot read"):
        exchanger.exchange(request(target))


def test_a_target_without_a_role_cannot_be_exchanged(exchanger):
    doc = config_doc()
    del space_doc(doc)["targets"][0]["aws"]
    with pytest.raises(InvalidTarget, match="aws.role_arn"):
        exchanger.exchange(request(config.parse(doc).target("acme/prod")))


# -- errors a user can act on ---------------------------------------------------------------------

def test_access_denied_names_the_role_the_subject_and_the_audience(exchanger, clients):
    target = _config().target("acme/prod")
    sts_error(clients.stub("sts"), "AccessDenied", 403, "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    with pytest.raises(AccessDenied) as refused:
        exchanger.exchange(request(target))
    text = refused.value.description
    assert refused.value.status == 403 and refused.value.error == "access_denied"
    assert ROLE in text and SUBJECT in text and "sts.amazonaws.com" in text and "AWS AccessDenied" in text
    assert "broker.example.com:sub" in text


def test_invalid_identity_token_explains_the_missing_provider_or_keys(exchanger, clients):
    sts_error(clients.stub("sts"), "InvalidIdentityToken", 400, f"No OpenIDConnect provider found for {BROKER}")
    with pytest.raises(CloudError) as refused:
        exchanger.exchange(request(_config().target("acme/prod")))
    text = refused.value.description
    assert refused.value.status == 502 and "InvalidIdentityToken" in text
    assert "OIDC provider" in text and BROKER in text and "/.well-known/openid-configuration" in text


@pytest.mark.parametrize("code", ["Throttling", "IDPCommunicationError", "InternalFailure"])
def test_transient_sts_errors_are_retried_with_backoff(exchanger, clients, sleeps, code):
    target = _config().target("acme/prod")
    stub = clients.stub("sts")
    sts_error(stub, code, 500 if code == "InternalFailure" else 400)
    sts_error(stub, code, 500 if code == "InternalFailure" else 400)
    assume_role(stub, target)
    assert exchanger.exchange(request(target)).fields["access_key_id"] == "ASIAEXAMPLE12345"
    assert sleeps == [0.2, 0.4]


def test_throttling_that_persists_is_503_with_retry_after(exchanger, clients, sleeps):
    stub = clients.stub("sts")
    for _ in range(3):
        sts_error(stub, "Throttling", 400, "Rate exceeded")
    with pytest.raises(Throttled) as refused:
        exchanger.exchange(request(_config().target("acme/prod")))
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "2"}
    assert "Throttling" in refused.value.description
    assert len(sleeps) == 2
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(("code", "status", "error"), [
    ("AccessDenied", 403, AccessDenied), ("InvalidIdentityToken", 400, CloudError),
    ("ExpiredTokenException", 400, CloudError), ("ValidationError", 400, CloudError),
    ("IDPRejectedClaim", 403, AccessDenied), ("RegionDisabledException", 403, CloudError),
])
def test_other_sts_errors_are_not_retried(exchanger, clients, sleeps, code, status, error):
    sts_error(clients.stub("sts"), code, status, f"message with the token {TOKEN} in it")
    with pytest.raises(error) as refused:
        exchanger.exchange(request(_config().target("acme/prod")))
    assert sleeps == []
    assert code in refused.value.description
    assert TOKEN not in refused.value.description and "eyJ" not in refused.value.description


def test_an_ecr_access_denied_names_the_permission_to_grant(exchanger, clients):
    target = _config().target("acme/images")
    assume_role(clients.stub("sts", "eu-west-1"), target)
    clients.stub("ecr", "eu-west-1").add_client_error("get_authorization_token",
                                                       service_error_code="AccessDeniedException",
                                                       http_status_code=400)
    with pytest.raises(AccessDenied) as refused:
        exchanger.exchange(request(target))
    assert PULL in refused.value.description and "ecr:GetAuthorizationToken" in refused.value.description


def test_ecr_throttling_is_retried_then_503(exchanger, clients, sleeps):
    target = _config().target("acme/images")
    assume_role(clients.stub("sts", "eu-west-1"), target)
    ecr = clients.stub("ecr", "eu-west-1")
    for _ in range(3):
        ecr.add_client_error("get_authorization_token", service_error_code="ThrottlingException", http_status_code=400)
    with pytest.raises(Throttled) as refused:
        exchanger.exchange(request(target))
    assert refused.value.status == 503 and "ThrottlingException" in refused.value.description
    assert len(sleeps) == 2


def test_an_ecr_server_error_is_retried_and_then_succeeds(exchanger, clients, sleeps):
    target = _config().target("acme/images")
    assume_role(clients.stub("sts", "eu-west-1"), target)
    ecr = clients.stub("ecr", "eu-west-1")
    ecr.add_client_error("get_authorization_token", service_error_code="ServerException", http_status_code=500)
    ecr.add_response("get_authorization_token", {"authorizationData": [{
        "authorizationToken": base64.b64encode(b"AWS:pw").decode(), "expiresAt": SESSION_END,
        "proxyEndpoint": "https://r"}]}, {})
    assert exchanger.exchange(request(target)).fields["password"] == "pw"
    assert sleeps == [0.2]


def test_backoff_waits_grow_and_stay_capped():
    waits = []
    backoff = Backoff(attempts=6, base=0.5, cap=2.0, sleep=waits.append, jitter=lambda: 1.0)
    from botocore.exceptions import ClientError

    def throttled():
        raise ClientError({"Error": {"Code": "Throttling"}}, "X")

    with pytest.raises(ClientError):
        backoff.call(throttled, retryable)
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]


# -- clients and session names ---------------------------------------------------------------------

def test_sts_clients_are_unsigned_and_ecr_clients_carry_the_role_credentials(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    session = boto3.session.Session()
    factory = boto3_clients(session)
    sts = factory("sts", "eu-west-1", None)
    assert sts.meta.config.signature_version is UNSIGNED
    assert factory("sts", "eu-west-1", None) is sts  # once per container and region
    ecr = factory("ecr", "eu-west-1", ROLE_CREDENTIALS)
    assert ecr._request_signer._credentials.access_key == "ASIAEXAMPLE12345"


def test_every_client_of_the_exchanger_comes_from_the_session_it_is_given(monkeypatch):
    made = []

    class Session:
        def client(self, service, **kwargs):
            made.append(service)
            return object()

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    built = aws.exchanger(Session())
    built.clients("sts", "eu-west-1", None)
    built.clients("ecr", "eu-west-1", ROLE_CREDENTIALS)
    assert (made, built.default_region, built.provider) == (["sts", "ecr"], "eu-west-1", "aws")


def test_session_names_say_which_target_and_which_caller():
    assert session_name("default/prod-ecr", "repo:acme/app:ref:refs/heads/main") == \
        "default.prod-ecr@repo-acme-app-ref-refs-heads-main"


def test_long_session_names_stay_distinct():
    a = session_name("s" * 63 + "/" + "t" * 63, "caller-a")
    b = session_name("s" * 63 + "/" + "t" * 63, "caller-b")
    assert len(a) == len(b) == 64 and a != b


@given(st.text(max_size=130), st.text(max_size=300))
def test_session_names_always_satisfy_sts(target_ref, caller):
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", session_name(target_ref, caller), re.ASCII)


# -- which cloud answers a retry can change (issue 8, 4d) ---------------------------------------------

NOT_TRANSIENT_5XX = [
    ("NotImplemented", 501, "AWS NotImplemented"),
    ("UnknownServerFault", 500, "AWS UnknownServerFault"),  # a code AWS does not document as transient
    ("500", 500, "HTTP 500"),  # botocore's code for a body that is no AWS error (moto's HTML page)
    ("503", 503, "HTTP 503"),
]
TRANSIENT_CODES = [("Throttling", 400), ("ThrottlingException", 400), ("ServiceUnavailable", 503),
                   ("InternalFailure", 500), ("ServerException", 500)]


class Unreachable:
    """A client whose every call fails to connect, as botocore reports it."""

    def __getattr__(self, name):
        from botocore.exceptions import EndpointConnectionError

        def call(**kwargs):
            raise EndpointConnectionError(endpoint_url="https://sts.us-east-1.amazonaws.com")
        return call


def feed_with(clients, registry: str, service: str):
    """A feed target whose STS call succeeds; its registry client (ECR or ECR Public) is returned."""
    target = _config(images={"registry": registry} if registry else None).target("acme/images")
    assume_role(clients.stub("sts", "eu-west-1"), target)
    return target, clients.stub(service, "us-east-1" if service == "ecr-public" else "eu-west-1")


def not_retried_cloud_error(refused, sleeps, names: str):
    assert isinstance(refused.value, CloudError) and not isinstance(refused.value, Throttled)
    assert refused.value.status == 502 and refused.value.error == "cloud_error"
    assert "Retry-After" not in refused.value.headers
    assert names in refused.value.description and "<html" not in refused.value.description.lower()
    assert sleeps == []


HTML = "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>"


@pytest.mark.parametrize(("code", "status", "names"), NOT_TRANSIENT_5XX)
def test_an_sts_5xx_a_retry_would_not_change_is_502_not_retried(exchanger, clients, sleeps, code, status, names):
    stub = clients.stub("sts")
    sts_error(stub, code, status, HTML if code.isdigit() else "not implemented")
    with pytest.raises(CloudError) as refused:
        exchanger.exchange(request(_config().target("acme/prod")))
    not_retried_cloud_error(refused, sleeps, names)
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("registry,service", [("", "ecr"), ("ecr-public", "ecr-public")])
@pytest.mark.parametrize(("code", "status", "names"), NOT_TRANSIENT_5XX)
def test_a_registry_5xx_a_retry_would_not_change_is_502_not_retried(exchanger, clients, sleeps, registry, service,
                                                                    code, status, names):
    target, registry_stub = feed_with(clients, registry, service)
    registry_stub.add_client_error("get_authorization_token", service_error_code=code, http_status_code=status,
                                   service_message=HTML if code.isdigit() else "not implemented")
    with pytest.raises(CloudError) as refused:
        exchanger.exchange(request(target))
    not_retried_cloud_error(refused, sleeps, names)
    assert refused.value.description.startswith("ECR Public" if registry else "ECR (")
    registry_stub.assert_no_pending_responses()


@pytest.mark.parametrize(("code", "status"), TRANSIENT_CODES)
def test_sts_throttling_and_transient_codes_that_persist_are_503_with_retry_after(exchanger, clients, sleeps,
                                                                                  code, status):
    stub = clients.stub("sts")
    for _ in range(3):
        sts_error(stub, code, status)
    with pytest.raises(Throttled) as refused:
        exchanger.exchange(request(_config().target("acme/prod")))
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "2"}
    assert code in refused.value.description and len(sleeps) == 2
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("registry,service", [("", "ecr"), ("ecr-public", "ecr-public")])
@pytest.mark.parametrize(("code", "status"), TRANSIENT_CODES)
def test_registry_throttling_and_transient_codes_that_persist_are_503_with_retry_after(
        exchanger, clients, sleeps, registry, service, code, status):
    target, registry_stub = feed_with(clients, registry, service)
    for _ in range(3):
        registry_stub.add_client_error("get_authorization_token", service_error_code=code, http_status_code=status)
    with pytest.raises(Throttled) as refused:
        exchanger.exchange(request(target))
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "2"}
    assert code in refused.value.description and len(sleeps) == 2


@pytest.mark.parametrize("service", ["sts", "ecr", "ecr-public"])
def test_a_cloud_that_cannot_be_reached_is_retried_then_503_with_retry_after(exchanger, clients, sleeps, service):
    registry = "ecr-public" if service == "ecr-public" else ""
    target = _config(images={"registry": registry} if registry else None).target(
        "acme/prod" if service == "sts" else "acme/images")
    if service != "sts":
        assume_role(clients.stub("sts", "eu-west-1"), target)
    clients.clients[service] = Unreachable()
    with pytest.raises(Throttled) as refused:
        exchanger.exchange(request(target))
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "2"}
    assert "EndpointConnectionError" in refused.value.description and len(sleeps) == 2


# -- the description: a target's aws: settings ------------------------------------------------------

def parse_target(kind: str = "account", **aws):
    doc = config_doc()
    space_doc(doc)["targets"] = [{"name": "x", "kind": kind, "provider": "aws", "aws": {"role_arn": ROLE, **aws}}]
    space_doc(doc)["trust"] = []
    return config.parse(doc).target("acme/x")


def problems(kind: str = "account", **aws) -> list[tuple[str, str]]:
    with pytest.raises(config.ConfigError) as e:
        parse_target(kind, **aws)
    return e.value.problems


def test_an_aws_target_defaults_to_one_hour_sessions_refreshed_at_half_life():
    target = parse_target()
    assert (target.setting("session_duration"), target.setting("refresh_at")) == (3600, 0.5)
    assert target.settings == {"role_arn": ROLE}  # defaults are read, not written into the settings


def test_an_aws_feed_defaults_to_the_private_ecr_registry():
    assert parse_target("feed").setting("registry") == "ecr"
    assert parse_target("feed", registry="ecr-public").setting("registry") == "ecr-public"
    assert parse_target("account").setting("registry") is None


@pytest.mark.parametrize(("value", "seconds"), [(900, 900), ("15m", 900), ("1h", 3600), ("12h", 43200), (43200, 43200)])
def test_session_durations_are_durations_within_what_sts_allows(value, seconds):
    assert parse_target(session_duration=value).setting("session_duration") == seconds


@pytest.mark.parametrize("value", [899, "13h", 0, "soon", True, None])
def test_session_durations_outside_sts_limits_are_refused(value):
    assert problems(session_duration=value) == [
        ("spaces[0].targets[0].aws.session_duration", "must be a duration from 900s to 43200s (e.g. 3600, 15m, 12h)")]


@pytest.mark.parametrize("value", [0, 0.25, 0.9, 1 / 3])
def test_refresh_at_is_a_fraction_of_the_lifetime(value):
    assert parse_target(refresh_at=value).setting("refresh_at") == pytest.approx(value)


@pytest.mark.parametrize("value", [0.95, 1, -0.1, "0.5", True])
def test_refresh_at_outside_zero_to_nine_tenths_is_refused(value):
    assert problems(refresh_at=value)[0][0] == "spaces[0].targets[0].aws.refresh_at"


def test_a_registry_on_an_account_target_or_an_unknown_registry_is_refused():
    assert problems("account", registry="ecr") == [("spaces[0].targets[0].aws.registry", "applies to feed targets only")]
    assert problems("feed", registry="docker.io") == [
        ("spaces[0].targets[0].aws.registry", "must be ecr or ecr-public (feed targets only)")]


def test_the_aws_description_registers_a_trust_setup_and_an_exchanger():
    cloud = CLOUDS["aws"]
    assert (cloud.title, cloud.max_subject_bytes, cloud.trust_setup) == ("AWS", 255, target_trust_policy)
    assert cloud.exchanger is aws.exchanger
    assert cloud.default_audience({}) == "sts.amazonaws.com"


def test_a_trust_policy_for_a_target_without_a_role_says_what_is_missing():
    target = Target(space="acme", name="x", kind="feed", provider="aws", audience="sts.amazonaws.com",
                    subject_keys=("space", "feed"), lifetime=600)
    with pytest.raises(TrustSetupError, match="target 'acme/x' names no aws.role_arn"):
        target_trust_policy(BROKER, target, ["space:acme:feed:x"])
