"""awsjson.py against a tiny in-process HTTP service: wire shape, errors, retries, connections."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import time
import zlib

import botocore.exceptions
import pytest

from oidc_broker import awsjson

KEYS = awsjson._Keys("AKIDEXAMPLE", "secret", "session-token")


class Fake:
    """Answers each request with the next scripted answer and records what it was sent.

    An answer is (status, headers, body) or "drop" (close the connection without answering);
    `close_after` makes the server close a connection after answering while the answer itself
    promises keep-alive, as an idle timeout on the service's side does.
    """

    def __init__(self) -> None:
        self.answers: list = []
        self.requests: list[dict] = []
        self.connections = 0
        self.close_after = False
        self.delay = 0.0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                fake.connections += 1
                super().setup()

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append({"headers": dict(self.headers), "body": json.loads(body), "path": self.path})
                answer = fake.answers.pop(0) if fake.answers else (200, {}, {})
                if fake.delay:
                    time.sleep(fake.delay)
                if answer == "drop":
                    self.close_connection = True
                    return
                status, headers, payload = answer
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                if fake.close_after:
                    self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that gave up, by design
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = Fake()
    yield server
    server.stop()


@pytest.fixture
def sleeps():
    return []


def make(fake: Fake, sleeps: list, service: str = "dynamodb", **kwargs) -> awsjson.Client:
    kwargs.setdefault("credentials", KEYS)
    return awsjson.Client(service, region="eu-west-1", endpoint_url=fake.url, sleep=sleeps.append,
                          random=lambda: 0.5, **kwargs)


def error(code: str, message: str = "no", status: int = 400, **extra):
    return (status, {}, {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message, **extra})


# -- the wire ---------------------------------------------------------------------------------
def test_a_dynamodb_call_is_json_1_0_with_its_target_signed_for_dynamodb(fake, sleeps):
    make(fake, sleeps).get_item(TableName="t", Key={"pk": {"S": "a"}}, ConsistentRead=True)
    sent = fake.requests[0]
    assert sent["headers"]["X-Amz-Target"] == "DynamoDB_20120810.GetItem"
    assert sent["headers"]["Content-Type"] == "application/x-amz-json-1.0"
    assert sent["headers"]["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") and "/eu-west-1/dynamodb/aws4_request" in sent["headers"]["Authorization"]
    assert sent["headers"]["X-Amz-Security-Token"] == "session-token"
    assert "oidc-broker" in sent["headers"]["User-Agent"]
    assert sent["body"] == {"TableName": "t", "Key": {"pk": {"S": "a"}}, "ConsistentRead": True}


def test_a_kms_call_is_json_1_1_with_trent_service_and_blobs_in_base64(fake, sleeps):
    fake.answers = [(200, {}, {"KeyId": "k", "Signature": base64.b64encode(b"\x00sig").decode(),
                               "SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"})]
    answer = make(fake, sleeps, "kms").sign(KeyId="k", Message=b"\x00\xff", MessageType="RAW",
                                            SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
    sent = fake.requests[0]
    assert sent["headers"]["X-Amz-Target"] == "TrentService.Sign"
    assert sent["headers"]["Content-Type"] == "application/x-amz-json-1.1"
    assert "/eu-west-1/kms/aws4_request" in sent["headers"]["Authorization"]
    assert sent["body"]["Message"] == base64.b64encode(b"\x00\xff").decode()
    assert answer["Signature"] == b"\x00sig"
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_kms_encryption_context_keys_named_like_blobs_stay_strings(fake, sleeps):
    make(fake, sleeps, "kms").decrypt(CiphertextBlob=b"\x01", EncryptionContext={"Plaintext": "p"})
    assert fake.requests[0]["body"] == {"CiphertextBlob": "AQ==", "EncryptionContext": {"Plaintext": "p"}}


def test_dynamodb_binary_attributes_are_bytes_wherever_they_nest(fake, sleeps):
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    fake.answers = [(200, {}, {"Responses": [{"Item": {"x": {"M": {"y": {"L": [{"B": b64(b"\x01")}]}}},
                                                       "s": {"BS": [b64(b"\x02")]}}}]})]
    db = make(fake, sleeps)
    got = db.transact_get_items(TransactItems=[{"Get": {"TableName": "t", "Key": {"k": {"B": b"\x03"}}}}])
    assert got["Responses"][0]["Item"] == {"x": {"M": {"y": {"L": [{"B": b"\x01"}]}}}, "s": {"BS": [b"\x02"]}}
    assert fake.requests[0]["body"]["TransactItems"][0]["Get"]["Key"] == {"k": {"B": b64(b"\x03")}}


def test_a_table_or_attribute_named_like_a_member_is_not_read_as_one(fake, sleeps):
    make(fake, sleeps).batch_get_item(RequestItems={"Item": {"Keys": [{"k": {"B": b"\x01"}}]}})
    assert fake.requests[0]["body"] == {"RequestItems": {"Item": {"Keys": [{"k": {"B": "AQ=="}}]}}}
    make(fake, sleeps).put_item(TableName="t", Item={"k": {"S": "v"}}, ExpressionAttributeNames={"Item": "#x"})
    assert fake.requests[1]["body"]["ExpressionAttributeNames"] == {"Item": "#x"}


def test_an_operation_it_does_not_know_is_an_attribute_error(fake, sleeps):
    with pytest.raises(AttributeError):
        make(fake, sleeps).scan(TableName="t")
    with pytest.raises(AttributeError):
        make(fake, sleeps, "kms").get_item
    assert fake.requests == []


# -- errors -----------------------------------------------------------------------------------
def test_an_error_is_a_client_error_of_its_code_catchable_through_the_client(fake, sleeps):
    db = make(fake, sleeps)
    fake.answers = [error("ConditionalCheckFailedException", "The conditional request failed")]
    with pytest.raises(db.exceptions.ConditionalCheckFailedException) as raised:
        db.put_item(TableName="t", Item={"pk": {"S": "a"}}, ConditionExpression="attribute_not_exists(pk)")
    assert isinstance(raised.value, botocore.exceptions.ClientError)
    assert type(raised.value) is db.exceptions.ConditionalCheckFailedException
    assert raised.value.operation_name == "PutItem"
    assert raised.value.response["Error"] == {"Code": "ConditionalCheckFailedException",
                                              "Message": "The conditional request failed"}
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert not isinstance(raised.value, db.exceptions.TransactionCanceledException)
    assert sleeps == []


def test_a_cancelled_transaction_carries_its_reasons_with_items_decoded(fake, sleeps):
    reasons = [{"Code": "ConditionalCheckFailed", "Item": {"b": {"B": "AQ=="}}}, {"Code": "None"}]
    fake.answers = [error("TransactionCanceledException", CancellationReasons=reasons)]
    db = make(fake, sleeps)
    with pytest.raises(db.exceptions.TransactionCanceledException) as raised:
        db.transact_write_items(TransactItems=[])
    assert raised.value.response["CancellationReasons"] == [
        {"Code": "ConditionalCheckFailed", "Item": {"b": {"B": b"\x01"}}}, {"Code": "None"}]


def test_the_error_type_header_names_the_code_when_the_body_does_not(fake, sleeps):
    fake.answers = [(400, {"x-amzn-ErrorType": "AccessDeniedException:http://internal.amazon.com/"}, {"Message": "no"})]
    kms = make(fake, sleeps, "kms")
    with pytest.raises(kms.exceptions.AccessDeniedException) as raised:
        kms.describe_key(KeyId="k")
    assert raised.value.response["Error"] == {"Code": "AccessDeniedException", "Message": "no"}


# -- retries ----------------------------------------------------------------------------------
def test_throttling_is_retried_with_throttling_backoff_and_observed_once(fake, sleeps, monkeypatch):
    seen = []
    monkeypatch.setattr(awsjson, "OBSERVERS", [lambda service, op: seen.append((service, op))])
    fake.answers = [error("ProvisionedThroughputExceededException"), error("ThrottlingException"), (200, {}, {})]
    answer = make(fake, sleeps).put_item(TableName="t", Item={})
    assert sleeps == [0.5 * 1, 0.5 * 2]  # random() * min(1 s * 2**i, 20)
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert seen == [("dynamodb", "PutItem")]
    assert len(fake.requests) == 3


def test_server_errors_are_retried_with_the_services_base_backoff(fake, sleeps):
    fake.answers = [(500, {}, {"__type": "InternalServerError"}), (503, {}, b"<html>"), (200, {}, {})]
    make(fake, sleeps).get_item(TableName="t", Key={})
    assert sleeps == [0.5 * 0.025, 0.5 * 0.05]  # DynamoDB's 25 ms base scale
    fake.answers = [(502, {}, b""), (200, {}, {})]
    sleeps.clear()
    make(fake, sleeps, "kms").describe_key(KeyId="k")
    assert sleeps == [0.5 * 0.05]


def test_after_three_attempts_the_last_error_is_raised(fake, sleeps):
    fake.answers = [error("ThrottlingException")] * 3
    db = make(fake, sleeps)
    with pytest.raises(db.exceptions.ThrottlingException) as raised:
        db.get_item(TableName="t", Key={})
    assert len(fake.requests) == 3 and len(sleeps) == 2
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert raised.value.response["ResponseMetadata"]["MaxAttemptsReached"] is True


def test_a_refusal_is_not_retried(fake, sleeps):
    fake.answers = [error("ValidationException")]
    db = make(fake, sleeps)
    with pytest.raises(db.exceptions.ValidationException):
        db.query(TableName="t")
    assert len(fake.requests) == 1 and sleeps == []


def test_retries_stop_when_the_clients_retry_quota_is_spent(fake, sleeps):
    db = make(fake, sleeps, max_attempts=100)
    fake.answers = [(500, {}, {"__type": "InternalServerError"})] * 40
    with pytest.raises(db.exceptions.InternalServerError):
        db.get_item(TableName="t", Key={})
    assert len(sleeps) == awsjson.QUOTA_CAPACITY // awsjson.RETRY_COST  # 35 retries of 14 from 500


def test_a_retry_after_header_raises_the_delay_by_at_most_five_seconds(fake, sleeps):
    fake.answers = [(429, {"x-amz-retry-after": "3000"}, {"__type": "TooManyRequests"}),
                    (429, {"x-amz-retry-after": "60000"}, {"__type": "TooManyRequests"}), (200, {}, {})]
    make(fake, sleeps, "kms").describe_key(KeyId="k")
    assert sleeps == [3.0, 1.0 + 5.0]


def test_a_corrupted_dynamodb_answer_is_retried_then_refused(fake, sleeps):
    body = json.dumps({"Item": {"a": {"S": "b"}}}).encode()
    good = str(zlib.crc32(body) & 0xFFFFFFFF)
    fake.answers = [(200, {"x-amz-crc32": "1"}, body), (200, {"x-amz-crc32": good}, body)]
    assert make(fake, sleeps).get_item(TableName="t", Key={})["Item"] == {"a": {"S": "b"}}
    fake.answers = [(200, {"x-amz-crc32": "1"}, body)] * 3
    with pytest.raises(botocore.exceptions.ChecksumError):
        make(fake, sleeps).get_item(TableName="t", Key={})


# -- connections ------------------------------------------------------------------------------
def test_calls_share_one_kept_alive_connection(fake, sleeps):
    db = make(fake, sleeps)
    for _ in range(5):
        db.get_item(TableName="t", Key={})
    assert fake.connections == 1


def test_threads_calling_at_once_each_get_an_answer_over_at_most_a_pool_of_connections(fake, sleeps):
    import concurrent.futures

    db = make(fake, sleeps)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: db.get_item(TableName="t", Key={}), range(80)))
    assert all(a["ResponseMetadata"]["HTTPStatusCode"] == 200 for a in answers)
    assert len(fake.requests) == 80 and sleeps == []
    assert fake.connections <= 8  # one per thread at most: a returned connection is reused


def test_a_connection_the_server_closed_is_replaced_without_counting_a_retry(fake, sleeps):
    fake.close_after = True
    db = make(fake, sleeps)
    db.get_item(TableName="t", Key={})
    answer = db.get_item(TableName="t", Key={})
    assert answer["ResponseMetadata"]["RetryAttempts"] == 0 and sleeps == []
    assert fake.connections == 2 and len(fake.requests) == 2


def test_a_connection_dropped_without_an_answer_is_retried_as_a_connection_error(fake, sleeps):
    fake.answers = ["drop", (200, {}, {"KeyId": "k"})]
    assert make(fake, sleeps, "kms").describe_key(KeyId="k")["KeyId"] == "k"
    assert len(sleeps) == 1


def test_an_unreachable_endpoint_raises_botocores_connection_error_after_retries(sleeps):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = awsjson.Client("dynamodb", region="eu-west-1", endpoint_url=f"http://127.0.0.1:{port}",
                        credentials=KEYS, sleep=sleeps.append, random=lambda: 0.5)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        db.get_item(TableName="t", Key={})
    assert sleeps == [0.5 * 0.025, 0.5 * 0.05]


def test_a_slow_answer_raises_botocores_read_timeout(fake, sleeps):
    fake.delay = 0.5
    db = make(fake, sleeps, timeout=(1.0, 0.1), max_attempts=1)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        db.get_item(TableName="t", Key={})


# -- configuration from the environment -------------------------------------------------------
def test_the_service_endpoint_variable_wins_over_the_general_one():
    env = {"AWS_ENDPOINT_URL": "http://general:1", "AWS_ENDPOINT_URL_KMS": "http://kms:2"}
    assert awsjson.resolve_endpoint("kms", "us-east-1", env) == "http://kms:2"
    assert awsjson.resolve_endpoint("dynamodb", "us-east-1", env) == "http://general:1"
    env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true"
    assert awsjson.resolve_endpoint("kms", "us-east-1", env) == "https://kms.us-east-1.amazonaws.com"
    assert awsjson.resolve_endpoint("dynamodb", "cn-north-1", {}) == "https://dynamodb.cn-north-1.amazonaws.com.cn"
    assert awsjson.resolve_endpoint("kms", "us-west-2", {"AWS_USE_FIPS_ENDPOINT": "true"}) == \
        "https://kms-fips.us-west-2.amazonaws.com"


def test_the_region_comes_from_aws_region_then_the_default_region():
    assert awsjson.resolve_region({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-1"}) == "eu-west-1"
    assert awsjson.resolve_region({"AWS_DEFAULT_REGION": "us-east-1"}) == "us-east-1"
    with pytest.raises(botocore.exceptions.NoRegionError):
        awsjson.resolve_region({})


def test_a_client_from_the_environment_signs_with_lambdas_credentials(fake, monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", fake.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLAMBDA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "lambda-token")
    awsjson.client("dynamodb").get_item(TableName="t", Key={})
    headers = fake.requests[0]["headers"]
    assert "Credential=AKIDLAMBDA/" in headers["Authorization"] and "/ap-south-1/dynamodb/" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "lambda-token"


def test_half_a_credential_in_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(botocore.exceptions.PartialCredentialsError):
        awsjson.client("kms")


def test_without_credentials_in_the_environment_botocores_chain_is_asked_per_request(fake, sleeps, monkeypatch):
    import botocore.session

    asked = []

    class Chain:
        def get_frozen_credentials(self):
            asked.append(1)
            return awsjson._Keys("AKIDCHAIN", "s", None)

    class Session:
        def get_credentials(self):
            return Chain()

    monkeypatch.setattr(botocore.session, "get_session", lambda: Session())
    db = make(fake, sleeps, credentials=None)
    db.get_item(TableName="t", Key={})
    db.get_item(TableName="t", Key={})
    assert len(asked) == 2
    assert "Credential=AKIDCHAIN/" in fake.requests[0]["headers"]["Authorization"]
    assert "X-Amz-Security-Token" not in fake.requests[0]["headers"]


def test_no_credentials_anywhere_raises_no_credentials_before_sending(fake, sleeps, monkeypatch):
    import botocore.session

    class Session:
        def get_credentials(self):
            return None

    monkeypatch.setattr(botocore.session, "get_session", lambda: Session())
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        make(fake, sleeps, credentials=None).get_item(TableName="t", Key={})
    assert fake.requests == []


def test_importing_it_loads_neither_boto3_nor_botocores_client_machinery():
    code = ("import sys, oidc_broker.awsjson; "
            "print(sorted(m for m in ('boto3', 'botocore.session', 'botocore.client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
