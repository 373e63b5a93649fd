"""The seam, proven: a cloud the broker has never heard of, registered in the registry and driven
through configuration validation, /exchange/<cloud> in-process, the cache and the CLI, with no
edit to config, subject, cache, exchange, minting or the CLI (issue 9).

The exchange runs through the real shared handler (handlers.exchange_handler) with the real
Broker, Exchange and CredentialCache over the in-memory ports of fakes.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from types import SimpleNamespace

import pytest
from aws_lambda_powertools import Logger
from builders import BROKER, caller_claims, config_doc, config_problems as problems, space_doc
from fakes import CACHE_KEY_ID, CacheKms, CacheStore, CountingCache, FakeExchanger, Setup

from oidc_broker import clouds, validation
from oidc_broker.checks import one_of
from oidc_broker.clouds import Cloud, Setting, refresh_at
from oidc_broker.exchange import Exchange
from oidc_broker.handlers import exchange_handler
from oidc_broker_cli.main import main as cli

ACCOUNT = re.compile(r"acct-\d{1,6}")


def fake_trust(issuer: str, target, subjects: list[str]) -> dict:
    return {"issuer": issuer, "account": target.setting("account"), "audience": target.audience, "subjects": subjects}


FAKE = Cloud(
    name="fake",
    title="Fake Cloud",
    settings={
        "account": Setting(ACCOUNT, "an account such as acct-1"),
        "tier": Setting(one_of("gold", "silver"), "gold or silver", default="silver", kinds=("feed",)),
        "refresh_at": refresh_at(0.25),
    },
    default_audience=lambda settings: f"fake://{settings['account']}" if "account" in settings else None,
    max_subject_bytes=40,
    trust_setup=fake_trust,
)


@pytest.fixture(autouse=True)
def fake_cloud():
    with clouds.registered(FAKE) as cloud:
        yield cloud
    assert "fake" not in clouds.CLOUDS


def fake_doc(**fake) -> dict:
    doc = config_doc()
    space_doc(doc)["targets"].append({"name": "fk", "kind": "feed", "provider": "fake",
                                      "fake": {"account": "acct-1", **fake}})
    space_doc(doc)["trust"][1]["targets"].append("fk")
    return doc


# -- validation: its settings, defaults, audience and subject limit -------------------------------

def test_a_fake_target_gets_the_clouds_audience_defaults_and_subject_limit():
    target = validation.parse(fake_doc()).target("acme/fk")
    assert (target.provider, target.audience, target.max_subject_bytes) == ("fake", "fake://acct-1", 40)
    assert (target.setting("tier"), target.setting("refresh_at"), target.settings) == ("silver", 0.25, {"account": "acct-1"})


def test_a_fake_targets_settings_are_checked_by_the_clouds_own_rules():
    assert problems(fake_doc(account="nope", tier="bronze"))[:2] == [
        ("spaces[0].targets[2].fake.account", "must be an account such as acct-1"),
        ("spaces[0].targets[2].fake.tier", "must be gold or silver"),
    ]
    assert problems(fake_doc(colour="red"))[0][0] == "spaces[0].targets[2].fake.colour"


def test_a_setting_for_one_kind_of_target_is_refused_on_another_and_has_no_default_there():
    doc = fake_doc()
    space_doc(doc)["targets"][2]["kind"] = "account"
    space_doc(doc)["trust"][1]["targets"].remove("fk")
    assert validation.parse(doc).target("acme/fk").setting("tier") is None
    space_doc(doc)["targets"][2]["fake"]["tier"] = "gold"
    assert problems(doc) == [("spaces[0].targets[2].fake.tier", "applies to feed targets only")]


def test_the_registry_names_the_fake_cloud_in_provider_and_settings_refusals():
    doc = config_doc()
    space_doc(doc)["targets"][1].update(provider="nope")
    assert ("spaces[0].targets[1].provider", "must be one of aws, azure, gcp, fake") in problems(doc)
    doc = config_doc()
    space_doc(doc)["targets"][1]["fake"] = {"account": "acct-1"}
    assert problems(doc) == [("spaces[0].targets[1].fake", "settings for fake on a aws target")]


def test_a_fake_target_without_an_account_must_name_its_audience():
    doc = fake_doc()
    del space_doc(doc)["targets"][2]["fake"]
    assert problems(doc)[0] == ("spaces[0].targets[2].audience", "is required for this provider")
    space_doc(doc)["targets"][2]["audience"] = "mine"
    assert validation.parse(doc).target("acme/fk").audience == "mine"


def test_the_clouds_subject_limit_is_enforced_when_configured():
    doc = config_doc(spaces=[{"name": "s" * 20, "targets": [{"name": "f" * 20, "kind": "feed", "provider": "fake",
                                                             "fake": {"account": "acct-1"}}]}])
    assert problems(doc) == [("spaces[0].targets[0].subject", "cannot fit the 40-byte subject limit for fake targets")]


def test_a_cloud_without_a_refresh_fraction_cannot_be_described():
    with pytest.raises(ValueError, match="refresh_at"):
        Cloud(name="nocache", title="No Cache", settings={})


# -- /exchange/fake through the shared handler, and the cache -------------------------------------

class Context:
    function_name = "ExchangeFakeFunction"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ExchangeFakeFunction"
    aws_request_id = "req-1"


def event(token: str, target: str = "acme/fk") -> dict:
    return {
        "version": "2.0", "routeKey": "POST /exchange/fake", "rawPath": "/exchange/fake",
        "headers": {"authorization": f"Bearer {token}", "content-type": "application/json"},
        "requestContext": {"domainName": "broker.example.com", "requestId": "r", "http": {"method": "POST"}},
        "body": base64.b64encode(json.dumps({"target": target}).encode()).decode(), "isBase64Encoded": True,
    }


@pytest.fixture
def world(ci, other_rsa_key, clock, monkeypatch):
    monkeypatch.setenv("ISSUER_URL", BROKER)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OidcBroker")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "oidc-broker")
    setup = Setup(ci, other_rsa_key, clock, document=fake_doc())
    exchanger = FakeExchanger(setup, clock, provider="fake", fields={"registry": "fake.example", "password": "pw"})
    cache = CountingCache(CacheStore(), CacheKms(), CACHE_KEY_ID, clock)
    exchange = Exchange(broker=setup.broker, exchanger=exchanger, cache=cache)
    logs = io.StringIO()  # a logger of its own: Powertools keeps one logger per service name per process
    logger = Logger(service=f"fake-{uuid.uuid4().hex}", stream=logs)
    return SimpleNamespace(setup=setup, exchanger=exchanger, cache=cache, clock=clock, logs=logs,
                           handler=exchange_handler("fake", exchange=exchange, logger=logger))


def log_lines(world, capsys) -> list[dict]:
    """The handler's log lines and its metrics (which Powertools prints to standard output)."""
    text = world.logs.getvalue() + capsys.readouterr().out
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def call(world, jti: str, target: str = "acme/fk", **claims) -> tuple[int, dict]:
    token = world.setup.ci.token(caller_claims(world.clock.now, jti=jti, **claims))
    response = world.handler(event(token, target), Context())
    return response["statusCode"], json.loads(response["body"])


