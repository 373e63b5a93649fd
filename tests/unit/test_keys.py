"""oidc_broker/keys.py: JWKs from KMS public keys, thumbprints, JWKS rendering, the seal, the key ring."""

from __future__ import annotations

import base64
import json

import pytest
from builders import Clock, public_der
from keyring_fakes import SEAL_KEY, FakeKms, kms_error

from oidc_broker import keys
from oidc_broker.keys import ACTIVE, LEGACY_PENDING, PENDING, RETIRED, REVOKED, KeyEntry

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
    "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5ha"
    "jrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def b64_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def b64_bytes(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def entry(kid: str, state: str, created_at: int = 0, **jwk_extra: str) -> KeyEntry:
    jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": f"n-{kid}", "e": "AQAB", **jwk_extra}
    return KeyEntry(kid=kid, key_arn=f"arn:aws:kms:us-east-1:123456789012:key/{kid}", state=state, jwk=jwk,
                    created_at=created_at)


def item(e: KeyEntry) -> dict:
    """A key ring entry as the store returns it."""
    return {"kid": e.kid, "key_arn": e.key_arn, "state": e.state, "jwk": dict(e.jwk), "created_at": e.created_at,
            "seal": e.seal, "published_at": e.published_at, "activated_at": e.activated_at, "retired_at": e.retired_at}


# -- JWKs and thumbprints -----------------------------------------------------------------------

def test_thumbprint_of_the_rfc7638_example_key():
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert keys.thumbprint(jwk) == RFC7638_THUMBPRINT


def test_thumbprint_ignores_members_outside_e_kty_n():
    bare = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}
    assert keys.thumbprint({**bare, "kid": "x", "use": "sig"}) == keys.thumbprint(bare)


def test_thumbprint_differs_for_another_modulus():
    assert keys.thumbprint({"kty": "RSA", "n": RFC7638_N[:-1] + "A", "e": "AQAB"}) != RFC7638_THUMBPRINT


def test_jwk_from_der_carries_the_keys_modulus_and_exponent(rsa_key):
    jwk = keys.jwk_from_der(public_der(rsa_key))
    numbers = rsa_key.public_key().public_numbers()
    assert (jwk["kty"], b64_int(jwk["n"]), b64_int(jwk["e"])) == ("RSA", numbers.n, numbers.e)


def test_jwk_from_der_encodes_members_minimally(rsa_key):
    jwk = keys.jwk_from_der(public_der(rsa_key))
    assert jwk["e"] == "AQAB"
    assert len(b64_bytes(jwk["n"])) == 256  # a 2048-bit modulus: no leading zero byte
    assert "=" not in jwk["n"]


def test_jwk_from_der_kid_is_the_rfc7638_thumbprint(rsa_key):
    jwk = keys.jwk_from_der(public_der(rsa_key))
    assert jwk["kid"] == keys.thumbprint(jwk)


def test_jwk_from_der_marks_the_key_for_rs256_signatures(rsa_key):
    jwk = keys.jwk_from_der(public_der(rsa_key))
    assert (jwk["use"], jwk["alg"]) == ("sig", "RS256")
    assert set(jwk) == {"kty", "n", "e", "kid", "use", "alg"}


def test_jwk_from_der_refuses_a_non_rsa_key(ec_key):
    with pytest.raises(ValueError, match="must be an RSA key"):
        keys.jwk_from_der(public_der(ec_key))


def test_jwk_from_der_refuses_bytes_that_are_not_a_key():
    with pytest.raises(ValueError):
        keys.jwk_from_der(b"not a key")


# -- JWKS rendering -----------------------------------------------------------------------------

def test_render_jwks_publishes_pending_active_and_retired_keys_only():
    entries = [entry("a", ACTIVE), entry("p", PENDING), entry("r", RETIRED), entry("v", REVOKED), entry("d", "disabled")]
    assert sorted(k["kid"] for k in keys.render_jwks(entries)["keys"]) == ["a", "p", "r"]


