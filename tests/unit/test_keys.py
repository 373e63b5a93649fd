"""oidc_broker/keys.py: JWKs from KMS public keys, thumbprints, JWKS rendering, the key ring."""

from __future__ import annotations

import base64

import pytest
from builders import Clock, public_der

from oidc_broker import keys
from oidc_broker.keys import ACTIVE, NEXT, RETIRED, KeyEntry

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
    return {"kid": e.kid, "key_arn": e.key_arn, "state": e.state, "jwk": dict(e.jwk), "created_at": e.created_at}


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

def test_render_jwks_publishes_next_active_and_retired_keys_only():
    entries = [entry("a", ACTIVE), entry("n", NEXT), entry("r", RETIRED), entry("p", "pending"), entry("d", "disabled")]
    assert sorted(k["kid"] for k in keys.render_jwks(entries)["keys"]) == ["a", "n", "r"]


def test_render_jwks_lists_the_signing_key_first_then_next_then_retired():
    entries = [entry("r", RETIRED, 1), entry("n", NEXT, 3), entry("a", ACTIVE, 2)]
    assert [k["kid"] for k in keys.render_jwks(entries)["keys"]] == ["a", "n", "r"]


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
    entries = [entry("old", ACTIVE, 1), entry("new", ACTIVE, 5), entry("next", NEXT, 9)]
    assert keys.signing_entry(entries).kid == "new"


def test_signing_entry_is_none_without_an_active_key():
    assert keys.signing_entry([entry("n", NEXT, 2), entry("r", RETIRED, 1)]) is None


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
    ring = keys.KeyRing(FakeSource([entry("a", ACTIVE, 2), entry("n", NEXT, 3)]), Clock())
    assert ring.signing_key().kid == "a"
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a", "n"]


def test_key_ring_has_no_signing_key_when_the_ring_is_empty():
    assert keys.KeyRing(FakeSource([]), Clock()).signing_key() is None


# -- the KMS signer -----------------------------------------------------------------------------

class FakeKms:
    """KMS as `register` and `KmsSigner` use it: GetPublicKey and Sign."""

    def __init__(self, public_keys: dict[str, bytes] | None = None):
        self.public_keys = public_keys or {}
        self.sign_calls: list[dict] = []

    def get_public_key(self, KeyId):
        return {"KeyId": KeyId, "PublicKey": self.public_keys[KeyId]}

    def sign(self, **kwargs):
        self.sign_calls.append(kwargs)
        return {"Signature": b"signature-of-" + kwargs["Message"]}


def test_kms_signer_signs_the_raw_message_with_pkcs1_sha256():
    kms = FakeKms()
    signature = keys.KmsSigner(kms).sign("arn:key", b"header.payload")
    assert signature == b"signature-of-header.payload"
    assert kms.sign_calls == [{"KeyId": "arn:key", "Message": b"header.payload", "MessageType": "RAW",
                               "SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"}]


# -- registering keys ---------------------------------------------------------------------------

class FakeStore:
    def __init__(self, *entries: KeyEntry):
        self.items = [item(e) for e in entries]
        self.added: list[tuple] = []

    def key_ring(self) -> list[dict]:
        return [dict(i) for i in self.items]

    def add_key(self, kid, key_arn, state, jwk, created_at) -> bool:
        self.added.append((kid, key_arn, state, jwk, created_at))
        self.items.append({"kid": kid, "key_arn": key_arn, "state": state, "jwk": jwk, "created_at": created_at})
        return True


ARN = "arn:aws:kms:us-east-1:123456789012:key/new"


def test_register_makes_the_first_key_active(rsa_key):
    store, kms = FakeStore(), FakeKms({ARN: public_der(rsa_key)})
    registered = keys.register(store, kms, ARN, now=1000)
    jwk = keys.jwk_from_der(public_der(rsa_key))
    assert registered == KeyEntry(jwk["kid"], ARN, ACTIVE, jwk, 1000)
    assert store.added == [(jwk["kid"], ARN, ACTIVE, jwk, 1000)]


def test_register_adds_a_key_as_next_when_one_is_active(rsa_key):
    store, kms = FakeStore(entry("old", ACTIVE)), FakeKms({ARN: public_der(rsa_key)})
    assert keys.register(store, kms, ARN, now=1000).state == NEXT
    assert store.added[0][2] == NEXT


def test_register_makes_a_key_active_when_the_ring_has_only_next_and_retired_keys(rsa_key):
    store, kms = FakeStore(entry("n", NEXT), entry("r", RETIRED)), FakeKms({ARN: public_der(rsa_key)})
    assert keys.register(store, kms, ARN, now=1000).state == ACTIVE


def test_register_is_idempotent_and_keeps_the_stored_state(rsa_key):
    kid = keys.jwk_from_der(public_der(rsa_key))["kid"]
    existing = KeyEntry(kid, ARN, RETIRED, keys.jwk_from_der(public_der(rsa_key)), 5)
    store, kms = FakeStore(entry("a", ACTIVE), existing), FakeKms({ARN: public_der(rsa_key)})
    assert keys.register(store, kms, ARN, now=1000) == existing
    assert store.added == []


