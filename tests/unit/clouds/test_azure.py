"""oidc_broker/clouds/azure.py: an Azure target's settings, its federated credentials, the 20-credential
rule, and the exchanger: Entra (a fake credential factory raising azure-identity's own errors), ACR
(a fake POST), retries with injected sleep, and errors a user can act on."""

from __future__ import annotations

import base64
import json

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from builders import BROKER, NOW, caller_claims, config_doc, config_problems, space_doc
from fakes import CACHE_KEY_ID, CacheKms, CacheStore, CountingCache, Setup

from oidc_broker import validation
from oidc_broker.clouds import CLOUDS, Credentials, Request, TrustSetupError
from oidc_broker.clouds.azure import (DOCKER_USERNAME, MANAGEMENT_SCOPE, REGISTRY_SCOPE, AzureExchanger, Backoff,
                                      check_config, federated_credentials)
from oidc_broker.errors import AccessDenied, CloudError, InvalidTarget, Throttled
from oidc_broker.exchange import Exchange

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
SUBJECT = "space:acme:feed:acr"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJicm9rZXIifQ.c2lnbmF0dXJl"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QifQ.ZW50cmE.c2ln"
ENTRA_EXPIRES = int(NOW) + 3599


def one_target(**target) -> dict:
    return config_doc(spaces=[{"name": "acme", "targets": [target]}])


def only_target(**target):
    (parsed,) = validation.parse(one_target(**target)).spaces["acme"].targets.values()
    return parsed


def azure(**settings):
    return {"tenant_id": TENANT, "client_id": CLIENT, **settings}


# -- the description ---------------------------------------------------------------------------

def test_azure_targets_default_to_the_token_exchange_audience():
    assert only_target(name="x", kind="account", provider="azure").audience == "api://AzureADTokenExchange"


def test_valid_provider_settings_are_kept():
    settings = azure(registry="acme.azurecr.io", authority="login.microsoftonline.us")
    assert only_target(name="x", kind="feed", provider="azure", azure=settings).settings == settings


def test_an_azure_target_is_cached_until_half_its_lifetime_unless_it_says_otherwise():
    assert only_target(name="x", kind="account", provider="azure").setting("refresh_at") == 0.5
    assert only_target(name="x", kind="account", provider="azure", azure={"refresh_at": 0.75}).setting("refresh_at") == 0.75


def test_an_account_target_gets_the_management_scope_unless_it_names_one():
    assert only_target(name="x", kind="account", provider="azure").setting("scope") == MANAGEMENT_SCOPE
    vault = "https://vault.azure.net/.default"
    assert only_target(name="x", kind="account", provider="azure", azure={"scope": vault}).setting("scope") == vault


def test_a_registry_fits_feed_targets_and_a_scope_account_targets_only():
    problems = config_problems(one_target(name="x", kind="account", provider="azure", azure={"registry": "a.azurecr.io"}))
    assert any(path.endswith("azure.registry") and "feed targets only" in rule for path, rule in problems)
    problems = config_problems(one_target(name="x", kind="feed", provider="azure", azure={"scope": MANAGEMENT_SCOPE}))
    assert any(path.endswith("azure.scope") and "account targets only" in rule for path, rule in problems)


def test_azure_subjects_may_be_255_bytes_and_the_cloud_exchanges_and_prints_trust():
    cloud = CLOUDS["azure"]
    assert cloud.max_subject_bytes == 255 and cloud.exchanger is not None and cloud.trust_setup is not None


def test_the_federated_credential_names_issuer_subject_and_audience_exactly():
    target = only_target(name="x", kind="feed", provider="azure", azure=azure(registry="acme.azurecr.io"))
    made = federated_credentials(BROKER, target, [SUBJECT])
    assert (made["issuer"], made["subject"], made["audiences"]) == (BROKER, SUBJECT, ["api://AzureADTokenExchange"])
    assert 3 <= len(made["name"]) <= 120 and made["name"].replace("-", "").isalnum()
    assert len(federated_credentials(BROKER, target, [SUBJECT, SUBJECT + "x"])) == 2


def test_no_federated_credential_can_stand_for_a_subject_a_caller_chooses():
    target = only_target(name="x", kind="feed", provider="azure", azure=azure(registry="acme.azurecr.io"))
    with pytest.raises(TrustSetupError, match="exactly"):
        federated_credentials(BROKER, target, ["space:acme:environment:*:feed:x"])


# -- 20 federated credentials per identity ---------------------------------------------------------

