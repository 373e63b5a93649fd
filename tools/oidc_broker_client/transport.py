"""HTTP for the client, on urllib: no redirects, bounded answers, and no bearer token sent in clear.

A CI token is a bearer credential, so a request carrying one goes only to an `https://` URL (or plain
`http://` on a loopback host, where nothing crosses a network) and never follows a redirect: urllib
would resend the `Authorization` header to wherever the redirect points.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .errors import ClientError

TIMEOUT = 15  # seconds, for connecting and for each read
MAX_ANSWER = 1 << 20  # bytes: every answer the client expects is a few kilobytes


class TransportError(ClientError):
    """The server could not be reached, or its answer could not be read."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body.decode("utf-8"))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_url(url: str, what: str) -> str:
    """`url` without a trailing slash when a bearer token may be sent to it: https, or http on loopback."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ClientError(f"{what} {url!r} is not an http(s) URL", "give the full URL, e.g. https://id.example.com")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ClientError(f"{what} {url!r} is plain http: a CI token sent there could be read on the way",
                          "use the https:// URL (plain http is accepted for loopback hosts only)")
    if parts.username or parts.password:
        raise ClientError(f"{what} must not carry credentials", "remove the user:password@ part")
    return url.strip().rstrip("/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None  # urllib then raises HTTPError with the 3xx status, which the caller reports


_OPENER = urllib.request.build_opener(_NoRedirect)


def request(method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
            timeout: float = TIMEOUT) -> Response:
    """One HTTP exchange. Any status is a Response; only an unreachable or unreadable server raises."""
    host = urllib.parse.urlsplit(url).netloc
    sent = urllib.request.Request(url, data=body, method=method, headers={"User-Agent": "oidc-broker-client",
                                                                          **(headers or {})})
    try:
        try:
            with _OPENER.open(sent, timeout=timeout) as answer:
                status, received, data = answer.status, answer.headers, answer.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as answer:
            status, received, data = answer.code, answer.headers, answer.read(MAX_ANSWER + 1)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise TransportError(f"cannot reach {host}: {reason}",
                             "check the URL and that this machine can reach it (proxy: HTTPS_PROXY)") from None
    if len(data) > MAX_ANSWER:
        raise TransportError(f"{host} answered with more than {MAX_ANSWER} bytes", "check the URL")
    return Response(status, {k.lower(): v for k, v in (received or {}).items()}, data)
