"""`oidc-broker` never shows a traceback for a user's mistake: each command, run as a new user would
(no region, no credentials, a missing table, a bad --since or --limit, a busy port, a reader that
closes early), says in one line on standard error what failed, and exits 2 (or 1 for a verdict of no).

Also here: --version, the exit codes in --help, `-` for standard input, and YAML errors naming the
file and the line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from oidc_broker_cli.local import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from localmode import ONE_FEED  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
GOOD = ONE_FEED


@pytest.fixture
def env(tmp_path):
    """A new user's environment: no AWS_* variable, an empty home, no local mode recorded."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "TABLE_NAME"}
    clean.update(HOME=str(tmp_path), OIDC_BROKER_LOCAL_RECORD=str(tmp_path / "no-local-mode.json"))
    return clean


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(GOOD)
    return str(path)


def cli(env, *args, stdin=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "oidc_broker_cli.main", *args], cwd=ROOT, env=env, input=stdin,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


def assert_one_line(result, command, *says):
    """Exit 1 or 2, one line on standard error naming the command, no traceback anywhere."""
    assert "Traceback" not in (result.stdout or "") + result.stderr, result.stderr
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"oidc-broker {command}: "), result.stderr
    for said in says:
        assert said in result.stderr


def table_commands(config):
    """Each command that reads or writes the broker's table, by its name and arguments."""
    return [("apply", ["apply", config]), ("explain", ["explain", "--target", "default/prod-ecr", TOKEN]),
            ("trust-policy", ["trust-policy", "aws", "--target", "default/prod-ecr"]),
            ("audit", ["audit", "--target", "default/prod-ecr"]), ("keys jwks", ["keys", "jwks"])]


@pytest.mark.parametrize("where", [["--table", "broker"], ["--stack", "broker"]])
def test_every_table_command_without_a_region_says_so_in_one_line(env, config, where):
    for command, args in table_commands(config):
        assert_one_line(cli(env, *args, *where), command, "You must specify a region", "--region")


@pytest.mark.parametrize("where", [["--table", "broker"], ["--stack", "broker"]])
def test_every_table_command_without_credentials_says_so_in_one_line(env, config, where):
    env = {**env, "AWS_EC2_METADATA_DISABLED": "true"}  # no instance to ask: fail at once, as on a laptop
    for command, args in table_commands(config):
        assert_one_line(cli(env, *args, *where, "--region", "eu-west-1"), command, "Unable to locate credentials")


def test_every_table_command_without_local_mode_or_a_deployment_says_how_to_name_one(env, config):
    for command, args in table_commands(config):
        assert_one_line(cli(env, *args), command, "local mode is not running", "--stack NAME", "--table")


def test_an_unknown_profile_is_one_line(env, config):
    for command, args in table_commands(config):
        assert_one_line(cli(env, *args, "--stack", "broker", "--profile", "nope"), command,
                        "The config profile (nope) could not be found")


