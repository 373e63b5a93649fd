"""Fetching callers' key sets over real HTTP, with a clock the test turns: rotation, faults, sharing."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hostile_issuer import HostileIssuer
from oidc_broker import presets
from oidc_broker.callers import FetchError, HttpFetcher, IssuerKeys
from oidc_broker.config import TrustedIssuer


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class SharedTable:
    """The table's shared key sets, in memory (the Store methods of the same names)."""

    def __init__(self):
        self.items = {}
        self.reads = 0

    def get_issuer_keys(self, issuer):
        self.reads += 1
        return self.items.get(issuer)

    def put_issuer_keys(self, issuer, keys, fetched_at):
        if issuer not in self.items or self.items[issuer][0] < fetched_at:
            self.items[issuer] = (fetched_at, keys)


@pytest.fixture(scope="module")
def hostile():
    issuer = HostileIssuer()
    yield issuer
    issuer.stop()


def trusted(hostile, name: str) -> TrustedIssuer:
    return TrustedIssuer(name=name, issuer=hostile.url(name), preset=presets.GITHUB)


def keys_for(clock, shared=None, timeout=5.0) -> IssuerKeys:
    return IssuerKeys(HttpFetcher(allow_loopback_http=True, timeout=timeout), clock, shared=shared)


def test_a_rotated_in_key_is_picked_up_once_the_cooldown_has_passed(hostile):
    clock = Clock()
    keys = keys_for(clock)
    issuer = trusted(hostile, "rotating")
    first_kid = hostile.rotating_kid
    assert keys.key(issuer, first_kid) is not None
    hostile.rotating_key, hostile.rotating_kid = rsa.generate_private_key(public_exponent=65537, key_size=2048), "rot-new"
    assert keys.key(issuer, "rot-new") is None  # within the cooldown: no refetch
    clock.now += 61
    assert keys.key(issuer, "rot-new") is not None
    assert keys.fetches == 2


def test_the_last_good_set_survives_when_the_issuer_goes_down(hostile):
    clock = Clock()
    fetcher = HttpFetcher(allow_loopback_http=True)
    up = {"ok": True}

    def flaky(url):
        if not up["ok"]:
            raise FetchError("down")
        return fetcher(url)

    keys = IssuerKeys(flaky, clock)
    issuer = trusted(hostile, "gh")
    assert keys.key(issuer, "rsa-1") is not None
    up["ok"] = False
    clock.now += 10_000  # past the cache lifetime: a refetch is attempted and fails
    assert keys.key(issuer, "rsa-1") is not None


def test_an_empty_key_set_is_never_cached(hostile):
    clock = Clock()
    keys = keys_for(clock)
    issuer = trusted(hostile, "empty")
    assert keys.key(issuer, "rsa-1") is None
    clock.now += 61
    assert keys.key(issuer, "rsa-1") is None
    assert keys.fetches == 2  # nothing was kept between the two attempts


def test_a_slow_issuer_is_given_up_on_after_the_timeout(hostile):
    with pytest.raises(FetchError):
        HttpFetcher(allow_loopback_http=True, timeout=0.5)(hostile.url("slow") + "/jwks")


def test_a_huge_key_set_is_refused(hostile):
    with pytest.raises(FetchError, match="larger than"):
        HttpFetcher(allow_loopback_http=True)(hostile.url("huge") + "/jwks")


def test_a_redirect_to_another_host_is_refused(hostile):
    with pytest.raises(FetchError, match="another host"):
        HttpFetcher(allow_loopback_http=True)(hostile.url("redirect") + "/jwks")


def test_plain_http_is_refused_outside_local_mode(hostile):
    with pytest.raises(FetchError, match="https only"):
        HttpFetcher()(hostile.url("gh") + "/jwks")


def test_discovery_naming_another_issuer_is_refused(hostile):
    clock = Clock()
    keys = keys_for(clock)
    assert keys.key(trusted(hostile, "liar"), "rsa-1") is None
    assert hostile.fetches.get("liar/jwks", 0) == 0


def test_a_key_set_fetched_by_one_container_serves_another_without_a_fetch(hostile):
    clock, table = Clock(), SharedTable()
    issuer = trusted(hostile, "gh")
    first, second = keys_for(clock, table), keys_for(clock, table)
    assert first.key(issuer, "rsa-1") is not None
    assert second.key(issuer, "rsa-1") is not None
    assert (first.fetches, second.fetches) == (1, 0)


def test_made_up_kids_read_the_shared_table_at_most_once_per_recheck(hostile):
    clock, table = Clock(), SharedTable()
    issuer = trusted(hostile, "gh")
    keys = keys_for(clock, table)
    assert keys.key(issuer, "rsa-1") is not None
    reads = table.reads
    for i in range(50):
        assert keys.key(issuer, f"fake-{i}") is None
    assert table.reads - reads <= 1
    assert keys.fetches == 1
