"""Rotation as verifiers live through it: a clock drives three full rotation cycles while tokens are
minted all the time, and every token is checked by verifiers that cache the JWKS as its
Cache-Control allows and refetch on an unknown kid with a cooldown (as PyJWT's PyJWKClient and the
clouds do). Real RS256: each token is signed by its (fake) KMS key through keys.KmsSigner and
verified by PyJWT against the JWKS the functions serve (api.cacheable_body_response over the
ring's stored JWKS, keys.PublishedJwks, sealed), which every rotation run is checked to keep in step
with the ring.

The period is shortened below the longest token lifetime, so retired keys pile up until their
tokens have expired, and one rotation is requested by the operator right after the one before, so
its key signs as soon as the publication delay allows: both delays are what keeps the tokens
verifiable, and the test fails when either is shortened (test_a_shorter_lifecycle_is_caught).
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from dataclasses import dataclass, field, replace

import jwt
import pytest
from keyring_fakes import SEAL_KEY, FakeKms, MemoryRing

from oidc_broker import api, keys, rotation, tokens
from oidc_broker.clouds import Backoff
from oidc_broker.keys import ACTIVE, KeyEntry
from oidc_broker.rotation import Lifecycle

T0 = 1_800_000_000
HOUR = 3600
LIFE = Lifecycle(period=1200, jwks_max_age=300, ring_ttl=60, max_token_lifetime=HOUR, margin=30)
TICK = 20  # seconds between mints
RUN_EVERY = 300  # the rotation function's schedule in this deployment
AUDIENCE = "sts.amazonaws.com"
ISSUER = "https://id.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """The JWKS function in one container: the ring's stored JWKS through its cache, the real response shape."""

    def __init__(self, ring: MemoryRing, kms: FakeKms, clock: Clock):
        self.jwks = keys.PublishedJwks(ring, keys.Seal(kms, SEAL_KEY), clock, ttl=LIFE.ring_ttl)

    def get(self) -> tuple[dict, int]:
        body = self.jwks.body()
        assert self.jwks.passed_over() is None, "served the stored JWKS, not the entries"
        response = api.cacheable_body_response({"headers": {}}, body.decode(), max_age=LIFE.jwks_max_age)
        max_age = int(re.fullmatch(r"public, max-age=(\d+)", response["headers"]["Cache-Control"]).group(1))
        return json.loads(response["body"]), max_age


class Minter:
    """The token function in one container: its key ring cache and the KMS signer."""

    def __init__(self, ring: MemoryRing, kms: FakeKms, clock: Clock):
        self.key_ring = keys.KeyRing(ring, clock, ttl=LIFE.ring_ttl, seal=keys.Seal(kms, SEAL_KEY))
        self.signer = keys.KmsSigner(kms)
        self.clock = clock

    def mint(self) -> tuple[str, str, int]:
        key = self.key_ring.signing_key()
        now = int(self.clock())
        body = {"iss": ISSUER, "sub": "space:default:feed:prod-ecr", "aud": AUDIENCE, "iat": now, "nbf": now,
                "exp": now + LIFE.max_token_lifetime, "jti": str(uuid.uuid4())}
        message = tokens.signing_input(tokens.header(key.kid), body)
        return tokens.assemble(message, self.signer.sign(key.key_arn, message)), key.kid, body["exp"]