@pytest.fixture(scope="module")
def moto():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_every_table_command_against_a_missing_table_or_stack_is_one_line(env, config, moto):
    env = {**env, "AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for command, args in table_commands(config):
        if command == "keys jwks":
            continue  # reads no table once the stack names its issuer; below with --table
        assert_one_line(cli(env, *args, "--table", "no-such-table"), command, "ResourceNotFoundException")
        assert_one_line(cli(env, *args, "--stack", "no-such-stack"), command,
                        "cannot describe stack no-such-stack: ValidationError")
    assert_one_line(cli(env, "keys", "jwks", "--table", "no-such-table"), "keys jwks", "ResourceNotFoundException")


@pytest.mark.parametrize("args, says", [
    (["--since", "xd"], "--since 'xd': takes a duration such as 7d"),
    (["--since", "0d"], "--since '0d'"),
    (["--limit", "0"], "--limit 0: takes how many records to show, 1 or more"),
    (["--limit", "-3"], "--limit -3"),
    (["--limit", "many"], "argument --limit: invalid int value: 'many'"),
])
def test_audit_refuses_a_bad_since_or_limit_in_one_line_before_any_call(env, args, says):
    # --table without a region: had the arguments been accepted, the error would be the region's.
    assert_one_line(cli(env, "audit", "--target", "default/prod-ecr", "--table", "t", *args), "audit", says)


def test_a_usage_error_is_one_line_naming_the_command_and_its_help(env):
    assert_one_line(cli(env, "explain", TOKEN), "explain", "--target", "(see oidc-broker explain --help)")


def test_local_mode_on_a_busy_port_says_which_and_how_to_choose_another(env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(env, "local", "--port", str(port))
    assert_one_line(result, "local", f"port {port} is in use", "--port N")


@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("command, args", [
    ("decode", ["decode", TOKEN]),
    ("validate", ["validate", "CONFIG"]),
    ("trust-policy", ["trust-policy", "aws", "--target", "default/prod-ecr", "--config", "CONFIG"]),
])
def test_a_reader_that_closes_early_is_one_line_not_a_traceback(env, config, command, args, buffered):
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED" or not buffered}
    read, write = os.pipe()
    os.close(read)  # as `oidc-broker … | head -c1` once head has exited
    try:
        result = cli(env, *[config if a == "CONFIG" else a for a in args], stdout=write)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert result.stderr == f"oidc-broker {command}: standard output was closed before everything was written\n"


@pytest.mark.parametrize("buffered", [True, False])
def test_help_to_a_reader_that_closes_early_shows_no_traceback(env, buffered):
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED" or not buffered}
    read, write = os.pipe()
    os.close(read)
    try:
        result = cli(env, "--help", stdout=write)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode in (0, 2)  # argparse itself ignores a failed write of its help


def test_version_is_the_packages(env):
    from importlib import metadata

    result = cli(env, "--version")
    assert (result.returncode, result.stdout) == (0, f"oidc-broker {metadata.version('oidc-broker')}\n")


def test_help_lists_the_exit_codes(env):
    result = cli(env, "--help")
    assert result.returncode == 0
    for line in ("exit codes:", "  0  done", "  1  a verdict of no", "  2  usage or operational error"):
        assert line in result.stdout


def test_validate_and_trust_policy_read_the_configuration_from_standard_input(env):
    result = cli(env, "validate", "-", stdin=GOOD)
    assert (result.returncode, result.stdout) == (0, "<stdin>: valid (1 spaces, 1 targets, 1 trust rules)\n")
    result = cli(env, "trust-policy", "aws", "--target", "default/prod-ecr", "--config", "-", stdin=GOOD)
    assert result.returncode == 0, result.stderr
    assert '"id.example.com:sub": "space:default:feed:prod-ecr"' in result.stdout


def test_validate_output_json_lists_the_problems(env):
    import json

    result = cli(env, "validate", "-", "--output", "json", stdin=GOOD.replace("kind: feed", "kind: bucket"))
    assert result.returncode == 2
    answer = json.loads(result.stdout)
    assert answer["valid"] is False
    assert {"path": "spaces[0].targets[0].kind", "problem": "must be one of feed, account"} in answer["problems"]
    answer = json.loads(cli(env, "validate", "-", "--output", "json", stdin=GOOD).stdout)
    assert (answer["valid"], answer["targets"], answer["trust_rules"]) == (True, 1, 1)


def test_explain_cannot_read_both_the_token_and_the_configuration_from_standard_input(env):
    assert_one_line(cli(env, "explain", "--target", "default/prod-ecr", "--config", "-", "-", stdin=GOOD),
                    "explain", "cannot both be read from standard input")


@pytest.mark.parametrize("text, says", [
    (GOOD.replace("    trust:\n", "\ttrust:\n"), "line 13, column 1: found character '\\t' that cannot start any token"),
    (GOOD.replace("        kind: feed", "       kind: feed"), "line 10, column 8: expected <block end>"),
    (GOOD + "issuer: https://other.example.com\n", "line 18, column 1: duplicate key 'issuer' (also at line 2)"),
])
def test_a_yaml_error_names_the_file_and_the_line(env, tmp_path, text, says):
    path = tmp_path / "broker.yaml"
    path.write_text(text)
    assert_one_line(cli(env, "validate", str(path)), "validate", f"{path}: not valid YAML: {says}")
    assert_one_line(cli(env, "validate", "-", stdin=text), "validate", f"<stdin>: not valid YAML: {says}")


def test_a_missing_file_is_one_line(env, tmp_path):
    assert_one_line(cli(env, "validate", str(tmp_path / "nope.yaml")), "validate", "nope.yaml: cannot read")
    assert_one_line(cli(env, "apply", str(tmp_path / "nope.yaml"), "--table", "t", "--region", "eu-west-1"), "apply",
                    "nope.yaml: cannot read")


def test_every_argument_of_every_command_has_help_text():
    import argparse

    from oidc_broker_cli.main import build_parser

    parser, *_ = build_parser()
    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction) and action.help in (None, "", argparse.SUPPRESS):
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, ["oidc-broker"])
    assert not missing
