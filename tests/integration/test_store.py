"""The table's conditional writes under real concurrency, against moto's server over HTTP."""

from __future__ import annotations

import concurrent.futures
import threading

import boto3
import pytest

from oidc_broker.store import AlreadyUsed, Grant, Store

# moto keeps one state per process, shared by every server it runs: a name of this module's own.
TABLE = "store-concurrency"


@pytest.fixture(scope="module")
def endpoint(moto_endpoint):
    """The module's moto server, with its table."""
    url = moto_endpoint
    client(url).create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
    )
    return url


def client(url: str):
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="t", aws_secret_access_key="t")


def grant(token_jti: str, target: str = "default/prod-ecr", caller_jti: str = "jti-1") -> Grant:
    return Grant(caller_issuer="https://ci.example.com", caller_subject="repo:acme/app", caller_jti=caller_jti,
                 trust_rule="main", target=target, subject="space:default:feed:prod-ecr", audience="sts.amazonaws.com",
                 token_jti=token_jti, issued_at=1_800_000_000, token_expires_at=1_800_000_600, keep_until=1_900_000_000)


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_double_spends_of_one_caller_token_record_exactly_one_grant(endpoint, round_):
    start = threading.Barrier(16)

    def spend(i: int) -> bool:
        store = Store(client(endpoint), TABLE)  # one client per "container"
        start.wait()
        try:
            store.record_grant(grant(f"minted-{round_}-{i}", caller_jti=f"race-{round_}"))
            return True
        except AlreadyUsed:
            return False

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(spend, range(16)))
    assert outcomes.count(True) == 1


def test_the_same_caller_token_may_be_spent_once_on_each_target(endpoint):
    store = Store(client(endpoint), TABLE)
    store.record_grant(grant("a", target="default/other-1"))
    store.record_grant(grant("b", target="default/other-2"))
    with pytest.raises(AlreadyUsed):
        store.record_grant(grant("c", target="default/other-1"))


def test_withdrawing_a_grant_removes_only_the_one_it_recorded(endpoint):
    from botocore.exceptions import ClientError

    store = Store(client(endpoint), TABLE)
    first = grant("w1", target="default/withdraw")
    store.record_grant(first)
    with pytest.raises(ClientError):  # another request's grant for the same key is left alone
        store.withdraw_grant(grant("someone-else", target="default/withdraw"))
    with pytest.raises(AlreadyUsed):
        store.record_grant(grant("w2", target="default/withdraw"))
    store.withdraw_grant(first)
    store.record_grant(grant("w3", target="default/withdraw"))  # usable again


def test_a_shared_issuer_key_set_carries_its_fetch_time_and_a_ttl_of_its_max_age(endpoint):
    store = Store(client(endpoint), TABLE)
    keys = [{"kty": "RSA", "kid": "k1", "n": "x", "e": "AQAB"}]
    store.put_issuer_keys("https://ci.example.com", keys, 1_800_000_000.5, 3 * 3600)
    item = client(endpoint).scan(TableName=TABLE, FilterExpression="issuer = :i",
                                 ExpressionAttributeValues={":i": {"S": "https://ci.example.com"}})["Items"][0]
    assert int(item["ttl"]["N"]) == 1_800_000_000 + 3 * 3600 + 1
    assert store.get_issuer_keys("https://ci.example.com") == (1_800_000_000.5, keys)
