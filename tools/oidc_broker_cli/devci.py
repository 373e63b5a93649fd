"""A development CI issuer for local mode: GitHub Actions-shaped tokens with chosen claims.

Serves its own discovery document and JWKS under /_dev/ci, and mints tokens on
POST /_dev/ci/token (a JSON object of claims to set; a claim set to null is left out).
Local mode only: it never ships in the Lambda layer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

PREFIX = "/_dev/ci"
LIFETIME = 300


class DevCI:
    def __init__(self, base_url: str, audience: str):
        self.issuer = base_url + PREFIX
        self.audience = audience
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self.kid = jwt.PyJWK(public).key_id or "dev-ci-1"
        self.jwk = {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/.well-known/jwks",
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": sorted(self.default_claims(0)),
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def default_claims(self, now: int) -> dict[str, Any]:
        repository, ref = "acme/app", "refs/heads/main"
        return {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": f"repo:{repository}:ref:{ref}",
            "repository": repository,
            "repository_id": "100200300",
            "repository_owner": "acme",
            "repository_owner_id": "4005006",
            "repository_visibility": "private",
            "ref": ref,
            "ref_type": "branch",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "workflow": "deploy",
            "workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
            "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
            "event_name": "push",
            "actor": "octocat",
            "actor_id": "583231",
            "run_id": "1",
            "run_number": "1",
            "run_attempt": "1",
            "runner_environment": "github-hosted",
            "iat": now,
            "nbf": now,
            "exp": now + LIFETIME,
            "jti": str(uuid.uuid4()),
        }

    def mint(self, overrides: dict[str, Any], now: float | None = None) -> str:
        claims = self.default_claims(int(time.time() if now is None else now))
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if "sub" not in overrides and "repository" in claims:
            # GitHub's subject: the environment when the job has one, else the ref.
            scope = f"environment:{claims['environment']}" if claims.get("environment") else f"ref:{claims.get('ref')}"
            claims["sub"] = f"repo:{claims['repository']}:{scope}"
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
