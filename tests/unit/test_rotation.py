"""oidc_broker/rotation.py: the lifecycle, the pure plan, the executor over a fake ring and KMS, the
key policy of created keys, and registering the stack's own key (the key ring custom resource)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from builders import public_der
from keyring_fakes import SEAL_KEY, FakeKms, MemoryRing, item_of, kms_error

from oidc_broker import keys, rotation, runtime
from oidc_broker.clouds import Backoff
from oidc_broker.errors import InvalidRequest
from oidc_broker.keys import ACTIVE, LEGACY_PENDING, PENDING, RETIRED, REVOKED, KeyEntry
from oidc_broker.rotation import Lifecycle, Step, plan

LIFE = Lifecycle(period=10_000, jwks_max_age=300, ring_ttl=60, max_token_lifetime=3600, margin=30)
T0 = 1_800_000_000


def entry(kid: str, state: str, created_at: int = T0, **times) -> KeyEntry:
    jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": f"n-{kid}", "e": "AQAB"}
    return KeyEntry(kid, f"arn:aws:kms:us-east-1:123456789012:key/{kid}", state, jwk, created_at, **times)


def steps(found: list[Step]) -> list[tuple[str, str | None]]:
    return [(s.step, s.kid) for s in found]


# -- the lifecycle -------------------------------------------------------------------------------

def test_a_pending_key_is_published_for_the_jwks_max_age_and_every_cache_before_it_signs():
    assert LIFE.publication_delay == 300 + 60 + 30


def test_a_retired_key_stays_published_for_the_longest_token_and_the_same_caches():
    assert LIFE.retention == 3600 + 300 + 60 + 30


def test_the_defaults_rotate_every_90_days_and_keep_the_jwks_cacheable_for_5_minutes():
    life = Lifecycle()
    assert (life.period, life.jwks_max_age, life.ring_ttl, life.max_token_lifetime) == (90 * 86400, 300, 60, 3600)
    assert life.report() == {"period": 7776000, "jwks_max_age": 300, "ring_ttl": 60,
                             "publication_delay": 390, "retention": 3990}


@pytest.mark.parametrize(("variables", "expected"), [
    ({}, Lifecycle()),
    ({"KEY_ROTATION_PERIOD": "90d", "JWKS_MAX_AGE": "300", "KEY_RING_TTL": "60", "KEY_ROTATION_MARGIN": "30"}, Lifecycle()),
    ({"KEY_ROTATION_PERIOD": "3600", "JWKS_MAX_AGE": "5", "KEY_RING_TTL": "2s", "KEY_ROTATION_MARGIN": "1m"},
     Lifecycle(period=3600, jwks_max_age=5, ring_ttl=2, margin=60)),
    ({"KEY_ROTATION_PERIOD": "2h"}, Lifecycle(period=7200)),
])
def test_runtime_reads_the_lifecycle_from_the_environment(monkeypatch, variables, expected):
    for name in ("KEY_ROTATION_PERIOD", "JWKS_MAX_AGE", "KEY_RING_TTL", "KEY_ROTATION_MARGIN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert runtime.lifecycle() == expected
    assert (runtime.jwks_max_age(), runtime.ring_ttl()) == (expected.jwks_max_age, expected.ring_ttl)


@pytest.mark.parametrize("value", ["-5", "0", "ten", "5w", "1.5h", "d"])
def test_runtime_refuses_a_lifecycle_variable_that_is_not_a_positive_duration(monkeypatch, value):
    monkeypatch.setenv("KEY_ROTATION_PERIOD", value)
    with pytest.raises(ValueError, match="KEY_ROTATION_PERIOD"):
        runtime.lifecycle()


# -- the plan --------------------------------------------------------------------------------------

def steady(now_offset: int = 0) -> list[KeyEntry]:
    """Active since T0, its successor published since T0, the previous key retired at T0."""
    return [entry("active", ACTIVE, T0 - 100, activated_at=T0), entry("pending", PENDING, T0, published_at=T0),
            entry("previous", RETIRED, T0 - 20_000, activated_at=T0 - 10_000, retired_at=T0)]


def test_nothing_is_due_in_the_middle_of_a_period():
    assert plan(steady(), T0 + 5_000, LIFE) == []


def test_the_pending_key_takes_over_when_the_active_key_is_a_period_old():
    now = T0 + LIFE.period
    assert steps(plan(steady(), now, LIFE)) == [("activate", "pending"), ("retire", "active"), ("remove", "previous"),
                                                ("create", None)]
    assert all(s.at == now for s in plan(steady(), now, LIFE))


def test_the_previous_key_stays_until_a_newer_key_has_retired():
    # Retired long enough ago, but it is still the previous key: kept.
    assert plan(steady(), T0 + LIFE.period - 1, LIFE) == []


def test_a_retired_key_is_kept_for_the_retention_even_after_a_newer_key_retired():
    ring = [entry("a", ACTIVE, T0, activated_at=T0), entry("p", PENDING, T0, published_at=T0),
            entry("r1", RETIRED, T0 - 9, retired_at=T0 - 10), entry("r2", RETIRED, T0 - 5, retired_at=T0)]
    assert plan(ring, T0 - 10 + LIFE.retention - 1, LIFE) == []
    assert steps(plan(ring, T0 - 10 + LIFE.retention, LIFE)) == [("remove", "r1")]


def test_a_pending_key_never_signs_before_its_publication_delay():
    ring = [entry("a", ACTIVE, T0 - LIFE.period, activated_at=T0 - LIFE.period), entry("p", PENDING, T0, published_at=T0)]
    assert plan(ring, T0 + LIFE.publication_delay - 1, LIFE) == []
    assert steps(plan(ring, T0 + LIFE.publication_delay, LIFE))[:2] == [("activate", "p"), ("retire", "a")]


def test_a_requested_rotation_takes_effect_once_the_pending_key_is_published_long_enough():
    ring = [entry("a", ACTIVE, T0, activated_at=T0), entry("p", PENDING, T0 + 100, published_at=T0 + 100)]
    requested = T0 + 150
    assert plan(ring, T0 + 150, LIFE, rotate_requested_at=requested) == []
    assert rotation.activation_time(ring, LIFE, requested) == T0 + 100 + LIFE.publication_delay
    assert steps(plan(ring, T0 + 100 + LIFE.publication_delay, LIFE, requested)) == [
        ("activate", "p"), ("retire", "a"), ("create", None)]


def test_a_requested_rotation_is_applied_at_once_when_the_pending_key_is_ready():
    assert steps(plan(steady(), T0 + 1000, LIFE, rotate_requested_at=T0 + 1000))[:2] == [
        ("activate", "pending"), ("retire", "active")]


def test_a_ring_without_a_pending_key_gets_one():
    assert steps(plan([entry("a", ACTIVE, T0)], T0 + 1, LIFE)) == [("create", None)]


def test_an_empty_ring_plans_nothing():
    # The stack's key comes from the key ring resource, never from rotation.
    assert plan([], T0, LIFE) == []


def test_a_legacy_ring_with_an_old_active_key_first_publishes_a_successor():
    legacy = [entry("a", ACTIVE, T0 - 5 * LIFE.period)]  # no activated_at: counted from created_at
    assert steps(plan(legacy, T0, LIFE)) == [("create", None)]


def test_a_revoked_key_is_removed_at_once():
    ring = [*steady(), entry("gone", REVOKED, T0 - 50, retired_at=T0)]
    assert steps(plan(ring, T0 + 1, LIFE)) == [("remove", "gone")]


def test_a_second_active_key_retires_so_that_exactly_one_signs():
    ring = [entry("a1", ACTIVE, T0 - 5, activated_at=T0), entry("a2", ACTIVE, T0, activated_at=T0),
            entry("p", PENDING, T0, published_at=T0)]
    assert steps(plan(ring, T0 + 1, LIFE)) == [("retire", "a1")]


def test_the_plan_reads_times_of_a_ring_from_before_rotation_from_created_at():
    ring = [entry("a", ACTIVE, T0), entry("n", PENDING, T0)]
    assert rotation.activation_time(ring, LIFE, None) == T0 + LIFE.period


def test_the_outlook_gives_each_key_its_next_step():
    seen = rotation.outlook(steady(), T0 + 10, LIFE)
    assert {kid: (s.step, s.at) for kid, s in seen.items()} == {
        "pending": ("activate", T0 + LIFE.period), "active": ("retire", T0 + LIFE.period),
        "previous": ("remove", T0 + LIFE.period)}


# -- the executor ---------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: int = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


NEW_KEYS = rotation.NewKeys(policy={"Version": "2012-10-17", "Statement": []}, stack="broker")


@pytest.fixture
def pool(rsa_key, other_rsa_key):
    from cryptography.hazmat.primitives.asymmetric import rsa

    return [rsa_key, other_rsa_key] + [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


class World:
    """A ring holding the stack's key (active since T0), KMS, a clock, and the rotation over them."""

    def __init__(self, pool, lifecycle: Lifecycle = LIFE):
        self.kms = FakeKms(key_pool=list(pool[1:]))
        self.seal = keys.Seal(self.kms, SEAL_KEY)
        self.clock = Clock()
        arn = self.kms.add_key(pool[0])
        first = keys.public_entry(self.kms, arn, ACTIVE, T0)
        self.first = first = replace(first, seal=self.seal.make(first))
        self.ring = MemoryRing(first)
        self.rotation = rotation.Rotation(self.ring, self.kms, self.seal, lifecycle, self.clock, NEW_KEYS,
                                          backoff=Backoff(sleep=lambda _: None))

    def states(self) -> dict[str, str]:
        return self.ring.states()

    def by_state(self, state: str) -> list[str]:
        return [kid for kid, s in self.states().items() if s == state]


