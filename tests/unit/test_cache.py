"""oidc_broker/cache.py: hits, misses, refresh, single flight, and nothing readable at rest.

Expiry is driven by a settable clock; the store and KMS are in-memory fakes with the same
conditional-write semantics, except the at-rest test, which uses moto's DynamoDB and KMS.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from builders import NOW, config_doc, space_doc
from moto import mock_aws

from oidc_broker import config
from oidc_broker.cache import CacheUnavailable, CredentialCache, fingerprint
from oidc_broker.clouds import Credentials
from oidc_broker.errors import Throttled
from oidc_broker.store import Store

SUBJECT = "space:acme:environment:production:account:prod"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "arn:aws:kms:us-east-1:123456789012:key/cache"


class FakeStore:
    """The cache half of the store, with DynamoDB's conditional-write semantics, thread-safe."""

    def __init__(self):
        self.items: dict[tuple[str, str], dict] = {}
        self.locks: dict[tuple[str, str], dict] = {}
        self.reads = 0
        self.guard = threading.Lock()

    def cached_credentials(self, target, subject):
        with self.guard:
            self.reads += 1
            item = self.items.get((target, subject))
            return copy.deepcopy(item)

    def put_cached_credentials(self, target, subject, attributes):
        with self.guard:
            self.items[(target, subject)] = dict(attributes)

    def lock_credentials_fill(self, target, subject, owner, now, lease_until):
        with self.guard:
            held = self.locks.get((target, subject))
            if held and held["lease_until"] >= now:
                return False
            self.locks[(target, subject)] = {"owner": owner, "lease_until": lease_until}
            return True

    def unlock_credentials_fill(self, target, subject, owner):
        with self.guard:
            if self.locks.get((target, subject), {}).get("owner") == owner:
                del self.locks[(target, subject)]


def kms_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "unavailable"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                       "GenerateDataKey")


class FakeKms:
    """Data keys bound to their encryption context, as KMS binds them."""

    def __init__(self):
        self.keys: dict[bytes, tuple[bytes, dict]] = {}
        self.generated = 0
        self.decrypted = 0
        self.error: Exception | None = None

    def generate_data_key(self, KeyId, KeySpec, EncryptionContext):
        assert (KeyId, KeySpec) == (KEY_ID, "AES_256")
        if self.error:
            raise self.error
        self.generated += 1
        key, blob = os.urandom(32), os.urandom(48)
        self.keys[blob] = (key, dict(EncryptionContext))
        return {"Plaintext": key, "CiphertextBlob": blob}

    def decrypt(self, CiphertextBlob, KeyId, EncryptionContext):
        if self.error:
            raise self.error
        self.decrypted += 1
        key, context = self.keys.get(CiphertextBlob, (None, None))
        if key is None or context != EncryptionContext:
            raise ClientError({"Error": {"Code": "InvalidCiphertextException", "Message": "no"}}, "Decrypt")
        return {"Plaintext": key}


class Exchanges:
    """A counting fill: each call is one exchange with the cloud."""

    def __init__(self, clock, lifetime: int = 3600):
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.guard = threading.Lock()
        self.started = threading.Event()
        self.release: threading.Event | None = None
        self.error: Exception | None = None

    def __call__(self):
        with self.guard:
            self.calls += 1
            n = self.calls
        self.started.set()
        if self.release is not None:
            assert self.release.wait(5)
        if self.error:
            raise self.error
        now = int(self.clock())
        return Credentials({"access_key_id": f"ASIA{n}", "secret_access_key": SECRET, "session_token": "tok"},
                           now, now + self.lifetime), f"jti-{n}"


def targets(**aws_settings):
    doc = config_doc()
    space_doc(doc)["targets"][0]["aws"].update(aws_settings)
    parsed = config.parse(doc)
    return parsed.target("acme/prod")


@pytest.fixture
def target():
    return targets()


@pytest.fixture
def parts(clock):
    return FakeStore(), FakeKms(), Exchanges(clock)


