"""The applied configuration in the table (configstore.py), against moto's server over HTTP: split per
space, compressed into parts, switched last; what a function reads of it (config.StoredConfig)."""

from __future__ import annotations

import copy
import hashlib
from collections import Counter

import boto3
import pytest

from oidc_broker import config as config_module
from oidc_broker import configstore
from oidc_broker.configstore import ConfigConflict, CorruptBlob
from oidc_broker.errors import ServerError
from oidc_broker.store import Store

NOW = 1_700_000_000


_tables = iter(range(10_000))


@pytest.fixture
def db(moto_endpoint):
    """A fresh table per test (moto keeps one state per process)."""
    client = Counting(boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1",
                                   aws_access_key_id="t", aws_secret_access_key="t"))
    client.table = f"config-store-{next(_tables)}"
    client.create_table(
        TableName=client.table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}])
    client.calls.clear()
    return client


class Counting:
    """A DynamoDB client that counts its calls and the items each writes or reads, and can run
    something just before one of its calls (another apply, a reader) to interleave them."""

    def __init__(self, client):
        self._client = client
        self.exceptions = client.exceptions
        self.calls: Counter[str] = Counter()
        self.parts_written: list[str] = []
        self.before: dict[str, object] = {}

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def call(**kwargs):
            self.calls[name] += 1
            if name == "batch_write_item":
                for requests in kwargs["RequestItems"].values():
                    self.parts_written += [r["PutRequest"]["Item"]["pk"]["S"] for r in requests]
            hook = self.before.pop(name, None)
            if hook is not None:
                hook()
            return method(**kwargs)
        return call


def document(spaces: int = 3, targets: int = 2, *, role: str = "deploy") -> dict:
    """A valid document: `spaces` spaces of `targets` AWS account targets, each with one rule."""
    return {
        "issuer": "https://broker.example.com",
        "trusted_issuers": [{"name": "ci", "issuer": "https://ci.example.com"}],
        "spaces": [{
            "name": f"space-{s}",
            "targets": [{"name": f"t-{t}", "kind": "account", "provider": "aws",
                         "aws": {"role_arn": f"arn:aws:iam::123456789012:role/{role}-{s}-{t}"}}
                        for t in range(targets)],
            "trust": [{"name": f"r-{t}", "issuer": "ci", "claims": {"repository": f"acme/app-{s}-{t}"},
                       "targets": [f"t-{t}"]} for t in range(targets)],
        } for s in range(spaces)],
    }


def apply(db, doc, source="broker.yaml", at=NOW):
    config_module.parse(doc, source)  # what apply writes is always a valid document
    return Store(db, db.table).put_config(doc, source, at)


def pointer_item(db):
    return db._client.get_item(TableName=db.table, Key={"pk": {"S": "CONFIG"}, "sk": {"S": "CURRENT"}})["Item"]


def test_an_applied_document_reads_back_whole_with_its_digest(db):
    doc = document()
    sha = apply(db, doc)
    stored = Store(db, db.table).get_config()
    assert stored["document"] == doc
    assert (stored["sha256"], stored["source"], stored["applied_at"], stored["version"]) == (
        sha, "broker.yaml", NOW, 1)
    assert sha == configstore.digest(doc)


def test_a_document_far_over_the_item_limit_is_stored_in_parts(db):
    # 10,000 targets and rules in one space, with values that compress as real ones do (little):
    # megabytes of JSON, several parts of one blob.
    doc = document(spaces=1, targets=10_000)
    for rule in doc["spaces"][0]["trust"]:
        rule["claims"]["repository_id"] = hashlib.sha256(rule["name"].encode()).hexdigest()
    assert len(configstore.canonical(doc)) > 2_000_000
    apply(db, doc)
    assert max(Counter(db.parts_written).values()) >= 2
    assert Store(db, db.table).get_config()["document"] == doc


def test_applying_again_writes_only_the_spaces_that_changed(db):
    doc = document(spaces=50)
    apply(db, doc)
    assert len(db.parts_written) == 53  # the shared part, 50 spaces, the whole document, the manifest
    changed = copy.deepcopy(doc)
    changed["spaces"][7]["targets"][0]["aws"]["role_arn"] = "arn:aws:iam::123456789012:role/other"
    db.parts_written.clear()
    apply(db, changed)
    assert len(db.parts_written) == 3  # that space, the whole document and the manifest
    db.parts_written.clear()
    apply(db, changed)
    assert db.parts_written == []  # the same document again writes no part, only the pointer
    assert Store(db, db.table).get_config()["document"] == changed


def test_a_reader_during_an_apply_sees_the_whole_previous_configuration(db):
    before, after = document(), document(role="other")
    apply(db, before)
    functions = config_module.StoredConfig(Store(db, db.table))
    seen = []
    db.before["batch_write_item"] = lambda: seen.append(functions())
    apply(db, after)
    assert seen[0].spaces["space-1"].targets["t-0"].setting("role_arn").endswith("/deploy-1-0")
    assert functions().spaces["space-1"].targets["t-0"].setting("role_arn").endswith("/other-1-0")


def test_of_two_racing_applies_the_later_switch_is_refused_and_changes_nothing(db):
    apply(db, document())
    first, second = document(role="first"), document(role="second")
    db.before["put_item"] = lambda: Store(db._client, db.table).put_config(first, "first.yaml", NOW + 1)
    with pytest.raises(ConfigConflict, match="apply it again"):
        apply(db, second, "second.yaml", NOW + 2)
    assert Store(db, db.table).get_config()["document"] == first


