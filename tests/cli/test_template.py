"""oidc_broker_cli/template.py: what local mode reads from template.yaml, schedules included."""

from __future__ import annotations

from pathlib import Path

import pytest

from oidc_broker_cli.template import Template

from .fakes import SCHEDULED

def template(text: str = SCHEDULED) -> Template:
    return Template(Path("/project/template.yaml"), text)


def test_a_template_from_text_reads_as_if_it_were_at_its_path():
    t = template()
    assert t.root == Path("/project")
    assert t.function("RotateFunction") == (Path("/project/functions/rotate/"), "app.handler")


def test_every_schedule_and_schedule_v2_event_is_found_and_no_http_route():
    assert [(s.function, s.event, s.kind) for s in template().schedules()] == [
        ("RotateFunction", "Daily", "Schedule"),
        ("RefreshFunction", "Hourly", "ScheduleV2"),
        ("RefreshFunction", "Nightly", "Schedule"),
    ]


def test_a_rule_without_a_name_is_named_as_cloudformation_would_without_its_suffix():
    daily = template().schedules()[0]
    assert (daily.name, daily.expression, daily.input, daily.enabled) == (
        "oidc-broker-local-RotateFunctionDaily", "rate(1 day)", None, True)
    assert daily.arn("us-east-1", "123456789012") == \
        "arn:aws:events:us-east-1:123456789012:rule/oidc-broker-local-RotateFunctionDaily"


def test_a_schedule_v2_keeps_its_name_group_and_input_and_has_a_scheduler_arn():
    hourly = template().schedules()[1]
    assert (hourly.name, hourly.group, hourly.input, hourly.expression) == (
        "refresh-hourly", "default", '{"scope": "all"}', "cron(0 * * * ? *)")
    assert hourly.arn("us-east-1", "123456789012") == \
        "arn:aws:scheduler:us-east-1:123456789012:schedule/default/refresh-hourly"


def test_a_disabled_schedule_is_still_listed_as_disabled():
    assert [s.enabled for s in template().schedules()] == [True, True, False]
    v2_disabled = SCHEDULED.replace("Name: refresh-hourly", "Name: refresh-hourly\n            State: DISABLED")
    assert [s.enabled for s in template(v2_disabled).schedules()] == [True, False, False]


def test_an_input_that_is_not_a_literal_string_is_refused_by_name():
    text = SCHEDULED.replace("""Input: '{"scope": "all"}'""", "Input: !Sub '{\"stack\": \"${AWS::StackName}\"}'")
    with pytest.raises(ValueError, match="RefreshFunction.Events.Hourly.Input"):
        template(text).schedules()


def test_routes_still_see_only_http_api_events():
    assert [(r.method, r.path, r.function) for r in template().routes()] == [("POST", "/token", "TokenFunction")]

