"""Fetching callers' key sets over real HTTP, with a clock the test turns: rotation, faults, sharing,
deadlines; and local mode answering 503 for an issuer that cannot be had."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from localmode import start_local, stop_local
from hostile_issuer import HostileIssuer
from oidc_broker import presets
from oidc_broker.callers import FETCH_DEADLINE, FetchError, HttpFetcher, IssuerKeys
from oidc_broker.config import TrustedIssuer
from oidc_broker.errors import Throttled

# The deadline plus a generous margin for a loaded machine: far below what a trickle would take.
GIVES_UP_WITHIN = FETCH_DEADLINE + 3


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

    def put_issuer_keys(self, issuer, keys, fetched_at, max_age):
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

    def flaky(url, deadline):
        if not up["ok"]:
            raise FetchError("down")
        return fetcher(url, deadline)

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
    with pytest.raises(Throttled):
        keys.key(issuer, "rsa-1")
    clock.now += 61
    with pytest.raises(Throttled):
        keys.key(issuer, "rsa-1")
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
    with pytest.raises(Throttled, match="cannot be fetched"):
        keys.key(trusted(hostile, "liar"), "rsa-1")
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


# -- one deadline for a key set fetch, enforced while reading ------------------------------------

@pytest.mark.parametrize("name", ["trickle", "trickle-head"])
def test_a_trickling_issuer_is_given_up_on_at_the_deadline(hostile, name):
    started = time.monotonic()
    with pytest.raises(FetchError, match="could not fetch"):
        HttpFetcher(allow_loopback_http=True)(hostile.url(name) + "/jwks")
    assert time.monotonic() - started < GIVES_UP_WITHIN


def test_discovery_and_key_set_together_are_given_up_on_at_the_deadline(hostile):
    # Each document comes within any per-read timeout; the two together do not come within the deadline.
    started = time.monotonic()
    with pytest.raises(Throttled) as info:
        keys_for(Clock()).key(trusted(hostile, "sluggish"), "rsa-1")
    assert time.monotonic() - started < GIVES_UP_WITHIN
    assert "gave up after" in info.value.log["fetch_error"] or "timed out" in info.value.log["fetch_error"]


# -- local mode: an issuer that cannot be had is a 503, logged, with nothing issued -------------

@pytest.fixture(scope="module")
def broker(hostile, tmp_path_factory):
    import boto3

    from oidc_broker_cli.local import free_port

    down = f"http://127.0.0.1:{free_port()}/down"
    path = tmp_path_factory.mktemp("issuer-keys")
    issuers = {"gh": hostile.url("gh"), "trickle": hostile.url("trickle"), "down": down}
    config = path / "issuers.yaml"
    config.write_text("trusted_issuers:\n" + "".join(
        f"  - {{name: {n}, issuer: '{url}', preset: github}}\n" for n, url in issuers.items()
    ) + """spaces:
  - name: default
    targets:
      - {name: feed-a, kind: feed, provider: aws}
    trust:
""" + "".join(
        f"      - {{name: via-{n}, issuer: {n}, claims: {{repository_owner_id: '7', repository_id: '42'}}, targets: [feed-a]}}\n"
        for n in issuers
    ))
    mode = start_local(path / "local.log", "--config", str(config))
    mode.issuers = issuers
    mode.table = boto3.client("dynamodb", endpoint_url=mode.aws_endpoint, region_name="us-east-1",
                              aws_access_key_id="local", aws_secret_access_key="local")
    yield mode
    stop_local(mode)


def token_of(hostile, broker, name: str) -> tuple[str, str]:
    claims = hostile.claims(broker.base_url, issuer="gh")
    claims["iss"] = broker.issuers[name]
    return hostile.sign(claims), claims["jti"]


def assert_unavailable(broker, response, name: str, token: str, jti: str) -> dict:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "temporarily_unavailable" and "access_token" not in body
    assert int(response.headers["Retry-After"]) >= 1
    assert repr(broker.issuers[name]) in body["error_description"]
    assert f"'{name}'" not in body["error_description"]  # the URL, never the configured name
    grants = broker.table.scan(TableName="oidc-broker-local", FilterExpression="caller_jti = :j",
                               ExpressionAttributeValues={":j": {"S": jti}})["Items"]
    assert grants == [], "a refused token's jti was consumed"
    (record,) = [r for r in broker.log_records() if r.get("reason") == "issuer_unavailable"
                 and r.get("issuer_url") == broker.issuers[name]][-1:]
    assert record["fetch_error"].startswith("could not fetch " + broker.issuers[name])
    assert record["fetch_error"] not in body["error_description"]
    assert token not in broker.logs()
    return record


def test_a_trickling_issuer_is_a_503_within_the_deadline(broker, hostile):
    token, jti = token_of(hostile, broker, "trickle")
    started = time.monotonic()
    response = broker.exchange(token, "default/feed-a")
    assert time.monotonic() - started < GIVES_UP_WITHIN
    assert_unavailable(broker, response, "trickle", token, jti)


def test_an_unreachable_issuer_is_a_503_not_a_400(broker, hostile):
    token, jti = token_of(hostile, broker, "down")
    assert_unavailable(broker, broker.exchange(token, "default/feed-a"), "down", token, jti)


def test_an_unknown_kid_of_a_reachable_issuer_is_still_a_400(broker, hostile):
    claims = hostile.claims(broker.base_url)
    response = broker.exchange(hostile.sign(claims, kid="made-up"), "default/feed-a")
    assert response.status_code == 400, response.text
    assert response.json()["error_description"] == f"subject_token kid is not in the key set of issuer {hostile.url('gh')!r}"


# --- the broker's own key ring: only keys the stack created --------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A fresh local mode whose table got an outsider's KMS key written into the key ring, as a
    compromised function with DynamoDB access would, before anything read the ring."""
    import json
    import time

    import boto3

    from oidc_broker.keys import ACTIVE, jwk_from_der

    mode = start_local(tmp_path_factory.mktemp("planted") / "local.log")
    aws = {"endpoint_url": mode.aws_endpoint, "region_name": "us-east-1",
           "aws_access_key_id": "local", "aws_secret_access_key": "local"}
    kms = boto3.client("kms", **aws)
    outsider = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048", Description="not the stack's")["KeyMetadata"]["Arn"]
    jwk = jwk_from_der(kms.get_public_key(KeyId=outsider)["PublicKey"])
    # Active and newest: without the check it would be published and would sign every token.
    boto3.client("dynamodb", **aws).put_item(TableName="oidc-broker-local", Item={
        "pk": {"S": "KEYRING"}, "sk": {"S": f"KEY#{jwk['kid']}"}, "kid": {"S": jwk["kid"]},
        "key_arn": {"S": outsider}, "state": {"S": ACTIVE}, "jwk": {"S": json.dumps(jwk, sort_keys=True)},
        "created_at": {"N": str(int(time.time()) + 3600)},
    })
    mode.outsider_kid = jwk["kid"]
    yield mode
    stop_local(mode)


def test_a_key_ring_entry_of_a_key_the_stack_did_not_create_is_not_published(planted):
    response = planted.http.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    kids = [k["kid"] for k in response.json()["keys"]]
    assert kids and planted.outsider_kid not in kids
    # The JWKS function serves the ring's stored JWKS and reads no entry; the rotation function,
    # which renders it from the sealed entries only, names the one it left out (every run, every `keys`).
    status = planted.http.post("/_local/invoke/RotateKeysFunction", json={"action": "status"})
    assert status.status_code == 200, status.text
    warnings = [r for r in planted.log_records() if r.get("message") == "key ring entry not published"]
    assert warnings and warnings[0]["kid"] == planted.outsider_kid
    assert warnings[0]["reason"] == "unknown_signing_key"


def test_the_broker_never_signs_with_a_key_the_stack_did_not_create(planted):
    import jwt

    response = planted.exchange(planted.ci_token())
    assert response.status_code == 200, response.text
    kid = jwt.get_unverified_header(response.json()["access_token"])["kid"]
    published = [k["kid"] for k in planted.http.get("/.well-known/jwks.json").json()["keys"]]
    assert kid != planted.outsider_kid and kid in published
