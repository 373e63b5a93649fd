"""Builders for the unit tests: configuration documents, caller-issuer keys, clocks.

Everything here is deterministic: clocks are plain callables and fetches are in-memory.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

BROKER = "https://broker.example.com"
CI = "https://ci.example.com"
NOW = 1_700_000_000.0


def config_doc(**top: Any) -> dict[str, Any]:
    """A valid configuration document: one trusted issuer `ci`, space `acme` with an AWS account
    target `prod` (subject keys space, environment, account) and a feed target `images`, and two
    trust rules. Keyword arguments replace top-level entries."""
    doc: dict[str, Any] = {
        "issuer": BROKER,
        "trusted_issuers": [{"name": "ci", "issuer": CI}],
        "spaces": [
            {
                "name": "acme",
                "targets": [
                    {
                        "name": "prod",
                        "kind": "account",
                        "provider": "aws",
                        "subject": ["space", "environment", "account"],
                        "lifetime": "15m",
                        "aws": {"role_arn": "arn:aws:iam::123456789012:role/deploy", "region": "us-east-1"},
                    },
                    {"name": "images", "kind": "feed", "provider": "aws"},
                ],
                "trust": [
                    {
                        "name": "deploy",
                        "issuer": "ci",
                        "claims": {"repository": "acme/app", "ref": "refs/heads/main"},
                        "targets": ["prod"],
                        "context": {"environment": {"claim": "environment"}},
                    },
                    {
                        "name": "pull",
                        "issuer": "ci",
                        "claims": {"repository": "acme/app"},
                        "targets": ["images"],
                    },
                ],
            }
        ],
    }
    doc.update(copy.deepcopy(top))
    return doc


def space_doc(doc: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return doc["spaces"][index]


class Clock:
    """A settable clock: a callable returning a float, advanced by hand."""

    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def public_der(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: Any, kid: str, **extra: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


def caller_claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    """A CI token's claims, valid at `now`; an override of None removes the claim."""
    claims: dict[str, Any] = {
        "iss": CI,
        "sub": "repo:acme/app:ref:refs/heads/main",
        "aud": BROKER,
        "iat": int(now) - 10,
        "nbf": int(now) - 10,
        "exp": int(now) + 300,
        "jti": "caller-jti-1",
        "repository": "acme/app",
        "ref": "refs/heads/main",
        "environment": "production",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@dataclass
class CallerIssuer:
    """A CI issuer we control: its signing keys and what its discovery and JWKS URLs serve."""

    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    issuer: str = CI
    discovery_issuer: str | None = None  # what discovery says; defaults to `issuer`
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    failing: bool = False

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = [public_jwk(self.rsa_key, "rsa-1"), public_jwk(self.ec_key, "ec-1")]

    def fetch(self, url: str, deadline: Any = None) -> dict[str, Any]:
        from oidc_broker.callers import FetchError

        self.fetched.append(url)
        if self.failing:
            raise FetchError(f"could not fetch {url}")
        if url == self.issuer + "/.well-known/openid-configuration":
            return {"issuer": self.discovery_issuer or self.issuer, "jwks_uri": self.issuer + "/jwks"}
        if url == self.issuer + "/jwks":
            return {"keys": copy.deepcopy(self.keys)}
        raise FetchError(f"no document at {url}")

    def token(self, claims: dict[str, Any] | None = None, *, alg: str = "RS256", kid: str | None = "rsa-1",
              key: Any = None, headers: dict[str, Any] | None = None) -> str:
        if key is None:
            key = self.ec_key if alg.startswith("ES") else self.rsa_key
        head = dict(headers or {})
        if kid is not None:
            head["kid"] = kid
        return jwt.encode(caller_claims() if claims is None else claims, key, algorithm=alg, headers=head)


def raw_rs256_token(header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    """An RS256 JWS built by hand, for headers and claims PyJWT refuses to produce."""
    def b64(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    message = f"{b64({'alg': 'RS256', **header})}.{b64(claims)}"
    signature = key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{message}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def config_problems(document: Any, source: str = "broker.yaml", **kwargs: Any) -> list[tuple[str, str]]:
    """The (path, rule) problems validation reports for `document`; it must be invalid."""
    import pytest

    from oidc_broker.validation import ConfigError, parse

    with pytest.raises(ConfigError) as info:
        parse(document, source, **kwargs)
    return info.value.problems


def config_paths(document: Any, **kwargs: Any) -> list[str]:
    return [path for path, _ in config_problems(document, **kwargs)]
