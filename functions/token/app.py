"""POST /token: RFC 8693 token exchange, a pipeline's CI token in, a broker ID token out."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from oidc_broker import api, observe, runtime
from oidc_broker.handlers import maps_errors

logger = Logger()
metrics = Metrics()
broker = runtime.broker()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
@maps_errors(logger, metrics, "token", failure="token endpoint")
def handler(event, context):
    request = api.token_request(event)
    logger.append_keys(target=request.audience)
    auth = broker.authorize(request.subject_token, request.audience, runtime.issuer_url(api.request_domain(event)))
    logger.append_keys(**observe.caller_keys(auth.caller))
    issued = broker.mint(auth)

    logger.info(
        "token minted",
        extra={"trust_rule": issued.rule.name, "subject": issued.claims["sub"], "token_jti": issued.claims["jti"],
               "expires_in": issued.expires_in},
    )
    metrics.add_metric(name="TokensMinted", unit=MetricUnit.Count, value=1)
    return api.token_response(issued)