def test_status_changes_nothing(pool):
    w = World(pool)
    outcome = w.rotation.status()
    assert (w.ring.changes, outcome.steps, w.kms.count("CreateKey")) == (0, [], 0)
    assert outcome.report["keys"][0]["state"] == ACTIVE


def test_the_first_run_publishes_a_sealed_pending_key_made_as_the_policy_says(pool):
    w = World(pool)
    outcome = w.rotation.run()
    (pending,) = w.by_state(PENDING)
    assert steps(outcome.steps) == [("create", pending)]
    stored = KeyEntry.from_item(w.ring.items[pending])
    assert w.seal.verifies(stored) and stored.published_at == T0 and stored.created_at == T0
    (request,) = [k["request"] for k in w.kms.keys.values() if k["request"]]
    assert request == NEW_KEYS.create_key_request()
    assert (request["KeySpec"], request["KeyUsage"], request["BypassPolicyLockoutSafetyCheck"]) == ("RSA_2048", "SIGN_VERIFY", True)
    assert {t["TagKey"]: t["TagValue"] for t in request["Tags"]} == {"oidc-broker:stack": "broker",
                                                                     "oidc-broker:purpose": "signing"}


def test_a_second_run_at_once_changes_nothing(pool):
    w = World(pool)
    w.rotation.run()
    changes = w.ring.changes
    assert w.rotation.run().steps == [] and w.ring.changes == changes


