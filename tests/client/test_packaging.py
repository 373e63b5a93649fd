"""The client installs alone: it imports only the standard library, and a wheel of the project installed
with no dependencies into a fresh venv (no boto3, no moto, no Powertools) runs `oidc-broker` and the
docker credential helper against local mode. The dispatcher hands the operator commands on, or says
which extra to install."""

from __future__ import annotations

import ast
import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from clientrun import MAIN

from oidc_broker_client import main as client_main

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tools" / "oidc_broker_client"
OPERATOR_IMPORT = "oidc_broker_cli"  # imported lazily, by the dispatcher only


def test_the_client_imports_only_the_standard_library():
    problems = []
    for path in sorted(CLIENT.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if top == OPERATOR_IMPORT and path.name == "main.py" and node.col_offset > 0:
                    continue  # inside a function: only when an operator command is run
                problems.append(f"{path.name}:{node.lineno}: imports {name}")
    assert not problems, problems


def test_the_operator_commands_named_without_the_extra_are_the_operator_clis_commands():
    # Read from the operator CLI's own --help: a command added there must be named here too.
    listed = {name for name, _ in client_main.operator_commands(client_main.operator_main())}
    assert listed == set(client_main.OPERATOR_COMMANDS), (
        f"the operator CLI has {sorted(listed)}: name them in OPERATOR_COMMANDS (tools/oidc_broker_client/main.py)")


def test_help_lists_the_pipeline_and_the_operator_commands_with_their_help():
    out = io.StringIO()
    with redirect_stdout(out):
        assert client_main.main(["--help"]) == 0
    text = out.getvalue()
    for name in ("login", "credential-process", *client_main.OPERATOR_COMMANDS):
        assert f"\n  {name} " in text
    assert "check a configuration file; write nothing" in text  # validate's own help line


def test_other_commands_are_handed_to_the_operator_cli(capsys):
    assert client_main.main(["decode", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.x"]) == 0
    assert json.loads(capsys.readouterr().out)["claims"] == {"sub": "x"}


def test_an_unknown_command_names_every_command(capsys):
    assert client_main.main(["logn"]) == 2
    said = capsys.readouterr().err
    assert "unknown command 'logn' (pipeline commands: login, credential-process; operator commands: validate" in said


def test_the_operator_extra_is_read_from_the_metadata_following_its_layer_extra():
    requires = ['oidc-broker[layer]; extra == "operator"', 'boto3>=1.35; extra == "operator"',
                'PyJWT<3,>=2.10; extra == "layer"', 'moto[server]<6,>=5.1; extra == "operator"',
                'pytest>=8; extra == "dev"']
    assert client_main._extra_requirements(requires, "operator", set()) == {"boto3", "PyJWT", "moto"}


# -- a fresh venv with the client alone ----------------------------------------------------------

@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A venv holding only the project's wheel, built offline from a copy of the sources."""
    work = tmp_path_factory.mktemp("fresh")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "node_modules")
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for part in ("layers/broker/oidc_broker", "tools/oidc_broker_cli", "tools/oidc_broker_client", "tools/emulators"):
        shutil.copytree(ROOT / part, source / part, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(work / "dist"),
                    str(source)], check=True, capture_output=True, text=True, timeout=300)
    [wheel] = (work / "dist").glob("*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return venv


def run(venv: Path, *argv: str, env: dict | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=venv, env={"PATH": "/usr/bin:/bin", "HOME": str(venv), **(env or {})})


def test_the_fresh_venv_has_no_boto3_moto_or_powertools(fresh):
    done = run(fresh, "python", "-c", "import importlib.util as u; print([m for m in ('boto3', 'botocore', 'moto', "
                                      "'aws_lambda_powertools', 'jwt', 'yaml') if u.find_spec(m)])")
    assert done.stdout.strip() == "[]", done.stderr


def test_the_client_alone_prints_help_and_version_and_names_the_extra_for_operator_commands(fresh):
    done = run(fresh, "oidc-broker", "--help")
    assert done.returncode == 0, done.stderr
    assert "login" in done.stdout and "validate, apply, local" in done.stdout
    assert "pip install 'oidc-broker[operator]'" in done.stdout
    assert run(fresh, "oidc-broker", "--version").stdout.strip() == "oidc-broker 0.1.0"
    done = run(fresh, "oidc-broker", "validate", "broker.yaml")
    assert (done.returncode, done.stderr) == (
        2, "oidc-broker validate is an operator command: pip install 'oidc-broker[operator]'\n")
    assert "Traceback" not in done.stderr


def test_the_client_alone_logs_in_against_local_mode(fresh, local):
    token = local.ci_token(**MAIN)
    done = run(fresh, "oidc-broker", "login", "--url", local.base_url, "--target", "default/prod-ecr", "--cloud", "aws",
               env={"GITLAB_CI": "true", "OIDC_BROKER_ID_TOKEN": token})
    assert done.returncode == 0, done.stderr
    config = json.loads((fresh / ".docker" / "config.json").read_text())
    assert list(config["auths"]) == ["123456789012.dkr.ecr.us-east-1.amazonaws.com"]
    done = run(fresh, "docker-credential-oidc-broker", "get", stdin="ghcr.io")
    assert (done.returncode, done.stdout) == (1, "credentials not found in native keychain\n")
