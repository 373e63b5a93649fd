"""oidc_broker/exchange.py: authorize on every request, then serve from the cache or exchange once.

The broker is the real one over in-memory ports, the cache the real one over the cache's fakes,
and the exchanger a counting fake that verifies the broker token it is given (all in fakes.py).
"""

from __future__ import annotations

import pytest
from builders import BROKER, caller_claims, config_doc, space_doc
from fakes import CACHE_KEY_ID, CacheKms, CacheStore, CountingCache, FakeExchanger, Setup

from oidc_broker.errors import AccessDenied, InvalidGrant, InvalidTarget
from oidc_broker.exchange import Exchange

SUBJECT = "space:acme:environment:production:account:prod"


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
    cache = CountingCache(CacheStore(), CacheKms(), CACHE_KEY_ID, clock)
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


# -- refill: a binding's credentials with no caller --------------------------------------------------

def test_refill_signs_for_the_actor_exchanges_and_stores_what_requests_are_then_served(world):
    from oidc_broker.minting import Actor

    setup, exchanger, cache, exchange = world
    first = exchange.credentials(token(setup, "a"), "acme/prod", BROKER)
    actor = Actor(issuer=BROKER, subject="scheduled-refresh", jti="refresh-1", trust_rule="refresh")
    refilled = exchange.refill(first.authorization.binding, BROKER, actor)
    assert not refilled.from_cache and len(exchanger.requests) == 2
    assert exchanger.requests[1].caller == "scheduled-refresh" and exchanger.requests[1].subject == SUBJECT
    served = exchange.credentials(token(setup, "b"), "acme/prod", BROKER)
    assert served.served.from_cache and served.served.source == refilled.source


def test_a_refused_refill_withdraws_its_grant(world):
    from oidc_broker.minting import Actor

    setup, exchanger, cache, exchange = world
    binding = setup.broker.authorize(token(setup), "acme/prod", BROKER).binding
    exchanger.error = AccessDenied("role X does not trust subject S", "aws_access_denied")
    with pytest.raises(AccessDenied):
        exchange.refill(binding, BROKER, Actor(issuer=BROKER, subject="scheduled-refresh", jti="r", trust_rule="refresh"))
    assert not setup.store.grants and len(setup.store.withdrawn) == 1
