"""The key rotation: an EventBridge schedule applies the transitions that are due; `oidc-broker keys`
invokes it directly with {"action": "status" | "rotate"} or {"action": "revoke", "kid": ...}.

Every invocation answers with the key ring's report (rotation.Rotation), or {"error",
"error_description"} for an event it does not take, and counts the active key's age as
KeyRotationAge, which the overdue alarm watches. Logs each transition by kid, never key material.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from oidc_broker import observe, runtime
from oidc_broker.errors import BrokerError, InvalidRequest

logger = Logger()
metrics = Metrics()
rotation = runtime.rotation()


def outcome_of(event):
    """The action the event asks for, applied; InvalidRequest for anything else."""
    if not isinstance(event, dict):
        raise InvalidRequest("the event must be a JSON object", "malformed_event")
    if event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event":
        return rotation.run()
    action = event.get("action")
    if action == "status" and set(event) == {"action"}:
        return rotation.status()
    if action == "rotate" and set(event) == {"action"}:
        return rotation.rotate()
    if action == "revoke" and set(event) == {"action", "kid"}:
        if not isinstance(event["kid"], str) or not event["kid"]:
            raise InvalidRequest("kid must be the key's kid (a string; `oidc-broker keys list` shows them)", "malformed_kid")
        return rotation.revoke(event["kid"])
    raise InvalidRequest('the event must be {"action": "status"}, {"action": "rotate"}, '
                         '{"action": "revoke", "kid": "<kid>"} or a scheduled event', "unknown_action")


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event, context):
    observe.correlate(logger, event, context)
    try:
        outcome = outcome_of(event)
    except BrokerError as e:
        logger.warning("key rotation refused", extra={"reason": e.reason, "error_description": e.description})
        return e.body()
    except Exception:
        # Lambda reports the failure to the caller (the CLI, or EventBridge, which retries).
        logger.exception("key rotation failed")
        raise
    for step in outcome.steps:
        logger.info("signing key moved", extra={"kid": step.kid, "step": step.step, "from": step.from_state,
                                                "to": step.to_state or "removed"})
    if outcome.restored_jwks is not None:
        # The JWKS function served the entries until now (a ring from before the stored JWKS, or an edited item).
        logger.warning("stored JWKS rendered anew", extra={"version": outcome.restored_jwks})
    for kid in outcome.orphans:
        logger.warning("signing key made by a concurrent run scheduled for deletion", extra={"kid": kid})
    for entry, reason in outcome.refused:
        logger.warning("key ring entry not published", extra={"kid": entry.kid, "key_arn": entry.key_arn,
                                                               "state": entry.state, "reason": reason})
    if outcome.active_age is not None:
        metrics.add_metric(name="KeyRotationAge", unit=MetricUnit.Seconds, value=outcome.active_age)
    else:
        logger.error("key ring has no active key", extra={"reason": "no_signing_key"})
    return outcome.report

