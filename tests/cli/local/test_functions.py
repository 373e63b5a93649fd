"""oidc_broker_cli/local/functions.py: handlers invoked as Lambda would, scheduled ones fired on demand."""

from __future__ import annotations

import threading
import time

import pytest

from oidc_broker_cli.local.functions import Functions, NotScheduled

from ..fakes import scheduled_template


@pytest.fixture
def functions(tmp_path):
    return Functions(scheduled_template(tmp_path))


def test_firing_a_scheduled_function_invokes_its_handler_with_its_schedules_event(functions):
    schedule, result = functions.fire("RotateFunction", now=1_767_225_600)
    assert (schedule.function, schedule.event) == ("RotateFunction", "Daily")
    assert result["function"] == "RotateFunction"
    assert result["event"]["detail-type"] == "Scheduled Event"
    assert result["event"]["time"] == "2026-01-01T00:00:00Z"
    assert result["event"]["resources"] == [schedule.arn("us-east-1", "123456789012")]


def test_a_function_with_several_schedules_fires_the_one_named(functions):
    assert functions.fire("RefreshFunction", "Hourly")[1]["event"] == {"scope": "all"}
    assert functions.fire("RefreshFunction", "Nightly")[1]["event"]["source"] == "aws.events"


def test_a_function_with_several_schedules_must_be_told_which(functions):
    with pytest.raises(NotScheduled, match=r"RefreshFunction has 2 schedule events \(Hourly, Nightly\)"):
        functions.fire("RefreshFunction")
    with pytest.raises(NotScheduled, match="RefreshFunction has no schedule event Weekly; it has Hourly, Nightly"):
        functions.fire("RefreshFunction", "Weekly")


def test_a_function_without_a_schedule_is_not_invoked_and_the_error_names_those_that_have_one(functions):
    with pytest.raises(NotScheduled, match="TokenFunction has no Schedule or ScheduleV2 event in template.yaml; "
                                           "scheduled functions: RefreshFunction, RotateFunction"):
        functions.fire("TokenFunction")
    assert "TokenFunction" not in functions._handlers


def test_an_unknown_function_is_not_scheduled(functions):
    with pytest.raises(NotScheduled, match="Nope is not a function in template.yaml"):
        functions.fire("Nope")


def test_a_function_handles_one_request_at_a_time(tmp_path):
    template = scheduled_template(tmp_path)
    (tmp_path / "functions" / "rotate" / "app.py").write_text(
        "import threading, time\nactive = []\npeak = [0]\n"
        "def handler(event, context):\n"
        "    active.append(1); peak[0] = max(peak[0], len(active)); time.sleep(0.05); active.pop()\n"
        "    return peak[0]\n")
    functions = Functions(template)
    results = []
    threads = [threading.Thread(target=lambda: results.append(functions.fire("RotateFunction")[1]))
               for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(results) == 1 and time.monotonic() - started >= 0.2