def test_a_full_cycle_promotes_retires_and_publishes_the_next_key(pool):
    w = World(pool)
    w.rotation.run()
    (first_pending,) = w.by_state(PENDING)
    w.clock.now = T0 + LIFE.period
    outcome = w.rotation.run()
    assert steps(outcome.steps)[:2] == [("activate", first_pending), ("retire", w.first.kid)]
    assert steps(outcome.steps)[2][0] == "create"
    assert (w.by_state(ACTIVE), w.by_state(RETIRED), len(w.by_state(PENDING))) == ([first_pending], [w.first.kid], 1)
    report = {k["kid"]: k for k in outcome.report["keys"]}
    assert report[first_pending]["activated_at"] == T0 + LIFE.period
    assert report[w.first.kid]["retired_at"] == T0 + LIFE.period
    assert outcome.active_age == 0


def test_the_third_key_removes_the_first_and_schedules_its_kms_key_for_deletion(pool):
    w = World(pool)
    for cycle in range(3):
        w.clock.now = T0 + cycle * LIFE.period
        w.rotation.run()
    assert w.first.kid not in w.states()
    assert w.kms.state_of(w.first.key_arn) == "PendingDeletion"
    assert sorted(w.states().values()) == [ACTIVE, PENDING, RETIRED]


def test_rotate_applies_at_once_when_the_pending_key_is_published_long_enough(pool):
    w = World(pool)
    w.rotation.run()
    (pending,) = w.by_state(PENDING)
    w.clock.now = T0 + LIFE.publication_delay
    outcome = w.rotation.rotate()
    assert steps(outcome.steps)[:2] == [("activate", pending), ("retire", w.first.kid)]
    assert (outcome.report["rotate_requested_at"], outcome.report["effective_at"]) == (None, None)