@dataclass
class Verifier:
    """A relying party: caches the JWKS for its max-age; an unknown kid refetches, at most once per cooldown."""

    servers: list[JwksServer]
    clock: Clock
    cooldown: int = 60
    keys: dict[str, dict] = field(default_factory=dict)
    fetched_at: float = -1e12
    max_age: int = 0
    fetches: int = 0
    _next: itertools.count = field(default_factory=itertools.count)

    def _fetch(self) -> None:
        server = self.servers[next(self._next) % len(self.servers)]
        jwks, self.max_age = server.get()
        self.keys = {k["kid"]: k for k in jwks["keys"]}
        self.fetched_at = self.clock()
        self.fetches += 1

    def verify(self, token: str) -> dict:
        now = self.clock()
        if now >= self.fetched_at + self.max_age:
            self._fetch()
        kid = jwt.get_unverified_header(token)["kid"]
        if kid not in self.keys and now >= self.fetched_at + self.cooldown:
            self._fetch()
        if kid not in self.keys:
            raise LookupError(f"unknown kid {kid}")
        claims = jwt.decode(token, jwt.PyJWK(self.keys[kid]).key, algorithms=["RS256"], audience=AUDIENCE,
                            issuer=ISSUER, options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
        if not claims["nbf"] <= now < claims["exp"]:
            raise ValueError("expired")
        return claims


class Deployment:
    """One stack: the ring with the template's key, KMS, the hourly rotation, and its containers."""

    def __init__(self, pool, lifecycle: Lifecycle = LIFE):
        self.clock = Clock()
        self.kms = FakeKms(key_pool=list(pool[1:]))
        self.seal = seal = keys.Seal(self.kms, SEAL_KEY)
        first = keys.public_entry(self.kms, self.kms.add_key(pool[0]), ACTIVE, T0)
        self.ring = MemoryRing(replace(first, seal=seal.make(first)))
        self.rotation = rotation.Rotation(self.ring, self.kms, seal, lifecycle, self.clock,
                                          rotation.NewKeys(policy={}, stack="sim"), backoff=Backoff(sleep=lambda _: None))
        self.servers = [JwksServer(self.ring, self.kms, self.clock) for _ in range(2)]
        self.minters = [Minter(self.ring, self.kms, self.clock) for _ in range(3)]
        self.verifiers = [Verifier(self.servers, self.clock, cooldown=c) for c in (30, 60, 120, 300)]
        self.next_run = T0
        self.rendered_versions: list[int] = []

    def tick(self) -> None:
        if self.clock.now >= self.next_run:
            self.rotation.run()
            self.assert_jwks_in_step()
            self.next_run += RUN_EVERY

    def assert_jwks_in_step(self) -> None:
        """The stored JWKS renders the ring's version, from its sealed entries, under a valid seal."""
        stored = keys.RenderedJwks.from_item(self.ring.jwks)
        admitted, _ = keys.admit((KeyEntry.from_item(i) for i in self.ring.key_ring()), self.seal)
        assert stored.version == self.ring.version and stored.body == keys.jwks_body(admitted)
        assert self.seal.verifies(stored)
        if stored.version not in self.rendered_versions:
            self.rendered_versions.append(stored.version)

    def published(self) -> set[str]:
        return {k["kid"] for k in self.servers[0].get()[0]["keys"]}


@pytest.fixture(scope="module")
def pool():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(7)]


def simulate(d: Deployment) -> tuple[list[str], list[str], int, int]:
    """Mint a token every tick through three rotations; verify each at once and again just before it
    expires (the clock and the rotation runs go on until the last token has been checked).

    Cycle 1 comes from the period; right after it the operator requests cycle 2 (`keys rotate`),
    which the first run after the publication delay performs; cycle 3 comes from the period again.
    Returns (failures, the kids that signed in turn, tokens minted, verifications)."""
    failures: list[str] = []
    signing_kids: list[str] = []
    minted = checked = 0
    last_switch = T0
    minters, verifiers = itertools.cycle(d.minters), itertools.cycle(d.verifiers)
    late: list[tuple[str, str, int]] = []
    requested = False
    while True:
        d.tick()
        minting = len(signing_kids) < 4 or d.clock.now - last_switch < 600
        if not minting and not late:
            return failures, signing_kids, minted, checked
        if not requested and len(signing_kids) == 2:
            d.rotation.rotate()
            requested = True
        if minting:
            token, kid, exp = next(minters).mint()
            minted += 1
            if not signing_kids or signing_kids[-1] != kid:
                signing_kids.append(kid)
                last_switch = d.clock.now
            late.append((token, kid, exp - TICK))
            # At once, by verifiers whose caches may predate its key (a token minted just after a switch).
            for verifier in (next(verifiers), next(verifiers)):
                try:
                    verifier.verify(token)
                    checked += 1
                except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                    failures.append(f"t+{d.clock.now - T0}s fresh {kid}: {e}")
        # Just before it expires: minted before later switches, checked after its key retired.
        while late and late[0][2] <= d.clock.now:
            old_token, old_kid, _ = late.pop(0)
            try:
                next(verifiers).verify(old_token)
                checked += 1
            except Exception as e:  # noqa: BLE001
                failures.append(f"t+{d.clock.now - T0}s late {old_kid}: {e}")
        d.clock.now += TICK


