"""`oidc-broker`: the pipeline commands here, every other command handed to the operator CLI.

`login` and `credential-process` run on the standard library alone. The operator commands
(`validate`, `apply`, `local`, …) live in `oidc_broker_cli`, whose requirements come with the
`operator` extra; without them a command says which extra to install, rather than failing on an
import.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
from importlib import metadata

from . import login, version
from .errors import ClientError

DISTRIBUTION = "oidc-broker"
OPERATOR_EXTRA = "operator"
INSTALL_OPERATOR = f"pip install '{DISTRIBUTION}[{OPERATOR_EXTRA}]'"
# The operator CLI's commands, named when it cannot be imported (tests/client keeps this in step with it).
OPERATOR_COMMANDS = ("validate", "apply", "local", "explain", "trust-policy", "keys", "refresh", "audit", "decode",
                     "targets", "preview-subject", "doctor")


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oidc-broker", description="oidc-broker's pipeline commands")
    login.add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"{DISTRIBUTION} {version()}")
        return 0
    if argv[0] in login.COMMANDS:
        return run_client(argv, login.default_context(sys.stdin, sys.stdout, sys.stderr, time.time))
    operator = operator_main()
    known = [name for name, _ in operator_commands(operator)] if operator else list(OPERATOR_COMMANDS)
    if argv[0] not in known:
        needs = "" if operator else f", with {INSTALL_OPERATOR}"
        print(f"oidc-broker: unknown command {argv[0]!r} (pipeline commands: {', '.join(login.COMMANDS)}; "
              f"operator commands{needs}: {', '.join(known)})", file=sys.stderr)
        return 2
    if operator is None:
        print(f"oidc-broker {argv[0]} is an operator command: {INSTALL_OPERATOR}", file=sys.stderr)
        return 2
    return operator(argv)


def run_client(argv: list[str], context: login.Context) -> int:
    """A pipeline command: 0 when done, 1 with the failure and its next step on stderr, 2 for usage."""
    args = client_parser().parse_args(argv)
    try:
        return args.run(args, context)
    except ClientError as e:
        context.err.write(f"oidc-broker {args.command}: {e.diagnostics()}\n")
        return 1


def operator_main():  # noqa: ANN201 (the operator CLI's main, or None)
    """The operator CLI's `main` when its requirements are installed, else None."""
    if missing_operator_requirements():
        return None
    try:
        from oidc_broker_cli.main import main as operator
    except ImportError:  # a requirement installed without its metadata, or removed since
        return None
    return operator


def missing_operator_requirements() -> list[str]:
    """The operator extra's requirements (pyproject's, read from the installed metadata) not installed."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []  # running from a source checkout: the import decides
    missing = []
    for name in sorted(_extra_requirements(requires, OPERATOR_EXTRA, set())):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extra_requirements(requires: list[str], extra: str, seen: set[str]) -> set[str]:
    """Names an extra requires, following this distribution's own extras it names (operator -> layer)."""
    seen.add(extra)
    names: set[str] = set()
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if not re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker):
            continue
        match = _REQUIREMENT.match(spec)
        if not match:
            continue
        name, extras = match.group(1), match.group(2) or ""
        if _normalize(name) != DISTRIBUTION:
            names.add(name)
            continue
        for inner in (e.strip() for e in extras.split(",")):
            if inner and inner not in seen:
                names |= _extra_requirements(requires, inner, seen)
    return names


def usage() -> str:
    """The top-level help: the pipeline commands, then the operator commands (or how to get them)."""
    lines = ["usage: oidc-broker [-h] [--version] COMMAND ...", "",
             "OpenID Connect identity broker for deployment pipelines.", "", "pipeline commands:"]
    lines += [f"  {name:<20}{text}" for name, text in login.COMMANDS.items()]
    lines += ["", "operator commands:"]
    operator = operator_main()
    commands = operator_commands(operator) if operator else None
    if commands is None:
        lines.append(f"  {', '.join(OPERATOR_COMMANDS)}")
        lines.append(f"  (they need the operator extra: {INSTALL_OPERATOR})")
    else:
        lines += [f"  {name:<20}{text}" for name, text in commands]
    lines += ["", "`oidc-broker COMMAND --help` describes a command.", ""]
    return "\n".join(lines)


def operator_commands(operator) -> list[tuple[str, str]]:  # noqa: ANN001 (the operator CLI's main)
    """The operator CLI's commands with their one-line help, as its own --help lists them."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        operator(["--help"])
    listing = re.search(r"^\s*\{([a-z0-9,-]+)\}\s*$", text.getvalue(), re.M)
    if not listing:
        return [(name, "") for name in OPERATOR_COMMANDS]
    commands = []
    for name in listing.group(1).split(","):
        described = re.search(rf"^ {{4}}{re.escape(name)}(?: +(.*))?\n((?: {{8,}}.*\n)*)", text.getvalue(), re.M)
        help_text = " ".join(((described.group(1) or "") + " " + described.group(2)).split()) if described else ""
        commands.append((name, help_text))
    return commands