def test_render_jwks_lists_the_signing_key_first_then_pending_then_retired():
    entries = [entry("r", RETIRED, 1), entry("p", PENDING, 3), entry("a", ACTIVE, 2)]
    assert [k["kid"] for k in keys.render_jwks(entries)["keys"]] == ["a", "p", "r"]


def test_render_jwks_lists_newer_keys_first_within_a_state():
    entries = [entry("r1", RETIRED, 1), entry("r3", RETIRED, 3), entry("r2", RETIRED, 2)]
    assert [k["kid"] for k in keys.render_jwks(entries)["keys"]] == ["r3", "r2", "r1"]


def test_render_jwks_publishes_only_public_members():
    leaky = entry("a", ACTIVE, d="private-exponent", p="prime", key_ops="sign", x_arn="arn:aws:kms:secret")
    (published,) = keys.render_jwks([leaky])["keys"]
    assert published == {"kty": "RSA", "kid": "a", "use": "sig", "alg": "RS256", "n": "n-a", "e": "AQAB"}


def test_render_jwks_of_no_entries_is_an_empty_key_set():
    assert keys.render_jwks([]) == {"keys": []}


def test_signing_entry_is_the_newest_active_key():
    entries = [entry("old", ACTIVE, 1), entry("new", ACTIVE, 5), entry("next", PENDING, 9)]
    assert keys.signing_entry(entries).kid == "new"


def test_signing_entry_is_none_without_an_active_key():
    assert keys.signing_entry([entry("n", PENDING, 2), entry("r", RETIRED, 1)]) is None


# -- entries as the store holds them ----------------------------------------------------------------

def test_an_entry_of_a_ring_from_before_rotation_reads_next_as_pending():
    legacy = {k: v for k, v in item(entry("n", LEGACY_PENDING, 4)).items()
              if k in ("kid", "key_arn", "state", "jwk", "created_at")}
    read = KeyEntry.from_item(legacy)
    assert (read.state, read.seal, read.since_published, read.since_active) == (PENDING, None, 4, 4)


def test_an_entry_keeps_its_lifecycle_times():
    read = KeyEntry.from_item(item(KeyEntry("k", "arn", RETIRED, {"n": "x"}, 1, "seal", 2, 3, 4)))
    assert (read.published_at, read.activated_at, read.retired_at, read.since_published, read.since_active) == (2, 3, 4, 2, 3)


def test_the_sealed_message_covers_the_immutable_fields_only():
    base = entry("k", PENDING, 7)
    moved = KeyEntry(base.kid, base.key_arn, ACTIVE, base.jwk, base.created_at, "s", 8, 9, None)
    assert moved.sealed_message() == base.sealed_message()
    for edited in (KeyEntry("k2", base.key_arn, PENDING, base.jwk, 7), KeyEntry("k", "arn:other", PENDING, base.jwk, 7),
                   KeyEntry("k", base.key_arn, PENDING, {**base.jwk, "n": "other"}, 7),
                   KeyEntry("k", base.key_arn, PENDING, base.jwk, 8)):
        assert edited.sealed_message() != base.sealed_message()


# -- the seal -----------------------------------------------------------------------------------

def sealed(e: KeyEntry, kms: FakeKms) -> KeyEntry:
    return KeyEntry(e.kid, e.key_arn, e.state, e.jwk, e.created_at, seal=keys.Seal(kms, SEAL_KEY).make(e))


def test_a_sealed_entry_verifies():
    kms = FakeKms()
    assert keys.Seal(kms, SEAL_KEY).verifies(sealed(entry("a", ACTIVE), kms))


def test_an_entry_without_a_seal_is_refused_without_asking_kms():
    kms = FakeKms()
    assert not keys.Seal(kms, SEAL_KEY).verifies(entry("a", ACTIVE))
    assert kms.count("VerifyMac") == 0


def test_a_seal_made_with_another_key_is_refused():
    kms, other = FakeKms(), FakeKms()
    other.mac_secrets["seal"] = b"someone else's secret"
    assert not keys.Seal(kms, SEAL_KEY).verifies(sealed(entry("a", ACTIVE), other))


