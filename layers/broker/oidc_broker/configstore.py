"""The applied configuration in the table: split per space, compressed, versioned, switched last.

Items (pk / sk):
  CONFIG / CURRENT                the pointer: the version, the manifest's blob, the whole document's
                                  sha256, its source and when it was applied. Written last, on the
                                  condition that the version is still the one read: a reader sees
                                  one whole configuration or the one before, never half of either,
                                  and of two applies racing one is refused.
  CONFIGBLOB#<sha256> / PART#<n>  one part of a blob: canonical JSON, zlib-compressed, named by the
                                  sha256 of that JSON (a reader checks it), cut into parts under
                                  DynamoDB's 400 KB item limit.
A blob is the document's shared part (issuer, trusted_issuers), one of its spaces, the whole
document (what the CLI reads), or the manifest that lists them in the document's order. A space that did not change keeps its blob, so an apply
writes only what changed and a function re-reads and re-parses only the spaces whose blob changed,
each when a request first needs it. Blobs the new manifest no longer names get a ttl a day ahead, so
readers still holding the previous pointer find them. A pointer written before this layout holds the
whole document in its `document` attribute, and is read as such until the next apply.

Owns these item shapes only; what a configuration means is validation's.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

CONFIG_PK, CONFIG_SK = "CONFIG", "CURRENT"
BLOB_PREFIX, PART_PREFIX = "CONFIGBLOB#", "PART#"
PART_BYTES = 300 * 1024  # compressed bytes per item: well under 400 KB with the keys and attributes
RETIRE_AFTER = 24 * 3600
MAX_BLOB_BYTES = 64 * 1024 * 1024  # a blob never inflates past this (a corrupt or hostile item)
BATCH_WRITE = 25  # DynamoDB's limit per BatchWriteItem
READERS = 8  # blobs read or retired at once
UNPROCESSED_ATTEMPTS = 8


class ConfigConflict(Exception):
    """Another apply switched the configuration between this one's read and its write."""


class CorruptBlob(Exception):
    """A stored part is missing, or its content does not match the name it is stored under."""


@dataclass(frozen=True)
class BlobRef:
    sha: str  # sha256 of the blob's canonical JSON
    parts: int


@dataclass(frozen=True)
class Manifest:
    shared: BlobRef
    spaces: tuple[tuple[str, BlobRef], ...]  # (space name, its blob), in the document's order
    document: BlobRef  # the whole document, for those that read all of it at once (the CLI)

    def refs(self) -> set[BlobRef]:
        return {self.shared, self.document, *(ref for _, ref in self.spaces)}

    def to_json(self) -> dict[str, Any]:
        return {"shared": [self.shared.sha, self.shared.parts], "document": [self.document.sha, self.document.parts],
                "spaces": [[name, ref.sha, ref.parts] for name, ref in self.spaces]}

    @classmethod
    def from_json(cls, value: Any) -> Manifest:
        try:
            return cls(BlobRef(str(value["shared"][0]), int(value["shared"][1])),
                       tuple((str(name), BlobRef(str(sha), int(parts))) for name, sha, parts in value["spaces"]),
                       BlobRef(str(value["document"][0]), int(value["document"][1])))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CorruptBlob("the configuration manifest is not one") from None


