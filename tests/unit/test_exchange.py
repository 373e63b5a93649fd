"""oidc_broker/exchange.py: authorize on every request, then serve from the cache or exchange once.

The broker is the real one over in-memory ports (test_minting's), the cache the real one over
test_cache's fakes, and the exchanger a counting fake that verifies the broker token it is given.
"""

from __future__ import annotations

import pytest
from builders import BROKER, caller_claims, config_doc, space_doc
from test_cache import FakeKms, FakeStore
from test_minting import Setup

from oidc_broker.cache import CredentialCache
from oidc_broker.clouds import Credentials, Request
from oidc_broker.errors import AccessDenied, InvalidGrant, InvalidTarget
from oidc_broker.exchange import Exchange

SUBJECT = "space:acme:environment:production:account:prod"


class FakeExchanger:
    provider = "aws"

    def __init__(self, setup: Setup, clock):
        self.setup = setup
        self.clock = clock
        self.requests: list[Request] = []
        self.error: Exception | None = None

    def exchange(self, request: Request) -> Credentials:
        # What the cloud checks: the broker token verifies against the published key.
        claims = self.setup.verify_minted(request.token, request.target.audience)
        assert claims["sub"] == request.subject
        self.requests.append(request)
        if self.error:
            raise self.error
        now = int(self.clock())
        return Credentials({"access_key_id": "ASIA1", "secret_access_key": "secret", "session_token": "t"}, now, now + 3600)


class CountingCache(CredentialCache):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = 0

    def get(self, target, subject, fill):
        self.asked += 1
        return super().get(target, subject, fill)


@pytest.fixture
def world(ci, other_rsa_key, clock):
    doc = config_doc()
    space_doc(doc)["targets"].append({"name": "acr", "kind": "feed", "provider": "azure",
                                      "azure": {"tenant_id": "11111111-2222-3333-4444-555555555555",
                                                "client_id": "66666666-7777-8888-9999-000000000000",
                                                "registry": "acme.azurecr.io"}})
    space_doc(doc)["trust"][1]["targets"].append("acr")
    setup = Setup(ci, other_rsa_key, clock, document=doc)
    exchanger = FakeExchanger(setup, clock)
    cache = CountingCache(FakeStore(), FakeKms(), "arn:aws:kms:us-east-1:123456789012:key/cache", clock)
    return setup, exchanger, cache, Exchange(broker=setup.broker, exchanger=exchanger, cache=cache)


def token(setup, jti: str = "caller-jti-1", **claims) -> str:
    return setup.ci.token(caller_claims(jti=jti, **claims))


def test_a_miss_mints_records_the_grant_and_exchanges_the_broker_token(world):
    setup, exchanger, cache, exchange = world
    outcome = exchange.credentials(token(setup), "acme/prod", BROKER)
    (request,) = exchanger.requests
    assert (request.subject, request.caller, request.issuer) == (SUBJECT, "repo:acme/app:ref:refs/heads/main", BROKER)
    (grant,) = setup.store.grants.values()
    assert grant.subject == SUBJECT and grant.token_jti == outcome.served.source
    assert not outcome.served.from_cache


def test_a_hit_records_its_own_grant_naming_the_exchange_that_obtained_the_credentials(world):
    setup, exchanger, cache, exchange = world
    first = exchange.credentials(token(setup, "a"), "acme/prod", BROKER)
    second = exchange.credentials(token(setup, "b"), "acme/prod", BROKER)
    assert second.served.from_cache and len(exchanger.requests) == 1
    grants = {g.caller_jti: g for g in setup.store.grants.values()}
    assert grants["b"].token_jti == "cached:" + first.served.source
    assert grants["b"].token_expires_at == first.credentials.expires_at
    assert len(setup.signer.calls) == 1  # nothing signed for the hit


def test_a_refused_caller_never_reaches_the_cache(world):
    setup, exchanger, cache, exchange = world
    exchange.credentials(token(setup, "a"), "acme/prod", BROKER)
    asked = cache.asked
    with pytest.raises(InvalidGrant):
        exchange.credentials(token(setup, "b", repository="evil/app"), "acme/prod", BROKER)
    assert cache.asked == asked


def test_a_replayed_caller_token_is_refused_even_when_the_cache_would_serve(world):
    setup, exchanger, cache, exchange = world
    same = token(setup, "once")
    exchange.credentials(same, "acme/prod", BROKER)
    with pytest.raises(InvalidGrant, match="already used"):
        exchange.credentials(same, "acme/prod", BROKER)


def test_a_refused_exchange_withdraws_the_grant_so_the_caller_may_retry(world):
    setup, exchanger, cache, exchange = world
    exchanger.error = AccessDenied("role X does not trust subject S", "aws_access_denied")
    same = token(setup, "retry")
    with pytest.raises(AccessDenied):
        exchange.credentials(same, "acme/prod", BROKER)
    assert not setup.store.grants and len(setup.store.withdrawn) == 1
    exchanger.error = None
    assert exchange.credentials(same, "acme/prod", BROKER).credentials.fields["access_key_id"] == "ASIA1"


def test_a_target_of_another_cloud_is_refused_after_the_caller_is_authorized(world):
    setup, exchanger, cache, exchange = world
    with pytest.raises(InvalidTarget, match="provider azure"):
        exchange.credentials(token(setup), "acme/acr", BROKER)
    with pytest.raises(InvalidGrant):  # an unauthorized caller learns nothing about the target
        exchange.credentials(token(setup, repository="evil/app"), "acme/acr", BROKER)
    assert cache.asked == 0 and not setup.store.grants


def test_callers_whose_subjects_differ_never_share_credentials(world):
    setup, exchanger, cache, exchange = world
    exchange.credentials(token(setup, "a"), "acme/prod", BROKER)
    other = exchange.credentials(token(setup, "b", environment="staging"), "acme/prod", BROKER)
    assert not other.served.from_cache and len(exchanger.requests) == 2


def test_authorizing_a_caller_records_and_signs_nothing(world):
    setup, exchanger, cache, exchange = world
    auth = setup.broker.authorize(token(setup), "acme/prod", BROKER)
    assert str(auth.subject) == SUBJECT and auth.rule.name == "deploy"
    assert not setup.store.grants and not setup.signer.calls