def test_a_sealed_entry_edited_afterwards_is_refused():
    kms = FakeKms()
    good = sealed(entry("a", ACTIVE), kms)
    edited = KeyEntry(good.kid, "arn:aws:kms:us-east-1:210987654321:key/outsider", good.state, good.jwk, good.created_at,
                      seal=good.seal)
    assert not keys.Seal(kms, SEAL_KEY).verifies(edited)


@pytest.mark.parametrize("seal", ["not base64 !", "", "A" * 200])
def test_a_malformed_seal_is_refused_without_asking_kms(seal):
    kms = FakeKms()
    e = entry("a", ACTIVE)
    assert not keys.Seal(kms, SEAL_KEY).verifies(KeyEntry(e.kid, e.key_arn, e.state, e.jwk, e.created_at, seal=seal))
    assert kms.count("VerifyMac") == 0


def test_each_seal_is_verified_once_per_container():
    kms = FakeKms()
    seal, a = keys.Seal(kms, SEAL_KEY), sealed(entry("a", ACTIVE), kms)
    assert all(seal.verifies(a) for _ in range(5))
    assert kms.count("VerifyMac") == 1


def test_a_warm_container_still_refuses_an_entry_edited_after_it_verified_the_original():
    # Remembering by (kid, seal) alone would let the edited entry through.
    kms = FakeKms()
    seal, good = keys.Seal(kms, SEAL_KEY), sealed(entry("a", ACTIVE), kms)
    assert seal.verifies(good)
    edited = KeyEntry(good.kid, good.key_arn, good.state, {**good.jwk, "n": "attacker-modulus"}, good.created_at,
                      seal=good.seal)
    assert not seal.verifies(edited)


def test_without_a_seal_key_nothing_verifies_and_nothing_can_be_sealed():
    kms = FakeKms()
    good = sealed(entry("a", ACTIVE), kms)
    assert not keys.Seal(kms, "").verifies(good)
    with pytest.raises(ValueError, match="KEY_RING_SEAL_KEY"):
        keys.Seal(kms, "").make(good)


def test_a_kms_failure_while_verifying_is_raised_not_taken_for_an_answer():
    class Throttled(FakeKms):
        def verify_mac(self, **kwargs):
            raise kms_error("ThrottlingException")

    kms = Throttled()
    good = sealed(entry("a", ACTIVE), kms)
    seal = keys.Seal(kms, SEAL_KEY)
    with pytest.raises(Exception, match="ThrottlingException"):
        seal.verifies(good)
    kms.verify_mac = FakeKms.verify_mac.__get__(kms)  # KMS answers again: not remembered as refused
    assert seal.verifies(good)


# -- the key ring cache -------------------------------------------------------------------------

class FakeSource:
    def __init__(self, *rings: list[KeyEntry]):
        self.rings = [[item(e) for e in ring] for ring in rings]
        self.calls = 0

    def key_ring(self) -> list[dict]:
        self.calls += 1
        return self.rings[min(self.calls, len(self.rings)) - 1]


def test_key_ring_reads_the_store_once_within_its_ttl():
    source, clock = FakeSource([entry("a", ACTIVE)]), Clock()
    ring = keys.KeyRing(source, clock, ttl=60)
    ring.entries()
    clock.advance(59.9)
    ring.jwks()
    ring.signing_key()
    assert source.calls == 1


def test_key_ring_reads_the_store_again_after_its_ttl():
    source, clock = FakeSource([entry("a", ACTIVE)], [entry("b", ACTIVE)]), Clock()
    ring = keys.KeyRing(source, clock, ttl=60)
    ring.entries()
    clock.advance(60)
    assert [e.kid for e in ring.entries()] == ["b"]


def test_key_ring_never_caches_an_empty_ring():
    source, clock = FakeSource([], [entry("a", ACTIVE)]), Clock()
    ring = keys.KeyRing(source, clock, ttl=60)
    assert ring.entries() == []
    assert [e.kid for e in ring.entries()] == ["a"]
    assert source.calls == 2