def test_rotate_too_early_says_when_and_the_next_run_performs_it(pool):
    w = World(pool)
    w.rotation.run()
    (pending,) = w.by_state(PENDING)
    w.clock.now = T0 + 100
    outcome = w.rotation.rotate()
    assert outcome.steps == []
    assert outcome.report["rotate_requested_at"] == T0 + 100
    assert outcome.report["effective_at"] == T0 + LIFE.publication_delay
    assert any("publish before use" in n for n in outcome.report["notices"])
    assert {k["kid"]: k["next"] for k in outcome.report["keys"]}[pending] == {
        "step": "activate", "at": T0 + LIFE.publication_delay}
    w.clock.now = T0 + LIFE.publication_delay - 1
    assert w.rotation.run().steps == []
    w.clock.now = T0 + LIFE.publication_delay
    assert steps(w.rotation.run().steps)[0] == ("activate", pending)
    assert w.ring.rotate_requested_at is None


def test_rotate_twice_keeps_the_first_request(pool):
    w = World(pool)
    w.rotation.run()
    w.clock.now = T0 + 10
    w.rotation.rotate()
    w.clock.now = T0 + 20
    assert w.rotation.rotate().report["rotate_requested_at"] == T0 + 10


def test_revoking_the_active_key_makes_the_pending_key_sign_at_once_and_says_so(pool):
    w = World(pool)
    w.rotation.run()
    (pending,) = w.by_state(PENDING)
    w.clock.now = T0 + 10  # long before the pending key's publication delay
    outcome = w.rotation.revoke(w.first.kid)
    assert steps(outcome.steps)[:3] == [("revoke", w.first.kid), ("activate", pending), ("remove", w.first.kid)]
    assert w.first.kid not in w.states() and w.by_state(ACTIVE) == [pending] and len(w.by_state(PENDING)) == 1
    assert w.kms.state_of(w.first.key_arn) == "PendingDeletion"
    notices = " ".join(outcome.report["notices"])
    assert f"up to {LIFE.jwks_max_age + LIFE.ring_ttl}s" in notices
    assert "Google providers holding an uploaded JWKS" in notices and "oidc-broker keys jwks" in notices
    assert "publication delay" in notices and f"{pending} signs now" in notices


def test_revoking_the_active_key_of_a_ring_without_a_pending_key_creates_the_successor_first(pool):
    w = World(pool)
    outcome = w.rotation.revoke(w.first.kid)
    assert [s.step for s in outcome.steps][:3] == ["create", "revoke", "activate"]
    assert len(w.by_state(ACTIVE)) == 1 and w.first.kid not in w.states()


def test_revoking_the_active_key_never_leaves_the_ring_without_one_when_kms_fails(pool):
    w = World(pool)
    w.kms.fail_create = kms_error("AccessDeniedException", "CreateKey")
    with pytest.raises(Exception, match="AccessDenied"):
        w.rotation.revoke(w.first.kid)
    assert w.states() == {w.first.kid: ACTIVE}


@pytest.mark.parametrize("state", [PENDING, RETIRED])
def test_revoking_a_pending_or_retired_key_removes_it_at_once(pool, state):
    w = World(pool)
    w.rotation.run()
    if state == RETIRED:
        w.clock.now = T0 + LIFE.period
        w.rotation.run()
    (kid,) = w.by_state(state)
    arn = w.ring.items[kid]["key_arn"]
    outcome = w.rotation.revoke(kid)
    assert kid not in w.states() and w.kms.state_of(arn) == "PendingDeletion"
    assert len(w.by_state(ACTIVE)) == 1 and len(w.by_state(PENDING)) == 1
    assert ("revoke", kid) in steps(outcome.steps)


def test_revoking_an_unknown_kid_is_refused_and_changes_nothing(pool):
    w = World(pool)
    with pytest.raises(InvalidRequest, match="no key 'nope' in the key ring"):
        w.rotation.revoke("nope")
    assert w.ring.changes == 0


def test_a_run_that_stopped_after_disabling_a_key_finishes_the_removal(pool):
    w = World(pool)
    for cycle in range(2):
        w.clock.now = T0 + cycle * LIFE.period
        w.rotation.run()
    w.kms.disable_key(KeyId=w.first.key_arn.rsplit("/", 1)[-1])
    w.kms.schedule_key_deletion(KeyId=w.first.key_arn.rsplit("/", 1)[-1], PendingWindowInDays=30)
    w.clock.now = T0 + 2 * LIFE.period
    assert ("remove", w.first.kid) in steps(w.rotation.run().steps)


