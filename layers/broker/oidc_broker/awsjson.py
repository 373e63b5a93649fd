"""A lean client for the few DynamoDB and KMS calls the hot functions (jwks, token) make.

boto3 stays for everything else (STS, ECR, the CLI, rotation): this exists because building a
boto3 session and client dominates those functions' cold start and most of a warm mint's CPU.
It speaks the AWS JSON protocol (DynamoDB 1.0, KMS 1.1) over pooled keep-alive connections,
signs with botocore's own SigV4Auth, retries as botocore's "standard" mode does, and raises the
same botocore exceptions, so callers written against a boto3 client work unchanged:
`client.get_item(...)` returns boto3's dict, `client.exceptions.ConditionalCheckFailedException`
is what it raises. Only the operations listed here exist; it never logs a body or a credential.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random as _random
import socket
import ssl
import threading
import time
import zlib
from collections import namedtuple
from typing import Any, Callable
from urllib.parse import urlsplit

import botocore.auth
import botocore.awsrequest
from botocore.exceptions import (
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

# Called once per API call (never per retry) with (service, operation), e.g. ("kms", "Sign").
OBSERVERS: list[Callable[[str, str], None]] = []

USER_AGENT = "oidc-broker/awsjson"
CONNECT_TIMEOUT, READ_TIMEOUT = 3.1, 10.0
POOL_SIZE = 10
# A connection idle longer than this may have been dropped silently by a NAT or the service.
IDLE_LIMIT = 50.0

_Service = namedtuple("_Service", "signing_name target_prefix content_type operations")

SERVICES: dict[str, _Service] = {
    "dynamodb": _Service("dynamodb", "DynamoDB_20120810", "application/x-amz-json-1.0", {
        "get_item": "GetItem", "put_item": "PutItem", "delete_item": "DeleteItem",
        "update_item": "UpdateItem", "query": "Query", "transact_write_items": "TransactWriteItems",
        "batch_write_item": "BatchWriteItem", "batch_get_item": "BatchGetItem",
        "transact_get_items": "TransactGetItems",
    }),
    "kms": _Service("kms", "TrentService", "application/x-amz-json-1.1", {
        "sign": "Sign", "verify": "Verify", "verify_mac": "VerifyMac", "generate_mac": "GenerateMac",
        "get_public_key": "GetPublicKey", "encrypt": "Encrypt", "decrypt": "Decrypt",
        "generate_data_key": "GenerateDataKey", "describe_key": "DescribeKey",
    }),
}

# botocore/retries/standard.py, "standard" mode.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
                             "InternalError", "ServiceUnavailable"})
# Errors the service models mark retryable (transient).
MODELED_RETRYABLE = {"dynamodb": frozenset({"ReplicatedWriteConflictException"}), "kms": frozenset()}
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
THROTTLING_STATUS = frozenset({429})
MAX_BACKOFF = 20.0
THROTTLING_BASE, DEFAULT_BASE = 1.0, 0.05
SERVICE_BASE = {"dynamodb": 0.025}
RETRY_AFTER_EXTRA = 5.0
QUOTA_CAPACITY, RETRY_COST, THROTTLING_RETRY_COST, NO_RETRY_INCREMENT = 500, 14, 5, 1

_Keys = namedtuple("_Keys", "access_key secret_key token")


# -- blobs: bytes in, bytes out, base64 on the wire --------------------------------------------
def _blob_out(value: Any) -> str:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"a blob must be bytes, not {type(value).__name__}")
    return base64.b64encode(bytes(value)).decode("ascii")


def _blob_in(value: str) -> bytes:
    return base64.b64decode(value)


def _av(value: Any, blob: Callable[[Any], Any]) -> Any:
    """One DynamoDB attribute value, its B / BS converted wherever they nest (M, L)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for kind, inner in value.items():
        if kind == "B":
            inner = blob(inner)
        elif kind == "BS":
            inner = [blob(b) for b in inner]
        elif kind == "M":
            inner = {k: _av(v, blob) for k, v in inner.items()}
        elif kind == "L":
            inner = [_av(v, blob) for v in inner]
        out[kind] = inner
    return out


