"""Two simulated days of scheduled refreshes and pipeline requests, per cloud, with a clock passed in.

ECR registry tokens live 12 hours (a 12-hour role session), ACR refresh tokens 75 minutes to 3
hours, Google access tokens an hour. The refresher runs every 5 minutes and a pipeline asks for
credentials every 150 seconds, through the real broker, cache, Exchange and refresher over the
in-memory ports (fakes.py); each cloud is a fake that verifies the broker token and can go down.
For an hour the cloud is down: nothing still valid is lost, nothing expired is served.
"""

from __future__ import annotations

import pytest
from builders import BROKER, NOW, caller_claims, config_doc
from fakes import CACHE_KEY_ID, CacheKms, CacheStore, Setup
from test_refresh import Cloud

from oidc_broker import refresh
from oidc_broker.cache import EXPIRY_MARGIN, CredentialCache
from oidc_broker.errors import Throttled
from oidc_broker.exchange import Exchange

DAY = 86400
RUN, ASK = 300, 150  # the refresher's rate; how often a pipeline asks
OUTAGE = (30 * 3600, 31 * 3600)  # from hour 30 to hour 31 the cloud is down

CLOUDS = {
    "aws": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/pull", "region": "us-east-1", "session_duration": "12h"}},
    "azure": {"azure": {"tenant_id": "11111111-2222-3333-4444-555555555555",
                        "client_id": "66666666-7777-8888-9999-000000000000", "registry": "acme.azurecr.io"}},
    "gcp": {"gcp": {"workload_identity_provider":
                    "projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/broker",
                    "registry": "europe-docker.pkg.dev"}},
}


def document(provider: str) -> dict:
    doc = config_doc()
    space = doc["spaces"][0]
    space["targets"] = [{"name": "feed", "kind": "feed", "provider": provider, "refresh": True, **CLOUDS[provider]}]
    space["trust"] = [{"name": "pull", "issuer": "ci", "claims": {"repository": "acme/app"}, "targets": ["feed"]}]
    return doc


@pytest.mark.parametrize(("provider", "lifetime", "outlives_the_outage"), [
    ("aws", 12 * 3600, True),  # ECR
    ("azure", 3 * 3600, True), ("azure", 75 * 60, False),  # ACR, as long as Entra allows and as observed
    ("gcp", 3600, False),  # Google
], ids=["ecr-12h", "acr-3h", "acr-75m", "google-1h"])
def test_two_days_of_requests_are_served_from_the_cache_and_an_hour_long_outage_loses_nothing_valid(
        ci, other_rsa_key, clock, provider, lifetime, outlives_the_outage):
    setup = Setup(ci, other_rsa_key, clock, document=document(provider))
    cloud = Cloud(setup, clock, provider, lifetime)
    store = CacheStore()
    exchange = Exchange(broker=setup.broker, exchanger=cloud, cache=CredentialCache(store, CacheKms(), CACHE_KEY_ID, clock))
    refresher = refresh.Refresher(config=lambda: setup.config, issuer=lambda: BROKER, entries=store.cache_entries,
                                  exchange_for=lambda name: exchange, clock=clock, policy=refresh.Policy(rate=RUN))
    target = setup.config.target("acme/feed")
    must_remain = (1 - float(target.setting("refresh_at"))) * lifetime
    served = fallback = refused = 0
    newest_expiry = 0  # of the newest credentials cached
    for t in range(0, 2 * DAY, ASK):
        clock.now = NOW + t
        down = OUTAGE[0] <= t < OUTAGE[1]
        cloud.error = Throttled("the cloud is unavailable", f"{provider}_unavailable", 2) if down else None
        if t % RUN == 0:
            refresher.run()
        newest_expiry = max([newest_expiry, *(e["expires_at"] for e in store.cache_entries("acme/feed"))])
        before = len(cloud.requests)
        token = setup.ci.token(caller_claims(now=clock(), jti=f"ci-{t}"))
        try:
            outcome = exchange.credentials(token, "acme/feed", BROKER)
        except Throttled:
            # Only when nothing valid was left: the newest credentials were within the margin of expiry.
            assert down and newest_expiry - clock() < EXPIRY_MARGIN, t
            refused += 1
            continue
        credentials = outcome.credentials
        remaining = credentials.expires_at - clock()
        assert remaining >= EXPIRY_MARGIN, t  # never expired, never about to
        if down or OUTAGE[1] <= t < OUTAGE[1] + RUN:  # the outage, and until the next run after it
            fallback += outcome.served.fallback is not None
            continue
        # Always from the cache, with the configured share of the lifetime still ahead.
        assert outcome.served.from_cache and len(cloud.requests) == before, t
        assert remaining >= must_remain, (t, remaining)
        served += 1
    assert served == sum(1 for t in range(0, 2 * DAY, ASK) if not OUTAGE[0] <= t < OUTAGE[1] + RUN)
    if outlives_the_outage:
        assert refused == 0
    else:  # the last good credentials were served past their share until they ran out, then 503
        assert fallback > 0 and refused > 0
    # Renewals are bounded: one per served share less the lead, never one per request.
    lead = min(2 * RUN, lifetime / 4)
    assert cloud.issued <= 2 * DAY / (lifetime / 2 - lead - RUN) + 3
