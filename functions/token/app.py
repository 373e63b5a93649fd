"""POST /token: RFC 8693 token exchange, a pipeline's CI token in, a broker ID token out."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from oidc_broker import api, runtime
from oidc_broker.errors import BrokerError

logger = Logger()
metrics = Metrics()
broker = runtime.broker()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def handler(event, context):
    try:
        request = api.token_request(event)
        logger.append_keys(target=request.audience)
        issued = broker.issue(request.subject_token, request.audience, runtime.issuer_url(api.request_domain(event)))
    except BrokerError as e:
        return refused(e)
    except Exception:
        logger.exception("token endpoint failed")
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        return api.unexpected_error()

    logger.info(
        "token minted",
        extra={
            "caller_issuer": issued.caller.issuer.issuer,
            "caller_subject": issued.caller.subject,
            "trust_rule": issued.rule.name,
            "subject": issued.claims["sub"],
            "token_jti": issued.claims["jti"],
            "expires_in": issued.expires_in,
        },
    )
    metrics.add_metric(name="TokensMinted", unit=MetricUnit.Count, value=1)
    return api.token_response(issued)


def refused(error: BrokerError):
    details = {"reason": error.reason, "error": error.error, "error_description": error.description}
    if error.status >= 500:
        logger.error("token endpoint unavailable", extra=details)
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
    else:
        logger.warning("token refused", extra=details)
        metrics.add_dimension(name="reason", value=error.reason)
        metrics.add_metric(name="Refusals", unit=MetricUnit.Count, value=1)
    return api.error_response(error)
