"""The lean client against moto's server over HTTP: every operation answers as boto3 does."""

from __future__ import annotations

import boto3
import botocore.exceptions
import pytest

from oidc_broker import awsjson
from types import SimpleNamespace

from oidc_broker.keys import RenderedJwks
from oidc_broker.store import AlreadyUsed, Grant, Store

# moto keeps one state per process, shared by every server it runs: names of this module's own.
TABLE = "awsjson-lean"
REGION = "us-east-1"
KEYS = awsjson._Keys("testing", "testing", None)


@pytest.fixture(scope="module")
def endpoint(moto_endpoint):
    """The module's moto server, with its table."""
    url = moto_endpoint
    boto("dynamodb", url).create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
    )
    return url


def boto(service: str, url: str):
    return boto3.client(service, endpoint_url=url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def lean(service: str, url: str) -> awsjson.Client:
    return awsjson.Client(service, region=REGION, endpoint_url=url, credentials=KEYS, sleep=lambda s: None)


def plain(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


def item(pk: str, sk: str = "A") -> dict:
    return {"pk": {"S": pk}, "sk": {"S": sk}, "blob": {"B": b"\x00\xffbytes"}, "set": {"BS": [b"a", b"\x01"]},
            "nested": {"M": {"inner": {"B": b"\x02"}, "list": {"L": [{"B": b"\x03"}, {"N": "7"}]}}}}


def key(pk: str, sk: str = "A") -> dict:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def test_dynamodb_item_operations_answer_as_boto3_with_blobs_as_bytes(endpoint):
    db, ref = lean("dynamodb", endpoint), boto("dynamodb", endpoint)
    db.put_item(TableName=TABLE, Item=item("one"))
    got = db.get_item(TableName=TABLE, Key=key("one"), ConsistentRead=True)
    assert plain(got) == plain(ref.get_item(TableName=TABLE, Key=key("one"), ConsistentRead=True))
    assert got["Item"]["blob"]["B"] == b"\x00\xffbytes"
    assert got["Item"]["nested"]["M"]["list"]["L"][0]["B"] == b"\x03"
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200

    updated = db.update_item(TableName=TABLE, Key=key("one"), UpdateExpression="SET b2 = :b",
                             ExpressionAttributeValues={":b": {"B": b"\x09"}}, ReturnValues="ALL_NEW")
    assert updated["Attributes"]["b2"]["B"] == b"\x09"
    assert plain(updated)["Attributes"] == plain(ref.get_item(TableName=TABLE, Key=key("one")))["Item"]

    deleted = db.delete_item(TableName=TABLE, Key=key("one"), ReturnValues="ALL_OLD")
    assert deleted["Attributes"]["blob"]["B"] == b"\x00\xffbytes"
    assert "Item" not in db.get_item(TableName=TABLE, Key=key("one"))


def test_query_and_batch_operations_answer_as_boto3(endpoint):
    db, ref = lean("dynamodb", endpoint), boto("dynamodb", endpoint)
    answer = db.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": item("q", s)}} for s in "ABC"]})
    assert plain(answer) == plain(ref.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": item("q", "D")}}]}))
    kwargs = dict(TableName=TABLE, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "q"}},
                  Limit=2, ConsistentRead=True)
    page = db.query(**kwargs)
    assert plain(page) == plain(ref.query(**kwargs))
    assert page["LastEvaluatedKey"] == key("q", "B")
    rest = db.query(**kwargs, ExclusiveStartKey=page["LastEvaluatedKey"])
    assert [i["sk"]["S"] for i in rest["Items"]] == ["C", "D"]
    assert rest["Items"][0]["set"]["BS"] == [b"a", b"\x01"] or set(rest["Items"][0]["set"]["BS"]) == {b"a", b"\x01"}

    request = {TABLE: {"Keys": [key("q", "A"), key("q", "C")], "ConsistentRead": True}}
    got = db.batch_get_item(RequestItems=request)
    assert sorted(i["sk"]["S"] for i in got["Responses"][TABLE]) == ["A", "C"]
    assert got["Responses"][TABLE][0]["blob"]["B"] == b"\x00\xffbytes"
    assert plain(got) == plain(ref.batch_get_item(RequestItems=request))

    items = [{"Get": {"TableName": TABLE, "Key": key("q", s)}} for s in "AB"]
    got = db.transact_get_items(TransactItems=items)
    assert plain(got) == plain(ref.transact_get_items(TransactItems=items))
    assert got["Responses"][1]["Item"]["sk"]["S"] == "B"


def test_a_failed_condition_raises_the_catchable_conditional_check_failure(endpoint):
    db = lean("dynamodb", endpoint)
    db.put_item(TableName=TABLE, Item=item("cond"))
    with pytest.raises(db.exceptions.ConditionalCheckFailedException) as raised:
        db.put_item(TableName=TABLE, Item=item("cond"), ConditionExpression="attribute_not_exists(pk)")
    assert isinstance(raised.value, botocore.exceptions.ClientError)
    assert raised.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert raised.value.operation_name == "PutItem"
    with pytest.raises(boto("dynamodb", endpoint).exceptions.ConditionalCheckFailedException) as ref:
        boto("dynamodb", endpoint).put_item(TableName=TABLE, Item=item("cond"), ConditionExpression="attribute_not_exists(pk)")
    assert plain(raised.value.response) == plain(ref.value.response)
    assert str(raised.value) == str(ref.value)


def test_a_cancelled_transaction_carries_its_cancellation_reasons(endpoint):
    db = lean("dynamodb", endpoint)
    db.put_item(TableName=TABLE, Item=item("tx"))
    actions = [{"Put": {"TableName": TABLE, "Item": item("tx"), "ConditionExpression": "attribute_not_exists(pk)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
               {"Put": {"TableName": TABLE, "Item": item("tx2")}}]
    with pytest.raises(db.exceptions.TransactionCanceledException) as raised:
        db.transact_write_items(TransactItems=actions)
    reasons = raised.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["ConditionalCheckFailed", "None"]
    with pytest.raises(botocore.exceptions.ClientError) as ref:
        boto("dynamodb", endpoint).transact_write_items(TransactItems=actions)
    assert plain(raised.value.response) == plain(ref.value.response)
    assert reasons[0]["Item"]["blob"]["B"] == b"\x00\xffbytes"
    assert "Item" not in db.get_item(TableName=TABLE, Key=key("tx2"))
    db.transact_write_items(TransactItems=[actions[1]])
    assert db.get_item(TableName=TABLE, Key=key("tx2"))["Item"]["blob"]["B"] == b"\x00\xffbytes"


def test_kms_operations_answer_as_boto3_with_blobs_as_bytes(endpoint):
    kms, ref = lean("kms", endpoint), boto("kms", endpoint)
    signing = ref.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    mac_key = ref.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    sym = ref.create_key()["KeyMetadata"]["KeyId"]

    assert plain(kms.describe_key(KeyId=signing)) == plain(ref.describe_key(KeyId=signing))
    assert plain(kms.get_public_key(KeyId=signing)) == plain(ref.get_public_key(KeyId=signing))
    assert isinstance(kms.get_public_key(KeyId=signing)["PublicKey"], bytes)

    signed = kms.sign(KeyId=signing, Message=b"\x00msg", MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")
    assert isinstance(signed["Signature"], bytes)
    assert ref.verify(KeyId=signing, Message=b"\x00msg", Signature=signed["Signature"],
                      SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
    assert kms.verify(KeyId=signing, Message=b"\x00msg", Signature=signed["Signature"],
                      SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]

    mac = kms.generate_mac(KeyId=mac_key, Message=b"sealed", MacAlgorithm="HMAC_SHA_256")
    assert plain(mac) == plain(ref.generate_mac(KeyId=mac_key, Message=b"sealed", MacAlgorithm="HMAC_SHA_256"))
    assert kms.verify_mac(KeyId=mac_key, Message=b"sealed", Mac=mac["Mac"], MacAlgorithm="HMAC_SHA_256")["MacValid"]

    context = {"Plaintext": "a context key named like a blob stays a string"}
    sealed = kms.encrypt(KeyId=sym, Plaintext=b"\x00secret", EncryptionContext=context)
    assert ref.decrypt(CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext=context)["Plaintext"] == b"\x00secret"
    opened = kms.decrypt(CiphertextBlob=sealed["CiphertextBlob"], KeyId=sym, EncryptionContext=context)
    assert opened["Plaintext"] == b"\x00secret"
    data_key = kms.generate_data_key(KeyId=sym, KeySpec="AES_256", EncryptionContext=context)
    assert len(data_key["Plaintext"]) == 32
    assert ref.decrypt(CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=context)["Plaintext"] == data_key["Plaintext"]


def test_a_kms_refusal_raises_its_code_as_boto3_does(endpoint):
    kms = lean("kms", endpoint)
    with pytest.raises(kms.exceptions.NotFoundException) as raised:
        kms.describe_key(KeyId="alias/none-such")
    with pytest.raises(botocore.exceptions.ClientError) as ref:
        boto("kms", endpoint).describe_key(KeyId="alias/none-such")
    assert plain(raised.value.response) == plain(ref.value.response)


def test_the_store_works_over_the_lean_client(endpoint):
    store = Store(lean("dynamodb", endpoint), TABLE)
    store.put_deployment("https://broker.example.com", 1_800_000_000)
    assert store.get_deployment() == {"issuer": "https://broker.example.com", "recorded_at": 1_800_000_000}
    grant = Grant(caller_issuer="https://ci.example.com", caller_subject="repo:acme/app", caller_jti="jti-lean",
                  trust_rule="main", target="default/prod-ecr", subject="space:default:feed:prod-ecr",
                  audience="sts.amazonaws.com", token_jti="t1", issued_at=1_800_000_000,
                  token_expires_at=1_800_000_600, keep_until=1_900_000_000)
    store.record_grant(grant)
    with pytest.raises(AlreadyUsed):
        store.record_grant(grant)
    store.withdraw_grant(grant)
    store.record_grant(grant)

    assert store.change_key_ring(0, None, jwks=RenderedJwks(b'{"keys":[]}', 1, "sealed"))
    assert not store.change_key_ring(0, None, jwks=RenderedJwks(b'{"keys":[]}', 1, "sealed"))
    version, jwks = store.ring_jwks()
    assert version == 1 and bytes(jwks["body"]) == b'{"keys":[]}'

    binding = SimpleNamespace(target=SimpleNamespace(ref="default/lean"), subject="space:default:feed:lean")
    store.put_cached_credentials(binding, {"source": "fill-1", "sealed": b"\x00\x01", "expires_at": 1_800_000_900,
                                           "fingerprint": "f1", "issued_at": 1_800_000_000})
    assert store.cached_credentials(binding)["sealed"] == b"\x00\x01"
    store.mark_cached_credentials_used(binding, {"source": "another-fill"}, 1_800_000_100)
    assert "last_used_at" not in store.cache_entries("default/lean")[0]
    assert store.cache_entries("default/lean")[0]["subject"] == "space:default:feed:lean"
