"""moto's ECR with a realistic registry token lifetime.

moto answers GetAuthorizationToken with `expiresAt` fixed at 2015-01-01, so every token it hands
out is already expired and local mode could never show a cached feed credential. This wraps
moto's handler to report what ECR reports: 12 hours from now. Tests of expiry logic use fake
clocks, never this. Local mode only.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

TOKEN_LIFETIME = 12 * 3600


def patch_moto_ecr_expiry() -> None:
    from moto.ecr.responses import ECRResponse

    original = ECRResponse.get_authorization_token
    if getattr(original, "_oidc_broker_patched", False):
        return

    def get_authorization_token(self):  # type: ignore[no-untyped-def]
        result = original(self)
        expires = datetime.fromtimestamp(int(time.time()) + TOKEN_LIFETIME, tz=timezone.utc)
        for data in getattr(result, "result", {}).get("authorizationData", []):
            data["expiresAt"] = expires
        return result

    get_authorization_token._oidc_broker_patched = True  # type: ignore[attr-defined]
    ECRResponse.get_authorization_token = get_authorization_token
