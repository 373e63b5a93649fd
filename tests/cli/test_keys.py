"""oidc_broker_cli/keys.py: `oidc-broker keys list | rotate | revoke` against a rotation function
answering as its contract says (tests/cli/reports.py)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oidc_broker_cli.keys import add_parsers, duration, iso, run

from .reports import ACTIVE_KID, NOW, PENDING_KID, RETIRED_KID, FakeDeployment, FakeRotation

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def keys(deployment, *argv, stdin=None):
    """`oidc-broker keys ARGV` against `deployment`, parsed as main() parses it; (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="oidc-broker keys")
    add_parsers(parser.add_subparsers(dest="keys_command", required=True), run)
    out, err = io.StringIO(), io.StringIO()
    code = run(parser.parse_args(argv), lambda: None, stdin=stdin or io.StringIO(), stdout=out, stderr=err,
               clock=lambda: NOW, deployment=deployment)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def deployment():
    return FakeDeployment(FakeRotation())


def test_durations_and_times_read_as_an_operator_reads_them():
    assert [duration(s) for s in (0, 5, 365, 3965, 90 * 86400)] == ["0s", "5s", "6m 5s", "1h 6m 5s", "90d"]
    assert iso(NOW) == "2027-01-15T08:00:00Z" and iso(None) == "-"


def test_list_shows_each_key_its_state_dates_and_next_step_then_the_lifecycle(deployment):
    code, out, err = keys(deployment, "list")
    assert (code, err) == (0, "")
    assert deployment.invoked == [("RotateKeysFunction", {"action": "status"})]
    lines = out.splitlines()
    assert lines[0] == "signing keys of stack broker:"
    assert lines[1].split() == ["KID", "STATE", "CREATED", "ACTIVATED/RETIRED", "NEXT"]
    pending, active, retired = lines[2:5]
    assert pending.split()[:2] == [PENDING_KID, "pending"] and "activate at" in pending
    assert active.split()[:2] == [ACTIVE_KID, "active"]
    assert f"activated {iso(NOW - 10 * 86400)}" in active and f"retire at {iso(NOW + 80 * 86400)} (in 80d)" in active
    assert retired.split()[:2] == [RETIRED_KID, "retired"] and f"retired {iso(NOW - 10 * 86400)}" in retired
    assert retired.rstrip().endswith("-")
    assert lines[lines.index("lifecycle:") + 1:] == [
        "  rotation period    90d: how long a key signs before the pending key takes over",
        "  publication delay  6m 5s: how long a key is published before it may sign (JWKS max-age + key ring cache "
        "+ margin)",
        "  retention          1h 6m 5s: how long a retired key stays published (the longest token lifetime + the "
        "same caches)",
        "  JWKS max-age       5m; key ring cache 1m",
    ]


def test_output_json_prints_the_functions_report_as_it_answered(deployment):
    code, out, _ = keys(deployment, "list", "--output", "json")
    assert code == 0
    assert json.loads(out) == FakeRotation().report()


def test_rotate_says_when_it_takes_effect_and_why_not_now(deployment):
    code, out, _ = keys(deployment, "rotate")
    assert code == 0
    assert deployment.invoked == [("RotateKeysFunction", {"action": "rotate"})]
    assert f"rotation requested: {PENDING_KID} becomes the signing key at {iso(NOW + 265)} (in 4m 25s)" in out
    assert "why not now: publish before use" in out and "6m 5s" in out


def test_rotate_that_took_effect_says_which_key_signs_and_which_retired():
    code, out, _ = keys(FakeDeployment(FakeRotation(ready=True)), "rotate")
    assert code == 0
    assert f"rotated now: {PENDING_KID} signs every new token" in out
    assert f"{ACTIVE_KID} is retired: still published" in out


def test_revoke_with_yes_revokes_and_tells_what_verifiers_and_google_providers_need(deployment):
    code, out, err = keys(deployment, "revoke", ACTIVE_KID, "--yes")
    assert (code, err) == (0, "")
    assert deployment.invoked == [("RotateKeysFunction", {"action": "status"}),
                                  ("RotateKeysFunction", {"action": "revoke", "kid": ACTIVE_KID})]
    assert f"revoked {ACTIVE_KID}: out of the key ring and the JWKS now" in out
    assert f"signs now: {PENDING_KID}" in out
    assert f"until {iso(NOW + 360)} (in 6m)" in out  # JWKS max-age + key ring cache
    assert "oidc-broker keys jwks --issuer https://id.example.com > jwks.json" in out
    assert "--jwk-json-path=jwks.json" in out
    assert "note: the next key signs now, at once (emergency)" in out
    assert "cached for up to 360s" not in out  # a notice the lines above state, with the UTC time


def test_output_json_keeps_every_notice(deployment):
    code, out, _ = keys(deployment, "revoke", ACTIVE_KID, "--yes", "--output", "json")
    assert code == 0
    assert json.loads(out)["notices"] == [f"verifiers may keep the revoked key {ACTIVE_KID} cached for up to 360s",
                                          "the next key signs now, at once (emergency)"]


def test_revoke_refuses_without_yes_when_standard_input_is_not_a_terminal(deployment):
    code, out, err = keys(deployment, "revoke", ACTIVE_KID, stdin=io.StringIO("y\n"))
    assert (code, out) == (2, "")
    assert err == ("oidc-broker keys revoke: not revoking without confirmation: standard input is not a terminal; "
                   "add --yes\n")
    assert [e for _, e in deployment.invoked if e["action"] == "revoke"] == []