def test_blobs_no_manifest_names_expire_a_day_on_and_are_written_again_when_named_again(db):
    doc = document(spaces=2)
    apply(db, doc)
    removed = copy.deepcopy(doc)
    gone = removed["spaces"].pop(1)
    apply(db, removed, at=NOW + 10)
    sha = configstore.encode(gone)[0].sha
    part = db._client.get_item(TableName=db.table, Key={"pk": {"S": f"CONFIGBLOB#{sha}"}, "sk": {"S": "PART#0000"}})
    assert int(part["Item"]["ttl"]["N"]) == NOW + 10 + configstore.RETIRE_AFTER
    apply(db, doc, at=NOW + 20)
    part = db._client.get_item(TableName=db.table, Key={"pk": {"S": f"CONFIGBLOB#{sha}"}, "sk": {"S": "PART#0000"}})
    assert "ttl" not in part["Item"]


def test_a_tampered_part_is_never_read_as_configuration(db):
    doc = document()
    apply(db, doc)
    sha = configstore.encode(doc["spaces"][1])[0].sha
    forged = copy.deepcopy(doc["spaces"][1])
    forged["trust"][0]["claims"] = {"repository": "attacker/app"}
    _, parts = configstore.encode(forged)
    db._client.put_item(TableName=db.table, Item={"pk": {"S": f"CONFIGBLOB#{sha}"}, "sk": {"S": "PART#0000"},
                                                  "data": {"B": parts[0]}, "parts": {"N": "1"}})
    functions = config_module.StoredConfig(Store(db, db.table))
    config = functions()
    assert config.spaces["space-0"].targets["t-0"]  # the untouched spaces still serve
    with pytest.raises(ServerError) as refused:
        config.spaces["space-1"]
    assert refused.value.reason == "invalid_config"


def test_a_pointer_from_before_holds_its_document_and_the_next_apply_replaces_it(db):
    doc = document()
    text = configstore.canonical(doc).decode()
    db._client.put_item(TableName=db.table, Item={
        "pk": {"S": "CONFIG"}, "sk": {"S": "CURRENT"}, "document": {"S": text}, "source": {"S": "old.yaml"},
        "sha256": {"S": configstore.digest(doc)}, "applied_at": {"N": str(NOW)}})
    assert Store(db, db.table).get_config()["document"] == doc
    assert config_module.StoredConfig(Store(db, db.table))().spaces["space-2"].name == "space-2"
    newer = document(role="newer")
    apply(db, newer)
    assert "document" not in pointer_item(db)
    assert Store(db, db.table).get_config()["document"] == newer


def test_a_function_reads_the_pointer_alone_while_nothing_changed(db):
    apply(db, document(spaces=20))
    functions = config_module.StoredConfig(Store(db, db.table))
    functions().spaces["space-3"]
    db.calls.clear()
    for _ in range(5):
        functions().spaces["space-3"]
    assert db.calls == Counter(get_item=5)


def test_a_function_reads_only_the_space_a_request_names(db):
    apply(db, document(spaces=20))
    functions = config_module.StoredConfig(Store(db, db.table))
    db.calls.clear()
    config = functions()
    assert db.calls == Counter(get_item=1, query=2)  # the pointer, the manifest, the shared part
    config.target("space-4/t-1")
    assert db.calls == Counter(get_item=1, query=3)
    assert len(config.spaces) == 20


def test_after_an_apply_a_function_rereads_only_what_changed(db, monkeypatch):
    doc = document(spaces=20)
    apply(db, doc)
    functions = config_module.StoredConfig(Store(db, db.table))
    for name in ("space-1", "space-2"):
        functions().spaces[name]
    parsed = []
    real = config_module.parse_space
    monkeypatch.setattr(config_module, "parse_space", lambda *a, **k: parsed.append(a[1]) or real(*a, **k))
    changed = copy.deepcopy(doc)
    changed["spaces"][2]["trust"][0]["claims"] = {"repository": "acme/elsewhere"}
    apply(db, changed)
    config = functions()
    assert config.spaces["space-1"] is not None and parsed == []  # unchanged: kept as parsed
    rule = config.spaces["space-2"].trust[0]
    assert parsed == [2] and rule.claims["repository"].alternatives == ("acme/elsewhere",)


def test_a_tampered_document_is_never_read_by_the_cli(db):
    doc = document()
    apply(db, doc)
    sha = configstore.digest(doc)
    forged = copy.deepcopy(doc)
    forged["trusted_issuers"][0]["issuer"] = "https://attacker.example.com"
    _, parts = configstore.encode(forged)
    db._client.put_item(TableName=db.table, Item={"pk": {"S": f"CONFIGBLOB#{sha}"}, "sk": {"S": "PART#0000"},
                                                  "data": {"B": parts[0]}, "parts": {"N": "1"}})
    with pytest.raises(CorruptBlob, match="does not match its digest"):
        Store(db, db.table).get_config()


def test_a_missing_part_is_told_apart_from_a_changed_one(db):
    apply(db, document())
    sha = configstore.digest(document())
    db._client.delete_item(TableName=db.table, Key={"pk": {"S": f"CONFIGBLOB#{sha}"}, "sk": {"S": "PART#0000"}})
    with pytest.raises(CorruptBlob, match="has 0 of its 1 parts"):
        Store(db, db.table).get_config()
