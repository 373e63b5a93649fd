"""Key rotation against moto's server over HTTP: the ring's conditional transactions under real
concurrency, the seal with KMS GenerateMac/VerifyMac, the JWKS stored with each change and the JWKS
function serving it, the rotation function's handler end to end, and the JWKS's ETag over HTTP in
local mode."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from oidc_broker import keys, rotation
from oidc_broker.clouds import Backoff
from oidc_broker.keys import ACTIVE, PENDING, RETIRED, KeyEntry
from oidc_broker.store import Store

REPO = Path(__file__).resolve().parents[2]
LIFE = rotation.Lifecycle(period=1000, jwks_max_age=5, ring_ttl=2, max_token_lifetime=60, margin=1)
ROLE = "arn:aws:iam::123456789012:role/{}"
POLICY = rotation.signing_key_policy(account_root="arn:aws:iam::123456789012:root",
                                     signers=[ROLE.format("token")], readers=[ROLE.format("ring")],
                                     rotator=ROLE.format("rotate"))
T0 = 1_800_000_000


@pytest.fixture(scope="module")
def endpoint(moto_endpoint):
    return moto_endpoint


def client(url: str, service: str):
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="t",
                        aws_secret_access_key="t")


class Clock:
    def __init__(self, now: int = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Stack:
    """A table, a seal key and the template's signing key in moto, the key registered as the key ring
    resource does; `rotation()` builds a rotation function with clients of its own (a container)."""

    count = 0

    def __init__(self, url: str):
        Stack.count += 1
        self.url, self.table = url, f"rotation-{Stack.count}"
        client(url, "dynamodb").create_table(
            TableName=self.table, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}])
        self.kms = client(url, "kms")
        self.seal_key = self.kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
        self.stack_key = self.kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        self.store = Store(client(url, "dynamodb"), self.table)
        self.clock = Clock()
        self.first, _ = rotation.register_stack_key(self.store, self.kms, self.seal(), self.stack_key, T0)

    def seal(self) -> keys.Seal:
        return keys.Seal(client(self.url, "kms"), self.seal_key)

    def rotation(self, store: Store | None = None) -> rotation.Rotation:
        kms = client(self.url, "kms")
        return rotation.Rotation(store or Store(client(self.url, "dynamodb"), self.table), kms, keys.Seal(kms, self.seal_key),
                                 LIFE, self.clock, rotation.NewKeys(policy=POLICY, stack=self.table),
                                 backoff=Backoff(sleep=lambda _: None))

    def states(self) -> dict[str, str]:
        return {i["kid"]: i["state"] for i in self.store.key_ring()}

    def key_state(self, key_arn: str) -> str:
        return self.kms.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"]

    def created_keys(self) -> list[str]:
        """Every signing key rotation made for this stack (its tag names the table here), by ARN."""
        found = []
        for key in self.kms.list_keys()["Keys"]:
            tags = {t["TagKey"]: t["TagValue"] for t in self.kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]}
            if tags.get("oidc-broker:stack") == self.table:
                found.append(key["KeyArn"])
        return found


@pytest.fixture
def stack(endpoint):
    return Stack(endpoint)


class Gate(Store):
    """The store, but each run waits after reading the ring until the other has read it too: both
    then decide on the same ring, the race two scheduled runs can have."""

    def __init__(self, url: str, table: str, barrier: threading.Barrier):
        super().__init__(client(url, "dynamodb"), table)
        self._barrier, self._waited = barrier, False

    def key_ring_state(self):
        state = super().key_ring_state()
        if not self._waited:
            self._waited = True
            self._barrier.wait(timeout=30)
        return state


def at_once(stack: Stack, action: str) -> list[rotation.Outcome]:
    barrier = threading.Barrier(2)
    runs = [stack.rotation(Gate(stack.url, stack.table, barrier)) for _ in range(2)]
    outcomes: list[rotation.Outcome | BaseException] = [None, None]

    def go(i: int) -> None:
        try:
            outcomes[i] = getattr(runs[i], action)()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcomes[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(o, rotation.Outcome) for o in outcomes), outcomes
    return outcomes


# -- the store's transaction -----------------------------------------------------------------------

def next_jwks(stack: Stack, state, entries: list[KeyEntry]) -> keys.RenderedJwks:
    return rotation.sealed_jwks(stack.seal(), entries, state.version + 1)


def test_a_change_of_the_ring_is_refused_when_the_ring_changed_since_it_was_read(stack):
    state = stack.store.key_ring_state()
    first = KeyEntry.from_item(state.keys[0])
    assert stack.store.change_key_ring(state.version, T0 + 1, jwks=next_jwks(stack, state, [first]))
    assert not stack.store.change_key_ring(state.version, T0 + 2, jwks=next_jwks(stack, state, []),
                                           put=[(first, (ACTIVE,))])
    after = stack.store.key_ring_state()
    assert after.rotate_requested_at == T0 + 1
    assert keys.RenderedJwks.from_item(after.jwks) == next_jwks(stack, state, [first])  # the refused one wrote nothing


def test_a_change_naming_a_key_in_another_state_writes_nothing_at_all(stack):
    state = stack.store.key_ring_state()
    first = KeyEntry.from_item(state.keys[0])
    moved = replace(first, state=RETIRED)
    assert not stack.store.change_key_ring(state.version, None, jwks=next_jwks(stack, state, [moved]),
                                           put=[(moved, (PENDING,))])
    assert not stack.store.change_key_ring(state.version, None, jwks=next_jwks(stack, state, []),
                                           delete=[(first.kid, (RETIRED,))])
    assert stack.store.key_ring_state() == state and stack.states() == {first.kid: ACTIVE}


def test_the_ring_state_stores_the_sealed_jwks_of_its_version_read_as_one_item(stack):
    version, item = stack.store.ring_jwks()
    stored = keys.RenderedJwks.from_item(item)
    assert (version, stored.version) == (1, 1) and isinstance(stored.body, bytes)
    assert [k["kid"] for k in json.loads(stored.body)["keys"]] == [stack.first.kid]
    assert stack.seal().verifies(stored)
    assert stack.store.key_ring_state().jwks == item


def test_the_ring_keeps_every_lifecycle_time_and_the_seal(stack):
    (item,) = stack.store.key_ring()
    assert (item["state"], item["created_at"], item["published_at"], item["activated_at"], item["retired_at"]) == (
        ACTIVE, T0, T0, T0, None)
    assert stack.seal().verifies(KeyEntry.from_item(item))


# -- two runs at once ----------------------------------------------------------------------------

def test_two_runs_at_once_publish_one_pending_key_and_schedule_the_others_deletion(stack):
    outcomes = at_once(stack, "run")
    states = stack.states()
    assert sorted(states.values()) == [ACTIVE, PENDING]
    (pending,) = [kid for kid, s in states.items() if s == PENDING]
    orphans = [kid for o in outcomes for kid in o.orphans]
    assert len(orphans) == 1 and orphans[0] != pending
    made = [i for i in stack.store.key_ring() if i["kid"] == pending][0]["key_arn"]
    deleted = [arn for arn in stack.created_keys() if arn != made]
    assert deleted and all(stack.key_state(arn) == "PendingDeletion" for arn in deleted)
    assert stack.key_state(made) == "Enabled"


def test_two_runs_at_once_when_rotation_is_due_leave_exactly_one_active_key(stack):
    stack.rotation().run()  # publishes the pending key
    stack.clock.now = T0 + LIFE.period
    outcomes = at_once(stack, "run")
    states = stack.states()
    assert list(states.values()).count(ACTIVE) == 1
    assert list(states.values()).count(PENDING) <= 1 and list(states.values()).count(RETIRED) == 1
    assert states[stack.first.kid] == RETIRED
    activations = [s for o in outcomes for s in o.steps if s.step == "activate"]
    assert len(activations) == 1
    assert sum(o.conflicts for o in outcomes) >= 1
    # A later run tidies up whatever the race left: one pending key.
    stack.rotation().run()
    assert sorted(stack.states().values()) == [ACTIVE, PENDING, RETIRED]


def test_a_key_rotation_creates_carries_the_stacks_tags_and_policy(stack):
    stack.rotation().run()
    (pending,) = [i for i in stack.store.key_ring() if i["state"] == PENDING]
    tags = {t["TagKey"]: t["TagValue"] for t in stack.kms.list_resource_tags(KeyId=pending["key_arn"].rsplit("/", 1)[-1])["Tags"]}
    assert tags == {"oidc-broker:stack": stack.table, "oidc-broker:purpose": "signing"}
    policy = json.loads(stack.kms.get_key_policy(KeyId=pending["key_arn"], PolicyName="default")["Policy"])
    assert policy == POLICY
    meta = stack.kms.describe_key(KeyId=pending["key_arn"])["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"]) == ("RSA_2048", "SIGN_VERIFY")


# -- the seal, with KMS's own MACs ---------------------------------------------------------------------

def plant(stack: Stack, entry: KeyEntry) -> None:
    """An item written straight into the table, as anyone with write access could."""
    item = {"pk": {"S": "KEYRING"}, "sk": {"S": f"KEY#{entry.kid}"}, "kid": {"S": entry.kid},
            "key_arn": {"S": entry.key_arn}, "state": {"S": entry.state}, "jwk": {"S": json.dumps(entry.jwk)},
            "created_at": {"N": str(entry.created_at)}}
    if entry.seal:
        item["seal"] = {"S": entry.seal}
    client(stack.url, "dynamodb").put_item(TableName=stack.table, Item=item)


def outsider(stack: Stack, created_at: int = T0 + 50) -> KeyEntry:
    arn = stack.kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    return keys.public_entry(stack.kms, arn, ACTIVE, created_at)


def reader(stack: Stack) -> keys.KeyRing:
    return keys.KeyRing(Store(client(stack.url, "dynamodb"), stack.table), Clock(), seal=stack.seal())


def test_a_planted_unsealed_entry_is_neither_published_nor_signed_with(stack):
    planted = outsider(stack)
    plant(stack, planted)
    ring = reader(stack)
    assert [k["kid"] for k in ring.jwks()["keys"]] == [stack.first.kid]
    assert ring.signing_key().kid == stack.first.kid
    assert [(e.kid, reason) for e, reason in ring.refused()] == [(planted.kid, keys.UNKNOWN_KEY)]


def test_an_entry_sealed_with_another_hmac_key_is_refused(stack):
    other = stack.kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    planted = outsider(stack)
    plant(stack, replace(planted, seal=keys.Seal(stack.kms, other).make(planted)))
    ring = reader(stack)
    assert ring.signing_key().kid == stack.first.kid
    assert [(e.kid, reason) for e, reason in ring.refused()] == [(planted.kid, keys.BAD_SEAL)]


def test_a_sealed_entry_edited_to_name_another_key_is_refused(stack):
    # The stack's own entry, its seal kept, pointed at a key someone else controls.
    planted = outsider(stack)
    edited = KeyEntry(stack.first.kid, planted.key_arn, ACTIVE, stack.first.jwk, stack.first.created_at,
                      seal=stack.first.seal)
    plant(stack, edited)
    ring = reader(stack)
    assert (ring.jwks(), ring.signing_key()) == ({"keys": []}, None)
    assert [(e.kid, reason) for e, reason in ring.refused()] == [(stack.first.kid, keys.BAD_SEAL)]


def test_a_ring_from_before_the_seal_is_sealed_by_the_key_ring_resource_on_update(stack):
    unsealed = replace(stack.first, seal=None)
    plant(stack, unsealed)
    assert reader(stack).jwks() == {"keys": []}
    entry, done = rotation.register_stack_key(stack.store, stack.kms, stack.seal(), stack.stack_key, T0 + 99)
    assert (done, entry.kid) == ("sealed", stack.first.kid)
    assert [k["kid"] for k in reader(stack).jwks()["keys"]] == [stack.first.kid]


# -- the JWKS function over moto ---------------------------------------------------------------------

def jwks_function(stack: Stack, monkeypatch) -> object:
    """functions/jwks/app.py loaded as a fresh container, its variables pointing at moto."""
    for name, value in {
        "AWS_ENDPOINT_URL": stack.url, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1", "TABLE_NAME": stack.table, "KEY_RING_SEAL_KEY": stack.seal_key,
        "JWKS_MAX_AGE": "5", "KEY_RING_TTL": "2", "POWERTOOLS_SERVICE_NAME": "oidc-broker",
    }.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("jwks_app_under_test", REPO / "functions" / "jwks" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    return module


class JwksContext:
    function_name, memory_limit_in_mb, aws_request_id = "JwksFunction", 512, "r-1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:JwksFunction"


def served(module) -> list[str]:
    response = module.handler({"headers": {}, "requestContext": {"domainName": "id.example.com"}}, JwksContext())
    assert response["statusCode"] == 200, response
    return [k["kid"] for k in json.loads(response["body"])["keys"]]


def passed_over(caplog) -> list[str]:
    return [r.reason for r in caplog.records if r.getMessage() == "rendered JWKS not served"]


def write_state(stack: Stack, **attributes) -> None:
    """The ring's state item written straight into the table (an older rotation function, or anyone)."""
    state = client(stack.url, "dynamodb").get_item(TableName=stack.table, Key={"pk": {"S": "KEYRING"}, "sk": {"S": "STATE"}},
                                                   ConsistentRead=True)["Item"]
    client(stack.url, "dynamodb").put_item(TableName=stack.table, Item={**state, **attributes})


