"""oidc_broker/cache.py: hits, misses, refresh, single flight, and nothing readable at rest.

Expiry is driven by a settable clock; the store and KMS are in-memory fakes (fakes.py) with the
same conditional-write semantics, except the at-rest test, which uses moto's DynamoDB and KMS.
"""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from builders import NOW, config_doc, space_doc
from fakes import CACHE_KEY_ID, SECRET, CacheKms, CacheStore, Exchanges, kms_error
from moto import mock_aws

from oidc_broker import config
from oidc_broker.cache import EXPIRY_MARGIN, USE_RECORDED_EVERY, CacheUnavailable, CredentialCache, fingerprint
from oidc_broker.errors import Throttled
from oidc_broker.model import Binding
from oidc_broker.store import Store
from oidc_broker.subject import Subject

SUBJECT = "space:acme:environment:production:account:prod"
OTHER = SUBJECT.replace("production", "staging")
KEY_ID = CACHE_KEY_ID


def targets(**aws_settings):
    doc = config_doc()
    space_doc(doc)["targets"][0]["aws"].update(aws_settings)
    parsed = config.parse(doc)
    return parsed.target("acme/prod")


def bind(target, subject: str = SUBJECT) -> Binding:
    return Binding(target, Subject.parse(subject))


@pytest.fixture
def binding():
    return bind(targets())


@pytest.fixture
def parts(clock):
    return CacheStore(), CacheKms(), Exchanges(clock)


def cache_of(store, kms, clock, **kwargs) -> CredentialCache:
    return CredentialCache(store, kms, KEY_ID, clock, **kwargs)


# -- hit, miss, refresh ------------------------------------------------------------------------