@dataclass(frozen=True)
class Pointer:
    version: int  # 0: a pointer written before this layout
    sha256: str  # of the whole document's canonical JSON: equal documents, equal digests
    source: str
    applied_at: int
    manifest: BlobRef | None
    document: dict[str, Any] | None = None  # a pointer written before this layout holds the document


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def split(document: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """A validated document's shared part (everything but `spaces`) and its spaces by name, in order."""
    shared = {k: v for k, v in document.items() if k != "spaces"}
    return shared, [(space["name"], space) for space in document.get("spaces") or []]


def encode(value: Any) -> tuple[BlobRef, list[bytes]]:
    text = canonical(value)
    packed = zlib.compress(text, 6)
    parts = [packed[i:i + PART_BYTES] for i in range(0, len(packed), PART_BYTES)] or [b""]
    return BlobRef(hashlib.sha256(text).hexdigest(), len(parts)), parts


def decode(ref: BlobRef, parts: list[bytes]) -> Any:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(b"".join(parts), MAX_BLOB_BYTES)
    except zlib.error:
        raise CorruptBlob(f"configuration blob {ref.sha[:12]} is not zlib data") from None
    if inflater.unconsumed_tail or not inflater.eof or hashlib.sha256(text).hexdigest() != ref.sha:
        raise CorruptBlob(f"configuration blob {ref.sha[:12]} does not match its digest")
    return json.loads(text)


def _part_key(sha: str, n: int) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"{BLOB_PREFIX}{sha}"}, "sk": {"S": f"{PART_PREFIX}{n:04d}"}}