def test_registering_twice_adds_the_key_once(rsa_key):
    store, kms = FakeStore(), FakeKms({ARN: public_der(rsa_key)})
    first = keys.register(store, kms, ARN, now=1000)
    second = keys.register(store, kms, ARN, now=2000)
    assert (len(store.added), second) == (1, first)


def test_register_refuses_a_non_rsa_kms_key(ec_key):
    store = FakeStore()
    with pytest.raises(ValueError, match="RSA"):
        keys.register(store, FakeKms({ARN: public_der(ec_key)}), ARN, now=1000)
    assert store.added == []


# -- only the stack's own keys --------------------------------------------------------------------

STACK_ARN = "arn:aws:kms:us-east-1:123456789012:key/stack"
OUTSIDER_ARN = "arn:aws:kms:us-east-1:210987654321:key/outsider"


def own(kid: str, state: str, created_at: int = 0, key_arn: str = STACK_ARN) -> KeyEntry:
    e = entry(kid, state, created_at)
    return KeyEntry(e.kid, key_arn, e.state, e.jwk, e.created_at)


def test_key_ring_does_not_publish_an_entry_of_a_key_the_stack_did_not_create():
    ring = keys.KeyRing(FakeSource([own("a", ACTIVE), own("x", NEXT, key_arn=OUTSIDER_ARN)]), Clock(),
                        key_arns={STACK_ARN})
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a"]


def test_key_ring_never_signs_with_a_key_the_stack_did_not_create():
    # A newer active entry naming another key would otherwise become the signing key.
    ring = keys.KeyRing(FakeSource([own("a", ACTIVE, 1), own("x", ACTIVE, 9, key_arn=OUTSIDER_ARN)]), Clock(),
                        key_arns={STACK_ARN})
    assert ring.signing_key().kid == "a"


def test_key_ring_reports_what_it_refused_and_why():
    outsider = own("x", NEXT, key_arn=OUTSIDER_ARN)
    ring = keys.KeyRing(FakeSource([own("a", ACTIVE), outsider]), Clock(), key_arns={STACK_ARN})
    ring.entries()
    assert ring.refused() == [(outsider, keys.UNKNOWN_KEY)]


def test_key_ring_of_only_foreign_keys_is_empty_and_not_cached():
    source = FakeSource([own("x", ACTIVE, key_arn=OUTSIDER_ARN)], [own("a", ACTIVE)])
    ring = keys.KeyRing(source, Clock(), key_arns={STACK_ARN})
    assert ring.jwks() == {"keys": []}
    assert [e.kid for e in ring.entries()] == ["a"]
    assert source.calls == 2


def test_key_ring_with_no_trusted_key_publishes_nothing():
    ring = keys.KeyRing(FakeSource([own("a", ACTIVE)]), Clock(), key_arns=())
    assert (ring.jwks(), ring.signing_key()) == ({"keys": []}, None)


def test_key_ring_trusts_every_key_named_in_key_arns():
    other = "arn:aws:kms:us-east-1:123456789012:key/rotated-in"
    ring = keys.KeyRing(FakeSource([own("a", ACTIVE, 2), own("n", NEXT, 3, key_arn=other)]), Clock(),
                        key_arns={STACK_ARN, other})
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a", "n"]
    assert ring.refused() == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, frozenset()),
        ("", frozenset()),
        (STACK_ARN, frozenset({STACK_ARN})),
        (f" {STACK_ARN} ,{OUTSIDER_ARN},", frozenset({STACK_ARN, OUTSIDER_ARN})),
    ],
    ids=["unset", "empty", "one", "list"],
)
def test_runtime_reads_the_stacks_signing_keys_from_the_environment(monkeypatch, value, expected):
    from oidc_broker import runtime

    if value is None:
        monkeypatch.delenv("SIGNING_KEY_ARNS", raising=False)
    else:
        monkeypatch.setenv("SIGNING_KEY_ARNS", value)
    assert runtime.signing_key_arns() == expected


def test_runtime_key_ring_fails_closed_without_the_variable(monkeypatch):
    from oidc_broker import runtime

    monkeypatch.delenv("SIGNING_KEY_ARNS", raising=False)
    ring = runtime.key_ring(FakeSource([own("a", ACTIVE)]))
    assert (ring.jwks(), ring.signing_key()) == ({"keys": []}, None)


def test_runtime_key_ring_trusts_the_keys_the_variable_names(monkeypatch):
    from oidc_broker import runtime

    monkeypatch.setenv("SIGNING_KEY_ARNS", STACK_ARN)
    ring = runtime.key_ring(FakeSource([own("a", ACTIVE), own("x", NEXT, key_arn=OUTSIDER_ARN)]))
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["a"]
