"""GET /.well-known/jwks.json: every published key of the key ring, as rendered with its last change.

One read of the ring's state per key ring cache period, its seal verified once (keys.PublishedJwks);
the sealed entries when the ring has no current rendered JWKS yet. Cache-Control's max-age is the
lifecycle's JWKS_MAX_AGE, which rotation counts on (publish before use); the ETag lets verifiers
ask again cheaply (If-None-Match → 304).
"""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths

from oidc_broker import api, runtime
from oidc_broker.errors import TemporarilyUnavailable

logger = Logger()
jwks = runtime.published_jwks()
MAX_AGE = runtime.jwks_max_age()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
def handler(event, context):
    try:
        body = jwks.body()
    except Exception:
        logger.exception("key ring unavailable")
        return api.unexpected_error()
    if (reason := jwks.passed_over()) is not None:
        # Served from the sealed entries instead: a ring from before the JWKS was stored, or an edited item.
        logger.warning("rendered JWKS not served", extra={"reason": reason})
    for entry, reason in jwks.refused():
        # An entry the stack did not seal: someone wrote the table who should not.
        logger.warning("key ring entry not published", extra={"kid": entry.kid, "key_arn": entry.key_arn,
                                                               "state": entry.state, "reason": reason})
    if body is None:
        # Never let a verifier cache an empty key set.
        logger.error("key ring has no published key", extra={"reason": "empty_key_ring"})
        return api.error_response(TemporarilyUnavailable("the key ring has no published key yet", "empty_key_ring"))
    return api.cacheable_body_response(event, body.decode(), max_age=MAX_AGE)
