"""POST /exchange/aws: a pipeline's CI token in, AWS role or ECR docker credentials out."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from oidc_broker import api, runtime
from oidc_broker.errors import BrokerError

logger = Logger()
metrics = Metrics()
exchange = runtime.exchange_aws()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def handler(event, context):
    try:
        request = api.exchange_request(event)
        logger.append_keys(target=request.target)
        outcome = exchange.credentials(request.subject_token, request.target, runtime.issuer_url(api.request_domain(event)))
    except BrokerError as e:
        return refused(e)
    except Exception:
        logger.exception("AWS exchange failed")
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        return api.unexpected_error()

    auth, served = outcome.authorization, outcome.served
    logger.info(
        "credentials issued",
        extra={
            "caller_issuer": auth.caller.issuer.issuer,
            "caller_subject": auth.caller.subject,
            "trust_rule": auth.rule.name,
            "subject": str(auth.subject),
            "from_cache": served.from_cache,
            "source_jti": served.source,
            "expires_at": served.credentials.expires_at,
        },
    )
    if served.not_stored:
        logger.warning("credentials not cached", extra={"reason": served.not_stored})
    metrics.add_metric(name="CacheHits" if served.from_cache else "Exchanges", unit=MetricUnit.Count, value=1)
    return api.credentials_response(served.credentials)


def refused(error: BrokerError):
    details = {"reason": error.reason, "error": error.error, "error_description": error.description}
    if error.status >= 500:
        logger.error("AWS exchange unavailable", extra=details)
        metrics.add_dimension(name="reason", value=error.reason)
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
    else:
        logger.warning("AWS exchange refused", extra=details)
        metrics.add_dimension(name="reason", value=error.reason)
        metrics.add_metric(name="Refusals", unit=MetricUnit.Count, value=1)
    return api.error_response(error)
