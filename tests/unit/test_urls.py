"""oidc_broker/urls.py: which URLs may name an issuer or a key set."""

from __future__ import annotations

import pytest

from oidc_broker import urls


# -- URLs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "url, why",
    [
        (None, "must be a URL"),
        ("", "must be a URL"),
        (42, "must be a URL"),
        ("http://broker.example.com", "must start with https://"),
        ("ftp://broker.example.com", "must start with https://"),
        ("broker.example.com", "must start with https://"),
        ("http://localhost:3000", "http:// is accepted only for loopback hosts in local mode"),
        ("http://127.0.0.1:3000", "http:// is accepted only for loopback hosts in local mode"),
        ("https://", "must name a host, with no user or password"),
        ("https://user:pw@broker.example.com", "must name a host, with no user or password"),
        ("https://broker.example.com?x=1", "must have no query or fragment"),
        ("https://broker.example.com?", "must have no query or fragment"),
        ("https://broker.example.com#top", "must have no query or fragment"),
        ("https://broker.example.com/", "must not end with '/' (verifiers compare issuers byte for byte)"),
        ("https://broker.example.com/tenant/", "must not end with '/' (verifiers compare issuers byte for byte)"),
    ],
)
def test_url_problem_names_why_a_url_is_refused(url, why):
    assert urls.url_problem(url, allow_loopback_http=False) == why


@pytest.mark.parametrize("url", ["https://broker.example.com", "https://broker.example.com/tenant", "https://broker.example.com:8443"])
def test_url_problem_accepts_https_urls(url):
    assert urls.url_problem(url, allow_loopback_http=False) is None


@pytest.mark.parametrize("url", ["http://localhost:3000", "http://127.0.0.1:3000/_dev/ci", "http://[::1]:3000"])
def test_local_mode_accepts_http_on_loopback_hosts(url):
    assert urls.url_problem(url, allow_loopback_http=True) is None


def test_local_mode_still_refuses_http_on_other_hosts():
    assert urls.url_problem("http://ci.example.com", allow_loopback_http=True) == "must start with https://"


@pytest.mark.parametrize("host, loopback", [("localhost", True), ("127.0.0.1", True), ("127.8.8.8", True), ("::1", True),
                                            ("10.0.0.1", False), ("example.com", False), (None, False), ("", False)])
def test_is_loopback(host, loopback):
    assert urls.is_loopback(host) is loopback