def test_the_loser_of_a_race_for_the_pending_key_schedules_its_kms_key_for_deletion(pool):
    w = World(pool)

    class Racing(MemoryRing):
        """Another run adds its pending key between this run's read and its write."""

        def __init__(self, inner: MemoryRing, other: KeyEntry):
            self.__dict__.update(inner.__dict__)
            self.other, self.raced = other, False

        def change_key_ring(self, version, requested, *, jwks, put=(), delete=()):
            if not self.raced:
                self.raced = True
                theirs = rotation.sealed_jwks(w.seal, [self.other], version + 1)
                assert super().change_key_ring(version, requested, jwks=theirs, put=[(self.other, ())])
            return super().change_key_ring(version, requested, jwks=jwks, put=put, delete=delete)

    theirs = keys.public_entry(w.kms, w.kms.add_key(pool[-1]), PENDING, T0)
    theirs = replace(theirs, seal=w.seal.make(theirs))
    w.rotation._store = w.ring = Racing(w.ring, theirs)
    outcome = w.rotation.run()
    assert w.by_state(PENDING) == [theirs.kid]
    (orphan,) = outcome.orphans
    (orphan_arn,) = [w.kms.arn(i) for i, k in w.kms.keys.items() if k["request"]]
    assert w.kms.state_of(orphan_arn) == "PendingDeletion"
    assert outcome.conflicts == 1 and any(orphan in n for n in outcome.report["notices"])


def test_the_executor_acts_only_on_sealed_entries(pool):
    w = World(pool)
    w.rotation.run()
    planted = entry("planted", PENDING, T0 - 10 * LIFE.period, published_at=T0 - 10 * LIFE.period)
    w.ring.plant(item_of(planted))
    w.clock.now = T0 + LIFE.period
    outcome = w.rotation.run()
    assert "planted" not in [s.kid for s in outcome.steps]
    assert w.ring.items["planted"]["state"] == PENDING  # left alone, and reported
    assert ("planted", keys.UNKNOWN_KEY) in [(e.kid, r) for e, r in outcome.refused]
    assert any("planted is not sealed" in n for n in outcome.report["notices"])


def test_the_report_follows_the_contract(pool):
    w = World(pool)
    report = w.rotation.run().report
    assert set(report) == {"keys", "steps", "rotate_requested_at", "effective_at", "lifecycle", "notices"}
    assert report["lifecycle"] == LIFE.report()
    for key in report["keys"]:
        assert set(key) == {"kid", "state", "created_at", "published_at", "activated_at", "retired_at", "next"}
        assert "key_arn" not in json.dumps(report)
        assert key["next"] is None or set(key["next"]) == {"step", "at"}
    assert [k["state"] for k in report["keys"]] == [PENDING, ACTIVE]
    assert all(set(s) == {"step", "kid", "at"} for s in report["steps"])
    json.dumps(report)


def test_a_key_made_a_moment_ago_may_not_be_visible_yet_and_is_asked_for_again(pool):
    w = World(pool)
    misses = {"left": 2}
    real = w.kms.get_public_key

    def eventually(KeyId):
        if misses["left"]:
            misses["left"] -= 1
            raise kms_error("NotFoundException", "GetPublicKey")
        return real(KeyId=KeyId)

    w.kms.get_public_key = eventually
    assert steps(w.rotation.run().steps)[0][0] == "create"


def test_a_created_key_that_cannot_be_published_is_scheduled_for_deletion(pool):
    w = World(pool)
    w.kms.get_public_key = lambda KeyId: (_ for _ in ()).throw(kms_error("AccessDeniedException", "GetPublicKey"))
    with pytest.raises(Exception, match="AccessDenied"):
        w.rotation.run()
    (made,) = [i for i, k in w.kms.keys.items() if k["request"]]
    assert w.kms.keys[made]["state"] == "PendingDeletion"
    assert w.states() == {w.first.kid: ACTIVE}


# -- the key policy --------------------------------------------------------------------------------

