"""oidc_broker_cli/refresh.py: `oidc-broker refresh` invokes the refresh function (in a stack or local
mode) and prints its report; the function's answers here are those of refresh.Report.to_dict."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from oidc_broker.config import parse
from oidc_broker_cli.apply import warm_hint
from oidc_broker_cli.deployment import DeploymentError
from oidc_broker_cli.refresh import add_parser, run

from .reports import FakeDeployment

NOW = 1_800_000_000
REPORT = {
    "started_at": NOW, "finished_at": NOW + 1,
    "counts": {"refreshed": 1, "current": 0, "skipped": 1, "failed": 1},
    "min_served_remaining": 0,
    "results": [
        {"target": "default/prod-ecr", "subject": "space:default:feed:prod-ecr", "outcome": "refreshed",
         "reason": "forced", "expires_at": NOW + 3600, "served_until": NOW + 1800},
        {"target": "default/prod-gar", "subject": "space:default:feed:prod-gar", "outcome": "skipped",
         "reason": "fresh: renewed from …", "expires_at": NOW + 1200, "served_until": NOW + 600},
        {"target": "default/prod-acr", "subject": "space:default:feed:prod-acr", "outcome": "failed",
         "reason": "azure_access_denied: AADSTS70021 …", "expires_at": None, "served_until": None},
    ],
}


def refresh(deployment, *argv):
    parser = argparse.ArgumentParser(prog="oidc-broker")
    add_parser(parser.add_subparsers(dest="command", required=True), run)
    out, err = io.StringIO(), io.StringIO()
    code = run(parser.parse_args(["refresh", *argv]), lambda: None, stdout=out, stderr=err, clock=lambda: NOW,
               deployment=deployment)
    return code, out.getvalue(), err.getvalue()


def test_refresh_invokes_the_function_and_prints_each_binding_with_its_outcome():
    deployment = FakeDeployment(lambda event: REPORT)
    code, out, err = refresh(deployment, "--target", "default/prod-ecr", "--target", "default/prod-acr", "--force")
    assert deployment.invoked == [("RefreshFunction", {"force": True,
                                                       "targets": ["default/prod-ecr", "default/prod-acr"]})]
    lines = out.splitlines()
    assert lines[0] == "refresh in stack broker: 1 refreshed, 0 current, 1 skipped, 1 failed"
    assert lines[1].split()[:3] == ["refreshed", "default/prod-ecr", "space:default:feed:prod-ecr"]
    assert "expires 2027-01-15T09:00:00Z (in 1h)" in lines[1] and lines[1].endswith("(forced)")
    assert "nothing cached" in lines[3] and "AADSTS70021" in lines[3]
    assert (code, err) == (1, "")  # a binding failed


def test_refresh_without_targets_asks_for_everything_due():
    deployment = FakeDeployment(lambda event: {**REPORT, "counts": {"refreshed": 1}, "results": REPORT["results"][:1]})
    code, out, _ = refresh(deployment)
    assert deployment.invoked == [("RefreshFunction", {"force": False})]
    assert code == 0


def test_refresh_prints_the_report_as_json():
    code, out, _ = refresh(FakeDeployment(lambda event: REPORT), "--output", "json")
    assert json.loads(out) == REPORT


@pytest.mark.parametrize(("answer", "message"), [
    ({"error": "invalid_target", "error_description": "target 'x/y' is not refreshed"}, "target 'x/y' is not refreshed"),
    ({"keys": []}, "without a refresh report"),
])
def test_a_refusal_or_a_non_report_is_one_line_and_exit_2(answer, message):
    code, out, err = refresh(FakeDeployment(lambda event: answer))
    assert (code, out) == (2, "")
    assert err.startswith("oidc-broker refresh: ") and message in err and len(err.splitlines()) == 1


def test_no_deployment_is_one_line_and_exit_2():
    class Missing:
        name = "local mode"

        def invoke(self, function, event):
            raise DeploymentError("local mode is not running (start it with `make run`)")

    code, _, err = refresh(Missing())
    assert code == 2 and err == "oidc-broker refresh: local mode is not running (start it with `make run`)\n"


def _config(**refresh_of):
    targets = [{"name": name, "kind": "feed", "provider": "aws", "refresh": flag} for name, flag in refresh_of.items()]
    return {"issuer": "https://id.example.com", "spaces": [{"name": "default", "targets": targets}]}


def test_apply_names_the_targets_that_newly_refresh_and_the_command_to_warm_them():
    config = parse(_config(a=True, b=True, c=False))
    hint = warm_hint({"document": _config(a=True, b=False)}, config)
    assert hint == ("refresh: true is new for default/b: the scheduled refresh warms their cached credentials on its "
                    "next run; to warm them now: oidc-broker refresh --target default/b [--stack NAME]")
    assert warm_hint({"document": _config(a=True, b=True)}, config) is None
    assert "--target default/a --target default/b" in warm_hint(None, config)
    assert warm_hint({"document": ["not", "a", "configuration"]}, config).startswith("refresh: true is new for default/a")
