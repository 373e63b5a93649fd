"""The encrypted credential cache: a target's cloud credentials, kept in the broker's table.

Owns envelope encryption (one KMS data key per entry, AES-256-GCM; the target and subject are the
KMS encryption context and, with the entry's times, the associated data, so an entry cannot be
moved to another target or have its expiry stretched), the refresh rule (served while enough of
the credentials' lifetime remains) and single flight (concurrent misses make one exchange: a lock
per entry in the process plus a lease item in DynamoDB for other containers).

Entries are keyed by binding, target *and* subject: a cloud authorizes the subject, so credentials
obtained for one subject are never served to a caller whose subject differs. An entry also carries a
fingerprint of the target's settings, so an edited target never serves credentials of the old one.
It never stores or logs a plaintext secret, and decides nothing about callers: every caller is
authorized before the cache is asked, and `refill` (work without a caller: a scheduled refresh)
takes the same lease as a request's fill. How long an entry is served comes from the target's
`refresh_at` setting, which every cloud's description supplies with a default. Past it, a request
whose fill fails for want of the cloud (a 5xx: an outage, throttling, another fill still running)
is served the entry it had while that is still valid, never within EXPIRY_MARGIN of its expiry
and never after. An entry records when a caller was last served it (`last_used_at`, rewritten at
most every USE_RECORDED_EVERY seconds, not on every hit): the scheduled refresh renews subjects
taken from callers' claims only while callers use them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .clouds import Credentials
from .errors import BrokerError, Throttled
from .model import Binding, Target

PURPOSE = "oidc-broker credential cache"
LEASE = 15  # seconds a filler may hold the lease before another request may take over
WAIT = 5.0  # how long a concurrent miss waits for the fill before answering 503
POLL = 0.1
DATA_KEYS_KEPT = 32
KMS_RETRY_AFTER = 2
USE_RECORDED_EVERY = 900  # a hit rewrites the entry's last_used_at once it is older than this
EXPIRY_MARGIN = 60  # credentials are never served this close to their expiry (clock skew with the cloud)


class CacheUnavailable(Throttled):
    """The cache's KMS key cannot be used right now; nothing was stored or served."""


@dataclass(frozen=True)
class Served:
    credentials: Credentials
    source: str  # jti of the broker token whose exchange obtained these credentials
    from_cache: bool
    not_stored: str | None = None  # why fresh credentials could not be cached (they are still served)
    fallback: str | None = None  # why credentials past their refresh share were served: the fill's failure reason


Fill = Callable[[], tuple[Credentials, str]]