@pytest.mark.parametrize("answer, revoked", [("y\n", True), ("yes\n", True), ("n\n", False), ("\n", False)])
def test_revoke_asks_on_a_terminal_and_revokes_only_on_yes(deployment, answer, revoked):
    code, out, err = keys(deployment, "revoke", ACTIVE_KID, stdin=Terminal(answer))
    assert f"Revoke the active key {ACTIVE_KID} of stack broker?" in err
    assert "the pending key takes over at once" in err
    assert (code == 0) is revoked
    assert bool([e for _, e in deployment.invoked if e["action"] == "revoke"]) is revoked
    if not revoked:
        assert err.endswith("oidc-broker keys revoke: nothing was revoked\n")


def test_revoke_of_an_unknown_kid_is_refused_before_anything_is_asked(deployment):
    code, out, err = keys(deployment, "revoke", "no-such-kid", "--yes")
    assert (code, out) == (2, "")
    assert err == ("oidc-broker keys revoke: no key 'no-such-kid' in the key ring of stack broker; "
                   "`oidc-broker keys list` shows its keys\n")
    assert [e["action"] for _, e in deployment.invoked] == ["status"]


def test_a_refusal_of_the_function_is_one_line_and_exit_2():
    refusing = FakeDeployment(lambda event: {"error": "invalid_request", "error_description": "the key ring is busy"})
    assert keys(refusing, "rotate") == (2, "", "oidc-broker keys rotate: the key ring is busy\n")


@pytest.mark.parametrize("answer", [None, "ok", {"keys": "x", "lifecycle": {}}, {"keys": [{"state": "active"}]},
                                    {"statusCode": 200, "body": "{}"}])
def test_an_answer_that_is_not_a_key_report_is_one_line_and_exit_2(answer):
    code, out, err = keys(FakeDeployment(lambda event: answer), "list")
    assert (code, out) == (2, "")
    assert err.startswith("oidc-broker keys list: the key rotation function answered status without a key report")
    assert len(err.splitlines()) == 1


# -- the command as an operator runs it, against a local mode's adapter ---------------------------------------


class LocalRotation:
    """What the adapter needs of LocalBroker to serve /_local/invoke, with FakeRotation as the function."""

    routes, schedules = [], []

    def __init__(self):
        self.rotation = FakeRotation()

    def invoke_direct(self, function, event):
        assert function == "RotateKeysFunction"
        return self.rotation(event)


@pytest.fixture
def local(tmp_path):
    from oidc_broker_cli.deployment import LocalRecord
    from oidc_broker_cli.local.adapter import handler_for

    from .local.fakes import Served

    broker = LocalRotation()
    with Served(handler_for(broker)) as served:
        url = "http://{}:{}".format(*served.address)
        LocalRecord(url=url, issuer=url, table="t", aws_endpoint="", pid=os.getpid()).write(tmp_path / "local.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["OIDC_BROKER_LOCAL_RECORD"] = str(tmp_path / "local.json")
        yield env, url, broker


def command(env, *args, **kwargs):
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", "keys", *args], cwd=ROOT, env=env,
                          text=True, timeout=60, **kwargs)


def test_without_stack_the_commands_talk_to_the_recorded_local_mode(local):
    env, url, broker = local
    result = command(env, "revoke", ACTIVE_KID, "--yes", capture_output=True)
    assert result.returncode == 0, result.stderr
    assert f"oidc-broker keys jwks --issuer {url} > jwks.json" in result.stdout
    assert [e["action"] for e in broker.rotation.events] == ["status", "revoke"]
    result = command(env, "list", capture_output=True)
    assert result.stdout.startswith(f"signing keys of local mode at {url}:")
    assert ACTIVE_KID not in result.stdout


def test_revoke_refuses_when_standard_input_is_not_a_terminal(local):
    env, _, broker = local
    result = command(env, "revoke", ACTIVE_KID, input="y\n", capture_output=True)
    assert result.returncode == 2
    assert "standard input is not a terminal; add --yes" in result.stderr
    assert [e["action"] for e in broker.rotation.events] == ["status"]


def test_a_closed_pipe_is_one_line_and_exit_2(local):
    env, _, _ = local
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as `| head` after its lines
    try:
        result = command(env, "list", stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert result.returncode == 2
    assert result.stderr == "oidc-broker keys list: output cut short: the reading end of the pipe closed\n"



KID_WITH_A_DASH = "-SsdVcdOuhF_aygBvYwXq8W0w3hGkQJ3ZfJx9n2pLkE"  # thumbprints are base64url: '-' may lead


def test_a_kid_that_starts_with_a_dash_is_the_kid_not_an_option():
    from oidc_broker_cli.keys import kid_arguments

    kid = KID_WITH_A_DASH
    assert kid_arguments(["keys", "revoke", kid, "--yes"]) == ["keys", "revoke", "--yes", "--", kid]
    assert kid_arguments(["keys", "revoke", "--yes", kid, "--stack", "s"]) == ["keys", "revoke", "--yes", "--stack", "s",
                                                                                 "--", kid]
    assert kid_arguments(["keys", "revoke", "--", kid]) == ["keys", "revoke", "--", kid]
    assert kid_arguments(["keys", "revoke", "plainKid", "--yes"]) == ["keys", "revoke", "plainKid", "--yes"]
    assert kid_arguments(["keys", "list", kid]) == ["keys", "list", kid]


def test_the_cli_parses_a_kid_that_starts_with_a_dash(tmp_path, monkeypatch, capsys):
    from oidc_broker_cli.main import main

    monkeypatch.setenv("OIDC_BROKER_LOCAL_RECORD", str(tmp_path / "none.json"))
    assert main(["keys", "revoke", KID_WITH_A_DASH, "--yes"]) == 2  # parsed: it got as far as finding local mode
    assert capsys.readouterr().err.startswith("oidc-broker keys revoke: local mode is not running")
