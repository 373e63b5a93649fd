"""oidc_broker_cli/local/broker.py: the banner lists each cloud's emulators and, when any, the schedules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from oidc_broker_cli.local import LocalBroker
from oidc_broker_cli.local.functions import Functions

from ..fakes import scheduled_template


class FakeWiring:
    def banner(self):
        return [("Fake STS", "http://127.0.0.1:9 (verifying emulator)")]

    def walk(self, base_url, ci_token):
        return "Fake credentials", f"  {ci_token}\n  curl -s {base_url}/exchange/fake\n"


def broker(schedules=()) -> LocalBroker:
    """A LocalBroker's banner inputs, set as start() would set them (nothing started)."""
    b = LocalBroker(root=Path("."), config_path=Path("broker.yaml"), port=3000, base_url="http://127.0.0.1:3000",
                    issuer="http://127.0.0.1:3000", aws_endpoint="http://127.0.0.1:5000", targets=["default/prod-ecr"])
    b.wirings = [FakeWiring()]
    b.schedules = list(schedules)
    b.dev_ci = type("DevCI", (), {"issuer": "http://127.0.0.1:3000/_dev/ci"})()
    return b


def test_each_clouds_emulators_and_walk_step_appear_in_the_banner():
    text = broker().banner()
    assert "  embedded AWS   http://127.0.0.1:5000 (moto)\n  Fake STS       http://127.0.0.1:9 (verifying emulator)\n" \
           "  dev CI issuer  http://127.0.0.1:3000/_dev/ci\n" in text
    assert "  # 5. Fake credentials\n  CI_TOKEN=$(curl -s -X POST 'http://127.0.0.1:3000/_dev/ci/token?format=raw'" \
           in text


def test_a_template_without_schedules_adds_nothing_to_the_banner():
    assert "/_local/schedule" not in broker().banner()


def test_the_banner_lists_how_to_fire_each_schedule(tmp_path):
    text = broker(Functions(scheduled_template(tmp_path)).schedules).banner()
    assert "  curl -s -X POST http://127.0.0.1:3000/_local/schedule/RotateFunction/Daily   # rate(1 day)\n" in text
    assert "/_local/schedule/RefreshFunction/Nightly   # cron(0 3 * * ? *) (disabled)\n" in text


ROTATING = """
Transform: AWS::Serverless-2016-10-31
Resources:
  RotateKeysFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/rotate_keys/
      Handler: app.handler
      Events:
        Rotation:
          Type: Schedule
          Properties:
            Schedule: rate(1 hour)
"""
# Answers `rotate` with a rotation due in a second, and performs it on the next scheduled event.
ROTATE_KEYS = """
import time

events = []


def handler(event, context):
    events.append(event)
    if event.get("action") == "rotate":
        return {"effective_at": int(time.time()) + 1, "steps": []}
    return {"effective_at": None, "steps": [{"step": "activate", "kid": "k2", "at": int(time.time())}]}
"""


@pytest.fixture
def rotating(tmp_path):
    from oidc_broker_cli.template import Template

    (tmp_path / "template.yaml").write_text(ROTATING)
    (tmp_path / "functions" / "rotate_keys").mkdir(parents=True)
    (tmp_path / "functions" / "rotate_keys" / "app.py").write_text(ROTATE_KEYS)
    b = broker()
    b.functions = Functions(Template(tmp_path / "template.yaml"))
    b.schedules = b.functions.schedules
    b.log = (logged := []).append
    b.logged = logged
    yield b
    b.cancel_due()


def handler_events(b):
    return b.functions._handlers["RotateKeysFunction"].__globals__["events"]


def test_a_rotation_due_later_runs_the_functions_schedule_when_it_falls_due(rotating):
    assert rotating.invoke_direct("RotateKeysFunction", {"action": "rotate"})["effective_at"]
    deadline = time.monotonic() + 10
    while len(handler_events(rotating)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first, scheduled = handler_events(rotating)
    assert first == {"action": "rotate"}
    assert scheduled["detail-type"] == "Scheduled Event" and scheduled["source"] == "aws.events"
    deadline = time.monotonic() + 10
    while not rotating.logged and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rotating.logged == ["local: ran RotateKeysFunction (Rotation) when due: activate"]
    assert rotating._due == {}  # its answer names nothing due: nothing more is set


def test_nothing_runs_when_due_once_local_mode_stops(rotating):
    rotating.invoke_direct("RotateKeysFunction", {"action": "rotate"})
    (_, timer), = rotating._due.values()
    rotating.cancel_due()
    timer.join(5)
    assert handler_events(rotating) == [{"action": "rotate"}]
    rotating.invoke_direct("RotateKeysFunction", {"action": "rotate"})
    assert rotating._due == {}


def test_the_banner_tells_the_key_commands_and_the_shortened_lifecycle(rotating):
    rotating.overrides = {"JWKS_MAX_AGE": "5", "KEY_RING_TTL": "2"}
    text = rotating.banner()
    assert "Signing keys (lifecycle shortened through the template's variables, JWKS_MAX_AGE=5, KEY_RING_TTL=2" in text
    assert "  .venv/bin/oidc-broker keys list\n  .venv/bin/oidc-broker keys rotate\n" in text
    assert "oidc-broker keys revoke KID" in text
