"""Refusals and failures, shaped as RFC 6749 section 5.2 errors.

Each error carries the HTTP status, the OAuth `error` code, a description that names the check
that failed (never a token or a secret), and `reason`: a short stable name that is the metric
dimension and log key operators alarm on.
"""

from __future__ import annotations

from typing import Any


class BrokerError(Exception):
    status = 400
    error = "invalid_request"
    headers: dict[str, str] = {}  # extra response headers (Retry-After, WWW-Authenticate)

    def __init__(self, description: str, reason: str | None = None, *, log: dict[str, object] | None = None):
        super().__init__(description)
        self.description = description
        self.reason = reason or self.error
        # The verified caller (callers.VerifiedCaller), once its token is verified: the core sets it,
        # the shell names it in the log (observe.caller_keys).
        self.caller: Any = None
        # What the operator needs and the caller must not see (a fetch error, configured values):
        # logged with the refusal, never part of the response.
        self.log: dict[str, object] = dict(log or {})

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(BrokerError):
    error = "invalid_request"


class UnsupportedGrantType(BrokerError):
    error = "unsupported_grant_type"


class InvalidGrant(BrokerError):
    """The caller's token was refused: not trusted, not valid, or not admitted by any trust rule."""

    error = "invalid_grant"


class InvalidTarget(BrokerError):
    error = "invalid_target"


class ServerError(BrokerError):
    """The broker cannot serve the request; the caller did nothing wrong."""

    status = 500
    error = "server_error"


class TemporarilyUnavailable(BrokerError):
    status = 503
    error = "temporarily_unavailable"


class Unauthorized(BrokerError):
    """The request carries no usable `Authorization: Bearer <CI token>` header."""

    status = 401
    error = "invalid_request"
    headers = {"WWW-Authenticate": 'Bearer error="invalid_request"'}


class AccessDenied(BrokerError):
    """A cloud refused the broker's token: its trust configuration does not admit the subject."""

    status = 403
    error = "access_denied"


class CloudError(BrokerError):
    """A cloud could not use the broker's token or answered unexpectedly; the description says why."""

    status = 502
    error = "cloud_error"


class Throttled(TemporarilyUnavailable):
    """Try again later: a cloud throttled us, or another request is obtaining the same credentials."""

    def __init__(self, description: str, reason: str | None = None, retry_after: int = 1, *,
                 log: dict[str, object] | None = None):
        super().__init__(description, reason, log=log)
        self.headers = {"Retry-After": str(int(retry_after))}


def quoted(value: object, limit: int = 64) -> str:
    """A caller's value as an error description may echo it: escaped to ASCII, at most `limit` characters.

    ASCII so that no byte of it can break the log line that carries the description.
    """
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."
