"""The scheduled credential refresh (EventBridge, every RefreshSchedule): renews the cached credentials
of targets with `refresh: true` before callers need them. Invoked directly (`oidc-broker refresh`)
with `{"targets": ["<space>/<target>"], "force": true}` it renews those. Answers with the run's
report: per binding the outcome, the reason and times, never a credential."""

from aws_lambda_powertools import Logger, Metrics

from oidc_broker import observe, refresh, runtime
from oidc_broker.errors import BrokerError

logger = Logger()
metrics = Metrics()
refresher = runtime.refresher()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event, context):
    observe.correlate(logger, event, context)
    try:
        report = refresher.run(refresh.run_request(event),
                               time_left=lambda: context.get_remaining_time_in_millis() / 1000)
    except BrokerError as e:
        return observe.refresh_refused(logger, metrics, e)
    except Exception:
        return observe.refresh_failed(logger, metrics)
    observe.refreshed(logger, metrics, report)
    return report.to_dict()
