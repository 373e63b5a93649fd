"""Local mode: the real handlers behind an HTTP adapter, with an embedded AWS and verifying emulators.

Starts moto's server on a free loopback port as the embedded AWS (aws.py: the table, the KMS keys
and the custom resources as template.yaml declares them), serves every HttpApi route of
template.yaml by building API Gateway HTTP API (payload 2.0) events (adapter.py, events.py) and
invoking the real handlers one request at a time per function (functions.py), fires scheduled
functions on demand with the event their schedule sends, and wires in each cloud's emulators and
trust setup (clouds/, one module per cloud). The production code is the same code; only its
environment differs. Never part of the Lambda layer.

LocalBroker and run are this package's API (the CLI, tests and bench/bench.py use them).
"""

from __future__ import annotations

from .aws import ACCOUNT_ID, REGION, free_port
from .broker import LocalBroker, run
from .events import LambdaContext, http_api_event, scheduled_event
from .functions import NotScheduled

__all__ = ["ACCOUNT_ID", "REGION", "LambdaContext", "LocalBroker", "NotScheduled", "free_port", "http_api_event",
           "run", "scheduled_event"]
