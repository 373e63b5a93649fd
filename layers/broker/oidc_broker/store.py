"""The one DynamoDB table: configuration, key ring, and grants (replay guard + audit record).

Item layout (pk / sk):
  CONFIG / CURRENT, CONFIGBLOB#<sha> / PART#<n>
                                        the applied configuration: a versioned pointer and
                                        compressed, content-addressed parts (configstore.py)
  DEPLOYMENT / CURRENT                  the deployment's issuer URL, recorded at every deploy
  KEYRING / KEY#<kid>                   one signing key: state, KMS key ARN, public JWK, seal
  KEYRING / STATE                       the key ring's version, a requested rotation, and the
                                        JWKS that version renders, sealed (the JWKS function's one read)
  ISSUERKEYS#<hash of issuer URL> / CURRENT
                                        a trusted issuer's last good key set, shared by containers;
                                        ttl = when the issuer served it + its max_key_set_age
  GRANT#<hash of caller iss+jti> / TARGET#<space>/<target>
                                        one accepted caller token for one target; its existence is
                                        the replay guard, its attributes the audit record. The
                                        `audit` index (gsi1pk AUDIT#<space>/<target>, gsi1sk time)
                                        answers "who obtained T, when".
Owns the item shapes and the conditional writes; decides nothing about trust.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .configstore import ConfigItems

if TYPE_CHECKING:
    from .model import Binding

DEPLOYMENT_PK, DEPLOYMENT_SK = "DEPLOYMENT", "CURRENT"
KEYRING_PK = "KEYRING"
AUDIT_INDEX = "audit"


class AlreadyUsed(Exception):
    """The caller token was already accepted for this target."""


@dataclass(frozen=True)
class Grant:
    caller_issuer: str
    caller_subject: str
    caller_jti: str
    trust_rule: str
    target: str  # <space>/<target>
    subject: str
    audience: str
    token_jti: str
    issued_at: int
    token_expires_at: int
    keep_until: int  # the TTL: past the caller token's exp + leeway + margin, and the audit retention

    def key(self) -> dict[str, dict[str, str]]:
        return grant_key(self.caller_issuer, self.caller_jti, self.target)


def grant_key(caller_issuer: str, caller_jti: str, target: str) -> dict[str, dict[str, str]]:
    digest = hashlib.sha256(f"{caller_issuer}\n{caller_jti}".encode()).hexdigest()
    return {"pk": {"S": f"GRANT#{digest}"}, "sk": {"S": f"TARGET#{target}"}}


def _issuer_keys_key(issuer: str) -> dict[str, dict[str, str]]:
    digest = hashlib.sha256(issuer.encode()).hexdigest()
    return {"pk": {"S": f"ISSUERKEYS#{digest}"}, "sk": {"S": "CURRENT"}}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


class Store:
    def __init__(self, client: Any, table: str):
        self._db = client
        self._table = table

    # -- configuration (configstore.py: per space, compressed, versioned) --------------------------
    @property
    def configuration(self) -> ConfigItems:
        return ConfigItems(self._db, self._table)

    def get_config(self) -> dict[str, Any] | None:
        """The whole applied document with its source, sha256, version and time; None if none is."""
        found = self.configuration.document()
        if found is None:
            return None
        pointer, document = found
        return {"document": document, "source": pointer.source, "sha256": pointer.sha256,
                "applied_at": pointer.applied_at, "version": pointer.version}

    def put_config(self, document: dict[str, Any], source: str, applied_at: int) -> str:
        """Apply a validated document, all or nothing (configstore.ConfigConflict if another apply
        came between its read and its switch); its sha256."""
        return self.configuration.put(document, source, applied_at)

    # -- the deployment ----------------------------------------------------------------------
    def get_deployment(self) -> dict[str, Any] | None:
        """What the stack recorded of itself at its last deploy (Custom::KeyRing), or None."""
        item = self._db.get_item(
            TableName=self._table, Key={"pk": _s(DEPLOYMENT_PK), "sk": _s(DEPLOYMENT_SK)}, ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        return {"issuer": item["issuer"]["S"], "recorded_at": int(item["recorded_at"]["N"])}

    def put_deployment(self, issuer: str, recorded_at: int) -> None:
        self._db.put_item(
            TableName=self._table,
            Item={"pk": _s(DEPLOYMENT_PK), "sk": _s(DEPLOYMENT_SK), "issuer": _s(issuer), "recorded_at": _n(recorded_at)},
        )

    # -- key ring ----------------------------------------------------------------------------
    # KEYRING / KEY#<kid>   one signing key: state, KMS key ARN, public JWK, seal, lifecycle times
    # KEYRING / STATE       the ring's version (every change writes version + 1, conditionally on
    #                       the version read: concurrent changes cannot both succeed), a
    #                       requested rotation's time, and the JWKS of that version: `jwks` (the
    #                       body as served), `jwks_version`, `jwks_seal`. A state written without
    #                       them (before they were) reads as a ring with no rendered JWKS.
    def key_ring(self) -> list[dict[str, Any]]:
        """The ring's keys, as items for keys.KeyEntry.from_item."""
        return self.key_ring_state().keys

    def key_ring_state(self) -> RingState:
        """The ring's keys, version and requested rotation: one consistent Query of the partition."""
        keys: list[dict[str, Any]] = []
        version, requested, jwks = 0, None, None
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(KEYRING_PK)},
            "ConsistentRead": True,
        }
        while True:
            page = self._db.query(**kwargs)
            for item in page.get("Items", []):
                if item["sk"]["S"] == RING_STATE_SK:
                    version = int(item["version"]["N"])
                    requested = int(item["rotate_requested_at"]["N"]) if "rotate_requested_at" in item else None
                    jwks = _jwks_from_item(item)
                elif item["sk"]["S"].startswith(KEY_SK_PREFIX):
                    keys.append(_key_from_item(item))
            if "LastEvaluatedKey" not in page:
                return RingState(keys, version, requested, jwks)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def ring_jwks(self) -> tuple[int, dict[str, Any] | None]:
        """The ring's version and the JWKS stored with it (for keys.RenderedJwks.from_item; None if
        none is): the ring's state item alone, read consistently. A Query naming the one item: the
        ring's readers may Query its partition and need no other permission."""
        items = self._db.query(
            TableName=self._table, KeyConditionExpression="pk = :pk AND sk = :sk", ConsistentRead=True,
            ExpressionAttributeValues={":pk": _s(KEYRING_PK), ":sk": _s(RING_STATE_SK)},
        ).get("Items") or []
        if not items:
            return 0, None
        return int(items[0]["version"]["N"]), _jwks_from_item(items[0])

    def change_key_ring(self, version: int, rotate_requested_at: int | None, *, jwks: Any,
                        put: Sequence[tuple[Any, tuple[str, ...]]] = (),
                        delete: Sequence[tuple[str, tuple[str, ...]]] = ()) -> bool:
        """Apply changes to the ring at once, if it is still at `version`; True when applied.

        `put` is (keys.KeyEntry, the states the stored item must be in; () for a new key),
        `delete` (kid, the states it must be in), `jwks` the sealed keys.RenderedJwks of the ring
        as changed, for version + 1. One TransactWriteItems: every write or none.
        """
        if jwks.version != version + 1 or not jwks.seal:
            raise ValueError(f"a change of key ring version {version} stores the sealed JWKS of version {version + 1}")
        actions: list[dict[str, Any]] = []
        for entry, states in put:
            action: dict[str, Any] = {"TableName": self._table, "Item": _key_item(entry)}
            action.update(_state_condition(states))
            actions.append({"Put": action})
        for kid, states in delete:
            actions.append({"Delete": {"TableName": self._table, "Key": _key_key(kid), **_state_condition(states)}})
        state = {"pk": _s(KEYRING_PK), "sk": _s(RING_STATE_SK), "version": _n(version + 1),
                 "jwks": {"B": jwks.body}, "jwks_version": _n(jwks.version), "jwks_seal": _s(jwks.seal)}
        if rotate_requested_at is not None:
            state["rotate_requested_at"] = _n(rotate_requested_at)
        guard: dict[str, Any] = (
            {"ConditionExpression": "attribute_not_exists(pk)"} if version == 0 else
            {"ConditionExpression": "#version = :v", "ExpressionAttributeNames": {"#version": "version"},
             "ExpressionAttributeValues": {":v": _n(version)}})
        actions.append({"Put": {"TableName": self._table, "Item": state, **guard}})
        try:
            self._db.transact_write_items(TransactItems=actions)
        except (self._db.exceptions.TransactionCanceledException, self._db.exceptions.TransactionConflictException):
            return False
        return True

    # -- trusted issuers' key sets ---------------------------------------------------------------
    def get_issuer_keys(self, issuer: str) -> tuple[float, list[dict[str, Any]]] | None:
        item = self._db.get_item(TableName=self._table, Key=_issuer_keys_key(issuer)).get("Item")
        if not item or item.get("issuer", {}).get("S") != issuer:
            return None
        return float(item["fetched_at"]["N"]), json.loads(item["keys"]["S"])

    def put_issuer_keys(self, issuer: str, keys: list[dict[str, Any]], fetched_at: float, max_age: float) -> None:
        """Share a freshly fetched key set, unless another container shared a newer one.

        `fetched_at` is when the issuer served it; readers trust it for `max_age` from then, and
        the table drops it after that (ttl).
        """
        try:
            self._db.put_item(
                TableName=self._table,
                Item={
                    **_issuer_keys_key(issuer),
                    "issuer": _s(issuer),
                    "keys": _s(json.dumps(keys, sort_keys=True)),
                    "fetched_at": {"N": repr(float(fetched_at))},
                    "ttl": _n(math.ceil(fetched_at + max_age)),
                },
                ConditionExpression="attribute_not_exists(pk) OR fetched_at < :t",
                ExpressionAttributeValues={":t": {"N": repr(float(fetched_at))}},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            pass

    # -- grants ------------------------------------------------------------------------------
    def record_grant(self, grant: Grant) -> None:
        """Record that a caller token was accepted for a target; AlreadyUsed if it was before."""
        item = {
            **grant.key(),
            "gsi1pk": _s(f"AUDIT#{grant.target}"),
            "gsi1sk": _s(f"{grant.issued_at:012d}#{grant.token_jti}"),
            "caller_issuer": _s(grant.caller_issuer),
            "caller_subject": _s(grant.caller_subject),
            "caller_jti": _s(grant.caller_jti),
            "trust_rule": _s(grant.trust_rule),
            "target": _s(grant.target),
            "subject": _s(grant.subject),
            "audience": _s(grant.audience),
            "token_jti": _s(grant.token_jti),
            "issued_at": _n(grant.issued_at),
            "token_expires_at": _n(grant.token_expires_at),
            "ttl": _n(grant.keep_until),
        }
        try:
            self._db.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except self._db.exceptions.ConditionalCheckFailedException:
            raise AlreadyUsed() from None

    def withdraw_grant(self, grant: Grant) -> None:
        """Undo a grant whose token could not be signed, so the caller token stays usable."""
        self._db.delete_item(
            TableName=self._table,
            Key=grant.key(),
            ConditionExpression="token_jti = :jti",
            ExpressionAttributeValues={":jti": _s(grant.token_jti)},
        )

    def grants_for(self, target: str, since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """The newest grants for a target (for audits), newest first."""
        page = self._db.query(
            TableName=self._table,
            IndexName=AUDIT_INDEX,
            KeyConditionExpression="gsi1pk = :pk AND gsi1sk >= :since",
            ExpressionAttributeValues={":pk": _s(f"AUDIT#{target}"), ":since": _s(f"{since:012d}")},
            ScanIndexForward=False,
            Limit=limit,
        )
        out = []
        for item in page.get("Items", []):
            out.append({k: (int(v["N"]) if "N" in v else v["S"]) for k, v in item.items() if k not in ("pk", "sk", "gsi1pk", "gsi1sk")})
        return out

    # -- credential cache ----------------------------------------------------------------------
    # CACHE#<space>/<target> / CREDENTIALS#<subject>   one envelope-encrypted credential set (no
    #                                                  plaintext secret); ttl = its expiry; the
    #                                                  scheduled refresh queries the partition
    # CACHE#<space>/<target> / FILL#<subject>          the lease of the request obtaining it
    def cached_credentials(self, binding: Binding) -> dict[str, Any] | None:
        item = self._db.get_item(
            TableName=self._table, Key=_cache_key(binding, CACHE_ENTRY), ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        return {k: _value(v) for k, v in item.items() if k not in ("pk", "sk")}

    def put_cached_credentials(self, binding: Binding, attributes: dict[str, str | int | bytes]) -> None:
        item = {**_cache_key(binding, CACHE_ENTRY), **{k: _attribute(v) for k, v in attributes.items()}}
        self._db.put_item(TableName=self._table, Item=item)

    def mark_cached_credentials_used(self, binding: Binding, attributes: dict[str, str | int | bytes],
                                     used_at: int) -> None:
        """Write an entry back with `last_used_at`, the last time a caller was served it, unless another
        fill replaced it meanwhile (its `source` differs, or it is gone)."""
        item = {**_cache_key(binding, CACHE_ENTRY), **{k: _attribute(v) for k, v in attributes.items()},
                "last_used_at": _n(used_at)}
        try:
            self._db.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="#source = :source",
                ExpressionAttributeNames={"#source": "source"},
                ExpressionAttributeValues={":source": _s(str(attributes["source"]))},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            pass

    def cache_entries(self, target: str) -> list[dict[str, Any]]:
        """What each cached entry of `target` (<space>/<target>) says of itself, none of its secret parts:
        `subject`, `fingerprint`, `issued_at`, `expires_at` and, once a caller was served it,
        `last_used_at`. One Query of the target's partition (paged), no Scan."""
        entries: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :entry)",
            "ExpressionAttributeValues": {":pk": _s(_cache_partition(target)), ":entry": _s(f"{CACHE_ENTRY}#")},
            "ProjectionExpression": "sk, fingerprint, issued_at, expires_at, last_used_at",
            "ConsistentRead": True,
        }
        while True:
            page = self._db.query(**kwargs)
            for item in page.get("Items", []):
                entry = {k: _value(v) for k, v in item.items() if k != "sk"}
                entry["subject"] = item["sk"]["S"].removeprefix(f"{CACHE_ENTRY}#")
                entries.append(entry)
            if "LastEvaluatedKey" not in page:
                return entries
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def lock_credentials_fill(self, binding: Binding, owner: str, now: int, lease_until: int) -> bool:
        """Take the fill lease unless another owner holds an unexpired one; True when taken."""
        try:
            self._db.put_item(
                TableName=self._table,
                Item={
                    **_cache_key(binding, CACHE_FILL),
                    "owner": _s(owner),
                    "lease_until": _n(lease_until),
                    "ttl": _n(lease_until + 3600),
                },
                ConditionExpression="attribute_not_exists(pk) OR lease_until < :now",
                ExpressionAttributeValues={":now": _n(now)},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def unlock_credentials_fill(self, binding: Binding, owner: str) -> None:
        """Release the fill lease if this owner still holds it."""
        try:
            self._db.delete_item(
                TableName=self._table,
                Key=_cache_key(binding, CACHE_FILL),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": _s(owner)},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            pass


CACHE_ENTRY, CACHE_FILL = "CREDENTIALS", "FILL"

KEY_SK_PREFIX, RING_STATE_SK = "KEY#", "STATE"
_KEY_TIMES = ("published_at", "activated_at", "retired_at")


@dataclass(frozen=True)
class RingState:
    keys: list[dict[str, Any]]
    version: int  # 0: the ring has never been changed through change_key_ring
    rotate_requested_at: int | None
    jwks: dict[str, Any] | None = None  # the JWKS stored with the state (keys.RenderedJwks.from_item)


def _jwks_from_item(state: dict[str, Any]) -> dict[str, Any] | None:
    if "B" not in state.get("jwks", {}) or "N" not in state.get("jwks_version", {}):
        return None
    return {"body": bytes(state["jwks"]["B"]), "version": int(state["jwks_version"]["N"]),
            "seal": state["jwks_seal"]["S"] if "jwks_seal" in state else None}


def _key_key(kid: str) -> dict[str, dict[str, str]]:
    return {"pk": _s(KEYRING_PK), "sk": _s(f"{KEY_SK_PREFIX}{kid}")}


def _key_item(entry: Any) -> dict[str, Any]:
    item = {
        **_key_key(entry.kid),
        "kid": _s(entry.kid),
        "key_arn": _s(entry.key_arn),
        "state": _s(entry.state),
        "jwk": _s(json.dumps(entry.jwk, sort_keys=True)),
        "created_at": _n(entry.created_at),
    }
    if entry.seal:
        item["seal"] = _s(entry.seal)
    for name in _KEY_TIMES:
        if getattr(entry, name) is not None:
            item[name] = _n(getattr(entry, name))
    return item


def _key_from_item(item: dict[str, Any]) -> dict[str, Any]:
    key = {
        "kid": item["kid"]["S"],
        "key_arn": item["key_arn"]["S"],
        "state": item["state"]["S"],
        "jwk": json.loads(item["jwk"]["S"]),
        "created_at": int(item["created_at"]["N"]),
        "seal": item["seal"]["S"] if "seal" in item else None,
    }
    for name in _KEY_TIMES:
        key[name] = int(item[name]["N"]) if name in item else None
    return key


def _state_condition(states: tuple[str, ...]) -> dict[str, Any]:
    """The condition that the item exists in one of `states`, or does not exist when `states` is empty."""
    if not states:
        return {"ConditionExpression": "attribute_not_exists(pk)"}
    names = {f":s{i}": _s(state) for i, state in enumerate(states)}
    return {"ConditionExpression": f"#state IN ({', '.join(names)})", "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": names}


def _cache_partition(target: str) -> str:
    return f"CACHE#{target}"


def _cache_key(binding: Binding, kind: str) -> dict[str, dict[str, str]]:
    return {"pk": _s(_cache_partition(binding.target.ref)), "sk": _s(f"{kind}#{binding.subject}")}


def _attribute(value: str | int | bytes) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, int) and not isinstance(value, bool):
        return _n(value)
    if isinstance(value, str):
        return _s(value)
    raise TypeError(f"cannot store a {type(value).__name__} in the credential cache")


def _value(attribute: dict[str, Any]) -> str | int | bytes:
    if "B" in attribute:
        return bytes(attribute["B"])
    if "N" in attribute:
        return int(attribute["N"])
    return attribute["S"]
