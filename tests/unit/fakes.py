"""In-memory ports for the unit tests: the store's halves, KMS, the signer, a cloud's exchanger.

Each fake keeps the semantics of the port it stands for (conditional writes, data keys bound to
their encryption context, a signature that verifies against the published key), so a test swaps
a port, not a library. Inputs (documents, caller tokens, clocks) are in builders.py.
"""

from __future__ import annotations

import copy
import os
import threading

import jwt
from botocore.exceptions import ClientError
from builders import BROKER, config_doc, public_der
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from oidc_broker import config, keys, minting
from oidc_broker.cache import CredentialCache
from oidc_broker.callers import IssuerKeys
from oidc_broker.clouds import Credentials, Request
from oidc_broker.store import AlreadyUsed, Grant

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/active"  # the signing key
CACHE_KEY_ID = "arn:aws:kms:us-east-1:123456789012:key/cache"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


# -- signing and grants (minting) --------------------------------------------------------------

class RsaSigner:
    """The signer port backed by a local RSA key: what KMS Sign does for RSASSA_PKCS1_V1_5_SHA_256."""

    def __init__(self, key):
        self.key = key
        self.calls: list[tuple[str, bytes]] = []
        self.error: Exception | None = None

    def sign(self, key_arn: str, message: bytes) -> bytes:
        self.calls.append((key_arn, message))
        if self.error:
            raise self.error
        return self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())


class MemoryStore:
    """The grant half of the store: a conditional put and a conditional delete."""

    def __init__(self):
        self.grants: dict[tuple[str, str], Grant] = {}
        self.withdrawn: list[Grant] = []

    @staticmethod
    def _key(grant: Grant) -> tuple[str, str]:
        key = grant.key()
        return key["pk"]["S"], key["sk"]["S"]

    def record_grant(self, grant: Grant) -> None:
        if self._key(grant) in self.grants:
            raise AlreadyUsed()
        self.grants[self._key(grant)] = grant

    def withdraw_grant(self, grant: Grant) -> None:
        if self.grants.get(self._key(grant), None) is not None and self.grants[self._key(grant)].token_jti == grant.token_jti:
            del self.grants[self._key(grant)]
            self.withdrawn.append(grant)


class RingSource:
    def __init__(self, items: list[dict]):
        self.items = items

    def key_ring(self) -> list[dict]:
        return self.items


class Setup:
    def __init__(self, ci, broker_key, clock, document=None, ring=None):
        self.ci = ci
        self.clock = clock
        self.jwk = keys.jwk_from_der(public_der(broker_key))
        if ring is None:
            ring = [{"kid": self.jwk["kid"], "key_arn": KEY_ARN, "state": keys.ACTIVE, "jwk": self.jwk, "created_at": 1}]
        self.key_ring = keys.KeyRing(RingSource(ring), clock)
        self.signer = RsaSigner(broker_key)
        self.store = MemoryStore()
        self.config = config.parse(document or config_doc())
        self.broker = minting.Broker(
            config=lambda: self.config,
            issuer_keys=IssuerKeys(ci.fetch, clock),
            key_ring=self.key_ring,
            signer=self.signer,
            store=self.store,
            clock=clock,
        )

    def issue(self, token: str | None = None, audience: str = "acme/prod", issuer: str = BROKER) -> minting.Issued:
        return self.broker.issue(token or self.ci.token(), audience, issuer)

    def verify_minted(self, token: str, audience: str) -> dict:
        """Check the token as a cloud would: signature against the published JWK, iss, aud."""
        (published,) = self.key_ring.jwks()["keys"]
        assert jwt.get_unverified_header(token)["kid"] == published["kid"]
        return jwt.decode(token, jwt.PyJWK(published).key, algorithms=["RS256"], audience=audience, issuer=BROKER,
                          options={"verify_exp": False, "verify_nbf": False, "verify_iat": False})



# -- the credential cache ---------------------------------------------------------------------