def cache_of(store, kms, clock, **kwargs) -> CredentialCache:
    return CredentialCache(store, kms, KEY_ID, clock, **kwargs)


# -- hit, miss, refresh ------------------------------------------------------------------------

def test_a_miss_exchanges_and_the_next_request_is_served_from_the_cache(target, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    first = cache.get(target, SUBJECT, fill)
    second = cache.get(target, SUBJECT, fill)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert fill.calls == 1
    assert second.credentials == first.credentials
    assert dict(second.credentials.fields) == dict(first.credentials.fields)
    assert second.source == "jti-1"


def test_an_entry_is_served_until_half_its_lifetime_then_refreshed(target, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(target, SUBJECT, fill)
    clock.advance(1799)
    assert cache.get(target, SUBJECT, fill).from_cache
    clock.advance(1)
    refreshed = cache.get(target, SUBJECT, fill)
    assert not refreshed.from_cache and fill.calls == 2
    assert refreshed.credentials.issued_at == NOW + 1800


def test_a_target_chooses_how_much_lifetime_must_remain(parts, clock):
    store, kms, fill = parts
    target = targets(refresh_at=0.8)
    cache = cache_of(store, kms, clock)
    cache.get(target, SUBJECT, fill)
    clock.advance(2879)
    assert cache.get(target, SUBJECT, fill).from_cache
    clock.advance(1)
    assert not cache.get(target, SUBJECT, fill).from_cache


def test_refresh_at_zero_never_serves_from_the_cache(parts, clock):
    store, kms, fill = parts
    target = targets(refresh_at=0)
    cache = cache_of(store, kms, clock)
    assert [cache.get(target, SUBJECT, fill).from_cache for _ in range(3)] == [False, False, False]
    assert fill.calls == 3 and not store.items and kms.generated == 0


def test_credentials_without_enough_lifetime_are_served_but_not_cached(target, parts, clock):
    store, kms, _ = parts
    fill = Exchanges(clock, lifetime=0)
    served = cache_of(store, kms, clock).get(target, SUBJECT, fill)
    assert served.credentials.fields["secret_access_key"] == SECRET
    assert served.not_stored and not store.items


def test_entries_are_kept_per_subject(target, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(target, SUBJECT, fill)
    other = cache.get(target, SUBJECT.replace("production", "staging"), fill)
    assert not other.from_cache and fill.calls == 2


def test_an_edited_target_never_serves_the_old_targets_credentials(target, parts, clock):
    store, kms, fill = parts
    cache = cache_of(store, kms, clock)
    cache.get(target, SUBJECT, fill)
    edited = targets(role_arn="arn:aws:iam::123456789012:role/other")
    assert fingerprint(edited) != fingerprint(target)
    assert not cache.get(edited, SUBJECT, fill).from_cache


# -- single flight -------------------------------------------------------------------------------

def _race(caches, target, fill, n=8):
    results, errors = [], []
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            results.append(caches[i % len(caches)].get(target, SUBJECT, fill))
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


def test_concurrent_misses_in_one_process_make_one_exchange(target):
    store, kms, fill = FakeStore(), FakeKms(), Exchanges(time.time)
    fill.release = threading.Event()
    cache = cache_of(store, kms, time.time, poll=0.005)
    results = _race([cache], target, fill)
    assert fill.calls == 1
    assert sum(not r.from_cache for r in results) == 1 and len(results) == 8


def test_concurrent_misses_in_two_containers_make_one_exchange(target):
    store, kms, fill = FakeStore(), FakeKms(), Exchanges(time.time)
    fill.release = threading.Event()
    containers = [cache_of(store, kms, time.time, poll=0.005, owner=name) for name in ("a", "b")]
    results = _race(containers, target, fill)
    assert fill.calls == 1 and len(results) == 8
    assert not store.locks  # the lease is released after the fill


def test_a_request_waiting_on_another_containers_fill_gives_up_with_503(target, parts, clock):
    store, kms, fill = parts
    store.lock_credentials_fill(target.ref, SUBJECT, "other-container", int(clock()), int(clock()) + 15)
    cache = cache_of(store, kms, clock, wait=1.0, poll=0.25, sleep=clock.advance)
    with pytest.raises(Throttled) as refused:
        cache.get(target, SUBJECT, fill)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    assert fill.calls == 0


def test_a_lease_left_by_a_dead_container_is_taken_over_once_it_expires(target, parts, clock):
    store, kms, fill = parts
    store.lock_credentials_fill(target.ref, SUBJECT, "crashed", int(clock()) - 30, int(clock()) - 15)
    assert not cache_of(store, kms, clock).get(target, SUBJECT, fill).from_cache
    assert fill.calls == 1 and not store.locks


def test_a_failed_exchange_releases_the_lease_and_caches_nothing(target, parts, clock):
    store, kms, fill = parts
    fill.error = RuntimeError("AccessDenied")
    with pytest.raises(RuntimeError):
        cache_of(store, kms, clock).get(target, SUBJECT, fill)
    assert not store.locks and not store.items


# -- encryption ------------------------------------------------------------------------------------

def test_kms_unavailable_fails_with_503_before_anything_is_exchanged(target, parts, clock):
    store, kms, fill = parts
    kms.error = kms_error("KMSInternalException")
    with pytest.raises(CacheUnavailable) as refused:
        cache_of(store, kms, clock).get(target, SUBJECT, fill)
    assert refused.value.status == 503 and "KMSInternalException" in refused.value.description
    assert "Retry-After" in refused.value.headers
    assert fill.calls == 0 and not store.items and not store.locks


def test_kms_unavailable_when_reading_a_cached_entry_is_503(target, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(target, SUBJECT, fill)
    kms.error = kms_error("DependencyTimeoutException")
    with pytest.raises(CacheUnavailable):
        cache_of(store, kms, clock).get(target, SUBJECT, fill)  # another container: no data key in memory
    assert fill.calls == 1


def test_an_entry_whose_expiry_was_stretched_does_not_decrypt_and_is_refilled(target, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(target, SUBJECT, fill)
    (item,) = store.items.values()
    item["expires_at"] += 86400
    assert not cache_of(store, kms, clock).get(target, SUBJECT, fill).from_cache
    assert fill.calls == 2


def test_an_entry_moved_to_another_subject_does_not_decrypt(target, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(target, SUBJECT, fill)
    other = SUBJECT.replace("production", "staging")
    store.items[(target.ref, other)] = store.items[(target.ref, SUBJECT)]
    assert not cache_of(store, kms, clock).get(target, other, fill).from_cache


def test_data_keys_are_bound_to_the_target_and_subject(target, parts, clock):
    store, kms, fill = parts
    cache_of(store, kms, clock).get(target, SUBJECT, fill)
    ((_, context),) = kms.keys.values()
    assert context == {"purpose": "oidc-broker credential cache", "target": "acme/prod", "subject": SUBJECT}


@mock_aws
def test_nothing_readable_is_stored_and_another_container_decrypts_with_kms(target, clock):
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(
        TableName="t", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
    )
    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    store = Store(dynamodb, "t")
    fill = Exchanges(clock)
    first = CredentialCache(store, kms, key_id, clock).get(target, SUBJECT, fill)

    items = dynamodb.scan(TableName="t")["Items"]
    assert [i["sk"]["S"] for i in items] == [f"CREDENTIALS#{SUBJECT}"]  # the fill lease is gone
    raw = repr(items).encode()
    for secret in first.credentials.fields.values():
        assert secret.encode() not in raw
        assert all(secret.encode() not in bytes(v["B"]) for v in items[0].values() if "B" in v)
    assert int(items[0]["ttl"]["N"]) == first.credentials.expires_at

    second = CredentialCache(store, kms, key_id, clock).get(target, SUBJECT, fill)
    assert second.from_cache and dict(second.credentials.fields) == dict(first.credentials.fields)
    assert fill.calls == 1