def test_three_rotation_cycles_with_tokens_minted_throughout_fail_no_verification(pool):
    d = Deployment(pool)
    failures, signing_kids, minted, checked = simulate(d)
    assert failures == []
    # The template's key, then three rotations (the middle one requested): four keys signed, in turn.
    assert len(signing_kids) == len(set(signing_kids)) == 4
    # Each token checked three times: twice at once, once just before it expired.
    assert checked == 3 * minted and minted >= (2 * LIFE.period + LIFE.publication_delay) // TICK
    # Keys whose tokens had all expired were removed meanwhile, their KMS keys scheduled for deletion.
    assert d.kms.count("ScheduleKeyDeletion") >= 2
    # Every change of the ring (create, activate, remove; three cycles) stored its own JWKS.
    assert len(d.rendered_versions) >= 9 and d.rendered_versions[-1] == d.ring.version


@pytest.mark.parametrize("shortened", [
    Lifecycle(period=LIFE.period, jwks_max_age=0, ring_ttl=0, max_token_lifetime=HOUR, margin=0),
    Lifecycle(period=LIFE.period, jwks_max_age=300, ring_ttl=60, max_token_lifetime=60, margin=0),
], ids=["no-publication-delay", "retention-shorter-than-tokens"])
def test_a_shorter_lifecycle_is_caught(pool, shortened):
    # The same run with rotation ignoring the caches or the token lifetime: verifications fail,
    # so the test above proves the delays, not luck.
    failures, _, _, _ = simulate(Deployment(pool, shortened))
    assert failures


def test_each_new_key_is_published_before_it_signs_and_retired_keys_outlive_their_tokens(pool):
    d = Deployment(pool)
    first_published: dict[str, int] = {}
    first_signed: dict[str, int] = {}
    last_signed: dict[str, int] = {}
    last_published: dict[str, int] = {}
    end, requested = T0 + 3 * LIFE.period + 2 * HOUR, False
    while d.clock.now < end:
        d.tick()
        if len(first_signed) == 2 and not requested:
            d.rotation.rotate()  # the operator's rotation, right after the scheduled one
            requested = True
        for kid in d.published():
            first_published.setdefault(kid, d.clock.now)
            last_published[kid] = d.clock.now
        for minter in d.minters:
            kid = minter.key_ring.signing_key().kid
            first_signed.setdefault(kid, d.clock.now)
            last_signed[kid] = d.clock.now
        d.clock.now += TICK
    rotated = [kid for kid in first_signed if first_signed[kid] > T0]
    assert len(rotated) >= 3
    for kid in rotated:
        # Served by the JWKS at least a max-age (and the ring cache) before any token names it.
        assert first_signed[kid] - first_published[kid] >= LIFE.jwks_max_age + LIFE.ring_ttl, kid
    for kid in [k for k in first_signed if last_published[k] < end - TICK]:
        # Removed only once every token it signed has expired, with the caches on top.
        assert last_published[kid] - last_signed[kid] >= LIFE.max_token_lifetime + LIFE.jwks_max_age, kid


def test_tokens_of_a_revoked_key_fail_once_verifiers_refresh_and_new_tokens_verify(pool):
    d = Deployment(pool)
    while d.clock.now < T0 + LIFE.period + 2 * HOUR:  # one rotation done, a pending key published
        d.tick()
        d.clock.now += TICK
    minter = d.minters[0]
    token, revoked, _ = minter.mint()
    for verifier in d.verifiers:
        verifier.verify(token)  # every verifier holds the key now
    revoked_at = d.clock.now
    outcome = d.rotation.revoke(revoked)
    assert revoked not in {KeyEntry.from_item(i).kid for i in d.ring.key_ring()}  # out of the ring at once
    assert revoked not in d.ring.published_kids()  # and out of the stored JWKS, in the same change
    d.assert_jwks_in_step()
    assert any(f"up to {LIFE.cached_for}s" in n for n in outcome.report["notices"])
    # Once every cache has moved on (JWKS max-age + key ring cache), the revoked key's tokens fail.
    d.clock.now = revoked_at + LIFE.cached_for + 1
    for verifier in d.verifiers:
        with pytest.raises(LookupError, match="unknown kid"):
            verifier.verify(token)
    fresh, kid, _ = minter.mint()
    assert kid != revoked
    for verifier in d.verifiers:
        d.clock.now += max(v.cooldown for v in d.verifiers)
        assert verifier.verify(fresh)["aud"] == AUDIENCE
    assert revoked not in d.published()
