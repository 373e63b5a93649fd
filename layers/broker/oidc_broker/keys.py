"""Signing keys: the key ring's states, the seal that vouches for each entry, JWKS rendering and the
KMS signer.

A key ring entry has a state:
  pending  published in the JWKS, not yet signing (published before use); rings written before
           rotation call it `next`, which reads as pending
  active   published and signing: exactly one
  retired  still published so tokens it signed stay verifiable, no longer signing
  revoked  out of the JWKS at once; the rotation function disables its KMS key and removes it
Whoever can write a ring item could name any key in it, so an entry counts only with its `seal`:
an HMAC by the stack's seal key (KMS, GenerateMac) over the entry's immutable fields. Only the key
ring and rotation functions may make one; the readers verify it (VerifyMac) once per container and
publish or sign with nothing else. The JWKS is rendered from the entries' stored public JWKs, so
serving it needs no signing-key call. Every change of the ring also stores the JWKS it renders
(RenderedJwks: the exact body, the ring version, a seal over both), so the JWKS function reads one
item and verifies one seal (PublishedJwks). `kid` is the RFC 7638 thumbprint, never the key ARN.
Rotation (which entry moves when) is rotation.py's; this module never changes a state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from .tokens import ALG, b64url

PENDING, ACTIVE, RETIRED, REVOKED = "pending", "active", "retired", "revoked"
NEXT = LEGACY_PENDING = "next"  # what rings written before rotation call a pending key
PUBLISHED_STATES = (PENDING, ACTIVE, RETIRED)
SIGNING_ALGORITHM = "RSASSA_PKCS1_V1_5_SHA_256"
SEAL_ALGORITHM = "HMAC_SHA_256"
# The lifecycle's caches (rotation.Lifecycle, runtime.lifecycle): the JWKS response's max-age and
# each function's in-memory key ring cache, in seconds.
JWKS_MAX_AGE, RING_TTL = 300, 60


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
    seal: str | None = None
    published_at: int | None = None  # when it entered the ring (published); None in older rings: created_at
    activated_at: int | None = None
    retired_at: int | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> KeyEntry:
        """An entry from a store item; `next` reads as pending, unknown attributes are ignored."""
        known = {f.name for f in fields(cls)}
        entry = cls(**{k: v for k, v in item.items() if k in known})
        return replace(entry, state=PENDING) if entry.state == LEGACY_PENDING else entry

    @property
    def since_published(self) -> int:
        return self.created_at if self.published_at is None else self.published_at

    @property
    def since_active(self) -> int:
        return self.created_at if self.activated_at is None else self.activated_at

    def sealed_message(self) -> bytes:
        """What the seal covers: the fields no transition changes, as canonical JSON."""
        return json.dumps({"kid": self.kid, "key_arn": self.key_arn, "jwk": self.jwk, "created_at": self.created_at},
                          separators=(",", ":"), sort_keys=True).encode()


def render_jwks(entries: Iterable[KeyEntry]) -> dict[str, list[dict[str, str]]]:
    """The JWKS: every published key, signing key first, each with only public members."""
    order = {ACTIVE: 0, PENDING: 1, RETIRED: 2}
    published = sorted((e for e in entries if e.state in PUBLISHED_STATES),
                       key=lambda e: (order[e.state], -e.created_at, e.kid))
    return {"keys": [{k: e.jwk[k] for k in ("kty", "kid", "use", "alg", "n", "e")} for e in published]}


def jwks_body(entries: Iterable[KeyEntry]) -> bytes:
    """The JWKS as served: compact JSON, the same bytes for the same entries in any order."""
    return json.dumps(render_jwks(entries), separators=(",", ":")).encode()


# What a rendered JWKS's seal covers starts with this line, so it never reads as an entry's sealed
# message (a JSON object) and neither seal can stand for the other.
_JWKS_SEAL_CONTEXT = b"oidc-broker jwks\n"


@dataclass(frozen=True)
class RenderedJwks:
    """The JWKS as of one version of the ring, written with that version (Store.change_key_ring).

    `body` is served as it is; `seal` covers it and `version`, so the table cannot name a key the
    stack did not render, nor pass one version's JWKS off as another's.
    """

    body: bytes
    version: int
    seal: str | None = None

    @classmethod
    def of(cls, entries: Iterable[KeyEntry], version: int) -> RenderedJwks:
        """The unsealed JWKS of `entries` (sealed entries only: the caller admits them) as `version`."""
        return cls(jwks_body(entries), version)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> RenderedJwks:
        return cls(bytes(item["body"]), int(item["version"]), item.get("seal"))

    def sealed_message(self) -> bytes:
        return _JWKS_SEAL_CONTEXT + str(self.version).encode() + b"\n" + self.body


def signing_entry(entries: list[KeyEntry]) -> KeyEntry | None:
    active = [e for e in entries if e.state == ACTIVE]
    return max(active, key=lambda e: e.created_at) if active else None


class KeyRingSource(Protocol):
    def key_ring(self) -> list[dict[str, Any]]: ...


UNKNOWN_KEY = "unknown_signing_key"  # no seal: not an entry the stack made
BAD_SEAL = "invalid_seal"  # a seal that does not verify: forged, or the entry was edited


class Sealed(Protocol):
    """What the seal vouches for: a key ring entry or a rendered JWKS."""

    seal: str | None

    def sealed_message(self) -> bytes: ...


class Seal:
    """The stack's key ring seal: an HMAC (KMS HMAC_256 key) over each entry's immutable fields and
    over each rendered JWKS with its version.

    `make` seals (kms:GenerateMac: the key ring and rotation functions only); `verifies` checks
    (kms:VerifyMac) and remembers each answer for the container's life, keyed by the sealed content
    and the seal, so a warm container adds no KMS call and an edited entry is never mistaken for the
    one verified before. Without a key (`key_id` empty) nothing verifies: fail closed.
    """

    def __init__(self, kms: Any, key_id: str):
        self._kms = kms
        self._key_id = key_id
        self._verified: dict[tuple[bytes, str], bool] = {}

    def make(self, entry: Sealed) -> str:
        if not self._key_id:
            raise ValueError("KEY_RING_SEAL_KEY is not set: the key ring cannot be sealed")
        mac = self._kms.generate_mac(KeyId=self._key_id, Message=entry.sealed_message(), MacAlgorithm=SEAL_ALGORITHM)
        return b64url(mac["Mac"])

    def verifies(self, entry: Sealed) -> bool:
        if not self._key_id or not entry.seal:
            return False
        message = entry.sealed_message()
        remembered = (hashlib.sha256(message).digest(), entry.seal)
        if remembered not in self._verified:
            self._verified[remembered] = self._check(message, entry.seal)
        return self._verified[remembered]

    def _check(self, message: bytes, seal: str) -> bool:
        try:
            mac = base64.urlsafe_b64decode(seal + "=" * (-len(seal) % 4))
        except (binascii.Error, ValueError):
            return False
        if not 1 <= len(mac) <= 64:
            return False
        try:
            answer = self._kms.verify_mac(KeyId=self._key_id, Message=message, Mac=mac, MacAlgorithm=SEAL_ALGORITHM)
        except Exception as e:
            from .clouds.aws import error_code

            # KMS says "invalid" by raising; anything else (throttling, access) is not an answer.
            if error_code(e) == "KMSInvalidMacException":
                return False
            raise
        return answer.get("MacValid") is True


class KeyRing:
    """The key ring as a function sees it: read from the store, kept in memory `ttl` seconds.

    With a `seal`, an entry whose seal is missing or does not verify is refused: neither published
    nor signed with. `refused()` lists the entries of the last read that were left out, for the
    shell to log. Without a seal every entry counts (rings from a trusted source, as in tests); the
    functions always pass the stack's (runtime.key_ring), which refuses everything when unset.
    """

    def __init__(self, source: KeyRingSource, clock: Callable[[], float], ttl: float = RING_TTL, *,
                 seal: Seal | None = None):
        self._source = source
        self._clock = clock
        self._ttl = ttl
        self._seal = seal
        self._entries: list[KeyEntry] | None = None
        self._refused: list[tuple[KeyEntry, str]] = []
        self._loaded_at = 0.0

    def entries(self) -> list[KeyEntry]:
        now = self._clock()
        if self._entries is None or now - self._loaded_at >= self._ttl:
            entries, self._refused = admit((KeyEntry.from_item(item) for item in self._source.key_ring()), self._seal)
            # An empty ring is never cached: the next request looks again.
            if not entries:
                return []
            self._entries, self._loaded_at = entries, now
        return self._entries

    def refused(self) -> list[tuple[KeyEntry, str]]:
        """The entries the last read of the store left out, each with its reason."""
        return list(self._refused)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return render_jwks(self.entries())

    def signing_key(self) -> KeyEntry | None:
        return signing_entry(self.entries())


def admit(entries: Iterable[KeyEntry], seal: Seal | None) -> tuple[list[KeyEntry], list[tuple[KeyEntry, str]]]:
    """The entries `seal` vouches for, and the others with why they were left out (all, without a seal)."""
    admitted, refused = [], []
    for entry in entries:
        if seal is None:
            admitted.append(entry)
        elif not entry.seal:
            refused.append((entry, UNKNOWN_KEY))
        elif not seal.verifies(entry):
            refused.append((entry, BAD_SEAL))
        else:
            admitted.append(entry)
    return admitted, refused


class RingJwksSource(KeyRingSource, Protocol):
    def ring_jwks(self) -> tuple[int, dict[str, Any] | None]: ...


# Why the JWKS function passed over the rendered JWKS and rendered the sealed entries itself.
NOT_RENDERED = "jwks_not_rendered"  # a ring last changed before the JWKS was rendered with it
STALE_JWKS = "jwks_version_mismatch"  # rendered for another version than the ring's
BAD_JWKS_SEAL = "invalid_jwks_seal"  # no seal, or one that does not verify: forged or edited


class PublishedJwks:
    """The JWKS as the JWKS function serves it: the ring's rendered JWKS, read as one item every
    `ttl` seconds and served once its seal verifies and it renders the ring's current version.

    Otherwise (a ring from before the JWKS was rendered with it, or an item someone edited) it
    renders the sealed entries itself (KeyRing), as readers did before: `passed_over()` says why,
    `refused()` lists the entries left out, for the shell to log. `body()` is None while no key is
    published: a verifier must never cache an empty key set. An unchanged item costs no KMS call
    (Seal remembers the answer); an error reading it is raised, never answered with a guess.
    """

    def __init__(self, source: RingJwksSource, seal: Seal, clock: Callable[[], float], ttl: float = RING_TTL):
        self._source = source
        self._seal = seal
        self._clock = clock
        self._ttl = ttl
        self._ring = KeyRing(source, clock, ttl, seal=seal)
        self._body: bytes | None = None
        self._loaded_at = 0.0
        self._passed_over: str | None = None

    def body(self) -> bytes | None:
        now = self._clock()
        if self._body is None or now - self._loaded_at >= self._ttl:
            version, item = self._source.ring_jwks()
            rendered = None if item is None else RenderedJwks.from_item(item)
            self._passed_over = self._problem(rendered, version)
            body = rendered.body if self._passed_over is None else jwks_body(self._ring.entries())
            # Never cached without a key: the next request looks again.
            if not json.loads(body)["keys"]:
                self._body = None
                return None
            self._body, self._loaded_at = body, now
        return self._body

    def _problem(self, rendered: RenderedJwks | None, version: int) -> str | None:
        if rendered is None:
            return NOT_RENDERED
        if rendered.version != version:
            return STALE_JWKS
        return None if self._seal.verifies(rendered) else BAD_JWKS_SEAL

    def passed_over(self) -> str | None:
        """Why the last read served the entries instead of the rendered JWKS; None when it did not."""
        return self._passed_over

    def refused(self) -> list[tuple[KeyEntry, str]]:
        """The entries left out of the last read, when it rendered them itself."""
        return self._ring.refused() if self._passed_over is not None else []


class KmsSigner:
    """Signs with a KMS RSA_2048 key: one `Sign` call per token, RAW message (KMS hashes it)."""

    def __init__(self, kms: Any):
        self._kms = kms

    def sign(self, key_arn: str, message: bytes) -> bytes:
        response = self._kms.sign(
            KeyId=key_arn, Message=message, MessageType="RAW", SigningAlgorithm=SIGNING_ALGORITHM
        )
        return response["Signature"]


def public_entry(kms: Any, key_arn: str, state: str, now: int) -> KeyEntry:
    """An unsealed entry for a KMS key, its JWK from GetPublicKey; published (and, if active, activated) now."""
    jwk = jwk_from_der(kms.get_public_key(KeyId=key_arn)["PublicKey"])
    return KeyEntry(jwk["kid"], key_arn, state, jwk, now, published_at=now,
                    activated_at=now if state == ACTIVE else None)