def identity_doc(count: int, client: str = CLIENT, claim: bool = False) -> dict:
    """`count` feed targets of one app, each admitted by one exact rule: `count` distinct subjects."""
    targets = [{"name": f"t{i}", "kind": "feed", "provider": "azure",
                "azure": {"tenant_id": TENANT, "client_id": client, "registry": "acme.azurecr.io"}} for i in range(count)]
    rule = {"name": "pull", "issuer": "ci", "claims": {"repository": "acme/app"}, "targets": [t["name"] for t in targets]}
    if claim:
        targets[0]["subject"] = ["space", "environment", "feed"]
        rule["context"] = {"environment": {"claim": "environment"}}
    return config_doc(spaces=[{"name": "acme", "targets": targets, "trust": [rule]}])


def test_twenty_subjects_for_one_app_are_valid():
    validation.parse(identity_doc(20))


def test_twenty_one_subjects_for_one_app_are_refused_naming_the_targets():
    problems = config_problems(identity_doc(21))
    assert len(problems) == 21
    path, rule = problems[0]
    assert path == "spaces[0].targets[0].azure"
    assert "21 federated credentials" in rule and "Entra allows 20" in rule and "acme/t0, acme/t1" in rule


def test_subjects_count_per_app_not_per_configuration():
    doc = identity_doc(20)
    other = "99999999-7777-8888-9999-000000000000"
    space_doc(doc)["targets"].append({"name": "other", "kind": "feed", "provider": "azure",
                                      "azure": {"tenant_id": TENANT, "client_id": other, "registry": "b.azurecr.io"}})
    space_doc(doc)["trust"][0]["targets"].append("other")
    validation.parse(doc)


def test_a_subject_taken_from_a_caller_claim_is_unbounded_and_refused():
    problems = config_problems(identity_doc(1, claim=True))
    assert [p for p, _ in problems] == ["spaces[0].targets[0].azure"]
    assert "takes a value from a caller's claim" in problems[0][1] and "pin the claim" in problems[0][1]


def test_a_feed_without_its_registry_is_refused_when_the_configuration_loads():
    assert config_problems(one_target(name="x", kind="feed", provider="azure", azure=azure())) == [
        ("spaces[0].targets[0].azure", "a feed target needs registry: the ACR login server its docker credentials are "
                                       "for (e.g. acme.azurecr.io)")]


def test_the_check_is_a_hook_of_the_cloud_description():
    assert CLOUDS["azure"].check_config is check_config


# -- the exchanger: fakes for Entra and ACR ---------------------------------------------------------

class Response:
    """The part of an azure-core HTTP response azure-identity's errors carry."""

    reason, headers, request = "Bad Request", {}, None

    def __init__(self, status: int, body: dict | None):
        self.status_code, self._body = status, body

    def text(self, encoding=None) -> str:
        return json.dumps(self._body) if self._body is not None else "<html>oops</html>"


def entra_error(code: int, status: int = 400, error: str = "invalid_client") -> ClientAuthenticationError:
    body = {"error": error, "error_description": f"AADSTS{code}: No matching federated identity record found. "
            f"Assertion Issuer: '{BROKER}'. Trace ID: t-1 Correlation ID: c-1",
            "error_codes": [code], "timestamp": "2026-01-01 00:00:00Z", "trace_id": "trace-1",
            "correlation_id": "corr-1", "error_uri": "https://login.microsoftonline.com/error?code=1"}
    return ClientAuthenticationError(message="Microsoft Entra ID error", response=Response(status, body))


class AccessToken:
    def __init__(self, token: str, expires_on: int):
        self.token, self.expires_on = token, expires_on


class Entra:
    """The credential factory port: records what it was built with; each get_token calls the
    assertion callback, as ClientAssertionCredential does, then answers from `answers`."""

    def __init__(self, *answers):
        self.answers = list(answers) or [AccessToken(ENTRA_TOKEN, ENTRA_EXPIRES)]
        self.built: list[tuple] = []
        self.assertions: list[str] = []
        self.scopes: list[str] = []
        self.closed = 0

    def __call__(self, tenant_id, client_id, assertion, authority):
        self.built.append((tenant_id, client_id, authority))
        entra = self

        class Credential:
            def get_token(self, scope):
                entra.assertions.append(assertion())
                entra.scopes.append(scope)
                answer = entra.answers.pop(0) if len(entra.answers) > 1 else entra.answers[0]
                if isinstance(answer, Exception):
                    raise answer
                return answer

            def close(self):
                entra.closed += 1

        return Credential()