class ConfigItems:
    """The configuration's items over a DynamoDB client (boto3's or the lean one: the same calls)."""

    def __init__(self, client: Any, table: str, *, sleep: Callable[[float], None] = time.sleep):
        self._db = client
        self._table = table
        self._sleep = sleep

    # -- reading --------------------------------------------------------------------------------
    def pointer(self) -> Pointer | None:
        item = self._db.get_item(TableName=self._table, Key={"pk": {"S": CONFIG_PK}, "sk": {"S": CONFIG_SK}},
                                 ConsistentRead=True).get("Item")
        if not item:
            return None
        common = {"sha256": item["sha256"]["S"], "source": item["source"]["S"],
                  "applied_at": int(item["applied_at"]["N"])}
        if "document" in item:
            return Pointer(version=int(item.get("version", {}).get("N", 0)), manifest=None,
                           document=json.loads(item["document"]["S"]), **common)
        return Pointer(version=int(item["version"]["N"]),
                       manifest=BlobRef(item["manifest"]["S"], int(item["manifest_parts"]["N"])), **common)

    def manifest(self, pointer: Pointer) -> Manifest:
        assert pointer.manifest is not None
        return Manifest.from_json(self.blobs([pointer.manifest])[pointer.manifest.sha])

    def blobs(self, refs: Iterable[BlobRef]) -> dict[str, Any]:
        """Each blob by its sha256: one consistent Query of its partition (paged), a few at once.

        A Query names its partition, so the functions' policy can bound it to configuration items
        (dynamodb:LeadingKeys); a Batch* read could not be bounded so."""
        refs = list(dict.fromkeys(refs))
        if len(refs) <= 1:
            return {ref.sha: self._blob(ref) for ref in refs}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(READERS, len(refs))) as pool:
            return dict(zip((ref.sha for ref in refs), pool.map(self._blob, refs)))

    def _blob(self, ref: BlobRef) -> Any:
        parts: list[bytes] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table, "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"{BLOB_PREFIX}{ref.sha}"}}, "ConsistentRead": True,
        }
        while True:
            page = self._db.query(**kwargs)
            for item in page.get("Items", []):  # in sort key order: PART#0000, PART#0001, ...
                if item["sk"]["S"] == f"{PART_PREFIX}{len(parts):04d}":
                    parts.append(bytes(item["data"]["B"]))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        if len(parts) != ref.parts:
            raise CorruptBlob(f"configuration blob {ref.sha[:12]} has {len(parts)} of its {ref.parts} parts")
        return decode(ref, parts)

    def document(self) -> tuple[Pointer, dict[str, Any]] | None:
        """The whole applied document (for the CLI), with its pointer; None when nothing is applied."""
        pointer = self.pointer()
        if pointer is None:
            return None
        if pointer.document is not None:
            return pointer, pointer.document
        manifest = self.manifest(pointer)
        return pointer, self.blobs([manifest.document])[manifest.document.sha]

    # -- writing --------------------------------------------------------------------------------
    def put(self, document: dict[str, Any], source: str, applied_at: int) -> str:
        """Apply a (validated) document: the blobs the current manifest lacks, then the pointer,
        conditionally on the version read; ConfigConflict if another apply came between. Returns the
        document's sha256."""
        current = self.pointer()
        previous = self.manifest(current) if current is not None and current.manifest is not None else None
        stored = previous.refs() | {current.manifest} if previous is not None else set()

        shared, spaces = split(document)
        whole = encode(document)
        encoded = [encode(shared), whole, *(encode(space) for _, space in spaces)]
        manifest = Manifest(encoded[0][0], tuple((name, ref) for (name, _), (ref, _) in zip(spaces, encoded[2:])),
                            whole[0])
        manifest_ref, manifest_parts = encode(manifest.to_json())
        self._write_parts([(ref, parts) for ref, parts in [*encoded, (manifest_ref, manifest_parts)]
                           if ref not in stored])

        sha = whole[0].sha
        version = current.version if current is not None else 0
        item = {"pk": {"S": CONFIG_PK}, "sk": {"S": CONFIG_SK}, "version": {"N": str(version + 1)},
                "manifest": {"S": manifest_ref.sha}, "manifest_parts": {"N": str(manifest_ref.parts)},
                "sha256": {"S": sha}, "source": {"S": source}, "applied_at": {"N": str(int(applied_at))},
                "spaces": {"N": str(len(spaces))}}
        if current is None:
            guard: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        elif current.version == 0:
            guard = {"ConditionExpression": "attribute_not_exists(#version) AND sha256 = :sha",
                     "ExpressionAttributeNames": {"#version": "version"},
                     "ExpressionAttributeValues": {":sha": {"S": current.sha256}}}
        else:
            guard = {"ConditionExpression": "#version = :v", "ExpressionAttributeNames": {"#version": "version"},
                     "ExpressionAttributeValues": {":v": {"N": str(current.version)}}}
        try:
            self._db.put_item(TableName=self._table, Item=item, **guard)
        except self._db.exceptions.ConditionalCheckFailedException:
            raise ConfigConflict("another apply changed the configuration meanwhile; this one is not in effect: "
                                 "apply it again") from None

        if previous is not None:
            self._retire(stored - manifest.refs() - {manifest_ref}, int(applied_at) + RETIRE_AFTER)
        return sha

    def _write_parts(self, blobs: list[tuple[BlobRef, list[bytes]]]) -> None:
        requests = [{"PutRequest": {"Item": {**_part_key(ref.sha, n), "data": {"B": part},
                                             "parts": {"N": str(ref.parts)}}}}
                    for ref, parts in blobs for n, part in enumerate(parts)]
        # A batch's size is bounded too (16 MB): parts near PART_BYTES go a few at a time.
        for i in range(0, len(requests), BATCH_WRITE):
            pending = {self._table: requests[i:i + BATCH_WRITE]}
            for attempt in range(UNPROCESSED_ATTEMPTS):
                pending = self._db.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not pending:
                    break
                self._sleep(min(2.0, 0.05 * 2 ** attempt))
            else:
                raise CorruptBlob("the table kept configuration parts unwritten; nothing was switched: apply again")

    def _retire(self, refs: set[BlobRef], ttl: int) -> None:
        """Let the table drop blobs no manifest names now, a day on (readers of the previous pointer
        still find them until then). A blob named again later is written again, without a ttl."""
        from concurrent.futures import ThreadPoolExecutor

        def retire(key: dict[str, Any]) -> None:
            try:
                self._db.update_item(TableName=self._table, Key=key, UpdateExpression="SET #ttl = :ttl",
                                     ConditionExpression="attribute_exists(pk)", ExpressionAttributeNames={"#ttl": "ttl"},
                                     ExpressionAttributeValues={":ttl": {"N": str(ttl)}})
            except self._db.exceptions.ConditionalCheckFailedException:
                pass

        keys = [_part_key(ref.sha, n) for ref in refs for n in range(ref.parts)]
        with ThreadPoolExecutor(max_workers=max(1, min(READERS, len(keys)))) as pool:
            list(pool.map(retire, keys))