def test_the_key_policy_lets_the_account_administer_but_never_use_the_key():
    policy = rotation.signing_key_policy(account_root="arn:aws:iam::1:root", signers=["s"], readers=["r"], rotator="x")
    (admin,) = [s for s in policy["Statement"] if s["Principal"] == {"AWS": "arn:aws:iam::1:root"}]
    assert not any(a in ("kms:Sign", "kms:*") for a in admin["Action"])
    actions = {s["Sid"]: s["Action"] for s in policy["Statement"]}
    assert actions["MintingFunctionsSign"] == "kms:Sign"
    assert actions["RotationFunctionRemovesTheKey"] == ["kms:DisableKey", "kms:ScheduleKeyDeletion"]


@pytest.mark.parametrize(("role", "root"), [
    ("arn:aws:iam::123456789012:role/broker-RotateKeysFunctionRole-1", "arn:aws:iam::123456789012:root"),
    ("arn:aws-us-gov:iam::123456789012:role/x", "arn:aws-us-gov:iam::123456789012:root"),
])
def test_the_account_root_comes_from_the_rotation_role(role, root):
    assert rotation.account_root(role) == root


def test_a_rotation_role_that_is_no_role_arn_is_refused():
    with pytest.raises(ValueError):
        rotation.account_root("not-an-arn")


def test_runtime_builds_the_key_policy_from_the_roles_the_environment_names(monkeypatch):
    role = "arn:aws:iam::123456789012:role/{}"
    monkeypatch.setenv("KEY_POLICY_SIGNERS", f"{role.format('token')}, {role.format('aws')}")
    monkeypatch.setenv("KEY_POLICY_READERS", role.format("ring"))
    monkeypatch.setenv("KEY_POLICY_ROTATOR", role.format("rotate"))
    monkeypatch.setenv("STACK_NAME", "broker")
    monkeypatch.setenv("TABLE_NAME", "t")

    class Session:
        def client(self, name):
            return FakeKms() if name == "kms" else object()

    built = runtime.rotation(Session())
    assert built._new_keys.stack == "broker"
    assert built._new_keys.policy == rotation.signing_key_policy(
        account_root="arn:aws:iam::123456789012:root", signers=[role.format("token"), role.format("aws")],
        readers=[role.format("ring")], rotator=role.format("rotate"))


# -- the stack's own key ---------------------------------------------------------------------------

def test_the_stack_key_of_an_empty_ring_becomes_the_sealed_active_key(rsa_key):
    kms, ring = FakeKms(), MemoryRing()
    arn = kms.add_key(rsa_key)
    made, done = rotation.register_stack_key(ring, kms, keys.Seal(kms, SEAL_KEY), arn, T0)
    assert (made.state, made.activated_at, done) == (ACTIVE, T0, "registered")
    assert keys.Seal(kms, SEAL_KEY).verifies(KeyEntry.from_item(ring.items[made.kid]))


def test_registering_the_stack_key_twice_changes_nothing(rsa_key):
    kms, ring = FakeKms(), MemoryRing()
    arn = kms.add_key(rsa_key)
    first, _ = rotation.register_stack_key(ring, kms, keys.Seal(kms, SEAL_KEY), arn, T0)
    again, done = rotation.register_stack_key(ring, kms, keys.Seal(kms, SEAL_KEY), arn, T0 + 5)
    assert (again, done, ring.changes) == (first, "unchanged", 1)


def test_a_ring_from_before_the_seal_gets_the_stack_keys_entry_sealed_in_its_state(rsa_key):
    kms = FakeKms()
    arn = kms.add_key(rsa_key)
    jwk = keys.jwk_from_der(public_der(rsa_key))
    legacy = {"kid": jwk["kid"], "key_arn": arn, "state": LEGACY_PENDING, "jwk": jwk, "created_at": T0}
    ring = MemoryRing(entry("other-active", ACTIVE))
    ring.plant(legacy)
    made, done = rotation.register_stack_key(ring, kms, keys.Seal(kms, SEAL_KEY), arn, T0 + 99)
    assert (done, made.state, made.created_at) == ("sealed", PENDING, T0)
    assert ring.items[jwk["kid"]]["state"] == PENDING  # written as pending, never as next
    assert keys.Seal(kms, SEAL_KEY).verifies(KeyEntry.from_item(ring.items[jwk["kid"]]))
    assert "seal" not in ring.items["other-active"] or not ring.items["other-active"]["seal"]  # never sealed here