def test_exchange_fake_serves_the_clouds_credentials_then_the_cache_until_its_refresh_fraction(capsys, world):
    status, body = call(world, "a")
    assert status == 200 and (body["registry"], body["password"]) == ("fake.example", "pw")
    assert body["expires_at"].endswith("Z")
    (request,) = world.exchanger.requests
    assert (request.subject, request.target.audience) == ("space:acme:feed:fk", "fake://acct-1")

    world.clock.advance(899)  # refresh_at 0.25 of a 3600 s lifetime
    assert call(world, "b") == (200, body) and len(world.exchanger.requests) == 1  # a hit
    world.clock.advance(1)
    assert call(world, "c")[0] == 200 and len(world.exchanger.requests) == 2  # refreshed

    lines = log_lines(world, capsys)
    issued = [r for r in lines if r.get("message") == "credentials issued"]
    assert [r["from_cache"] for r in issued] == [False, True, False]
    assert {r["caller_subject"] for r in issued} == {"repo:acme/app:ref:refs/heads/main"}
    outcomes = [(r["cloud"], r["outcome"]) for r in lines if "Exchanges" in r]
    assert outcomes == [("fake", "exchanged"), ("fake", "cached"), ("fake", "exchanged")]


def test_exchange_fake_refuses_a_target_of_another_cloud_and_logs_it_under_the_clouds_title(capsys, world):
    status, body = call(world, "a", target="acme/images")
    assert (status, body["error"]) == (400, "invalid_target")
    assert body["error_description"] == "target 'acme/images' has provider aws; /exchange/fake serves fake targets only"
    refused = [r for r in log_lines(world, capsys) if r.get("message") == "Fake Cloud exchange refused"]
    assert refused and refused[0]["reason"] == "wrong_provider"
    assert world.cache.asked == 0 and not world.exchanger.requests


def test_a_refused_caller_gets_nothing_from_the_fake_cloud(world):
    status, body = call(world, "a", repository="evil/app")
    assert (status, body["error"]) == (400, "invalid_grant")
    assert not world.exchanger.requests and not world.setup.store.grants


# -- the CLI: trust-policy lists every cloud with a trust setup --------------------------------------

def test_trust_policy_describes_a_fake_target_through_the_clouds_trust_setup(tmp_path, capsys):
    path = tmp_path / "broker.json"
    path.write_text(json.dumps(fake_doc()))
    assert cli(["trust-policy", "fake", "--target", "acme/fk", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"issuer": BROKER, "account": "acct-1", "audience": "fake://acct-1",
                                                   "subjects": ["space:acme:feed:fk"]}
