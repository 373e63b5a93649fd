"""URL policy: which URLs may name an issuer or a key set.

Pure. https only, compared byte for byte by verifiers (so no trailing '/', query or fragment);
http:// only for loopback hosts, and only when local mode allows it.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def url_problem(url: object, *, allow_loopback_http: bool) -> str | None:
    """Why `url` cannot be an issuer or key set URL, or None when it can."""
    if not isinstance(url, str) or not url:
        return "must be a URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "must be a URL"
    if parts.scheme == "http" and allow_loopback_http and is_loopback(parts.hostname):
        pass
    elif parts.scheme == "http" and is_loopback(parts.hostname):
        return "http:// is accepted only for loopback hosts in local mode"
    elif parts.scheme != "https":
        return "must start with https://"
    if not parts.hostname or parts.username or parts.password:
        return "must name a host, with no user or password"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must have no query or fragment"
    if url.endswith("/"):
        return "must not end with '/' (verifiers compare issuers byte for byte)"
    return None
