"""GET /.well-known/jwks.json: Cache-Control from the lifecycle, a strong ETag, 304 for If-None-Match
(api.cacheable_json_response and functions/jwks/app.py over a sealed key ring)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from builders import Clock
from keyring_fakes import SEAL_KEY, FakeKms, MemoryRing

from oidc_broker import api, keys
from oidc_broker.keys import ACTIVE, PENDING, KeyEntry

REPO = Path(__file__).resolve().parents[2]
DOC = {"keys": [{"kty": "RSA", "kid": "a", "use": "sig", "alg": "RS256", "n": "n", "e": "AQAB"}]}


def event(**headers: str) -> dict:
    return {"headers": headers, "requestContext": {"domainName": "id.example.com"}}


def test_the_response_carries_the_max_age_and_a_strong_etag_of_its_body():
    response = api.cacheable_json_response(event(), DOC, max_age=300)
    assert response["statusCode"] == 200
    assert response["headers"]["Cache-Control"] == "public, max-age=300"
    etag = response["headers"]["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert json.loads(response["body"]) == DOC


def test_the_etag_changes_with_the_body_and_only_with_it():
    one = api.cacheable_json_response(event(), DOC, max_age=300)["headers"]["ETag"]
    assert api.cacheable_json_response(event(), DOC, max_age=60)["headers"]["ETag"] == one
    other = {"keys": [*DOC["keys"], {**DOC["keys"][0], "kid": "b"}]}
    assert api.cacheable_json_response(event(), other, max_age=300)["headers"]["ETag"] != one


@pytest.mark.parametrize("value", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
def test_if_none_match_naming_the_etag_answers_304_with_no_body_and_the_same_headers(value):
    etag = api.cacheable_json_response(event(), DOC, max_age=300)["headers"]["ETag"]
    response = api.cacheable_json_response(event(**{"If-None-Match": value.format(etag=etag)}), DOC, max_age=300)
    assert response["statusCode"] == 304
    assert response["body"] == ""
    assert response["headers"] == {"Cache-Control": "public, max-age=300", "ETag": etag}


@pytest.mark.parametrize("value", ['"stale"', "", "W/", "x" * 5000])
def test_if_none_match_naming_another_etag_answers_the_document(value):
    response = api.cacheable_json_response(event(**{"if-none-match": value}), DOC, max_age=300)
    assert response["statusCode"] == 200 and json.loads(response["body"]) == DOC


# -- the function ----------------------------------------------------------------------------------

@pytest.fixture
def jwks_function(monkeypatch):
    """functions/jwks/app.py as Lambda loads it, with JWKS_MAX_AGE=120, reading a sealed in-memory ring."""
    monkeypatch.setenv("TABLE_NAME", "unused")
    monkeypatch.setenv("JWKS_MAX_AGE", "120")
    monkeypatch.setenv("KEY_RING_SEAL_KEY", SEAL_KEY)
    spec = importlib.util.spec_from_file_location("jwks_app_under_test", REPO / "functions" / "jwks" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    kms = FakeKms()
    seal = keys.Seal(kms, SEAL_KEY)

    def sealed(kid: str, state: str) -> KeyEntry:
        e = KeyEntry(kid, f"arn:aws:kms:us-east-1:123456789012:key/{kid}", state,
                     {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": f"n-{kid}", "e": "AQAB"}, 1)
        return KeyEntry(e.kid, e.key_arn, e.state, e.jwk, e.created_at, seal=seal.make(e))

    module.ring = MemoryRing(sealed("a", ACTIVE), sealed("p", PENDING))
    module.clock = Clock()
    module.key_ring = keys.KeyRing(module.ring, module.clock, ttl=60, seal=keys.Seal(kms, SEAL_KEY))
    return module


class Context:
    function_name, memory_limit_in_mb, invoked_function_arn, aws_request_id = "jwks", 512, "arn:f", "r-1"


def test_the_function_serves_the_max_age_the_lifecycle_sets(jwks_function):
    response = jwks_function.handler(event(), Context())
    assert response["statusCode"] == 200
    assert response["headers"]["Cache-Control"] == "public, max-age=120"
    assert [k["kid"] for k in json.loads(response["body"])["keys"]] == ["a", "p"]


def test_the_function_answers_a_conditional_request_with_304_until_the_ring_changes(jwks_function):
    etag = jwks_function.handler(event(), Context())["headers"]["ETag"]
    assert jwks_function.handler(event(**{"if-none-match": etag}), Context())["statusCode"] == 304
    jwks_function.ring.plant({**jwks_function.ring.items["p"], "state": "revoked"})
    jwks_function.clock.advance(60)  # the key ring cache reloads
    changed = jwks_function.handler(event(**{"if-none-match": etag}), Context())
    assert changed["statusCode"] == 200 and changed["headers"]["ETag"] != etag
    assert [k["kid"] for k in json.loads(changed["body"])["keys"]] == ["a"]


def test_the_function_does_not_publish_an_entry_without_the_stacks_seal(jwks_function):
    jwks_function.ring.plant({**jwks_function.ring.items["p"], "kid": "x", "seal": None})
    response = jwks_function.handler(event(), Context())
    assert "x" not in [k["kid"] for k in json.loads(response["body"])["keys"]]
