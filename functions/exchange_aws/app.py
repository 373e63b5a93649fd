"""POST /exchange/aws: a pipeline's CI token in, AWS role or ECR docker credentials out."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from oidc_broker import api, observe, runtime
from oidc_broker.errors import BrokerError

logger = Logger()
metrics = Metrics()
exchange = runtime.exchange_aws()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
def handler(event, context):
    try:
        request = api.exchange_request(event)
        logger.append_keys(target=request.target)
        outcome = exchange.credentials(request.subject_token, request.target, runtime.issuer_url(api.request_domain(event)))
    except BrokerError as e:
        return observe.refused(logger, metrics, e, "AWS exchange")
    except Exception:
        return observe.failed(logger, metrics, "AWS exchange")

    auth, served = outcome.authorization, outcome.served
    logger.append_keys(**observe.caller_keys(auth.caller))
    logger.info(
        "credentials issued",
        extra={
            "trust_rule": auth.rule.name,
            "subject": str(auth.subject),
            "from_cache": served.from_cache,
            "source_jti": served.source,
            "expires_at": served.credentials.expires_at,
        },
    )
    if served.not_stored:
        logger.warning("credentials not cached", extra={"reason": served.not_stored})
    # One metric for every cloud: outcome "cached" is a cache hit, "exchanged" a miss that called the cloud.
    metrics.add_dimension(name="cloud", value="aws")
    metrics.add_dimension(name="outcome", value="cached" if served.from_cache else "exchanged")
    metrics.add_metric(name="Exchanges", unit=MetricUnit.Count, value=1)
    return api.credentials_response(served.credentials)