def test_an_entry_naming_the_stack_key_with_another_public_key_is_refused(rsa_key, other_rsa_key):
    kms = FakeKms()
    arn = kms.add_key(rsa_key)
    wrong = keys.jwk_from_der(public_der(other_rsa_key))
    ring = MemoryRing()
    ring.plant({"kid": keys.jwk_from_der(public_der(rsa_key))["kid"], "key_arn": arn, "state": ACTIVE, "jwk": wrong,
                "created_at": T0})
    with pytest.raises(ValueError, match="another public key"):
        rotation.register_stack_key(ring, kms, keys.Seal(kms, SEAL_KEY), arn, T0)


def test_a_stack_key_that_rotation_removed_is_never_put_back(pool):
    w = World(pool)
    for cycle in range(3):
        w.clock.now = T0 + cycle * LIFE.period
        w.rotation.run()
    before = w.states()
    made, done = rotation.register_stack_key(w.ring, w.kms, w.seal, w.first.key_arn, T0 + 3 * LIFE.period)
    assert (made, done, w.states()) == (None, "rotated_out", before)


def test_a_new_stack_key_joins_a_ring_with_an_active_key_as_pending(pool):
    w = World(pool)
    replacement = w.kms.add_key(pool[-1])
    made, done = rotation.register_stack_key(w.ring, w.kms, w.seal, replacement, T0 + 1)
    assert (made.state, done) == (PENDING, "registered")


def test_without_the_roles_a_rotation_reports_but_creates_no_key_and_says_why(monkeypatch, pool):
    for name in ("KEY_POLICY_ROTATOR", "STACK_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TABLE_NAME", "t")

    class Session:
        def client(self, name):
            return FakeKms() if name == "kms" else object()

    assert runtime.rotation(Session())._new_keys.policy is None
    with pytest.raises(ValueError, match="KEY_POLICY_ROTATOR and STACK_NAME"):
        rotation.NewKeys(policy=None, stack="").create_key_request()
    w = World(pool)
    w.rotation._new_keys = rotation.NewKeys(policy=None, stack="")
    assert w.rotation.status().report["keys"]
    with pytest.raises(ValueError, match="KEY_POLICY_ROTATOR"):
        w.rotation.run()
    assert w.kms.count("CreateKey") == 0


def test_a_ring_that_keeps_changing_under_a_revoke_is_reported_not_taken_for_done(pool):
    w = World(pool)
    w.rotation.run()

    class Busy(MemoryRing):
        def __init__(self, inner: MemoryRing):
            self.__dict__.update(inner.__dict__)

        def change_key_ring(self, *args, **kwargs):
            self.conflicts += 1
            return False

    w.rotation._store = w.ring = Busy(w.ring)
    with pytest.raises(RuntimeError, match="kept changing"):
        w.rotation.revoke(w.first.kid)
    assert w.states()[w.first.kid] == ACTIVE


# -- the stored JWKS ---------------------------------------------------------------------------------

def stored_jwks(ring: MemoryRing) -> keys.RenderedJwks:
    return keys.RenderedJwks.from_item(ring.jwks)


def assert_in_step(w_ring: MemoryRing, seal: keys.Seal) -> None:
    """The stored JWKS is the ring's: its version, its sealed entries, under a seal that verifies."""
    stored = stored_jwks(w_ring)
    admitted, _ = keys.admit((KeyEntry.from_item(i) for i in w_ring.key_ring()), seal)
    assert stored.version == w_ring.version and stored.body == keys.jwks_body(admitted)
    assert seal.verifies(stored)


def test_every_change_of_a_cycle_stores_the_jwks_of_the_ring_as_changed(pool):
    w = World(pool)
    w.rotation.run()  # create
    (pending,) = w.by_state(PENDING)
    assert w.ring.published_kids() == [w.first.kid, pending]
    assert_in_step(w.ring, w.seal)
    w.clock.now = T0 + LIFE.period
    w.rotation.run()  # activate + retire (one change), then the next pending key
    (successor,) = w.by_state(PENDING)
    assert w.ring.published_kids() == [pending, successor, w.first.kid]
    assert_in_step(w.ring, w.seal)
    w.clock.now = T0 + 2 * LIFE.period + LIFE.retention
    w.rotation.run()  # the next cycle, the first key removed
    assert w.first.kid not in w.ring.published_kids() and w.first.kid not in w.states()
    assert_in_step(w.ring, w.seal)