def test_the_jwks_function_serves_the_stored_jwks_through_three_rotation_cycles(stack, monkeypatch, caplog):
    run = stack.rotation()
    for cycle in range(3):
        run.run()
        kids = served(jwks_function(stack, monkeypatch))
        assert kids == [k["kid"] for k in json.loads(stack.store.ring_jwks()[1]["body"])["keys"]]
        assert sorted(kids) == sorted(k for k, s in stack.states().items() if s != "revoked")
        stack.clock.now += LIFE.period + LIFE.retention
    assert passed_over(caplog) == []


def test_the_jwks_function_never_serves_a_stored_jwks_someone_planted(stack, monkeypatch, caplog):
    planted = outsider(stack)
    body = json.dumps({"keys": [{k: planted.jwk[k] for k in ("kty", "kid", "use", "alg", "n", "e")}]},
                      separators=(",", ":")).encode()
    write_state(stack, jwks={"B": body})  # the seal kept: it covers other bytes
    assert served(jwks_function(stack, monkeypatch)) == [stack.first.kid]
    assert passed_over(caplog) == [keys.BAD_JWKS_SEAL]


def test_a_ring_changed_by_an_older_rotation_is_served_from_its_entries_until_the_next_run(stack, monkeypatch, caplog):
    state = client(stack.url, "dynamodb").get_item(TableName=stack.table, Key={"pk": {"S": "KEYRING"}, "sk": {"S": "STATE"}},
                                                   ConsistentRead=True)["Item"]
    client(stack.url, "dynamodb").put_item(TableName=stack.table, Item={
        k: v for k, v in state.items() if not k.startswith("jwks")} | {"version": {"N": "7"}})
    assert served(jwks_function(stack, monkeypatch)) == [stack.first.kid]
    assert passed_over(caplog) == [keys.NOT_RENDERED]
    caplog.clear()
    stack.rotation().run()  # its next run stores it (with its pending key)
    assert len(served(jwks_function(stack, monkeypatch))) == 2 and passed_over(caplog) == []


