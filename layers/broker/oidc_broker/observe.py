"""What the handlers log and count: refusals with their reason, and who the caller was.

One place for the log keys and metric names operators alarm on, so every function reports a
refusal the same way. It logs error descriptions, never a token or a secret.
"""

from __future__ import annotations

from typing import Any

from . import api
from .errors import BrokerError


def correlate(logger: Any, event: Any, context: Any) -> None:
    """Give every line of an invocation that has no HTTP request a correlation id: the EventBridge
    event's `id`, a CloudFormation request's `RequestId`, else the invocation's own request id
    (a direct invoke, e.g. `oidc-broker keys`), which Lambda's own log lines carry too."""
    named = (event.get("id") or event.get("RequestId")) if isinstance(event, dict) else None
    logger.set_correlation_id(named if isinstance(named, str) and named else getattr(context, "aws_request_id", None))


def caller_keys(caller: Any) -> dict[str, str]:
    """The log keys naming a verified caller."""
    return {"caller_issuer": caller.issuer.issuer, "caller_subject": caller.subject}


def refused(logger: Any, metrics: Any, error: BrokerError, operation: str) -> dict[str, Any]:
    """Log and count a refusal (4xx) or a failure (5xx), and shape its response."""
    from aws_lambda_powertools.metrics import MetricUnit

    if error.caller is not None:
        logger.append_keys(**caller_keys(error.caller))
    details = {**error.log, "reason": error.reason, "error": error.error, "error_description": error.description}
    metrics.add_dimension(name="reason", value=error.reason)
    if error.status >= 500:
        logger.error(f"{operation} unavailable", extra=details)
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
    else:
        logger.warning(f"{operation} refused", extra=details)
        metrics.add_metric(name="Refusals", unit=MetricUnit.Count, value=1)
    return api.error_response(error)


def failed(logger: Any, metrics: Any, operation: str) -> dict[str, Any]:
    """Log an unexpected exception (with its traceback) and count it; a generic 500 for the caller."""
    from aws_lambda_powertools.metrics import MetricUnit

    logger.exception(f"{operation} failed")
    metrics.add_dimension(name="reason", value="unexpected")
    metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
    return api.unexpected_error()


def refreshed(logger: Any, metrics: Any, report: Any) -> None:
    """Log and count a refresh run (refresh.Report): a line per binding renewed or failed, one for the
    run; `Refreshes` by target and outcome, `RefreshFailures`, and `RefreshMinRemaining` (seconds the
    least fresh kept binding is still served from the cache) for the alarm. Times only, no credential."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    tally: dict[tuple[str, str], int] = {}
    for result in report.results:
        tally[(result.target, result.outcome)] = tally.get((result.target, result.outcome), 0) + 1
        details = {"target": result.target, "subject": result.subject, "outcome": result.outcome,
                   "reason": result.reason, "expires_at": result.expires_at, "served_until": result.served_until}
        if result.outcome == "failed":
            error = result.error
            logger.error("refresh failed", extra=details,
                         exc_info=(type(error), error, error.__traceback__) if error is not None else None)
        elif result.outcome != "skipped":
            logger.info(f"credentials {result.outcome}", extra=details)
    # Per target and outcome in series of their own: the run's metrics below keep the service dimension only.
    for (target, outcome), count in sorted(tally.items()):
        with single_metric(name="Refreshes", unit=MetricUnit.Count, value=count,
                           default_dimensions=metrics.default_dimensions) as metric:
            metric.add_dimension(name="target", value=target)
            metric.add_dimension(name="outcome", value=outcome)
    counts = report.counts()
    metrics.add_metric(name="RefreshFailures", unit=MetricUnit.Count, value=counts["failed"])
    remaining = report.min_served_remaining()
    if remaining is not None:
        metrics.add_metric(name="RefreshMinRemaining", unit=MetricUnit.Seconds, value=remaining)
    logger.info("refresh run", extra={**counts, "min_served_remaining": remaining,
                                      "seconds": round(report.finished_at - report.started_at, 3)})


def refresh_refused(logger: Any, metrics: Any, error: BrokerError) -> dict[str, str]:
    """A refresh run that could not start (a bad request, the configuration, the table), logged and
    counted as a refusal or failure; a failure also counts one `RefreshFailures` (service dimension
    only) unless no configuration is applied yet: then there is nothing to refresh."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    if error.status >= 500 and error.reason != "no_config":
        with single_metric(name="RefreshFailures", unit=MetricUnit.Count, value=1,
                           default_dimensions=metrics.default_dimensions):
            pass
    refused(logger, metrics, error, "refresh")
    return error.body()


def refresh_failed(logger: Any, metrics: Any) -> dict[str, str]:
    """An unexpected exception stopped a refresh run: logged with its traceback, counted as a failure."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    with single_metric(name="RefreshFailures", unit=MetricUnit.Count, value=1,
                       default_dimensions=metrics.default_dimensions):
        pass
    failed(logger, metrics, "refresh")
    return {"error": "server_error", "error_description": "the refresh failed unexpectedly; see its log"}
