"""Discovery and JWKS, as a relying party (AWS STS, Entra, Google STS) fetches them."""

import base64
import hashlib
import json


def test_discovery_names_the_configured_issuer_exactly(local):
    response = local.http.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == local.base_url
    assert not doc["issuer"].endswith("/")
    assert doc["jwks_uri"] == local.base_url + "/.well-known/jwks.json"
    assert doc["token_endpoint"] == local.base_url + "/token"


def test_discovery_lists_every_required_member(local):
    doc = local.http.get("/.well-known/openid-configuration").json()
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert doc["response_types_supported"] == ["id_token"]
    assert doc["subject_types_supported"] == ["public"]
    assert {"iss", "sub", "aud", "exp", "iat", "jti", "space", "feed", "account"} <= set(doc["claims_supported"])


def test_discovery_and_jwks_are_sent_with_cache_control(local):
    for path in ("/.well-known/openid-configuration", "/.well-known/jwks.json"):
        response = local.http.get(path)
        assert response.headers["content-type"] == "application/json"
        assert "max-age=" in response.headers["cache-control"]


def test_jwks_keys_carry_only_public_rsa_members(local):
    keys = local.http.get("/.well-known/jwks.json").json()["keys"]
    assert len(keys) == 2  # the signing key and the next one, published before it signs
    for key in keys:
        assert set(key) == {"kty", "kid", "use", "alg", "n", "e"}
        assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")


def test_jwks_kid_is_the_rfc7638_thumbprint_not_the_key_arn(local):
    key = local.http.get("/.well-known/jwks.json").json()["keys"][0]
    canonical = json.dumps({"e": key["e"], "kty": "RSA", "n": key["n"]}, separators=(",", ":"))
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    assert key["kid"] == thumbprint
    assert "arn:" not in key["kid"]


def test_an_unknown_route_is_a_json_404(local):
    response = local.http.get("/nope")
    assert response.status_code == 404
    assert response.json()
