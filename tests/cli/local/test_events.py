"""oidc_broker_cli/local/events.py: events built as API Gateway and EventBridge build them."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from oidc_broker_cli.local.events import http_api_event, scheduled_event
from oidc_broker_cli.template import Template

from ..fakes import SCHEDULED
from .fakes import ROUTE

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def event(headers):
    return http_api_event(ROUTE, "POST", "/exchange/aws", "", headers, b"", "127.0.0.1", {})


def test_a_repeated_header_reaches_the_handler_as_its_values_joined_with_commas():
    headers = event([("Authorization", "Bearer a"), ("authorization", "Bearer b"),
                     ("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "192.0.2.2"), ("Host", "broker")])["headers"]
    assert headers == {"authorization": "Bearer a,Bearer b", "x-forwarded-for": "192.0.2.1,192.0.2.2",
                       "host": "broker"}


def test_cookie_headers_become_the_cookies_list_and_leave_the_headers():
    built = event([("Cookie", "a=1; b=2"), ("Host", "broker"), ("cookie", "c=3")])
    assert built["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in built["headers"]
    assert "cookies" not in event({"Host": "broker"})


def test_headers_given_as_a_mapping_are_still_accepted():
    assert event({"Host": "broker", "Content-Type": "application/json"})["headers"] == {
        "host": "broker", "content-type": "application/json"}


def schedules():
    return Template(Path("/project/template.yaml"), SCHEDULED).schedules()


def test_a_scheduled_event_has_eventbridges_shape_and_names_its_rule():
    built = scheduled_event(schedules()[0], NOW)
    assert set(built) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
                          "detail"}
    assert {k: built[k] for k in ("version", "detail-type", "source", "account", "region", "detail")} == {
        "version": "0", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
        "region": "us-east-1", "detail": {}}
    assert built["time"] == "2026-01-01T00:00:00Z"
    assert built["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/oidc-broker-local-RotateFunctionDaily"]
    assert uuid.UUID(built["id"])


def test_each_scheduled_event_has_its_own_id_and_the_time_it_fired():
    first, second = scheduled_event(schedules()[0], NOW), scheduled_event(schedules()[0], NOW + 61)
    assert first["id"] != second["id"]
    assert re.fullmatch(r"2026-01-01T00:01:01Z", second["time"])


def test_a_schedule_with_an_input_delivers_that_input_instead():
    assert scheduled_event(schedules()[1], NOW) == {"scope": "all"}