class CacheStore:
    """The cache half of the store, with DynamoDB's conditional-write semantics, thread-safe."""

    def __init__(self):
        self.items: dict[tuple[str, str], dict] = {}
        self.locks: dict[tuple[str, str], dict] = {}
        self.reads = 0
        self.writes = 0
        self.queries = 0
        self.guard = threading.Lock()

    def cached_credentials(self, binding):
        with self.guard:
            self.reads += 1
            item = self.items.get(binding.key)
            return copy.deepcopy(item)

    def put_cached_credentials(self, binding, attributes):
        with self.guard:
            self.writes += 1
            self.items[binding.key] = dict(attributes)

    def mark_cached_credentials_used(self, binding, attributes, used_at):
        with self.guard:
            self.writes += 1
            current = self.items.get(binding.key)
            if current is not None and current["source"] == attributes["source"]:  # the conditional put
                self.items[binding.key] = {**attributes, "last_used_at": used_at}

    def cache_entries(self, target):
        """The Query of a target's partition: each entry without its secret parts."""
        with self.guard:
            self.queries += 1
            return [{"subject": subject, **{k: item[k] for k in ("fingerprint", "issued_at", "expires_at",
                                                                  "last_used_at") if k in item}}
                    for (ref, subject), item in self.items.items() if ref == target]

    def lock_credentials_fill(self, binding, owner, now, lease_until):
        with self.guard:
            held = self.locks.get(binding.key)
            if held and held["lease_until"] >= now:
                return False
            self.locks[binding.key] = {"owner": owner, "lease_until": lease_until}
            return True

    def unlock_credentials_fill(self, binding, owner):
        with self.guard:
            if self.locks.get(binding.key, {}).get("owner") == owner:
                del self.locks[binding.key]


def kms_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "unavailable"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                       "GenerateDataKey")


class CacheKms:
    """Data keys bound to their encryption context, as KMS binds them."""

    def __init__(self):
        self.keys: dict[bytes, tuple[bytes, dict]] = {}
        self.generated = 0
        self.decrypted = 0
        self.error: Exception | None = None

    def generate_data_key(self, KeyId, KeySpec, EncryptionContext):
        assert (KeyId, KeySpec) == (CACHE_KEY_ID, "AES_256")
        if self.error:
            raise self.error
        self.generated += 1
        key, blob = os.urandom(32), os.urandom(48)
        self.keys[blob] = (key, dict(EncryptionContext))
        return {"Plaintext": key, "CiphertextBlob": blob}

    def decrypt(self, CiphertextBlob, KeyId, EncryptionContext):
        if self.error:
            raise self.error
        self.decrypted += 1
        key, context = self.keys.get(CiphertextBlob, (None, None))
        if key is None or context != EncryptionContext:
            raise ClientError({"Error": {"Code": "InvalidCiphertextException", "Message": "no"}}, "Decrypt")
        return {"Plaintext": key}


class Exchanges:
    """A counting fill: each call is one exchange with the cloud."""

    def __init__(self, clock, lifetime: int = 3600):
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.guard = threading.Lock()
        self.started = threading.Event()
        self.release: threading.Event | None = None
        self.error: Exception | None = None

    def __call__(self):
        with self.guard:
            self.calls += 1
            n = self.calls
        self.started.set()
        if self.release is not None:
            assert self.release.wait(5)
        if self.error:
            raise self.error
        now = int(self.clock())
        return Credentials({"access_key_id": f"ASIA{n}", "secret_access_key": SECRET, "session_token": "tok"},
                           now, now + self.lifetime), f"jti-{n}"



class CountingCache(CredentialCache):
    """The real cache, counting how often it was asked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = 0

    def get(self, binding, fill):
        self.asked += 1
        return super().get(binding, fill)


# -- a cloud -------------------------------------------------------------------------------------

class FakeExchanger:
    """A cloud that checks the broker token as a real one would, and counts what it was asked."""

    def __init__(self, setup: Setup, clock, provider: str = "aws", fields: dict[str, str] | None = None):
        self.provider = provider
        self.fields = fields or {"access_key_id": "ASIA1", "secret_access_key": "secret", "session_token": "t"}
        self.setup = setup
        self.clock = clock
        self.requests: list[Request] = []
        self.error: Exception | None = None

    def exchange(self, request: Request) -> Credentials:
        # What the cloud checks: the broker token verifies against the published key.
        claims = self.setup.verify_minted(request.token, request.target.audience)
        assert claims["sub"] == request.subject
        self.requests.append(request)
        if self.error:
            raise self.error
        now = int(self.clock())
        return Credentials(dict(self.fields), now, now + 3600)