def refresh_token(exp: int) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln"


class Acr:
    def __init__(self, *answers):
        self.answers = list(answers) or [(200, {"refresh_token": refresh_token(int(NOW) + 3 * 3600)})]
        self.posts: list[tuple[str, dict]] = []

    def __call__(self, url, form):
        self.posts.append((url, dict(form)))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Minter:
    def __init__(self):
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{TOKEN}{self.count}"


def feed(**settings):
    return only_target(name="acr", kind="feed", provider="azure", azure=azure(registry="acme.azurecr.io", **settings))


def account(**settings):
    return only_target(name="sub", kind="account", provider="azure", azure=azure(**settings))


def request(target, minter=None) -> Request:
    return Request(target=target, token=TOKEN, issuer=BROKER, subject=SUBJECT, caller="repo:acme/app:ref:refs/heads/main",
                   mint=minter or Minter())


def exchanger(entra=None, acr=None, sleeps=None, **kwargs) -> AzureExchanger:
    sleeps = [] if sleeps is None else sleeps
    return AzureExchanger(entra or Entra(), acr or Acr(), backoff=Backoff(base=0.5, cap=4.0, sleep=sleeps.append, jitter=lambda: 1.0),
                          propagation=Backoff(attempts=4, base=2.0, cap=8.0, sleep=sleeps.append, jitter=lambda: 1.0),
                          clock=lambda: NOW, **kwargs)


def test_an_account_target_gets_an_entra_access_token_for_its_scope():
    entra = Entra()
    credentials = exchanger(entra).exchange(request(account(authority="login.microsoftonline.us")))
    assert credentials.fields == {"access_token": ENTRA_TOKEN, "token_type": "Bearer", "scope": MANAGEMENT_SCOPE}
    assert credentials.expires_at == ENTRA_EXPIRES
    assert entra.built == [(TENANT, CLIENT, "login.microsoftonline.us")] and entra.scopes == [MANAGEMENT_SCOPE]
    assert entra.closed == 1


def test_a_feed_target_trades_the_registry_token_for_an_acr_refresh_token():
    entra, acr = Entra(), Acr((200, {"refresh_token": refresh_token(int(NOW) + 1800)}))
    credentials = exchanger(entra, acr).exchange(request(feed()))
    assert entra.scopes == [REGISTRY_SCOPE]
    ((url, form),) = acr.posts
    assert url == "https://acme.azurecr.io/oauth2/exchange"
    assert form == {"grant_type": "access_token", "service": "acme.azurecr.io", "tenant": TENANT,
                    "access_token": ENTRA_TOKEN}
    assert credentials.fields["registry"] == "acme.azurecr.io" and credentials.fields["username"] == DOCKER_USERNAME
    assert credentials.fields["password"] == refresh_token(int(NOW) + 1800)
    assert credentials.expires_at == int(NOW) + 1800


def test_the_docker_password_never_outlives_the_entra_token_it_came_from():
    credentials = exchanger().exchange(request(feed()))  # the refresh token says 3 h, Entra's 1 h
    assert credentials.expires_at == ENTRA_EXPIRES


def test_an_acr_endpoint_setting_moves_the_call_but_not_the_service():
    acr = Acr()
    exchanger(acr=acr, acr_endpoint="https://127.0.0.1:8443/").exchange(request(feed()))
    assert acr.posts[0][0] == "https://127.0.0.1:8443/oauth2/exchange" and acr.posts[0][1]["service"] == "acme.azurecr.io"


def test_every_token_request_presents_a_freshly_minted_assertion():
    minter = Minter()
    entra = Entra(entra_error(70021), AccessToken(ENTRA_TOKEN, ENTRA_EXPIRES))
    exchanger(entra).exchange(request(account(), minter))
    assert entra.assertions == [f"{TOKEN}1", f"{TOKEN}2"] and minter.count == 2


def test_a_new_federated_credential_is_given_time_to_propagate():
    sleeps = []
    entra = Entra(entra_error(70021, error="invalid_request"), entra_error(70021), AccessToken(ENTRA_TOKEN, ENTRA_EXPIRES))
    assert exchanger(entra, sleeps=sleeps).exchange(request(account())).fields["access_token"] == ENTRA_TOKEN
    assert sleeps == [2.0, 4.0]