def _av_map(value: Any, blob: Callable[[Any], Any]) -> Any:
    return {k: _av(v, blob) for k, v in value.items()} if isinstance(value, dict) else value


# Where DynamoDB's requests and responses hold attribute values, by member name.
_AV_MAPS = frozenset({"Item", "Key", "ExpressionAttributeValues", "ExclusiveStartKey",
                      "LastEvaluatedKey", "Attributes", "ItemCollectionKey"})
_AV_MAP_LISTS = frozenset({"Items", "Keys"})
# Maps keyed by a table or attribute name (never read as member names), and opaque members.
_NAME_KEYED = frozenset({"RequestItems", "UnprocessedItems", "UnprocessedKeys", "Responses",
                         "ItemCollectionMetrics", "Expected", "KeyConditions", "QueryFilter",
                         "ScanFilter", "AttributeUpdates"})
_OPAQUE = frozenset({"ExpressionAttributeNames"})


def _dynamodb(value: Any, blob: Callable[[Any], Any]) -> Any:
    if isinstance(value, list):
        return [_dynamodb(v, blob) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if v is None:  # botocore leaves out members sent as null
            continue
        if k in _OPAQUE:
            pass
        elif k in _AV_MAPS:
            v = _av_map(v, blob)
        elif k in _AV_MAP_LISTS and isinstance(v, list):
            v = [_av_map(m, blob) for m in v]
        elif k == "Value":
            v = _av(v, blob)
        elif k == "AttributeValueList" and isinstance(v, list):
            v = [_av(a, blob) for a in v]
        elif k == "Responses" and isinstance(v, dict):  # BatchGetItem: table -> items
            v = {t: [_av_map(m, blob) for m in items] for t, items in v.items()}
        elif k in _NAME_KEYED and isinstance(v, dict):
            v = {name: _dynamodb(inner, blob) for name, inner in v.items()}
        else:
            v = _dynamodb(v, blob)
        out[k] = v
    return out


# KMS blobs are top-level members only (EncryptionContext's keys are the caller's strings).
_KMS_REQUEST_BLOBS = frozenset({"Message", "Signature", "Mac", "CiphertextBlob", "Plaintext"})
_KMS_RESPONSE_BLOBS = frozenset({"Signature", "Mac", "PublicKey", "CiphertextBlob", "Plaintext",
                                 "CiphertextForRecipient"})
_KMS_TIMESTAMPS = frozenset({"CreationDate", "DeletionDate", "ValidTo"})


def _kms_request(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: (_blob_out(v) if k in _KMS_REQUEST_BLOBS else v) for k, v in params.items()}
    recipient = out.get("Recipient")
    if isinstance(recipient, dict) and "AttestationDocument" in recipient:
        out["Recipient"] = {**recipient, "AttestationDocument": _blob_out(recipient["AttestationDocument"])}
    return out


def _without_nulls(value: Any) -> Any:
    """As botocore parses: members sent as null are left out."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _kms_response(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: (_blob_in(v) if k in _KMS_RESPONSE_BLOBS and isinstance(v, str) else _without_nulls(v))
           for k, v in body.items() if v is not None}
    metadata = out.get("KeyMetadata")
    if isinstance(metadata, dict) and _KMS_TIMESTAMPS & metadata.keys():
        from botocore.utils import parse_timestamp  # already loaded by botocore.auth

        out["KeyMetadata"] = {k: (parse_timestamp(v) if k in _KMS_TIMESTAMPS else v) for k, v in metadata.items()}
    return out


def _encode(service: str, params: dict[str, Any]) -> dict[str, Any]:
    return _dynamodb(params, _blob_out) if service == "dynamodb" else _kms_request(params)


def _decode(service: str, body: dict[str, Any]) -> dict[str, Any]:
    return _dynamodb(body, _blob_in) if service == "dynamodb" else _kms_response(body)


# -- configuration from the environment, as the SDK reads it ---------------------------------
def resolve_region(environ: Any = os.environ) -> str:
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise NoRegionError()
    return region


def resolve_endpoint(service: str, region: str, environ: Any = os.environ) -> str:
    """AWS_ENDPOINT_URL_<SERVICE>, then AWS_ENDPOINT_URL (unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS),
    else the service's regional endpoint (its FIPS one when AWS_USE_FIPS_ENDPOINT is true)."""
    if environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() != "true":
        configured = environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or environ.get("AWS_ENDPOINT_URL")
        if configured:
            return configured
    if environ.get("AWS_USE_DUALSTACK_ENDPOINT", "").strip().lower() == "true":
        raise ValueError(f"AWS_USE_DUALSTACK_ENDPOINT is not supported for {service}: "
                         f"set AWS_ENDPOINT_URL_{service.upper()} to the endpoint to use")
    fips = "-fips" if environ.get("AWS_USE_FIPS_ENDPOINT", "").strip().lower() == "true" else ""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{service}{fips}.{region}.{suffix}"


def _environment_credentials(environ: Any = os.environ) -> _Keys | None:
    access, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not access and not secret:
        return None
    if not access:
        raise PartialCredentialsError(provider="env", cred_var="AWS_ACCESS_KEY_ID")
    if not secret:
        raise PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY")
    return _Keys(access, secret, environ.get("AWS_SESSION_TOKEN") or None)


def _max_attempts(environ: Any = os.environ) -> int:
    value = environ.get("AWS_MAX_ATTEMPTS")
    if not value:
        return 3
    try:
        attempts = int(value)
    except ValueError:
        raise ValueError(f"AWS_MAX_ATTEMPTS must be a whole number, not {value!r}") from None
    if attempts < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS must be at least 1, not {attempts}")
    return attempts


def client(service: str) -> Client:
    """A client for `service` ("dynamodb" or "kms") configured from the environment, read now."""
    region = resolve_region()
    return Client(service, region=region, endpoint_url=resolve_endpoint(service, region),
                  credentials=_environment_credentials(), max_attempts=_max_attempts())


# -- TLS ------------------------------------------------------------------------------------
_tls_lock = threading.Lock()
_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _tls
    with _tls_lock:
        if _tls is None:
            bundle = os.environ.get("AWS_CA_BUNDLE")
            if not bundle:
                try:
                    import certifi

                    bundle = certifi.where()
                except ImportError:
                    bundle = None
            _tls = ssl.create_default_context(cafile=bundle) if bundle else ssl.create_default_context()
        return _tls


# -- errors ---------------------------------------------------------------------------------
class _Exceptions:
    """`client.exceptions.<Code>`: the ClientError subclass the client raises for that code."""

    def __init__(self) -> None:
        self._classes: dict[str, type[ClientError]] = {}
        self._lock = threading.Lock()

    def of(self, code: str) -> type[ClientError]:
        with self._lock:
            cls = self._classes.get(code)
            if cls is None:
                cls = self._classes[code] = type(code, (ClientError,), {"__module__": __name__})
            return cls

    def __getattr__(self, code: str) -> type[ClientError]:
        if code.startswith("_"):
            raise AttributeError(code)
        return self.of(code)


def _error_code(body: dict[str, Any], headers: dict[str, str], status: int) -> str:
    code = body.get("__type") or headers.get("x-amzn-errortype") or str(status)
    code = str(code).split(":", 1)[0]
    return code.rsplit("#", 1)[-1]


class _Attempt(namedtuple("_Attempt", "status headers body raw")):
    """One HTTP exchange's answer: status, lower-cased headers, parsed JSON body, raw bytes."""


class _Retry(Exception):
    def __init__(self, error: BaseException, throttling: bool = False, retry_after: float | None = None):
        self.error, self.throttling, self.retry_after = error, throttling, retry_after


# -- the client -----------------------------------------------------------------------------
class Client:
    """DynamoDB or KMS over the JSON protocol; methods are boto3's snake_case operation names.

    Built explicitly, it reads nothing from the environment: without `endpoint_url` it calls the
    region's public endpoint; without `credentials` it asks botocore's default chain per request.
    """

    def __init__(self, service: str, *, region: str, endpoint_url: str | None = None,
                 credentials: Any = None, max_attempts: int = 3,
                 timeout: float | tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
                 sleep: Callable[[float], None] = time.sleep, random: Callable[[], float] = _random.random):
        if service not in SERVICES:
            raise ValueError(f"no lean client for {service!r}: only {', '.join(SERVICES)}")
        if not region:
            raise NoRegionError()
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.service, self.region = service, region
        self._spec = SERVICES[service]
        self.endpoint_url = endpoint_url or resolve_endpoint(service, region, {})
        parts = urlsplit(self.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the {service} endpoint must be an http(s) URL, not {self.endpoint_url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"the {service} endpoint must carry no credentials, query or fragment")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"
        self._url = f"{parts.scheme}://{parts.netloc}{self._path}"
        self._credentials = credentials
        self._chain: Any = None
        self._chain_lock = threading.Lock()
        self._max_attempts = max_attempts
        self._connect_timeout, self._read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self._sleep, self._random = sleep, random
        self._pool: list[tuple[http.client.HTTPConnection, float]] = []
        self._pool_lock = threading.Lock()
        self._quota = QUOTA_CAPACITY
        self._quota_lock = threading.Lock()
        self.exceptions = _Exceptions()

    def __repr__(self) -> str:
        return f"awsjson.Client({self.service!r}, region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        operation = SERVICES[self.__dict__["service"]].operations.get(name) if "service" in self.__dict__ else None
        if operation is None:
            raise AttributeError(f"the lean {self.__dict__.get('service')} client has no operation {name!r}")

        def call(**params: Any) -> dict[str, Any]:
            return self.call(operation, params)

        call.__name__ = name
        self.__dict__[name] = call
        return call

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for conn, _ in pool:
            conn.close()

    # -- one API call ----------------------------------------------------------------------
    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if operation not in self._spec.operations.values():
            raise AttributeError(f"the lean {self.service} client has no operation {operation!r}")
        for observer in OBSERVERS:
            observer(self.service, operation)
        body = json.dumps(_encode(self.service, params), separators=(",", ":")).encode()
        acquired = 0
        attempt = 1
        while True:
            try:
                answer = self._attempt(operation, body)
                result = self._outcome(operation, answer, attempt)
            except _Retry as retry:
                cost = THROTTLING_RETRY_COST if retry.throttling else RETRY_COST
                if attempt >= self._max_attempts or not self._take_quota(cost):
                    if isinstance(retry.error, ClientError) and attempt >= self._max_attempts:
                        retry.error.response["ResponseMetadata"]["MaxAttemptsReached"] = True
                    raise retry.error from retry.__cause__
                acquired = cost
                delay = self._random() * min(self._base(retry.throttling) * 2 ** (attempt - 1), MAX_BACKOFF)
                if retry.retry_after is not None:
                    delay = max(delay, min(retry.retry_after, delay + RETRY_AFTER_EXTRA))
                self._sleep(delay)
                attempt += 1
                continue
            self._give_quota(acquired or NO_RETRY_INCREMENT)
            return result

    def _base(self, throttling: bool) -> float:
        return THROTTLING_BASE if throttling else SERVICE_BASE.get(self.service, DEFAULT_BASE)

    def _take_quota(self, cost: int) -> bool:
        with self._quota_lock:
            if cost > self._quota:
                return False
            self._quota -= cost
            return True

    def _give_quota(self, amount: int) -> None:
        with self._quota_lock:
            self._quota = min(QUOTA_CAPACITY, self._quota + amount)

    def _outcome(self, operation: str, answer: _Attempt, attempt: int) -> dict[str, Any]:
        metadata = {"RequestId": answer.headers.get("x-amzn-requestid", ""), "HTTPStatusCode": answer.status,
                    "HTTPHeaders": answer.headers, "RetryAttempts": attempt - 1}
        checksum = answer.headers.get("x-amz-crc32")
        if self.service == "dynamodb" and checksum is not None:
            actual = zlib.crc32(answer.raw) & 0xFFFFFFFF
            if not checksum.isdigit() or int(checksum) != actual:
                raise _Retry(ChecksumError(checksum_type="crc32", expected_checksum=checksum,
                                           actual_checksum=actual))
        if 200 <= answer.status < 300:
            result = _decode(self.service, answer.body)
            result["ResponseMetadata"] = metadata
            return result
        code = _error_code(answer.body, answer.headers, answer.status)
        message = answer.body.get("message", answer.body.get("Message", ""))
        response: dict[str, Any] = {}
        # An error's members are its code's (KMS errors carry no blobs; "Message" is text there).
        members = _dynamodb(answer.body, _blob_in) if self.service == "dynamodb" else _without_nulls(answer.body)
        for k, v in members.items():
            if k != "__type":
                response[k] = v
        response["Error"] = {"Code": code, "Message": message}
        response["ResponseMetadata"] = metadata
        error = self.exceptions.of(code)(response, operation)
        throttling = code in THROTTLING_CODES or (answer.status in THROTTLING_STATUS and code not in TRANSIENT_CODES)
        if (throttling or code in TRANSIENT_CODES or answer.status in TRANSIENT_STATUS
                or code in MODELED_RETRYABLE[self.service]):
            raise _Retry(error, throttling, _retry_after(answer.headers))
        raise error

    # -- one HTTP exchange -----------------------------------------------------------------
    def _keys(self) -> Any:
        if self._credentials is not None:
            if hasattr(self._credentials, "get_frozen_credentials"):
                return self._credentials.get_frozen_credentials()
            return self._credentials
        with self._chain_lock:
            if self._chain is None:
                import botocore.session  # only when the environment carries no credentials

                self._chain = botocore.session.get_session().get_credentials() or False
        if not self._chain:
            raise NoCredentialsError()
        return self._chain.get_frozen_credentials()

    def _signed_headers(self, operation: str, body: bytes) -> dict[str, str]:
        keys = self._keys()
        if keys is None or not getattr(keys, "access_key", None) or not getattr(keys, "secret_key", None):
            raise NoCredentialsError()
        request = botocore.awsrequest.AWSRequest(method="POST", url=self._url, data=body, headers={
            "Content-Type": self._spec.content_type,
            "X-Amz-Target": f"{self._spec.target_prefix}.{operation}",
            "User-Agent": USER_AGENT,
        })
        botocore.auth.SigV4Auth(keys, self._spec.signing_name, self.region).add_auth(request)
        return dict(request.headers.items())

    def _attempt(self, operation: str, body: bytes) -> _Attempt:
        headers = self._signed_headers(operation, body)
        conn, reused = self._checkout()
        try:
            try:
                status, raw, answer_headers, keep = self._exchange(conn, headers, body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError):
                if not reused:
                    raise
                # The server closed the idle connection before answering: reconnect, not a retry.
                conn.close()
                conn, reused = self._new_connection(), False
                status, raw, answer_headers, keep = self._exchange(conn, headers, body)
        except socket.timeout as e:
            conn.close()
            raise _Retry(ReadTimeoutError(endpoint_url=self.endpoint_url, error=e)) from e
        except _Retry:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _Retry(ConnectionClosedError(endpoint_url=self.endpoint_url, error=e)) from e
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        return _Attempt(status, answer_headers, parsed, raw)

    def _exchange(self, conn: http.client.HTTPConnection, headers: dict[str, str],
                  body: bytes) -> tuple[int, bytes, dict[str, str], bool]:
        conn.request("POST", self._path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, raw, answer_headers, not response.will_close

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        stale = []
        found = None
        with self._pool_lock:
            while self._pool:
                conn, since = self._pool.pop()
                if now - since <= IDLE_LIMIT:
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        if found is not None:
            return found, True
        return self._new_connection(), False

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            if len(self._pool) < POOL_SIZE:
                self._pool.append((conn, time.monotonic()))
                return
        conn.close()

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=_tls_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except socket.timeout as e:
            conn.close()
            raise _Retry(ConnectTimeoutError(endpoint_url=self.endpoint_url, error=e)) from e
        except OSError as e:
            conn.close()
            raise _Retry(EndpointConnectionError(endpoint_url=self.endpoint_url, error=e)) from e
        conn.sock.settimeout(self._read_timeout)
        # http.client sends headers and body in two writes: without this, Nagle holds the body back.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("x-amz-retry-after")
    if value is None:
        return None
    try:
        seconds = int(value) / 1000.0
    except (ValueError, OverflowError):
        return None
    return seconds if seconds >= 0 else None