def test_a_miss_exchanges_and_the_next_request_is_served_from_the_cache(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    first = cache.get(binding, fill)
    second = cache.get(binding, fill)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert fill.calls == 1
    assert second.credentials == first.credentials
    assert dict(second.credentials.fields) == dict(first.credentials.fields)
    assert second.source == "jti-1"


def test_an_entry_is_served_until_half_its_lifetime_then_refreshed(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    clock.advance(1799)
    assert cache.get(binding, fill).from_cache
    clock.advance(1)
    refreshed = cache.get(binding, fill)
    assert not refreshed.from_cache and fill.calls == 2
    assert refreshed.credentials.issued_at == NOW + 1800


def test_a_target_chooses_how_much_lifetime_must_remain(parts, clock):
    store, kms, fill = parts
    binding = bind(targets(refresh_at=0.8))
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    clock.advance(2879)
    assert cache.get(binding, fill).from_cache
    clock.advance(1)
    assert not cache.get(binding, fill).from_cache


def test_refresh_at_zero_never_serves_from_the_cache(parts, clock):
    store, kms, fill = parts
    binding = bind(targets(refresh_at=0))
    cache = cache_of(store, kms, clock)
    assert [cache.get(binding, fill).from_cache for _ in range(3)] == [False, False, False]
    assert fill.calls == 3 and not store.items and kms.generated == 0


def test_credentials_without_enough_lifetime_are_served_but_not_cached(binding, parts, clock):
    store, kms, _ = parts
    fill = Exchanges(clock, lifetime=0)
    served = cache_of(store, kms, clock).get(binding, fill)
    assert served.credentials.fields["secret_access_key"] == SECRET
    assert served.not_stored and not store.items


def test_entries_are_kept_per_subject(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    other = cache.get(bind(binding.target, OTHER), fill)
    assert not other.from_cache and fill.calls == 2


def test_an_edited_target_never_serves_the_old_targets_credentials(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    edited = bind(targets(role_arn="arn:aws:iam::123456789012:role/other"))
    assert fingerprint(edited.target) != fingerprint(binding.target)
    assert not cache.get(edited, fill).from_cache


# -- single flight -------------------------------------------------------------------------------

def _race(caches, binding, fill, n=8):
    results, errors = [], []
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            results.append(caches[i % len(caches)].get(binding, fill))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    assert fill.started.wait(5)
    time.sleep(0.05)  # let the other requests reach the lock before the exchange completes
    fill.release.set()
    for t in threads:
        t.join(5)
    assert not errors, errors
    return results


def test_concurrent_misses_in_one_process_make_one_exchange(binding):
    store, kms, fill = CacheStore(), CacheKms(), Exchanges(time.time)
    fill.release = threading.Event()
    cache = cache_of(store, kms, time.time, poll=0.005)
    results = _race([cache], binding, fill)
    assert fill.calls == 1
    assert sum(not r.from_cache for r in results) == 1 and len(results) == 8


def test_concurrent_misses_in_two_containers_make_one_exchange(binding):
    store, kms, fill = CacheStore(), CacheKms(), Exchanges(time.time)
    fill.release = threading.Event()
    containers = [cache_of(store, kms, time.time, poll=0.005, owner=name) for name in ("a", "b")]
    results = _race(containers, binding, fill)
    assert fill.calls == 1 and len(results) == 8
    assert not store.locks  # the lease is released after the fill


def test_a_request_waiting_on_another_containers_fill_gives_up_with_503(binding, parts, clock):
    store, kms, fill = parts
    store.lock_credentials_fill(binding, "other-container", int(clock()), int(clock()) + 15)
    cache = cache_of(store, kms, clock, wait=1.0, poll=0.25, sleep=clock.advance)
    with pytest.raises(Throttled) as refused:
        cache.get(binding, fill)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    assert fill.calls == 0


def test_a_lease_left_by_a_dead_container_is_taken_over_once_it_expires(binding, parts, clock):
    store, kms, fill = parts
    store.lock_credentials_fill(binding, "crashed", int(clock()) - 30, int(clock()) - 15)
    assert not cache_of(store, kms, clock).get(binding, fill).from_cache
    assert fill.calls == 1 and not store.locks


def test_a_failed_exchange_releases_the_lease_and_caches_nothing(binding, parts, clock):
    store, kms, fill = parts
    fill.error = RuntimeError("AccessDenied")
    with pytest.raises(RuntimeError):
        cache_of(store, kms, clock).get(binding, fill)
    assert not store.locks and not store.items


# -- encryption ------------------------------------------------------------------------------------

def test_kms_unavailable_fails_with_503_before_anything_is_exchanged(binding, parts, clock):
    store, kms, fill = parts
    kms.error = kms_error("KMSInternalException")
    with pytest.raises(CacheUnavailable) as refused:
        cache_of(store, kms, clock).get(binding, fill)
    assert refused.value.status == 503 and "KMSInternalException" in refused.value.description
    assert "Retry-After" in refused.value.headers
    assert fill.calls == 0 and not store.items and not store.locks


def test_kms_unavailable_when_reading_a_cached_entry_is_503(binding, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(binding, fill)
    kms.error = kms_error("DependencyTimeoutException")
    with pytest.raises(CacheUnavailable):
        cache_of(store, kms, clock).get(binding, fill)  # another container: no data key in memory
    assert fill.calls == 1


def test_an_entry_whose_expiry_was_stretched_does_not_decrypt_and_is_refilled(binding, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(binding, fill)
    (item,) = store.items.values()
    item["expires_at"] += 86400
    assert not cache_of(store, kms, clock).get(binding, fill).from_cache
    assert fill.calls == 2


def test_an_entry_moved_to_another_subject_does_not_decrypt(binding, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(binding, fill)
    other = bind(binding.target, OTHER)
    store.items[other.key] = store.items[binding.key]
    assert not cache_of(store, kms, clock).get(other, fill).from_cache


def test_data_keys_are_bound_to_the_target_and_subject(binding, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(binding, fill)
    ((_, context),) = kms.keys.values()
    assert context == {"purpose": "oidc-broker credential cache", "target": "acme/prod", "subject": SUBJECT}


def moto_table():
    """moto's DynamoDB table and KMS key, as the stack's (inside mock_aws): (client, kms, key ARN, Store)."""
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(
        TableName="t", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
    )
    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    return dynamodb, kms, key_id, Store(dynamodb, "t")


@mock_aws
def test_nothing_readable_is_stored_and_another_container_decrypts_with_kms(binding, clock):
    dynamodb, kms, key_id, store = moto_table()
    fill = Exchanges(clock)
    first = CredentialCache(store, kms, key_id, clock).get(binding, fill)

    items = dynamodb.scan(TableName="t")["Items"]
    assert [i["sk"]["S"] for i in items] == [f"CREDENTIALS#{SUBJECT}"]  # the fill lease is gone
    raw = repr(items).encode()
    for secret in first.credentials.fields.values():
        assert secret.encode() not in raw
        assert all(secret.encode() not in bytes(v["B"]) for v in items[0].values() if "B" in v)
    assert int(items[0]["ttl"]["N"]) == first.credentials.expires_at

    second = CredentialCache(store, kms, key_id, clock).get(binding, fill)
    assert second.from_cache and dict(second.credentials.fields) == dict(first.credentials.fields)
    assert fill.calls == 1


@mock_aws
def test_the_table_lists_a_targets_entries_with_one_query_and_notes_uses_without_overwriting_a_newer_fill(clock):
    _, kms, key_id, store = moto_table()
    fill = Exchanges(clock, lifetime=12 * 3600)
    cache = CredentialCache(store, kms, key_id, clock)
    prod, staging = bind(targets()), bind(targets(), OTHER)
    cache.get(prod, fill)
    cache.refill(staging, fill)
    entries = sorted(store.cache_entries("acme/prod"), key=lambda e: e["subject"])
    assert entries == [
        {"subject": SUBJECT, "fingerprint": fingerprint(prod.target), "issued_at": NOW, "expires_at": NOW + 12 * 3600,
         "last_used_at": NOW},
        {"subject": OTHER, "fingerprint": fingerprint(prod.target), "issued_at": NOW, "expires_at": NOW + 12 * 3600},
    ]
    assert store.cache_entries("acme/other") == []
    clock.advance(USE_RECORDED_EVERY)
    assert cache.get(prod, fill).from_cache
    assert store.cached_credentials(prod)["last_used_at"] == NOW + USE_RECORDED_EVERY
    # A use noted from a copy read before another fill replaced the entry is not written.
    stale = store.cached_credentials(prod)
    cache.refill(prod, fill)
    store.mark_cached_credentials_used(prod, stale, int(clock()) + 1)
    assert store.cached_credentials(prod)["source"] == "jti-3"
    assert cache.get(prod, fill).from_cache and fill.calls == 3


# -- refilling without a caller -------------------------------------------------------------------

def test_refill_replaces_a_fresh_entry_and_the_next_request_is_served_the_new_one(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    clock.advance(60)
    refilled = cache.refill(binding, fill)
    assert not refilled.from_cache and fill.calls == 2
    served = cache.get(binding, fill)
    assert served.from_cache and served.source == "jti-2" and fill.calls == 2


def test_refill_takes_the_lease_a_request_takes_and_releases_it(binding, parts, clock):
    store, kms, fill = parts
    store.lock_credentials_fill(binding, "a-request", int(clock()), int(clock()) + 15)
    with pytest.raises(Throttled):
        cache_of(store, kms, clock, wait=1.0, poll=0.25, sleep=clock.advance).refill(binding, fill)
    assert fill.calls == 0
    store.unlock_credentials_fill(binding, "a-request")
    cache_of(store, kms, clock).refill(binding, fill)
    assert fill.calls == 1 and not store.locks


def test_refill_answers_with_an_entry_another_filler_stored_while_it_waited(binding, parts, clock):
    store, kms, fill = parts
    other = cache_of(store, kms, clock, owner="other")
    store.lock_credentials_fill(binding, "other", int(clock()), int(clock()) + 15)

    def other_fills(seconds):  # while this refill waits, the other container stores new credentials
        clock.advance(seconds)
        if not store.items:
            store.unlock_credentials_fill(binding, "other")
            other.get(binding, fill)
            store.lock_credentials_fill(binding, "other", int(clock()), int(clock()) + 15)

    served = cache_of(store, kms, clock, poll=0.25, sleep=other_fills).refill(binding, fill)
    assert served.from_cache and fill.calls == 1


def test_refill_replacing_an_entry_exchanges_unless_a_newer_one_was_stored_before_it(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    planned = cache.get(binding, fill).credentials.issued_at
    clock.advance(60)
    assert not cache.refill(binding, fill, replacing=planned).from_cache and fill.calls == 2
    # Planned on the first entry, but a request (or another run) renewed it since: that one is the answer.
    clock.advance(60)
    served = cache.refill(binding, fill, replacing=planned)
    assert served.from_cache and served.source == "jti-2" and fill.calls == 2


def test_refill_replacing_no_entry_takes_any_entry_stored_meanwhile(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    assert cache.refill(binding, fill, replacing=0).from_cache and fill.calls == 1


# -- when a caller was last served an entry ----------------------------------------------------------

def test_a_fill_for_a_caller_records_its_use_and_a_refill_keeps_it(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    assert store.items[binding.key]["last_used_at"] == NOW
    clock.advance(600)
    cache.refill(binding, fill)
    assert store.items[binding.key]["last_used_at"] == NOW  # a refill is no caller's use


def test_an_entry_nobody_was_served_records_no_use(binding, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).refill(binding, fill)
    assert "last_used_at" not in store.items[binding.key]


def test_hits_record_their_use_once_per_interval_not_once_per_hit(binding, parts, clock):
    store, kms, fill = parts
    fill.lifetime = 12 * 3600
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    writes = store.writes
    for _ in range(720):  # a hit every 10 seconds for 2 hours
        clock.advance(10)
        assert cache.get(binding, fill).from_cache
    # 720 hits, 7200 s: one write per USE_RECORDED_EVERY (900 s), the rest are reads only.
    assert store.writes - writes == 7200 // USE_RECORDED_EVERY
    assert store.items[binding.key]["last_used_at"] == NOW + 7200
    assert fill.calls == 1


def test_a_use_is_not_written_over_an_entry_another_fill_replaced(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    stale = store.cached_credentials(binding)
    cache.refill(binding, fill)
    store.mark_cached_credentials_used(binding, stale, int(clock()) + 900)
    assert store.items[binding.key]["source"] == "jti-2"


# -- an outage: the last good credentials, never expired ------------------------------------------

def test_past_its_share_an_entry_is_served_while_the_cloud_is_unavailable_and_never_expired(binding, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    first = cache.get(binding, fill)
    fill.error = Throttled("the cloud is unavailable", "cloud_unavailable", 2)
    clock.advance(1800)
    kept = cache.get(binding, fill)
    assert (kept.from_cache, kept.fallback, kept.source) == (True, "cloud_unavailable", first.source)
    assert dict(kept.credentials.fields) == dict(first.credentials.fields)
    clock.advance(1800 - EXPIRY_MARGIN - 1)
    assert cache.get(binding, fill).fallback == "cloud_unavailable"
    clock.advance(1)  # a minute before expiry: not any more
    with pytest.raises(Throttled):
        cache.get(binding, fill)


def test_a_refusal_of_the_cloud_never_falls_back_to_the_last_credentials(binding, parts, clock):
    from oidc_broker.errors import AccessDenied

    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(binding, fill)
    fill.error = AccessDenied("the role no longer trusts the subject", "access_denied")
    clock.advance(1800)
    with pytest.raises(AccessDenied):
        cache.get(binding, fill)


def test_another_fill_outlasting_the_wait_is_answered_with_the_last_valid_credentials(binding, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(binding, fill)
    clock.advance(1800)
    store.lock_credentials_fill(binding, "other", int(clock()), int(clock()) + 15)
    kept = cache_of(store, kms, clock, wait=1.0, poll=0.25, sleep=clock.advance).get(binding, fill)
    assert (kept.from_cache, kept.fallback, fill.calls) == (True, "fill_in_progress", 1)


def test_an_entry_of_an_edited_target_is_never_a_fallback(binding, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(binding, fill)
    edited = bind(targets(session_duration=900))
    fill.error = Throttled("the cloud is unavailable", "cloud_unavailable", 2)
    with pytest.raises(Throttled):
        cache_of(store, kms, clock).get(edited, fill)
