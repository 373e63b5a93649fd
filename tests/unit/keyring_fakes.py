"""In-memory stand-ins for the key ring's store and for KMS, as keys.py and rotation.py use them.

FakeKms makes real RSA keys (Sign is real RSASSA-PKCS1-v1_5 SHA-256) and real HMACs (one secret per
MAC key), and refuses what KMS refuses: a disabled key or one pending deletion. MemoryRing keeps the
ring's items, version, requested rotation and stored JWKS with the conditional transaction
Store.change_key_ring makes (refusing a change without the sealed JWKS of the next version). Both count their calls, so tests can see what a run cost.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
from dataclasses import asdict
from typing import Any

from botocore.exceptions import ClientError
from builders import public_der
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from oidc_broker.keys import KeyEntry
from oidc_broker.store import RingState

ACCOUNT = "123456789012"
SEAL_KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/seal"


def kms_error(code: str, operation: str = "Operation") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)


class FakeKms:
    def __init__(self, key_pool: list[rsa.RSAPrivateKey] | None = None):
        self._ids = itertools.count(1)
        self._pool = list(key_pool or [])
        self.keys: dict[str, dict[str, Any]] = {}  # key id -> {"private", "state", "request"}
        self.mac_secrets: dict[str, bytes] = {"seal": b"the stack's seal secret"}
        self.calls: list[str] = []
        self.fail_create: Exception | None = None
        self._lock = threading.Lock()

    # -- keys -------------------------------------------------------------------------------------
    def add_key(self, private: rsa.RSAPrivateKey) -> str:
        """A signing key that exists already (the template's); its ARN."""
        with self._lock:
            key_id = f"key-{next(self._ids)}"
            self.keys[key_id] = {"private": private, "state": "Enabled", "request": None}
        return self.arn(key_id)

    @staticmethod
    def arn(key_id: str) -> str:
        return f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}"

    def _key(self, key_id: str) -> dict[str, Any]:
        found = self.keys.get(key_id.rsplit("/", 1)[-1])
        if found is None:
            raise kms_error("NotFoundException")
        return found

    def state_of(self, key_arn: str) -> str:
        return self._key(key_arn)["state"]

    def create_key(self, **request: Any) -> dict[str, Any]:
        self.calls.append("CreateKey")
        if self.fail_create:
            raise self.fail_create
        private = self._pool.pop() if self._pool else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            key_id = f"key-{next(self._ids)}"
            self.keys[key_id] = {"private": private, "state": "Enabled", "request": request}
        return {"KeyMetadata": {"KeyId": key_id, "Arn": self.arn(key_id)}}

    def get_public_key(self, KeyId: str) -> dict[str, Any]:
        self.calls.append("GetPublicKey")
        key = self._key(KeyId)
        if key["state"] == "Disabled":
            raise kms_error("DisabledException")
        if key["state"] == "PendingDeletion":
            raise kms_error("KMSInvalidStateException")
        return {"KeyId": KeyId, "PublicKey": public_der(key["private"])}

    def sign(self, KeyId: str, Message: bytes, MessageType: str, SigningAlgorithm: str) -> dict[str, Any]:
        self.calls.append("Sign")
        key = self._key(KeyId)
        if key["state"] != "Enabled":
            raise kms_error("DisabledException" if key["state"] == "Disabled" else "KMSInvalidStateException")
        assert (MessageType, SigningAlgorithm) == ("RAW", "RSASSA_PKCS1_V1_5_SHA_256")
        return {"Signature": key["private"].sign(Message, padding.PKCS1v15(), hashes.SHA256())}

    def disable_key(self, KeyId: str) -> None:
        self.calls.append("DisableKey")
        assert "/" not in KeyId, "a key ID, as moto needs"
        key = self._key(KeyId)
        if key["state"] == "PendingDeletion":
            raise kms_error("KMSInvalidStateException")
        key["state"] = "Disabled"

    def schedule_key_deletion(self, KeyId: str, PendingWindowInDays: int) -> dict[str, Any]:
        self.calls.append("ScheduleKeyDeletion")
        assert "/" not in KeyId and PendingWindowInDays == 30
        key = self._key(KeyId)
        if key["state"] == "PendingDeletion":
            raise kms_error("KMSInvalidStateException")
        key["state"] = "PendingDeletion"
        return {"KeyId": KeyId}

    # -- MACs ------------------------------------------------------------------------------------
    def _mac(self, key_id: str, message: bytes) -> bytes:
        secret = self.mac_secrets.get(key_id.rsplit("/", 1)[-1])
        if secret is None:
            raise kms_error("NotFoundException")
        return hmac.new(secret, message, hashlib.sha256).digest()

    def generate_mac(self, KeyId: str, Message: bytes, MacAlgorithm: str) -> dict[str, Any]:
        self.calls.append("GenerateMac")
        assert MacAlgorithm == "HMAC_SHA_256"
        return {"Mac": self._mac(KeyId, Message), "KeyId": KeyId, "MacAlgorithm": MacAlgorithm}

    def verify_mac(self, KeyId: str, Message: bytes, Mac: bytes, MacAlgorithm: str) -> dict[str, Any]:
        self.calls.append("VerifyMac")
        assert MacAlgorithm == "HMAC_SHA_256"
        if not hmac.compare_digest(self._mac(KeyId, Message), Mac):
            raise kms_error("KMSInvalidMacException")
        return {"MacValid": True, "KeyId": KeyId, "MacAlgorithm": MacAlgorithm}

    def count(self, operation: str) -> int:
        return self.calls.count(operation)