def test_key_ring_builds_entries_from_store_items():
    a = entry("a", ACTIVE, 7)
    ring = keys.KeyRing(FakeSource([a]), Clock())
    assert ring.entries() == [a]


def test_key_ring_signing_key_and_jwks_come_from_its_entries():
    ring = keys.KeyRing(FakeSource([entry("a", ACTIVE, 2), entry("n", PENDING, 3)]), Clock())
    assert ring.signing_key().kid == "a"
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a", "n"]


def test_key_ring_has_no_signing_key_when_the_ring_is_empty():
    assert keys.KeyRing(FakeSource([]), Clock()).signing_key() is None


def test_key_ring_publishes_a_legacy_next_key_as_pending():
    ring = keys.KeyRing(FakeSource([entry("a", ACTIVE, 2), entry("n", LEGACY_PENDING, 3)]), Clock())
    assert [(e.kid, e.state) for e in ring.entries()] == [("a", ACTIVE), ("n", PENDING)]
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a", "n"]


# -- only entries the stack sealed ----------------------------------------------------------------

OUTSIDER_ARN = "arn:aws:kms:us-east-1:210987654321:key/outsider"


def sealed_ring(kms: FakeKms, *entries: KeyEntry, ttl: float = 60, clock=None):
    return keys.KeyRing(FakeSource(list(entries)), clock or Clock(), ttl=ttl, seal=keys.Seal(kms, SEAL_KEY))


def test_key_ring_does_not_publish_an_unsealed_entry():
    kms = FakeKms()
    ring = sealed_ring(kms, sealed(entry("a", ACTIVE), kms), entry("x", PENDING))
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a"]


def test_key_ring_never_signs_with_an_entry_the_stack_did_not_seal():
    # A newer active entry would otherwise become the signing key.
    kms = FakeKms()
    forged = KeyEntry("x", OUTSIDER_ARN, ACTIVE, entry("x", ACTIVE).jwk, 9, seal=keys.b64url(b"\0" * 32))
    ring = sealed_ring(kms, sealed(entry("a", ACTIVE, 1), kms), forged)
    assert ring.signing_key().kid == "a"


def test_key_ring_reports_what_it_refused_and_why():
    kms = FakeKms()
    good = sealed(entry("a", ACTIVE), kms)
    unsealed = entry("x", PENDING)
    edited = KeyEntry(good.kid + "2", good.key_arn, RETIRED, good.jwk, good.created_at, seal=good.seal)
    ring = sealed_ring(kms, good, unsealed, edited)
    ring.entries()
    assert ring.refused() == [(unsealed, keys.UNKNOWN_KEY), (edited, keys.BAD_SEAL)]


def test_key_ring_of_only_unsealed_entries_is_empty_and_not_cached():
    kms = FakeKms()
    source = FakeSource([entry("x", ACTIVE)], [sealed(entry("a", ACTIVE), kms)])
    ring = keys.KeyRing(source, Clock(), seal=keys.Seal(kms, SEAL_KEY))
    assert ring.jwks() == {"keys": []}
    assert [e.kid for e in ring.entries()] == ["a"]
    assert source.calls == 2


def test_a_warm_key_ring_reloads_the_store_but_asks_kms_nothing():
    kms, clock = FakeKms(), Clock()
    ring = sealed_ring(kms, sealed(entry("a", ACTIVE), kms), sealed(entry("p", PENDING), kms), clock=clock)
    ring.entries()
    for _ in range(3):
        clock.advance(60)
        ring.entries()
    assert kms.count("VerifyMac") == 2  # one per entry, at the first read


# -- the KMS signer -----------------------------------------------------------------------------

def test_kms_signer_signs_the_raw_message_with_pkcs1_sha256(rsa_key):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    kms = FakeKms()
    arn = kms.add_key(rsa_key)
    signature = keys.KmsSigner(kms).sign(arn, b"header.payload")
    rsa_key.public_key().verify(signature, b"header.payload", padding.PKCS1v15(), hashes.SHA256())
    assert kms.calls == ["Sign"]


