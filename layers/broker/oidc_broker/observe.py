"""What the handlers log and count: refusals with their reason, and who the caller was.

One place for the log keys and metric names operators alarm on, so every function reports a
refusal the same way. It logs error descriptions, never a token or a secret.
"""

from __future__ import annotations

from typing import Any

from . import api
from .errors import BrokerError


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
