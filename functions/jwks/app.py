"""GET /.well-known/jwks.json: every published key of the key ring, served from memory."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths

from oidc_broker import api, runtime
from oidc_broker.errors import TemporarilyUnavailable

logger = Logger()
key_ring = runtime.key_ring()
CACHE_CONTROL = "public, max-age=300"


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
def handler(event, context):
    try:
        jwks = key_ring.jwks()
    except Exception:
        logger.exception("key ring unavailable")
        return api.unexpected_error()
    for entry, reason in key_ring.refused():
        # A ring item of a key the stack did not create: someone wrote the table who should not.
        logger.warning("key ring entry not published", extra={"kid": entry.kid, "key_arn": entry.key_arn,
                                                               "state": entry.state, "reason": reason})
    if not jwks["keys"]:
        # Never let a verifier cache an empty key set.
        logger.error("key ring has no published key", extra={"reason": "empty_key_ring"})
        return api.error_response(TemporarilyUnavailable("the key ring has no published key yet", "empty_key_ring"))
    return api.json_response(200, jwks, cache_control=CACHE_CONTROL)