def test_public_entry_reads_the_jwk_from_kms(rsa_key):
    kms = FakeKms()
    arn = kms.add_key(rsa_key)
    made = keys.public_entry(kms, arn, ACTIVE, 1000)
    jwk = keys.jwk_from_der(public_der(rsa_key))
    assert made == KeyEntry(jwk["kid"], arn, ACTIVE, jwk, 1000, published_at=1000, activated_at=1000)
    assert keys.public_entry(kms, arn, PENDING, 5).activated_at is None


def test_public_entry_refuses_a_non_rsa_kms_key(ec_key):
    class EcKms(FakeKms):
        def get_public_key(self, KeyId):
            return {"PublicKey": public_der(ec_key)}

    with pytest.raises(ValueError, match="RSA"):
        keys.public_entry(EcKms(), "arn:ec", ACTIVE, 1)


# -- the functions' wiring ------------------------------------------------------------------------

def test_runtime_key_ring_fails_closed_without_the_seal_variable(monkeypatch):
    from oidc_broker import runtime

    kms = FakeKms()
    monkeypatch.delenv("KEY_RING_SEAL_KEY", raising=False)
    ring = runtime.key_ring(FakeSource([sealed(entry("a", ACTIVE), kms)]), kms)
    assert (ring.jwks(), ring.signing_key()) == ({"keys": []}, None)


def test_runtime_key_ring_publishes_what_the_seal_variable_vouches_for(monkeypatch):
    from oidc_broker import runtime

    kms = FakeKms()
    monkeypatch.setenv("KEY_RING_SEAL_KEY", SEAL_KEY)
    ring = runtime.key_ring(FakeSource([sealed(entry("a", ACTIVE), kms), entry("x", PENDING)]), kms)
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a"]


def test_runtime_key_ring_caches_for_the_lifecycles_ring_ttl(monkeypatch):
    from oidc_broker import runtime

    kms = FakeKms()
    monkeypatch.setenv("KEY_RING_SEAL_KEY", SEAL_KEY)
    monkeypatch.setenv("KEY_RING_TTL", "2")
    assert runtime.key_ring(FakeSource([]), kms)._ttl == 2


# -- the rendered JWKS ----------------------------------------------------------------------------------

def test_the_jwks_body_is_the_same_bytes_for_the_same_entries_in_any_order():
    ring = [entry("b", RETIRED, 1), entry("a", RETIRED, 1), entry("s", ACTIVE, 2), entry("p", PENDING, 3)]
    bodies = {keys.jwks_body(order) for order in (ring, ring[::-1], ring[1:] + ring[:1])}
    assert len(bodies) == 1
    assert [k["kid"] for k in json.loads(bodies.pop())["keys"]] == ["s", "p", "a", "b"]


def test_a_rendered_jwks_seal_covers_its_body_and_its_version():
    kms = FakeKms()
    seal = keys.Seal(kms, SEAL_KEY)
    rendered = keys.RenderedJwks.of([entry("a", ACTIVE)], 4)
    rendered = keys.RenderedJwks(rendered.body, rendered.version, seal.make(rendered))
    assert seal.verifies(rendered)
    assert not seal.verifies(keys.RenderedJwks(rendered.body, 5, rendered.seal))
    assert not seal.verifies(keys.RenderedJwks(keys.jwks_body([entry("x", ACTIVE)]), 4, rendered.seal))


def test_an_entrys_seal_never_vouches_for_a_jwks_nor_a_jwks_seal_for_an_entry():
    kms = FakeKms()
    seal = keys.Seal(kms, SEAL_KEY)
    a = sealed(entry("a", ACTIVE), kms)
    # A JWKS whose bytes are the entry's sealed message, under the entry's seal: the context line differs.
    assert not seal.verifies(keys.RenderedJwks(a.sealed_message(), 1, a.seal))
    rendered = keys.RenderedJwks.of([a], 1)
    jwks_seal = seal.make(rendered)
    assert not seal.verifies(KeyEntry(a.kid, a.key_arn, ACTIVE, a.jwk, a.created_at, seal=jwks_seal))
