"""Signing keys: the key ring's states, JWKS rendering, and the KMS signer.

A key ring entry has a state; rotation only ever adds states to this list:
  next     published in the JWKS, not yet signing (published before use)
  active   published and signing
  retired  still published so tokens it signed stay verifiable, no longer signing
Keys in any other state are not published, nor are entries of KMS keys the stack did not create
(KeyRing's `key_arns`). The JWKS is rendered from the entries' stored public JWKs, so serving it
needs no KMS call. `kid` is the RFC 7638 thumbprint, never the key ARN.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .tokens import ALG, b64url

NEXT, ACTIVE, RETIRED = "next", "active", "retired"
PUBLISHED_STATES = (NEXT, ACTIVE, RETIRED)
SIGNING_ALGORITHM = "RSASSA_PKCS1_V1_5_SHA_256"


def _uint_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def jwk_from_der(der: bytes) -> dict[str, str]:
    """The public JWK of an RSA SubjectPublicKeyInfo (what KMS GetPublicKey returns)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    key = load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the signing key must be an RSA key")
    numbers = key.public_numbers()
    jwk = {"kty": "RSA", "n": _uint_b64(numbers.n), "e": _uint_b64(numbers.e)}
    return {**jwk, "kid": thumbprint(jwk), "use": "sig", "alg": ALG}


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an RSA key."""
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class KeyEntry:
    kid: str
    key_arn: str
    state: str
    jwk: dict[str, str]
    created_at: int


def render_jwks(entries: list[KeyEntry]) -> dict[str, list[dict[str, str]]]:
    """The JWKS: every published key, signing key first, each with only public members."""
    order = {ACTIVE: 0, NEXT: 1, RETIRED: 2}
    published = sorted((e for e in entries if e.state in PUBLISHED_STATES), key=lambda e: (order[e.state], -e.created_at))
    return {"keys": [{k: e.jwk[k] for k in ("kty", "kid", "use", "alg", "n", "e")} for e in published]}


def signing_entry(entries: list[KeyEntry]) -> KeyEntry | None:
    active = [e for e in entries if e.state == ACTIVE]
    return max(active, key=lambda e: e.created_at) if active else None


class KeyRingSource(Protocol):
    def key_ring(self) -> list[dict[str, Any]]: ...


UNKNOWN_KEY = "unknown_signing_key"


class KeyRing:
    """The key ring as a function sees it: read from the store, kept in memory `ttl` seconds.

    With `key_arns` (the KMS keys the stack created) an entry naming any other key is refused:
    neither published nor signed with. Whoever can write a ring item can name any key in it, so
    the item alone proves nothing. `refused()` lists the entries of the last read that were left
    out, for the shell to log. Without `key_arns` every entry counts (rings from a trusted source,
    as in tests); the functions always pass the stack's keys (runtime.key_ring), empty when unset.
    """

    def __init__(self, source: KeyRingSource, clock: Callable[[], float], ttl: float = 60.0, *,
                 key_arns: Collection[str] | None = None):
        self._source = source
        self._clock = clock
        self._ttl = ttl
        self._key_arns = None if key_arns is None else frozenset(key_arns)
        self._entries: list[KeyEntry] | None = None
        self._refused: list[tuple[KeyEntry, str]] = []
        self._loaded_at = 0.0

    def entries(self) -> list[KeyEntry]:
        now = self._clock()
        if self._entries is None or now - self._loaded_at >= self._ttl:
            entries, self._refused = self._admit(KeyEntry(**item) for item in self._source.key_ring())
            # An empty ring is never cached: the next request looks again.
            if not entries:
                return []
            self._entries, self._loaded_at = entries, now
        return self._entries

    def refused(self) -> list[tuple[KeyEntry, str]]:
        """The entries the last read of the store left out, each with its reason."""
        return list(self._refused)

    def _admit(self, entries: Iterable[KeyEntry]) -> tuple[list[KeyEntry], list[tuple[KeyEntry, str]]]:
        admitted, refused = [], []
        for entry in entries:
            if self._key_arns is not None and entry.key_arn not in self._key_arns:
                refused.append((entry, UNKNOWN_KEY))
            else:
                admitted.append(entry)
        return admitted, refused

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return render_jwks(self.entries())

    def signing_key(self) -> KeyEntry | None:
        return signing_entry(self.entries())


class KmsSigner:
    """Signs with a KMS RSA_2048 key: one `Sign` call per token, RAW message (KMS hashes it)."""

    def __init__(self, kms: Any):
        self._kms = kms

    def sign(self, key_arn: str, message: bytes) -> bytes:
        response = self._kms.sign(
            KeyId=key_arn, Message=message, MessageType="RAW", SigningAlgorithm=SIGNING_ALGORITHM
        )
        return response["Signature"]


def register(store: Any, kms: Any, key_arn: str, now: int) -> KeyEntry:
    """Put a KMS key into the key ring: active if the ring has no active key, else next.

    Idempotent: a key already in the ring keeps its state.
    """
    der = kms.get_public_key(KeyId=key_arn)["PublicKey"]
    jwk = jwk_from_der(der)
    entries = [KeyEntry(**item) for item in store.key_ring()]
    for entry in entries:
        if entry.kid == jwk["kid"]:
            return entry
    state = NEXT if signing_entry(entries) else ACTIVE
    if not store.add_key(jwk["kid"], key_arn, state, jwk, now):
        # Registered by a concurrent call in the meantime: report what the ring holds.
        return next(KeyEntry(**item) for item in store.key_ring() if item["kid"] == jwk["kid"])
    return KeyEntry(jwk["kid"], key_arn, state, jwk, now)