def test_a_revoked_key_leaves_the_served_jwks_with_the_revocation(stack, monkeypatch):
    stack.rotation().run()
    (pending,) = [k for k, s in stack.states().items() if s == PENDING]
    assert pending in served(jwks_function(stack, monkeypatch))
    stack.rotation().revoke(pending)
    assert served(jwks_function(stack, monkeypatch))[:1] == [stack.first.kid]
    assert pending not in served(jwks_function(stack, monkeypatch))


# -- the rotation function, as Lambda runs it ---------------------------------------------------------

@pytest.fixture
def rotate_keys(stack, monkeypatch, capsys):
    """functions/rotate_keys/app.py loaded with the template's variables pointing at moto (after
    capsys, so its logger and metrics write where the test reads)."""
    for name, value in {
        "AWS_ENDPOINT_URL": stack.url, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1", "TABLE_NAME": stack.table, "KEY_RING_SEAL_KEY": stack.seal_key,
        "KEY_POLICY_SIGNERS": ROLE.format("token"), "KEY_POLICY_READERS": ROLE.format("ring"),
        "KEY_POLICY_ROTATOR": ROLE.format("rotate"), "STACK_NAME": "broker", "KEY_ROTATION_PERIOD": "90d",
        "JWKS_MAX_AGE": "5", "KEY_RING_TTL": "2", "KEY_ROTATION_MARGIN": "1",
        "POWERTOOLS_SERVICE_NAME": "oidc-broker", "POWERTOOLS_METRICS_NAMESPACE": "OidcBroker",
    }.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("rotate_keys_app_under_test", REPO / "functions" / "rotate_keys" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    return module


class Context:
    function_name, memory_limit_in_mb, aws_request_id = "RotateKeysFunction", 512, "r-1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:RotateKeysFunction"


SCHEDULED = json.loads((REPO / "events" / "rotate_keys.json").read_text())


def emitted(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_the_scheduled_event_publishes_a_pending_key_and_reports_the_active_keys_age(rotate_keys, stack, capsys, caplog):
    report = rotate_keys.handler(SCHEDULED, Context())
    assert [s["step"] for s in report["steps"]] == ["create"]
    assert sorted(k["state"] for k in report["keys"]) == [ACTIVE, PENDING]
    assert report["lifecycle"] == {"period": 90 * 86400, "jwks_max_age": 5, "ring_ttl": 2,
                                   "publication_delay": 8, "retention": 3608}
    lines = emitted(capsys)
    (metric,) = [r for r in lines if "_aws" in r]
    assert metric["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "OidcBroker"
    assert metric["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "KeyRotationAge", "Unit": "Seconds"}]
    assert metric["service"] == "oidc-broker" and metric["KeyRotationAge"][0] >= 0
    (moved,) = [r for r in caplog.records if r.getMessage() == "signing key moved"]
    assert (moved.kid, moved.step, moved.to) == (report["steps"][0]["kid"], "create", PENDING)
    assert not hasattr(moved, "key_arn") and not hasattr(moved, "jwk")


def test_status_rotate_and_revoke_answer_with_the_report(rotate_keys, stack):
    status = rotate_keys.handler({"action": "status"}, Context())
    assert status["steps"] == [] and [k["kid"] for k in status["keys"]] == [stack.first.kid]
    rotated = rotate_keys.handler({"action": "rotate"}, Context())
    # The pending key it published just now signs after the publication delay: later, not now.
    (pending,) = [k for k in rotated["keys"] if k["state"] == PENDING]
    assert rotated["effective_at"] == pending["published_at"] + 8 == pending["next"]["at"]
    assert rotated["rotate_requested_at"] <= pending["published_at"]
    revoked = rotate_keys.handler({"action": "revoke", "kid": stack.first.kid}, Context())
    assert stack.first.kid not in [k["kid"] for k in revoked["keys"]]
    assert [k["state"] for k in revoked["keys"]].count(ACTIVE) == 1
    assert any("Google providers" in n for n in revoked["notices"])
    json.dumps(revoked)


@pytest.mark.parametrize("event", [
    {"action": "explode"}, {}, [], "status", {"action": "revoke"}, {"action": "revoke", "kid": 7},
    {"action": "status", "extra": 1}, {"source": "aws.events"},
])
def test_an_event_it_does_not_take_is_answered_with_an_error_and_changes_nothing(rotate_keys, stack, event):
    before = stack.store.key_ring_state()
    answer = rotate_keys.handler(event, Context())
    assert set(answer) == {"error", "error_description"} and answer["error"] == "invalid_request"
    assert stack.store.key_ring_state() == before


def test_revoking_an_unknown_kid_is_answered_with_an_error(rotate_keys, stack):
    answer = rotate_keys.handler({"action": "revoke", "kid": "no-such-kid"}, Context())
    assert answer == {"error": "invalid_request",
                      "error_description": "no key 'no-such-kid' in the key ring; `oidc-broker keys list` shows its keys"}


# -- the JWKS over HTTP -------------------------------------------------------------------------------

def test_the_jwks_answers_a_conditional_request_with_304(local):
    first = local.http.get("/.well-known/jwks.json")
    assert first.status_code == 200 and first.headers["etag"].startswith('"')
    assert first.headers["cache-control"].startswith("public, max-age=")
    again = local.http.get("/.well-known/jwks.json", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert (again.headers["etag"], again.headers["cache-control"]) == (first.headers["etag"], first.headers["cache-control"])
