"""oidc_broker/handlers.py: errors mapped to responses once, for every handler.

The exchange handler itself is driven end to end, with a cloud of its own, in
tests/unit/clouds/test_fake_cloud.py.
"""

from __future__ import annotations

import json

import pytest

from oidc_broker.errors import InvalidGrant, Throttled
from oidc_broker.handlers import maps_errors


class Recorder:
    """Logger and Metrics as observe uses them, recording what they were asked."""

    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []
        self.keys: dict = {}
        self.metrics: list[tuple[str, object]] = []

    def append_keys(self, **keys):
        self.keys.update(keys)

    def warning(self, message, extra=None):
        self.lines.append(("warning", message, extra or {}))

    def error(self, message, extra=None):
        self.lines.append(("error", message, extra or {}))

    def exception(self, message):
        self.lines.append(("exception", message, {}))

    def add_dimension(self, name, value):
        self.metrics.append((name, value))

    def add_metric(self, name, unit, value):
        self.metrics.append((name, value))


def handler_raising(error, recorder, **kwargs):
    @maps_errors(recorder, recorder, "thing", **kwargs)
    def handler(event, context):
        raise error

    return handler


def test_a_refusal_becomes_its_response_its_log_line_and_its_count():
    recorder = Recorder()
    response = handler_raising(InvalidGrant("no rule admits it", "no_rule"), recorder)({}, None)
    assert response["statusCode"] == 400
    assert json.loads(response["body"]) == {"error": "invalid_grant", "error_description": "no rule admits it"}
    ((level, message, extra),) = recorder.lines
    assert (level, message, extra["reason"]) == ("warning", "thing refused", "no_rule")
    assert recorder.metrics == [("reason", "no_rule"), ("Refusals", 1)]


def test_a_dependency_failure_is_logged_as_unavailable_with_its_retry_after():
    recorder = Recorder()
    response = handler_raising(Throttled("KMS is throttling", "kms_throttled", 3), recorder)({}, None)
    assert (response["statusCode"], response["headers"]["Retry-After"]) == (503, "3")
    assert recorder.lines[0][:2] == ("error", "thing unavailable")
    assert ("Failures", 1) in recorder.metrics


def test_an_unexpected_exception_is_a_generic_500_logged_under_the_failure_name():
    recorder = Recorder()
    response = handler_raising(KeyError("secret detail"), recorder, failure="thing endpoint")({}, None)
    assert response["statusCode"] == 500 and "secret detail" not in response["body"]
    assert recorder.lines == [("exception", "thing endpoint failed", {})]
    assert recorder.metrics == [("reason", "unexpected"), ("Failures", 1)]


def test_a_refusal_after_verification_names_the_caller_the_core_set_on_it():
    recorder = Recorder()
    error = InvalidGrant("replayed", "replayed")
    error.caller = type("Caller", (), {"issuer": type("I", (), {"issuer": "https://ci"})(), "subject": "repo:x"})()
    handler_raising(error, recorder)({}, None)
    assert recorder.keys == {"caller_issuer": "https://ci", "caller_subject": "repo:x"}


def test_what_the_handler_returns_passes_through():
    @maps_errors(Recorder(), Recorder(), "thing")
    def handler(event, context):
        return {"statusCode": 200, "event": event}

    assert handler({"a": 1}, None) == {"statusCode": 200, "event": {"a": 1}}


@pytest.mark.parametrize("function", ["token", "exchange_aws"])
def test_no_function_copies_the_error_skeleton(function):
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "functions" / function / "app.py").read_text()
    assert "except" not in source and "observe.refused" not in source
