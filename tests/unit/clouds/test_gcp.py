"""oidc_broker/clouds/gcp.py: the Google Cloud description (a target's gcp: settings, its trust setup)
and the exchanger: real google-auth over a scripted transport that answers as Google's STS and IAM
Credentials do, so requests, lifetimes, retries and every refusal class are checked without a network."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from urllib.parse import parse_qsl

import pytest
from builders import BROKER, NOW, caller_claims, config_doc, config_problems as problems
from fakes import CACHE_KEY_ID, CacheKms, CacheStore, CountingCache, FakeExchanger, Setup
from google.auth import exceptions as google_exceptions
from google.auth import identity_pool

from oidc_broker import validation
from oidc_broker.clouds import CLOUDS, Request, TrustSetupError
from oidc_broker.clouds import gcp
from oidc_broker.clouds.gcp import Backoff, GcpExchanger
from oidc_broker.errors import AccessDenied, CloudError, InvalidTarget, Throttled
from oidc_broker.exchange import Exchange

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJicm9rZXIifQ.c2lnbmF0dXJl"
WIP = "projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker"
SA = "pusher@acme-prod.iam.gserviceaccount.com"
SUBJECT = "space:acme:feed:gar"
STS = "https://sts.test/v1/token"
IAM = "https://iam.test"
GENERATE = f"{IAM}/v1/projects/-/serviceAccounts/{SA}:generateAccessToken"
ACCESS = "ya29.federated-access-token"
SA_ACCESS = "ya29.service-account-access-token"


def one_target(**target) -> dict:
    return config_doc(spaces=[{"name": "acme", "targets": [target]}])


def only_target(**target):
    (parsed,) = validation.parse(one_target(**target)).spaces["acme"].targets.values()
    return parsed


def gar(kind="feed", **settings):
    base = {"workload_identity_provider": WIP}
    if kind == "feed":
        base["registry"] = "europe-docker.pkg.dev"
    return only_target(name="gar", kind=kind, provider="gcp", gcp={**base, **settings})


# -- the description -------------------------------------------------------------------------------

def test_gcp_targets_default_to_the_providers_resource_name_as_audience():
    wip = "projects/123/locations/global/workloadIdentityPools/pipelines/providers/broker"
    target = only_target(name="x", kind="feed", provider="gcp", gcp={"workload_identity_provider": wip, "registry": "gcr.io"})
    assert target.audience == "https://iam.googleapis.com/" + wip


def test_a_gcp_target_without_provider_or_audience_is_refused():
    assert problems(one_target(name="x", kind="feed", provider="gcp")) == [
        ("spaces[0].targets[0].audience", "is required for this provider")
    ]


def test_a_gcp_target_whose_shortest_subject_cannot_fit_127_bytes_is_refused():
    doc = config_doc(spaces=[{"name": "s" * 63, "targets": [
        {"name": "f" * 63, "kind": "account", "provider": "gcp", "audience": "a"}]}])
    assert problems(doc) == [("spaces[0].targets[0].subject", "cannot fit the 127-byte subject limit for gcp targets")]


def test_the_same_long_names_fit_an_aws_target():
    doc = config_doc(spaces=[{"name": "s" * 63, "targets": [{"name": "f" * 63, "kind": "feed", "provider": "aws"}]}])
    assert ("s" * 63) in validation.parse(doc).spaces


def test_a_literal_context_too_long_for_a_gcp_subject_is_refused():
    wip = "projects/1/locations/global/workloadIdentityPools/pool/providers/prov"
    doc = config_doc(spaces=[{
        "name": "acme",
        "targets": [{"name": "x", "kind": "feed", "provider": "gcp", "subject": ["space", "project", "environment", "feed"],
                     "gcp": {"workload_identity_provider": wip, "registry": "gcr.io"}}],
        "trust": [{"name": "r", "issuer": "ci", "claims": {"repository": "acme/app"}, "targets": ["x"],
                   "context": {"project": "p" * 63, "environment": "e" * 40}}],
    }])
    assert problems(doc) == [("spaces[0].trust[0].context", "target 'x': the subject cannot fit 127 bytes")]


def test_a_gcp_target_is_cached_until_half_its_lifetime_unless_it_says_otherwise():
    target = only_target(name="x", kind="account", provider="gcp", audience="a")
    assert target.setting("refresh_at") == 0.5
    assert only_target(name="x", kind="account", provider="gcp", audience="a", gcp={"refresh_at": 0}).setting("refresh_at") == 0


def test_google_allows_127_byte_subjects_and_describes_its_exchange_and_trust_setup():
    cloud = CLOUDS["gcp"]
    assert cloud.max_subject_bytes == 127 and cloud.exchanger is gcp.exchanger and cloud.trust_setup is not None


def test_settings_default_to_an_hour_and_cloud_platform_and_normalise_scopes():
    target = gar()
    assert (target.setting("token_lifetime"), target.setting("scopes")) == (3600, (gcp.CLOUD_PLATFORM,))
    scoped = gar(kind="account", service_account=SA, token_lifetime="2h", scopes="https://www.googleapis.com/auth/devstorage.read_only "
                                                             "https://www.googleapis.com/auth/cloud-platform")
    assert scoped.setting("token_lifetime") == 7200
    assert scoped.setting("scopes") == ("https://www.googleapis.com/auth/devstorage.read_only", gcp.CLOUD_PLATFORM)


@pytest.mark.parametrize("setting, value", [
    ("registry", "docker.io"), ("registry", "europe-docker.pkg.dev.evil.com"), ("token_lifetime", "13h"),
    ("token_lifetime", 60), ("scopes", ["https://evil.example.com/auth"]), ("scopes", []),
    ("sts_endpoint", "http://sts.googleapis.com/v1/token"), ("iamcredentials_endpoint", "ftp://x"),
    ("service_account", "someone@gmail.com"),
    ("workload_identity_provider", "projects/acme-prod/locations/global/workloadIdentityPools/p1234/providers/x1234"),
])
def test_settings_google_would_not_accept_are_refused_when_the_configuration_loads(setting, value):
    settings = {"workload_identity_provider": WIP, "registry": "gcr.io", setting: value}
    found = problems(one_target(name="x", kind="feed", provider="gcp", gcp=settings))
    # (a refused provider also leaves the target without its default audience)
    assert [path for path, _ in found if ".gcp." in path] == [f"spaces[0].targets[0].gcp.{setting}"]


@pytest.mark.parametrize("registry", ["gcr.io", "eu.gcr.io", "us.gcr.io", "asia.gcr.io", "us-central1-docker.pkg.dev"])
def test_artifact_registry_and_container_registry_hosts_are_accepted(registry):
    assert gar(registry=registry).setting("registry") == registry


def test_a_feed_without_its_registry_is_refused_when_the_configuration_loads():
    found = problems(one_target(name="x", kind="feed", provider="gcp", gcp={"workload_identity_provider": WIP}))
    assert found == [("spaces[0].targets[0].gcp", "a feed target needs registry: the docker registry its credentials "
                                                  "are for (<location>-docker.pkg.dev, gcr.io, us.gcr.io, eu.gcr.io or "
                                                  "asia.gcr.io)")]


def test_a_registry_on_an_account_target_is_refused():
    found = problems(one_target(name="x", kind="account", provider="gcp",
                                gcp={"workload_identity_provider": WIP, "registry": "gcr.io"}))
    assert found == [("spaces[0].targets[0].gcp.registry", "applies to feed targets only")]


# -- a scripted Google -------------------------------------------------------------------------------

class Response:
    def __init__(self, status: int, body: object):
        self.status = status
        self.data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.headers = {"content-type": "application/json"}


def sts_ok(expires_in=3600):
    return Response(200, {"access_token": ACCESS, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                          "token_type": "Bearer", "expires_in": expires_in})


def iam_ok(lifetime=3600):
    expire = datetime.fromtimestamp(NOW + lifetime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Response(200, {"accessToken": SA_ACCESS, "expireTime": expire})


def sts_error(error, description, status=400):
    return Response(status, {"error": error, "error_description": description})


def google_error(status, state, message):
    return Response(status, {"error": {"code": status, "message": message, "status": state}})


class Google:
    """Answers in order per endpoint (the last answer repeats); records what was sent."""

    def __init__(self, sts=None, iam=None):
        self.answers = {STS: list(sts or [sts_ok()]), GENERATE: list(iam or [iam_ok()])}
        self.sent: list[tuple[str, dict, dict]] = []
        self.timeouts: list[float] = []

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        self.timeouts.append(timeout)
        text = body.decode() if isinstance(body, bytes) else (body or "")
        sent = dict(parse_qsl(text)) if url.endswith("/token") else json.loads(text or "{}")
        self.sent.append((url, sent, dict(headers or {})))
        queue = self.answers[url]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def exchanger(google: Google, sleeps=None) -> GcpExchanger:
    return GcpExchanger(transport=lambda: google, credentials=identity_pool.Credentials,
                        supplier=identity_pool.SubjectTokenSupplier,
                        backoff=Backoff(base=0.5, sleep=sleeps if sleeps is not None else Sleeps(), jitter=lambda: 1.0),
                        clock=lambda: NOW, sts_endpoint=STS, iamcredentials_endpoint=IAM)


def request(target, subject=SUBJECT) -> Request:
    return Request(target=target, token=TOKEN, issuer=BROKER, subject=subject, caller="repo:acme/app:ref:refs/heads/main")


# -- exchanges -----------------------------------------------------------------------------------------

def test_a_feed_target_gets_docker_credentials_from_the_directly_federated_token():
    google = Google()
    credentials = exchanger(google).exchange(request(gar()))
    assert credentials.fields == {"registry": "europe-docker.pkg.dev", "username": "oauth2accesstoken", "password": ACCESS}
    assert (credentials.issued_at, credentials.expires_at) == (NOW, NOW + 3600)
    ((url, form, _),) = google.sent  # no impersonation
    assert url == STS and form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "audience": "//iam.googleapis.com/" + WIP,
        "scope": gcp.CLOUD_PLATFORM,
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": TOKEN,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    }
    assert google.timeouts == [gcp.TIMEOUT]


def test_an_account_target_with_a_service_account_gets_its_token_with_the_targets_lifetime():
    google = Google(iam=[iam_ok(7200)])
    target = gar(kind="account", service_account=SA, token_lifetime="2h",
                 scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    credentials = exchanger(google).exchange(request(target))
    assert credentials.fields == {"access_token": SA_ACCESS, "token_type": "Bearer",
                                  "scope": "https://www.googleapis.com/auth/devstorage.read_write"}
    assert credentials.expires_at == NOW + 7200
    (sts_url, _, _), (iam_url, body, headers) = google.sent
    assert (sts_url, iam_url) == (STS, GENERATE)
    assert (body["scope"], body["lifetime"]) == (["https://www.googleapis.com/auth/devstorage.read_write"], "7200s")
    assert headers["authorization"] == f"Bearer {ACCESS}"  # the federated token, never the broker's


def test_a_target_may_name_its_own_endpoints():
    google = Google()
    google.answers["https://sts.private.test/v1/token"] = [sts_ok()]
    target = gar(sts_endpoint="https://sts.private.test/v1/token")
    exchanger(google).exchange(request(target))
    assert google.sent[0][0] == "https://sts.private.test/v1/token"


def test_the_broker_token_lives_as_long_as_direct_credentials_should_and_briefly_with_impersonation():
    ex = exchanger(Google())
    assert ex.token_lifetime(gar()) == 3600
    assert ex.token_lifetime(gar(token_lifetime="20m")) == 1200
    assert ex.token_lifetime(gar(service_account=SA, token_lifetime="12h")) is None  # the target's own lifetime


def test_the_exchange_mints_the_broker_token_with_the_lifetime_the_exchanger_asks(ci, other_rsa_key, clock):
    doc = config_doc(spaces=[{"name": "acme",
                              "targets": [{"name": "gar", "kind": "feed", "provider": "gcp", "lifetime": "10m",
                                           "gcp": {"workload_identity_provider": WIP, "registry": "gcr.io",
                                                   "token_lifetime": "45m"}}],
                              "trust": [{"name": "r", "issuer": "ci", "claims": {"repository": "acme/app"},
                                         "targets": ["gar"]}]}])
    setup = Setup(ci, other_rsa_key, clock, document=doc)

    class AskingExchanger(FakeExchanger):
        token_lifetime = exchanger(Google()).token_lifetime

    fake = AskingExchanger(setup, clock, provider="gcp")
    exchange = Exchange(broker=setup.broker, exchanger=fake, cache=CountingCache(CacheStore(), CacheKms(), CACHE_KEY_ID, clock))
    outcome = exchange.credentials(ci.token(caller_claims(jti="one")), "acme/gar", BROKER)
    claims = setup.verify_minted(fake.requests[0].token, fake.requests[0].target.audience)
    assert claims["exp"] - claims["iat"] == 2700  # not the target's 10 minutes
    (grant,) = setup.store.grants.values()
    assert grant.token_expires_at == claims["exp"] and grant.token_jti == outcome.served.source


def test_a_direct_target_asking_more_than_an_hour_is_refused_when_the_config_loads():
    long = one_target(name="x", kind="account", provider="gcp", gcp={"workload_identity_provider": WIP,
                                                                      "token_lifetime": "2h"})
    assert problems(long) == [("spaces[0].targets[0].gcp", "token_lifetime 7200s needs service_account: a directly "
                                                           "federated token lives at most 3600s")]
    assert gar(kind="account", token_lifetime="2h", service_account=SA).setting("token_lifetime") == 7200


def test_the_exchanger_refuses_them_too_before_google_is_called():
    from dataclasses import replace

    google = Google()
    long = replace(gar(), settings={**gar().settings, "token_lifetime": 7200})
    with pytest.raises(InvalidTarget, match="service_account"):
        exchanger(google).exchange(request(long))
    no_registry = replace(gar(), settings={"workload_identity_provider": WIP})
    with pytest.raises(InvalidTarget, match="gcp.registry"):
        exchanger(google).exchange(request(no_registry))
    assert google.sent == []


def test_a_target_without_provider_is_incomplete():
    bare = only_target(name="x", kind="account", provider="gcp", audience="a")
    with pytest.raises(InvalidTarget, match="workload_identity_provider"):
        exchanger(Google()).exchange(request(bare))


# -- refusals, each told apart and naming what the broker sent -----------------------------------------

STS_REFUSALS = [
    (sts_error("invalid_grant", "The audience in ID Token [https://x] does not match the expected audience."),
     AccessDenied, "gcp_audience_mismatch", "allowedAudiences"),
    (sts_error("invalid_grant", "The issuer in ID Token https://x does not match the expected ones: https://y."),
     CloudError, "gcp_issuer_mismatch", f"issuerUri must be exactly {BROKER}"),
    (sts_error("invalid_grant", "ID Token issued at 1699990000 is stale to sign-in."),
     CloudError, "gcp_stale_token", "clock"),
    (sts_error("invalid_grant", "Unable to verify the ID Token signature."),
     CloudError, "gcp_bad_signature", "oidc-broker keys jwks"),
    (sts_error("unauthorized_client", "The given credential is rejected by the attribute condition."),
     AccessDenied, "gcp_attribute_condition", "trust-policy gcp --target acme/gar"),
    (sts_error("unauthorized_client", "The size of mapped attribute exceeds the 127 bytes limit."),
     CloudError, "gcp_attribute_too_long", "google.subject"),
    (sts_error("invalid_request", "Invalid value for audience."), CloudError, "gcp_sts_error", "Invalid value"),
    (sts_error("server_error", "not implemented", 501), CloudError, "gcp_sts_error", "not transient"),
    (Response(200, "<html>not json</html>"), CloudError, "gcp_sts_error", "cannot read"),
]


@pytest.mark.parametrize("answer, error, reason, mentions", STS_REFUSALS)
def test_sts_refusals_are_told_apart_without_retrying(answer, error, reason, mentions):
    google, sleeps = Google(sts=[answer]), Sleeps()
    with pytest.raises(error) as raised:
        exchanger(google, sleeps).exchange(request(gar()))
    assert raised.value.reason == reason and mentions in raised.value.description
    described = raised.value.description
    assert TOKEN not in described and ACCESS not in described
    if answer.status != 501:  # a 5xx is Google's failure, not a refusal of what was sent
        assert SUBJECT in described and BROKER in described
    assert sleeps == [] and len(google.sent) == 1


PROPAGATING = [
    (dict(sts=[sts_error("invalid_target", "The target service indicated by the \"audience\" parameters is invalid.")]),
     CloudError, "gcp_invalid_target", "propagating"),
    (dict(sts=[sts_error("invalid_grant", "Error connecting to the given credential's issuer.")]),
     CloudError, "gcp_issuer_unreachable", "/.well-known/openid-configuration"),
    (dict(iam=[google_error(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on "
                                                      "resource (or it may not exist).")]),
     AccessDenied, "gcp_impersonation_denied",
     f"roles/iam.workloadIdentityUser on it to principal://iam.googleapis.com/projects/123456789012/locations/global/"
     f"workloadIdentityPools/pipelines/subject/{SUBJECT}"),
    (dict(sts=[sts_error("temporarily_unavailable", "backend", 503)]), Throttled, "gcp_unavailable", "try again"),
    (dict(iam=[google_error(500, "INTERNAL", "Internal error")]), Throttled, "gcp_unavailable", "IAM Credentials"),
    (dict(sts=[google_exceptions.TransportError("read timed out")]), Throttled, "gcp_unavailable", "TransportError"),
]


@pytest.mark.parametrize("answers, error, reason, mentions", PROPAGATING)
def test_what_a_retry_can_change_is_retried_briefly_then_refused(answers, error, reason, mentions):
    google, sleeps = Google(**answers), Sleeps()
    with pytest.raises(error) as raised:
        exchanger(google, sleeps).exchange(request(gar(service_account=SA)))
    assert raised.value.reason == reason and mentions in raised.value.description
    assert TOKEN not in raised.value.description and ACCESS not in raised.value.description
    assert sleeps == [0.5, 1.0]  # three attempts, bounded
    if error is Throttled:
        assert raised.value.status == 503 and raised.value.headers == {"Retry-After": "2"}


def test_a_provider_that_propagates_meanwhile_succeeds_on_a_retry():
    invalid = sts_error("invalid_target", "The target service indicated by the \"audience\" parameters is invalid.")
    google, sleeps = Google(sts=[invalid, sts_ok()]), Sleeps()
    credentials = exchanger(google, sleeps).exchange(request(gar()))
    assert credentials.fields["password"] == ACCESS and sleeps == [0.5]


def test_a_lifetime_over_an_hour_without_the_org_policy_says_which_policy():
    refusal = google_error(400, "INVALID_ARGUMENT", "Requested lifetime 43200s exceeds the maximum allowed lifetime "
                                                    "of 3600s.")
    with pytest.raises(CloudError) as raised:
        exchanger(Google(iam=[refusal])).exchange(request(gar(service_account=SA, token_lifetime="12h")))
    assert raised.value.reason == "gcp_lifetime_not_allowed"
    assert gcp.ORG_POLICY in raised.value.description and SA in raised.value.description


def test_an_unknown_service_account_is_named():
    refusal = google_error(404, "NOT_FOUND", "Not found; Gaia id not found for email " + SA)
    with pytest.raises(CloudError) as raised:
        exchanger(Google(iam=[refusal])).exchange(request(gar(service_account=SA)))
    assert raised.value.reason == "gcp_service_account_not_found"


# -- trust setup, uploaded key sets, cold start --------------------------------------------------------

def test_trust_setup_names_the_provider_condition_and_binding():
    target = gar(service_account=SA)
    setup = gcp.target_trust_setup(BROKER, target, [SUBJECT, "space:acme:environment:*:feed:gar"])
    provider = setup["provider"]
    assert provider["oidc"] == {"issuerUri": BROKER, "allowedAudiences": []}  # the default audience needs none
    assert provider["attributeMapping"] == {"google.subject": "assertion.sub"}
    assert provider["attributeCondition"] == (
        f'assertion.sub == "{SUBJECT}" || assertion.sub.matches("^space:acme:environment:[a-z0-9._-]+:feed:gar$")')
    assert setup["commands"][0].startswith("gcloud iam workload-identity-pools providers create-oidc oidc-broker "
                                           "--project=123456789012 --location=global --workload-identity-pool=pipelines")
    (binding,) = setup["bindings"]
    pool = "projects/123456789012/locations/global/workloadIdentityPools/pipelines"
    assert binding["members"] == [f"principal://iam.googleapis.com/{pool}/subject/{SUBJECT}",
                                  f"principalSet://iam.googleapis.com/{pool}/*"]
    assert any("add-iam-policy-binding" in c and "roles/iam.workloadIdentityUser" in c for c in setup["commands"])


def test_trust_setup_lists_a_chosen_audience_and_needs_a_provider():
    target = only_target(name="x", kind="account", provider="gcp", audience="oidc-broker",
                         gcp={"workload_identity_provider": WIP})
    assert gcp.target_trust_setup(BROKER, target, [SUBJECT])["provider"]["oidc"]["allowedAudiences"] == ["oidc-broker"]
    assert "--allowed-audiences=oidc-broker" in gcp.target_trust_setup(BROKER, target, [SUBJECT])["commands"][0]
    with pytest.raises(TrustSetupError):
        gcp.target_trust_setup(BROKER, only_target(name="y", kind="account", provider="gcp", audience="a"), [SUBJECT])


def test_a_jwks_for_upload_has_no_certificate_members():
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": "AQAB", "e": "AQAB",
                      "x5c": ["MII..."], "x5t": "abc", "x5t#S256": "def"}]}
    assert gcp.jwks_for_upload(jwks) == {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                                                   "n": "AQAB", "e": "AQAB"}]}


def test_the_cloud_registry_imports_no_google_sdk_until_the_exchanger_is_built():
    code = ("import sys, oidc_broker.clouds, oidc_broker.clouds.gcp; "
            "assert not any(m.startswith('google') for m in sys.modules), sorted(m for m in sys.modules if 'google' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=".")


def test_the_exchanger_reads_its_endpoints_from_the_environment(monkeypatch):
    monkeypatch.setenv(gcp.STS_ENDPOINT_ENV, "http://127.0.0.1:1/v1/token")
    monkeypatch.setenv(gcp.IAMCREDENTIALS_ENDPOINT_ENV, "http://127.0.0.1:2")
    built = gcp.exchanger()
    assert (built.sts_endpoint, built.iamcredentials_endpoint) == ("http://127.0.0.1:1/v1/token", "http://127.0.0.1:2")
    monkeypatch.delenv(gcp.STS_ENDPOINT_ENV)
    monkeypatch.delenv(gcp.IAMCREDENTIALS_ENDPOINT_ENV)
    assert gcp.exchanger().sts_endpoint == gcp.STS_ENDPOINT


def test_a_broker_token_lifetime_outside_a_targets_bounds_is_never_signed(ci, other_rsa_key, clock):
    from oidc_broker.errors import ServerError

    setup = Setup(ci, other_rsa_key, clock)
    auth = setup.broker.authorize(ci.token(caller_claims(jti="bounds")), "acme/prod", BROKER)
    with pytest.raises(ServerError) as raised:
        setup.broker.mint(auth, lifetime=7200)
    assert raised.value.reason == "invalid_token_lifetime" and setup.store.grants == {}
