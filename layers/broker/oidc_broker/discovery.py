"""The OpenID Provider metadata document. Pure: built from the issuer URL alone, no AWS call."""

from __future__ import annotations

from .subject import KEY_ORDER
from .tokens import ALG

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWKS_PATH = "/.well-known/jwks.json"
TOKEN_PATH = "/token"


def document(issuer: str) -> dict:
    return {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "token_endpoint": issuer + TOKEN_PATH,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
        "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "act", *KEY_ORDER],
        "grant_types_supported": [TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
    }