def test_no_matching_federated_credential_is_403_naming_what_was_sent_and_what_to_create():
    sleeps = []
    with pytest.raises(AccessDenied) as e:
        exchanger(Entra(entra_error(70021)), sleeps=sleeps).exchange(request(account()))
    text = e.value.description
    assert len(sleeps) == 3  # four tries, then the refusal
    for part in (BROKER, SUBJECT, "api://AzureADTokenExchange", f"app {CLIENT} in tenant {TENANT}",
                 "oidc-broker trust-policy azure --target acme/sub", "az ad app federated-credential create",
                 "Trace ID trace-1", "Correlation ID corr-1"):
        assert part in text, part
    assert e.value.status == 403


@pytest.mark.parametrize("code, meaning", [
    (700211, "names the issuer"), (700212, "names the audience"), (700213, "names the subject"),
    (7002138, "other letter case"),
])
def test_each_mismatch_is_403_saying_which_part_did_not_match(code, meaning):
    sleeps = []
    with pytest.raises(AccessDenied) as e:
        exchanger(Entra(entra_error(code)), sleeps=sleeps).exchange(request(account()))
    assert meaning in e.value.description and f"AADSTS{code}" in e.value.description
    assert SUBJECT in e.value.description and "trace-1" in e.value.description
    assert sleeps == []  # only "no credential at all" may be propagation


def test_a_case_only_subject_mismatch_is_explained_as_such():
    with pytest.raises(AccessDenied, match="case-sensitively"):
        exchanger(Entra(entra_error(7002138))).exchange(request(account()))


def test_an_assertion_outside_its_window_is_502_pointing_at_the_clock():
    with pytest.raises(CloudError, match="clock") as e:
        exchanger(Entra(entra_error(700024))).exchange(request(account()))
    assert e.value.status == 502 and "corr-1" in e.value.description


def test_an_algorithm_entra_refuses_is_502_naming_rsa():
    with pytest.raises(CloudError, match="RSA"):
        exchanger(Entra(entra_error(5002738))).exchange(request(account()))


@pytest.mark.parametrize("failure", [entra_error(50001, status=503, error="temporarily_unavailable"),
                                     ClientAuthenticationError(message="x", response=Response(500, None)),
                                     ServiceRequestError("connection refused")])
def test_entra_unavailable_is_retried_then_503_with_retry_after(failure):
    sleeps = []
    with pytest.raises(Throttled) as e:
        exchanger(Entra(failure), sleeps=sleeps).exchange(request(account()))
    assert e.value.status == 503 and int(e.value.headers["Retry-After"]) > 0 and len(sleeps) == 2


def test_entra_recovering_within_the_retries_succeeds():
    entra = Entra(ServiceRequestError("reset"), AccessToken(ENTRA_TOKEN, ENTRA_EXPIRES))
    assert exchanger(entra).exchange(request(account())).fields["access_token"] == ENTRA_TOKEN


def test_another_entra_refusal_is_502_with_entras_own_words():
    with pytest.raises(CloudError, match="AADSTS700016") as e:
        exchanger(Entra(entra_error(700016, error="unauthorized_client"))).exchange(request(account()))
    assert e.value.status == 502


def test_acr_refusing_the_entra_token_is_403_saying_which_role_to_grant():
    acr = Acr((401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}))
    with pytest.raises(AccessDenied, match="AcrPull") as e:
        exchanger(acr=acr).exchange(request(feed()))
    assert "UNAUTHORIZED" in e.value.description and CLIENT in e.value.description


def test_acr_failing_is_502_and_acr_unavailable_is_retried_then_503():
    with pytest.raises(CloudError, match="not transient") as e:
        exchanger(acr=Acr((500, None))).exchange(request(feed()))
    assert e.value.status == 502
    sleeps = []
    with pytest.raises(Throttled):
        exchanger(acr=Acr((503, None)), sleeps=sleeps).exchange(request(feed()))
    assert len(sleeps) == 2
    with pytest.raises(Throttled, match="did not answer"):
        exchanger(acr=Acr(OSError("ReadTimeout"))).exchange(request(feed()))
    assert exchanger(acr=Acr((503, None), (200, {"refresh_token": refresh_token(int(NOW) + 60)}))).exchange(
        request(feed())).expires_at == int(NOW) + 60


def test_an_acr_answer_without_a_readable_refresh_token_is_502():
    with pytest.raises(CloudError, match="without a refresh token"):
        exchanger(acr=Acr((200, {"refresh_token": "opaque"}))).exchange(request(feed()))


