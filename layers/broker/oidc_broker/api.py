"""API Gateway HTTP API (payload 2.0) events in, responses and RFC 6749 error shapes out.

Owns request parsing for the public routes and the response shapes. It decides nothing about
trust and never puts a token into an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from .discovery import TOKEN_EXCHANGE
from .errors import BrokerError, InvalidRequest, InvalidTarget, ServerError, Unauthorized, UnsupportedGrantType, quoted
from .tokens import ISSUED_TOKEN_TYPE, b64url

if TYPE_CHECKING:
    from .clouds import Credentials
    from .minting import Issued

MAX_BODY_BYTES = 64 * 1024
SUBJECT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
FORM = "application/x-www-form-urlencoded"
MAX_TARGET_LENGTH = 200
# `<space>/<target>` in printable ASCII without spaces: what is echoed and logged cannot break a line.
_TARGET_REF = re.compile(r"[!-.0-~]+/[!-.0-~]+")


def is_target_ref(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TARGET_LENGTH and _TARGET_REF.fullmatch(value) is not None


@dataclass(frozen=True)
class TokenRequest:
    subject_token: str
    audience: str  # <space>/<target>


def header(event: dict[str, Any], name: str) -> str | None:
    headers = event.get("headers") or {}
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def request_domain(event: dict[str, Any]) -> str | None:
    return (event.get("requestContext") or {}).get("domainName")


def body(event: dict[str, Any]) -> bytes:
    raw = event.get("body") or ""
    if len(raw) > MAX_BODY_BYTES * 4 // 3 + 4:
        raise InvalidRequest(f"request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
    if event.get("isBase64Encoded"):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("request body is not valid base64", "malformed_body") from None
    else:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else b""
    if len(data) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
    return data


def form(event: dict[str, Any]) -> dict[str, str]:
    content_type = (header(event, "content-type") or "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise InvalidRequest(f"Content-Type must be {FORM}", "bad_content_type")
    try:
        text = body(event).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("request body is not a valid form", "malformed_body") from None
    return _no_repeats(pairs)


def token_request(event: dict[str, Any]) -> TokenRequest:
    """The RFC 8693 token exchange request in the event, or the error naming what is wrong."""
    params = form(event)
    grant_type = params.get("grant_type")
    if not grant_type:
        raise InvalidRequest("grant_type is required", "missing_grant_type")
    if grant_type != TOKEN_EXCHANGE:
        raise UnsupportedGrantType(f"grant_type must be {TOKEN_EXCHANGE}", "unsupported_grant_type")
    for name in ("subject_token", "subject_token_type", "audience"):
        if not params.get(name):
            raise InvalidRequest(f"{name} is required", f"missing_{name}")
    if params["subject_token_type"] not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest(f"subject_token_type must be one of {', '.join(SUBJECT_TOKEN_TYPES)}", "bad_subject_token_type")
    if params.get("requested_token_type", ISSUED_TOKEN_TYPE) not in (ISSUED_TOKEN_TYPE, SUBJECT_TOKEN_TYPES[0]):
        raise InvalidRequest(f"requested_token_type must be {ISSUED_TOKEN_TYPE}", "bad_requested_token_type")
    if "actor_token" in params:
        raise InvalidRequest("actor_token is not supported", "actor_token")
    audience = params["audience"]
    if not is_target_ref(audience):
        raise InvalidTarget(f"audience must be <space>/<target> (printable ASCII, at most {MAX_TARGET_LENGTH} characters)",
                            "malformed_audience")
    return TokenRequest(subject_token=params["subject_token"], audience=audience)


def json_response(status: int, payload: Any, *, cache_control: str = "no-store", headers: dict[str, str] | None = None) -> dict[str, Any]:
    return _json_response(status, _json_body(payload), cache_control=cache_control, headers=headers)


def _json_body(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"))


def _json_response(status: int, body: str, *, cache_control: str, headers: dict[str, str] | None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {
            "Content-Type": "application/json",
            "Cache-Control": cache_control,
            "X-Content-Type-Options": "nosniff",
            **(headers or {}),
        },
        "body": body,
        "isBase64Encoded": False,
    }


def cacheable_json_response(event: dict[str, Any], payload: Any, *, max_age: int) -> dict[str, Any]:
    """A public document with `Cache-Control: public, max-age` and a strong ETag (a hash of the body);
    304 with no body, and the same two headers, when the request's If-None-Match names that ETag."""
    return cacheable_body_response(event, _json_body(payload), max_age=max_age)