def test_a_revoked_key_leaves_the_stored_jwks_in_the_same_change(pool):
    w = World(pool)
    w.rotation.run()

    class Watching(MemoryRing):
        """Sees each change as the table would: entries and JWKS in one write."""

        def __init__(self, inner: MemoryRing):
            self.__dict__.update(inner.__dict__)
            self.seen: list[tuple[dict, list[str]]] = []

        def change_key_ring(self, *args, **kwargs):
            applied = super().change_key_ring(*args, **kwargs)
            self.seen.append((self.states(), self.published_kids()))
            return applied

    w.rotation._store = w.ring = Watching(w.ring)
    (pending,) = w.by_state(PENDING)
    w.rotation.revoke(pending)
    states, published = w.ring.seen[0]
    assert states[pending] == REVOKED and pending not in published and published == [w.first.kid]
    assert_in_step(w.ring, w.seal)


def test_entries_without_the_stacks_seal_never_reach_the_stored_jwks(pool):
    w = World(pool)
    w.ring.plant(item_of(entry("planted", RETIRED, T0 - 5)))
    w.rotation.run()
    assert "planted" not in w.ring.published_kids() and len(w.ring.published_kids()) == 2


def test_a_run_stores_the_jwks_of_a_ring_from_before_it_and_the_next_run_changes_nothing(pool):
    w = World(pool)
    w.rotation.run()
    w.ring.jwks = None  # as a ring changed by an older rotation function
    w.rotation.run()
    assert_in_step(w.ring, w.seal)
    changes = w.ring.changes
    w.rotation.run()
    assert (w.ring.changes, w.kms.count("CreateKey")) == (changes, 1)


@pytest.mark.parametrize("tamper", ["stale version", "bad seal", "another body"])
def test_a_run_replaces_a_stored_jwks_that_is_not_the_rings(pool, tamper):
    w = World(pool)
    w.rotation.run()
    stored = dict(w.ring.jwks)
    if tamper == "stale version":
        stored["version"] -= 1
    elif tamper == "bad seal":
        stored["seal"] = w.first.seal
    else:
        stored["body"] = keys.jwks_body([w.first])
    w.ring.jwks = stored
    w.rotation.run()
    assert_in_step(w.ring, w.seal)


def test_status_never_writes_the_jwks(pool):
    w = World(pool)
    w.rotation.status()
    assert (w.ring.jwks, w.ring.changes) == (None, 0)


def test_registering_the_stack_key_stores_the_jwks_and_of_a_ring_from_before_it_too(rsa_key):
    kms, ring = FakeKms(), MemoryRing()
    seal = keys.Seal(kms, SEAL_KEY)
    arn = kms.add_key(rsa_key)
    made, _ = rotation.register_stack_key(ring, kms, seal, arn, T0)
    assert ring.published_kids() == [made.kid]
    assert_in_step(ring, seal)
    ring.jwks = None  # a ring the stack's previous version changed
    again, done = rotation.register_stack_key(ring, kms, seal, arn, T0 + 5)
    assert (again, done, ring.changes) == (made, "unchanged", 2)
    assert_in_step(ring, seal)


def test_a_stack_key_rotated_out_still_leaves_the_jwks_current(pool):
    w = World(pool)
    w.rotation.run()
    w.ring.jwks = None
    gone = w.kms.add_key(pool[-1])
    w.kms.disable_key(gone.rsplit("/", 1)[-1])
    made, done = rotation.register_stack_key(w.ring, w.kms, w.seal, gone, T0)
    assert (made, done) == (None, "rotated_out")
    assert_in_step(w.ring, w.seal)


def test_the_store_refuses_a_change_without_the_sealed_jwks_of_the_next_version():
    from oidc_broker.store import Store

    unsealed = keys.RenderedJwks.of([], 1)
    with pytest.raises(ValueError, match="sealed JWKS of version 1"):
        Store(object(), "t").change_key_ring(0, None, jwks=unsealed)
    with pytest.raises(ValueError, match="sealed JWKS of version 1"):
        Store(object(), "t").change_key_ring(0, None, jwks=replace(unsealed, version=2, seal="s"))


def test_a_run_that_stores_the_jwks_anew_says_which_version(pool):
    w = World(pool)
    w.rotation.run()
    assert w.rotation.run().restored_jwks is None
    w.ring.jwks = None
    assert w.rotation.run().restored_jwks == w.ring.version