def fingerprint(target: Target) -> str:
    """What the credentials depend on besides the subject: provider, kind, audience and settings."""
    material = {"provider": target.provider, "kind": target.kind, "audience": target.audience,
                "settings": dict(target.settings)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def refresh_time(issued_at: int, expires_at: int, refresh_at: float) -> float:
    """When an entry stops being served: `refresh_at` of the way through its lifetime."""
    return issued_at + refresh_at * (expires_at - issued_at)


class CredentialCache:
    def __init__(self, store: Any, kms: Any, key_id: str, clock: Callable[[], float], *,
                 lease: int = LEASE, wait: float = WAIT, poll: float = POLL,
                 sleep: Callable[[float], None] = time.sleep, owner: str | None = None):
        self._store = store
        self._kms = kms
        self._key_id = key_id
        self._clock = clock
        self._lease = lease
        self._wait = wait
        self._poll = poll
        self._sleep = sleep
        self._owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._locks: dict[tuple[str, str], threading.Lock] = {}  # by Binding.key
        self._locks_guard = threading.Lock()
        self._data_keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._data_keys_guard = threading.Lock()

    def get(self, binding: Binding, fill: Fill) -> Served:
        """The cached credentials for `binding` while fresh, else those `fill` obtains (once)."""
        refresh_at = float(binding.target.setting("refresh_at"))
        if refresh_at <= 0:
            credentials, source = fill()
            return Served(credentials, source, from_cache=False)

        hit = self._fresh(binding, refresh_at, used=True)
        if hit:
            return hit
        try:
            return self._single_flight(binding, refresh_at, fill, since=None, recheck=True)
        except BrokerError as error:
            kept = self._kept(binding, error)
            if kept is None:
                raise
            return kept

    def refill(self, binding: Binding, fill: Fill, *, replacing: int | None = None) -> Served:
        """Obtain and store new credentials for `binding` whether or not its entry is still fresh,
        under the lease a request's fill takes; with no caller (a scheduled refresh). When another
        filler stores an entry while this waits for the lease, that entry is the answer and `fill`
        is not called. `replacing` is the `issued_at` of the entry the refill was decided on (0:
        there was none): an entry issued after it, stored before the lease was taken, is new
        enough too. The entry's `last_used_at` is carried over: a refill is no caller's use."""
        refresh_at = float(binding.target.setting("refresh_at"))
        if refresh_at <= 0:  # this target is never cached: nothing to refill
            credentials, source = fill()
            return Served(credentials, source, from_cache=False)
        if replacing is None:
            return self._single_flight(binding, refresh_at, fill, since=int(self._clock()), recheck=False)
        return self._single_flight(binding, refresh_at, fill, since=int(replacing) + 1, recheck=True)

    def _single_flight(self, binding: Binding, refresh_at: float, fill: Fill, since: int | None,
                       recheck: bool) -> Served:
        lock = self._lock(binding)
        waited = not lock.acquire(blocking=False)
        if waited:
            lock.acquire()
        try:
            return self._fill(binding, refresh_at, fill, waited, since, recheck)
        finally:
            lock.release()

    def _fill(self, binding: Binding, refresh_at: float, fill: Fill, waited: bool, since: int | None,
              recheck: bool) -> Served:
        """A request's fill (`since` None) or a refill (only an entry issued since `since` will do);
        `recheck`: an entry stored before the lease was taken may be the answer."""
        if waited:  # another thread of this process may have filled it meanwhile
            hit = self._fresh(binding, refresh_at, since, used=since is None)
            if hit:
                return hit
        deadline = self._clock() + self._wait
        while not self._store.lock_credentials_fill(binding, self._owner, int(self._clock()),
                                                    int(self._clock()) + self._lease):
            if self._clock() >= deadline:
                raise Throttled(f"another request is obtaining credentials for target {binding.target.ref!r}; "
                                "try again shortly", "fill_in_progress", 1)
            self._sleep(self._poll)
            hit = self._fresh(binding, refresh_at, since, used=since is None)
            if hit:
                return hit
        try:
            item = self._store.cached_credentials(binding)
            hit = recheck and self._serve(binding, item, refresh_at, since, used=since is None)
            if hit:  # filled just before we took the lease
                return hit
            # A request is a caller's use; a refill keeps the last one.
            last_used_at = int(self._clock()) if since is None else (item or {}).get("last_used_at")
            # The data key first: if KMS is unavailable, fail before anything is minted or exchanged.
            data_key = self._new_data_key(binding)
            credentials, source = fill()
            not_stored = None
            if refresh_time(credentials.issued_at, credentials.expires_at, refresh_at) <= self._clock():
                not_stored = "too little lifetime left to cache"
            else:
                try:
                    self._put(binding, credentials, source, data_key, last_used_at)
                except Exception as e:  # the cache only saves exchanges: still serve what we obtained
                    not_stored = f"the cache could not be written ({_code(e) or type(e).__name__})"
            return Served(credentials, source, from_cache=False, not_stored=not_stored)
        finally:
            self._store.unlock_credentials_fill(binding, self._owner)

    # -- reading -------------------------------------------------------------------------------
    def _fresh(self, binding: Binding, refresh_at: float, since: int | None = None, *,
               used: bool = False) -> Served | None:
        """The entry while it is served (and, given `since`, only one issued since then); `used`: a
        caller is served it."""
        return self._serve(binding, self._store.cached_credentials(binding), refresh_at, since, used=used)

    def _serve(self, binding: Binding, item: dict[str, Any] | None, refresh_at: float, since: int | None, *,
               used: bool) -> Served | None:
        if not item or item.get("fingerprint") != fingerprint(binding.target):
            return None
        issued_at, expires_at = int(item["issued_at"]), int(item["expires_at"])
        if self._clock() >= min(refresh_time(issued_at, expires_at, refresh_at), expires_at):
            return None
        if since is not None and issued_at < since:
            return None
        fields = self._open(binding, item)
        if fields is None:
            return None
        if used:
            self._record_use(binding, item)
        return Served(Credentials(fields, issued_at, expires_at), item["source"], from_cache=True)

    def _kept(self, binding: Binding, error: BrokerError) -> Served | None:
        """When a request's fill failed with a 5xx (the cloud unreachable or throttling, another fill
        still running), the entry it had, past its refresh share but valid for EXPIRY_MARGIN more;
        None for a refusal (a 4xx: the cloud's trust changed) or with nothing valid to serve."""
        if error.status < 500:
            return None
        try:
            item = self._store.cached_credentials(binding)
            if not item or item.get("fingerprint") != fingerprint(binding.target):
                return None
            issued_at, expires_at = int(item["issued_at"]), int(item["expires_at"])
            if self._clock() >= expires_at - EXPIRY_MARGIN:
                return None
            fields = self._open(binding, item)
        except Exception:  # the table or KMS is failing too: the fill's own error is the answer
            return None
        if fields is None:
            return None
        self._record_use(binding, item)
        return Served(Credentials(fields, issued_at, expires_at), item["source"], from_cache=True, fallback=error.reason)

    def _record_use(self, binding: Binding, item: dict[str, Any]) -> None:
        """Note that a caller was served `item`, when its note is older than USE_RECORDED_EVERY: one
        write per entry per interval, not one per hit."""
        now = int(self._clock())
        if int(item.get("last_used_at", 0)) > now - USE_RECORDED_EVERY:
            return
        try:
            self._store.mark_cached_credentials_used(binding, item, now)
        except Exception:  # bookkeeping only: the caller is served regardless, the next hit writes it
            pass

    def _open(self, binding: Binding, item: dict[str, Any]) -> dict[str, str] | None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self._data_key(binding, item["data_key"])
        if key is None:
            return None
        try:
            plaintext = AESGCM(key).decrypt(item["nonce"], item["ciphertext"], _aad(binding, item))
        except InvalidTag:
            return None  # altered or moved: treat as a miss, the next fill overwrites it
        return json.loads(plaintext)

    def _data_key(self, binding: Binding, blob: bytes) -> bytes | None:
        with self._data_keys_guard:
            if blob in self._data_keys:
                self._data_keys.move_to_end(blob)
                return self._data_keys[blob]
        try:
            key = self._kms.decrypt(CiphertextBlob=blob, KeyId=self._key_id,
                                    EncryptionContext=_context(binding))["Plaintext"]
        except Exception as e:
            if _code(e) in ("InvalidCiphertextException", "IncorrectKeyException"):
                return None
            raise _unavailable(e) from None
        self._remember(blob, key)
        return key

    # -- writing -------------------------------------------------------------------------------
    def _new_data_key(self, binding: Binding) -> tuple[bytes, bytes]:
        try:
            response = self._kms.generate_data_key(KeyId=self._key_id, KeySpec="AES_256",
                                                   EncryptionContext=_context(binding))
        except Exception as e:
            raise _unavailable(e) from None
        return response["Plaintext"], response["CiphertextBlob"]

    def _put(self, binding: Binding, credentials: Credentials, source: str, data_key: tuple[bytes, bytes],
             last_used_at: int | None) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key, blob = data_key
        item: dict[str, Any] = {
            "fingerprint": fingerprint(binding.target),
            "issued_at": int(credentials.issued_at),
            "expires_at": int(credentials.expires_at),
            "source": source,
            "data_key": blob,
            "nonce": os.urandom(12),
            "ttl": int(credentials.expires_at),
        }
        if last_used_at is not None:  # not bound into the associated data: a use may be noted later
            item["last_used_at"] = int(last_used_at)
        plaintext = json.dumps(dict(credentials.fields)).encode()  # the order the caller sees
        item["ciphertext"] = AESGCM(key).encrypt(item["nonce"], plaintext, _aad(binding, item))
        self._store.put_cached_credentials(binding, item)
        self._remember(blob, key)

    def _remember(self, blob: bytes, key: bytes) -> None:
        with self._data_keys_guard:
            self._data_keys[blob] = key
            while len(self._data_keys) > DATA_KEYS_KEPT:
                self._data_keys.popitem(last=False)

    def _lock(self, binding: Binding) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(binding.key, threading.Lock())


def _context(binding: Binding) -> dict[str, str]:
    return {"purpose": PURPOSE, "target": binding.target.ref, "subject": str(binding.subject)}


def _aad(binding: Binding, item: dict[str, Any]) -> bytes:
    bound = {**_context(binding), **{k: item[k] for k in ("fingerprint", "issued_at", "expires_at", "source")}}
    return json.dumps(bound, sort_keys=True).encode()


def _code(error: Exception) -> str | None:
    response = getattr(error, "response", None)
    return (response.get("Error") or {}).get("Code") if isinstance(response, dict) else None


def _unavailable(error: Exception) -> CacheUnavailable:
    code = _code(error) or type(error).__name__
    return CacheUnavailable(f"the credential cache's KMS key cannot be used right now ({code}); try again shortly",
                            "cache_kms_unavailable", KMS_RETRY_AFTER)