def cacheable_body_response(event: dict[str, Any], body: str, *, max_age: int) -> dict[str, Any]:
    """cacheable_json_response for a JSON body already serialised (the stored JWKS), served as it is."""
    etag = '"' + b64url(hashlib.sha256(body.encode()).digest()[:18]) + '"'
    cache_control = f"public, max-age={max_age}"
    if _none_match(header(event, "if-none-match"), etag):
        return {"statusCode": 304, "headers": {"Cache-Control": cache_control, "ETag": etag}, "body": "",
                "isBase64Encoded": False}
    return _json_response(200, body, cache_control=cache_control, headers={"ETag": etag})


def _none_match(value: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*` or a list of entity tags, compared weakly (a W/ prefix is ignored)."""
    if not value or len(value) > 4096:
        return False
    tags = [t.strip() for t in value.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def error_response(error: BrokerError) -> dict[str, Any]:
    return json_response(error.status, error.body(), headers={"Pragma": "no-cache", **error.headers})


def unexpected_error() -> dict[str, Any]:
    return error_response(ServerError("the broker could not complete the request; it has been logged", "unexpected"))


def token_response(issued: "Issued") -> dict[str, Any]:
    return json_response(
        200,
        {
            "access_token": issued.token,
            "issued_token_type": ISSUED_TOKEN_TYPE,
            "token_type": "N_A",
            "expires_in": issued.expires_in,
        },
        headers={"Pragma": "no-cache"},
    )


# -- POST /exchange/<cloud> ------------------------------------------------------------------------

JSON = "application/json"
_BEARER = "bearer "


@dataclass(frozen=True)
class ExchangeRequest:
    subject_token: str  # the caller's CI token, from `Authorization: Bearer`
    target: str  # <space>/<target>


def _bearer(event: dict[str, Any]) -> str:
    value = header(event, "authorization")
    if not value:
        raise Unauthorized("Authorization: Bearer <your CI OIDC token> is required", "missing_bearer")
    if not value[: len(_BEARER)].lower() == _BEARER or not value[len(_BEARER):] or " " in value[len(_BEARER):]:
        raise Unauthorized("Authorization must be 'Bearer <your CI OIDC token>'", "malformed_bearer")
    return value[len(_BEARER):]


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Form parameters or JSON members as a dict; a name given twice is refused, never resolved."""
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise InvalidRequest(f"parameter {quoted(name)} is repeated", "repeated_parameter")
        document[name] = value
    return document


def exchange_request(event: dict[str, Any]) -> ExchangeRequest:
    """A cloud exchange request: the bearer CI token and `{"target": "<space>/<target>"}`."""
    token = _bearer(event)
    content_type = (header(event, "content-type") or "").split(";")[0].strip().lower()
    if content_type != JSON:
        raise InvalidRequest(f"Content-Type must be {JSON}", "bad_content_type")
    try:
        document = json.loads(body(event).decode("utf-8"), object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the interpreter's stack
        raise InvalidRequest('request body must be a JSON object: {"target": "<space>/<target>"}', "malformed_body") from None
    if not isinstance(document, dict):
        raise InvalidRequest('request body must be a JSON object: {"target": "<space>/<target>"}', "malformed_body")
    unknown = sorted(set(document) - {"target"})
    if unknown:
        raise InvalidRequest(f"unknown field {quoted(unknown[0])}; the body is {{\"target\": \"<space>/<target>\"}}", "unknown_field")
    target = document.get("target")
    if target is None:
        raise InvalidRequest("target is required", "missing_target")
    if not is_target_ref(target):
        raise InvalidTarget(f"target must be <space>/<target> (printable ASCII, at most {MAX_TARGET_LENGTH} characters)",
                            "malformed_target")
    return ExchangeRequest(subject_token=token, target=target)


def credentials_response(credentials: "Credentials") -> dict[str, Any]:
    from .clouds import rfc3339

    return json_response(200, {**credentials.fields, "expires_at": rfc3339(credentials.expires_at)},
                         headers={"Pragma": "no-cache"})
