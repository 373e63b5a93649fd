"""GET /.well-known/openid-configuration: the issuer's metadata, from memory, no AWS call."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths

from oidc_broker import api, discovery, runtime
from oidc_broker.errors import BrokerError

logger = Logger()
CACHE_CONTROL = "public, max-age=3600"


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
def handler(event, context):
    try:
        issuer = runtime.issuer_url(api.request_domain(event))
    except BrokerError as e:
        logger.error("discovery unavailable", extra={"reason": e.reason})
        return api.error_response(e)
    return api.json_response(200, discovery.document(issuer), cache_control=CACHE_CONTROL)