def test_no_error_carries_a_token():
    for entra, acr in [(Entra(entra_error(70021)), None), (None, Acr((401, None))), (Entra(entra_error(700024)), None)]:
        with pytest.raises(Exception) as e:
            exchanger(entra, acr).exchange(request(feed()))
        assert TOKEN not in str(e.value) and ENTRA_TOKEN not in str(e.value)


def test_a_target_without_its_identity_cannot_be_exchanged():
    with pytest.raises(InvalidTarget, match="azure.client_id"):
        exchanger().exchange(request(only_target(name="x", kind="account", provider="azure",
                                                 azure={"tenant_id": TENANT})))


# -- Request.mint through the real Exchange: one grant per token ------------------------------------

class MintingCloud:
    """A cloud that asks for `tokens` assertions in one exchange, then succeeds or raises `error`."""

    provider = "azure"

    def __init__(self, tokens: int, error: Exception | None = None):
        self.tokens, self.error, self.seen = tokens, error, []

    def exchange(self, request: Request) -> Credentials:
        self.seen = [request.fresh_token() for _ in range(self.tokens)]
        if self.error:
            raise self.error
        return Credentials({"access_token": "a"}, int(NOW), int(NOW) + 3600)


@pytest.fixture
def world(ci, other_rsa_key, clock):
    doc = config_doc()
    space_doc(doc)["targets"].append({"name": "acr", "kind": "feed", "provider": "azure",
                                      "azure": azure(registry="acme.azurecr.io")})
    space_doc(doc)["trust"][1]["targets"].append("acr")
    setup = Setup(ci, other_rsa_key, clock, document=doc)
    return setup, CountingCache(CacheStore(), CacheKms(), CACHE_KEY_ID, clock)


def test_each_further_assertion_is_a_new_token_with_a_grant_of_its_own(world):
    setup, cache = world
    cloud = MintingCloud(3)
    outcome = Exchange(broker=setup.broker, exchanger=cloud, cache=cache).credentials(
        setup.ci.token(caller_claims(jti="c1")), "acme/acr", BROKER)
    jtis = [setup.verify_minted(t, "api://AzureADTokenExchange")["jti"] for t in cloud.seen]
    assert len(set(jtis)) == 3 and jtis[0] == outcome.served.source
    grants = sorted(g.caller_jti for g in setup.store.grants.values())
    assert grants == ["c1", "c1#1", "c1#2"]


def test_a_failed_exchange_withdraws_every_token_it_minted(world):
    setup, cache = world
    cloud = MintingCloud(3, AccessDenied("no federated credential", "azure_no_federated_credential"))
    exchange = Exchange(broker=setup.broker, exchanger=cloud, cache=cache)
    with pytest.raises(AccessDenied):
        exchange.credentials(setup.ci.token(caller_claims(jti="c2")), "acme/acr", BROKER)
    assert setup.store.grants == {}
    cloud.error = None
    exchange.credentials(setup.ci.token(caller_claims(jti="c2")), "acme/acr", BROKER)  # the same CI token again


def test_the_broker_token_of_an_azure_exchange_lives_only_as_long_as_an_assertion_needs(world):
    setup, cache = world
    cloud = MintingCloud(1)
    Exchange(broker=setup.broker, exchanger=AzureExchangerLike(cloud), cache=cache).credentials(
        setup.ci.token(caller_claims(jti="c3")), "acme/acr", BROKER)
    claims = setup.verify_minted(cloud.seen[0], "api://AzureADTokenExchange")
    assert claims["exp"] - claims["iat"] == 300


class AzureExchangerLike:
    """MintingCloud with the Azure exchanger's token lifetime."""

    provider = "azure"

    def __init__(self, cloud):
        self.cloud = cloud
        self.token_lifetime = AzureExchanger(Entra(), Acr()).token_lifetime

    def exchange(self, request):
        return self.cloud.exchange(request)


def test_the_azure_sdk_is_imported_by_the_exchanger_factory_only():
    import subprocess
    import sys
    from pathlib import Path

    layer = Path(__file__).resolve().parents[3] / "layers" / "broker"
    probe = ("import sys, oidc_broker.handlers, oidc_broker.clouds.azure as a\n"
             "assert not [m for m in sys.modules if m.split('.')[0] in ('azure', 'requests')]\n"
             "a.exchanger(None)\nassert 'azure.identity' in sys.modules\n")
    subprocess.run([sys.executable, "-c", probe], check=True, env={"PYTHONPATH": str(layer)})
