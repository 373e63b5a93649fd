"""oidc_broker_cli/local/broker.py: the banner lists each cloud's emulators and, when any, the schedules."""

from __future__ import annotations

from pathlib import Path

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
