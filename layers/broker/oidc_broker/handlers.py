"""The handlers' shell: errors mapped to responses once, and the one exchange handler.

`maps_errors` is a Powertools-style decorator for a handler that raises: a BrokerError becomes
its logged and counted refusal (observe.refused), anything else a logged failure and a generic
500 (observe.failed). `exchange_handler(cloud)` is every cloud's /exchange/<cloud> handler, so a
cloud's function is `handler = exchange_handler("<cloud>")`. Only functions import this module;
the core never does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import api, observe, runtime
from .errors import BrokerError

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def maps_errors(logger: Any, metrics: Any, operation: str, *, failure: str | None = None) -> Callable[[Handler], Handler]:
    """Map what `handler` raises to a response: refusals are logged as "<operation> refused" (or
    "unavailable" for a 5xx), anything unexpected as "<failure or operation> failed"."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def mapped(event: dict[str, Any], context: Any) -> dict[str, Any]:
            try:
                return handler(event, context)
            except BrokerError as e:
                return observe.refused(logger, metrics, e, operation)
            except Exception:
                return observe.failed(logger, metrics, failure or operation)

        return mapped

    return decorate


def exchange_handler(cloud: str, *, exchange: Any = None, logger: Any = None, metrics: Any = None) -> Handler:
    """POST /exchange/<cloud>: a pipeline's CI token in, the cloud's credentials out.

    Built once per container. `exchange` defaults to runtime.exchange(cloud) (the real clients,
    one boto3 session); tests pass their own.
    """
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.logging import correlation_paths
    from aws_lambda_powertools.metrics import MetricUnit

    from .clouds import CLOUDS

    description = CLOUDS[cloud]
    logger = logger or Logger()
    metrics = metrics or Metrics()
    exchange = exchange or runtime.exchange(cloud)

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
    @metrics.log_metrics
    @maps_errors(logger, metrics, f"{description.title} exchange")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        request = api.exchange_request(event)
        logger.append_keys(target=request.target)
        outcome = exchange.credentials(request.subject_token, request.target, runtime.issuer_url(api.request_domain(event)))

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
        metrics.add_dimension(name="cloud", value=cloud)
        metrics.add_dimension(name="outcome", value="cached" if served.from_cache else "exchanged")
        metrics.add_metric(name="Exchanges", unit=MetricUnit.Count, value=1)
        return api.credentials_response(served.credentials)

    return handler