def item_of(entry: KeyEntry) -> dict[str, Any]:
    """A key ring entry as the store returns it."""
    item = asdict(entry)
    item["jwk"] = dict(entry.jwk)
    return item


class MemoryRing:
    """The key ring half of the store: items, version, requested rotation, one conditional transaction."""

    def __init__(self, *entries: KeyEntry):
        self.items: dict[str, dict[str, Any]] = {e.kid: item_of(e) for e in entries}
        self.version = 0
        self.rotate_requested_at: int | None = None
        self.jwks: dict[str, Any] | None = None  # what Store keeps in the ring's state item
        self.changes = 0
        self.conflicts = 0
        self._lock = threading.Lock()

    def key_ring(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i, jwk=dict(i["jwk"])) for i in self.items.values()]

    def key_ring_state(self) -> RingState:
        with self._lock:
            return RingState([dict(i, jwk=dict(i["jwk"])) for i in self.items.values()], self.version,
                             self.rotate_requested_at, None if self.jwks is None else dict(self.jwks))

    def ring_jwks(self) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            return self.version, None if self.jwks is None else dict(self.jwks)

    def change_key_ring(self, version: int, rotate_requested_at: int | None, *, jwks, put=(), delete=()) -> bool:
        assert jwks.version == version + 1 and jwks.seal, "every change stores the sealed JWKS of the next version"
        with self._lock:
            fine = version == self.version
            for entry, states in put:
                stored = self.items.get(entry.kid)
                fine &= (stored is None) if not states else (stored is not None and stored["state"] in states)
            for kid, states in delete:
                stored = self.items.get(kid)
                fine &= stored is not None and stored["state"] in states
            if not fine:
                self.conflicts += 1
                return False
            for entry, _ in put:
                self.items[entry.kid] = item_of(entry)
            for kid, _ in delete:
                del self.items[kid]
            self.version += 1
            self.rotate_requested_at = rotate_requested_at
            self.jwks = {"body": jwks.body, "version": jwks.version, "seal": jwks.seal}
            self.changes += 1
            return True

    def plant(self, item: dict[str, Any]) -> None:
        """Write an item as someone with table access could, outside every function's code."""
        with self._lock:
            self.items[item["kid"]] = dict(item)

    def published_kids(self) -> list[str]:
        """The kids of the stored JWKS, in its order (none stored: [])."""
        return [] if self.jwks is None else [k["kid"] for k in json.loads(self.jwks["body"])["keys"]]

    def states(self) -> dict[str, str]:
        return {kid: i["state"] for kid, i in self.items.items()}
