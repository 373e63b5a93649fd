"""The `oidc-broker` command: apply and validate configuration, run local mode, decode tokens.

Every command finds its deployment the same way (deployment.py): `--table`, `--stack NAME` or, with
neither, the running local mode. Every failure a user can cause is one line on standard error,
`oidc-broker <command>: what failed; what to do`, never a traceback (main() turns each class of
failure into that line, once for all commands).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from oidc_broker import config as config_module

from . import apply as apply_module
from .deployment import DeploymentError, TableDeployment, table_deployment

EXIT_CODES = """exit codes:
  0  done: the file is valid, applied, the token admitted
  1  a verdict of no: explain does not admit the token; refresh found a binding that failed
  2  usage or operational error: bad arguments, a configuration that is invalid or cannot be read,
     a deployment, table or network that cannot be reached (one line on standard error says which)"""
DEBUG_ENV = "OIDC_BROKER_DEBUG"  # set: an unexpected error shows its traceback


class CommandError(Exception):
    """A command cannot go on: one line for the operator, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (`oidc-broker audit: --limit: …`) instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("oidc-broker")
    except metadata.PackageNotFoundError:
        return "unknown"


def project_root() -> Path:
    """The directory holding template.yaml: the current one, or the package's checkout."""
    for candidate in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]):
        if (candidate / "template.yaml").is_file():
            return candidate
    raise DeploymentError("template.yaml not found; run from the project directory")


def print_warnings(config: config_module.Config, source: str) -> None:
    for path, advice in config.warnings:
        print(f"warning: {source}: {path}: {advice}", file=sys.stderr)


def emit(document: Any) -> None:
    print(json.dumps(document, indent=2))


def find_table(args: argparse.Namespace) -> TableDeployment:
    """The table the command names: --table / $TABLE_NAME, --stack, or the running local mode."""
    try:
        root = project_root()
    except DeploymentError:
        root = Path.cwd()  # only local mode's default record path needs it
    return table_deployment(args.table or os.environ.get("TABLE_NAME"), getattr(args, "stack", None),
                            getattr(args, "region", None), getattr(args, "profile", None), root)


def on_table(doing: str, call: Any) -> Any:
    """Call the table (or make its client); a botocore failure becomes one line saying what was being done."""
    from oidc_broker.configstore import CorruptBlob

    try:
        return call()
    except CorruptBlob as e:
        raise CommandError(f"{doing}: {e}") from None
    except Exception as e:
        line = aws_line(e)
        if line is None:
            raise
        raise CommandError(f"{doing}: {line}") from None


def loopback_allowed(args: argparse.Namespace, deployment: TableDeployment | None = None) -> bool:
    # Only local mode's deployment has an http:// issuer: its applied configuration trusts loopback issuers.
    return bool(args.allow_loopback_http or (deployment and deployment.local_url))


def read_document(file: str, deployment: TableDeployment | None = None) -> dict[str, Any]:
    """A configuration file ("-": standard input), with local mode's `${local_url}` and default issuer."""
    local_url = deployment.local_url if deployment else None
    document = apply_module.read(file, local_url=local_url)
    if local_url:
        document.setdefault("issuer", deployment.issuer)  # as local mode applies its own file
    return document


def load_config(args: argparse.Namespace) -> config_module.Config:
    """The configuration to explain against: a file, or what is applied in the deployment's table."""
    return config_and_deployment(args)[0]


def config_and_deployment(args: argparse.Namespace) -> tuple[config_module.Config, TableDeployment | None]:
    """load_config, and the deployment it was read from (None: a file)."""
    if args.config:
        source = apply_module.source_name(args.config)
        return config_module.parse(read_document(args.config), source,
                                   allow_loopback_http=args.allow_loopback_http), None
    from oidc_broker.store import Store

    table = args.table or os.environ.get("TABLE_NAME")
    where = f"table {table}" if table else "the deployment's table"
    deployment = on_table(f"cannot read the configuration from {where}", lambda: find_table(args))
    where = f"table {deployment.table}"
    # No region, no credentials, no such table: one line, never a traceback.
    item = on_table(f"cannot read the configuration from {where}",
                    lambda: Store(deployment.dynamodb, deployment.table).get_config())
    if item is None:
        raise CommandError(f"no configuration has been applied to {where}: oidc-broker apply FILE first")
    return config_module.parse(item["document"], item["source"],
                               allow_loopback_http=loopback_allowed(args, deployment)), deployment


def cmd_explain(args: argparse.Namespace) -> int:
    import time

    from oidc_broker.callers import HttpFetcher, IssuerKeys

    from .explain import explain

    if args.token == "-" and args.config == "-":
        raise CommandError("the token and --config cannot both be read from standard input")
    token = args.token if args.token != "-" else sys.stdin.read().strip()
    config, deployment = config_and_deployment(args)
    fetcher = HttpFetcher(allow_loopback_http=loopback_allowed(args, deployment))
    keys = None if args.no_verify else IssuerKeys(fetcher, time.time)
    if args.output != "json":
        return explain(token, args.target, config, keys, sys.stdout)
    text = io.StringIO()
    code = explain(token, args.target, config, keys, text)
    emit({"target": args.target, "admitted": code == 0, "exit_code": code, "report": text.getvalue().splitlines()})
    return code


def since_seconds(text: str) -> int | None:
    """`--since`: 7d, 12h, 30m, 90s or seconds; None when it is none of them (or not positive)."""
    from oidc_broker.config import parse_lifetime

    days = text[:-1] if text.endswith("d") else None
    seconds = parse_lifetime(days) * 86400 if days and days.isdigit() else parse_lifetime(text)
    return seconds if seconds and seconds > 0 else None


def cmd_audit(args: argparse.Namespace) -> int:
    import time

    from oidc_broker.store import Store

    window = since_seconds(args.since)
    if window is None:
        raise CommandError(f"--since {args.since!r}: takes a duration such as 7d, 12h or 30m")
    if args.limit < 1:
        raise CommandError(f"--limit {args.limit}: takes how many records to show, 1 or more")
    since = int(time.time()) - window
    deployment = on_table("cannot read the audit records", lambda: find_table(args))
    grants = on_table(f"cannot read the audit records of table {deployment.table}",
                      lambda: Store(deployment.dynamodb, deployment.table).grants_for(args.target, since=since,
                                                                                      limit=args.limit))
    if args.json or args.output == "json":
        emit(grants)
        return 0
    if not grants:
        print(f"no credentials were issued for {args.target} since {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(since))}")
        return 0
    for g in grants:
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(g["issued_at"]))
        print(f"{when}  {g['caller_subject']}  ({g['caller_issuer']}, rule {g['trust_rule']})  -> {g['subject']}  jti {g['token_jti']}")
    return 0


def cmd_trust_policy(args: argparse.Namespace) -> int:
    from oidc_broker.clouds import CLOUDS, TrustSetupError

    cloud = CLOUDS[args.cloud]
    config = load_config(args)
    target = config.target(args.target)
    if target is None or target.provider != cloud.name:
        raise CommandError(f"{args.target!r} is not an {cloud.name} target of this configuration")
    subjects = config.subject_patterns(target)
    if not subjects:
        raise CommandError(f"no trust rule admits anyone to {args.target!r} yet")
    try:
        setup = cloud.trust_setup(config.issuer, target, subjects)
    except TrustSetupError as e:
        raise CommandError(str(e)) from None
    if args.format == "json":
        emit(setup)  # JSON either way: it is what the cloud takes
        return 0
    from .trust import TrustFormatError, render

    try:
        text = render(cloud.name, args.format, setup, target, config.issuer)
    except TrustFormatError as e:
        raise CommandError(str(e)) from None
    if args.output == "json":
        emit({"target": target.ref, "format": args.format, "text": text})
    else:
        print(text)
    return 0


def jwks_issuer(args: argparse.Namespace) -> str:
    """The issuer whose key set `keys jwks` prints: --issuer, the deployment's, or its configuration's."""
    if args.issuer:
        return args.issuer
    if not args.config and not args.table and not os.environ.get("TABLE_NAME"):
        issuer = find_table(args).issuer  # --stack's output IssuerUrl, or local mode's
        if issuer:
            return issuer
    return load_config(args).issuer


def cmd_keys_jwks(args: argparse.Namespace) -> int:
    """The broker's published key set as a Google workload identity provider's jwksJson takes it."""
    import urllib.request

    from oidc_broker.clouds.gcp import jwks_for_upload

    issuer = jwks_issuer(args)
    try:
        with urllib.request.urlopen(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10) as r:
            jwks_uri = json.load(r)["jwks_uri"]
        with urllib.request.urlopen(jwks_uri, timeout=10) as r:
            jwks = json.load(r)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CommandError(f"could not fetch the key set of {issuer}: {e}; is the issuer reachable from here?") from None
    print(json.dumps(jwks_for_upload(jwks), separators=(",", ":")))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys list | rotate | revoke`: the rotation function's report, in a deployment or local mode (keys.py)."""
    from . import keys

    return keys.run(args, project_root)


def cmd_targets(args: argparse.Namespace) -> int:
    """`targets list` and `preview-subject`: what each target mints (targets.py)."""
    from . import targets

    return targets.run(args, project_root)


def cmd_doctor(args: argparse.Namespace) -> int:
    """`doctor`: a real exchange for a target, step by step, and the fix for the first failure (doctor.py)."""
    from . import doctor

    return doctor.run(args, project_root)


def cmd_refresh(args: argparse.Namespace) -> int:
    """`refresh`: the refresh function's report, in a deployment or local mode (refresh.py)."""
    from . import refresh

    return refresh.run(args, project_root)


def counts(config: config_module.Config) -> dict[str, int]:
    return {"spaces": len(config.spaces), "targets": sum(len(s.targets) for s in config.spaces.values()),
            "trust_rules": sum(len(s.trust) for s in config.spaces.values())}


def cmd_validate(args: argparse.Namespace) -> int:
    source = apply_module.source_name(args.file)
    try:
        config = config_module.parse(read_document(args.file), source, allow_loopback_http=args.allow_loopback_http)
    except config_module.ConfigError as e:
        if args.output != "json":
            raise
        emit({"file": source, "valid": False, "problems": [{"path": p, "problem": r} for p, r in e.problems]})
        return 2
    n = counts(config)
    if args.output == "json":
        emit({"file": source, "valid": True, "problems": [], **n,
              "warnings": [{"path": p, "advice": a} for p, a in config.warnings]})
        return 0
    print_warnings(config, source)
    print(f"{source}: valid ({n['spaces']} spaces, {n['targets']} targets, {n['trust_rules']} trust rules)")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from oidc_broker.configstore import ConfigConflict, CorruptBlob
    from oidc_broker.store import Store

    source = apply_module.source_name(args.file)
    table = args.table or os.environ.get("TABLE_NAME")
    deployment = on_table(f"cannot reach table {table}" if table else "cannot reach the deployment's table",
                          lambda: find_table(args))
    document = read_document(args.file, deployment)
    if args.issuer and deployment.issuer and args.issuer != deployment.issuer:
        raise CommandError(f"--issuer is {args.issuer}, but the deployment's issuer is {deployment.issuer}")
    store = Store(deployment.dynamodb, deployment.table)
    try:
        previous = store.get_config()
        config = apply_module.check(document, source, store, issuer=args.issuer or deployment.issuer,
                                    allow_loopback_http=loopback_allowed(args, deployment))
        found = apply_module.changes(previous["document"] if previous else None, document)
        if not args.dry_run:
            import time

            store.put_config(document, source, int(time.time()))  # switched last, all or nothing: applying again is safe
    except (apply_module.ApplyError, config_module.ConfigError) as e:
        raise CommandError(f"{e}\nnothing was written") from None
    except (ConfigConflict, CorruptBlob) as e:
        raise CommandError(f"{deployment.table}: {e}") from None
    except Exception as e:
        line = aws_line(e)
        if line is None:
            raise
        raise CommandError(f"{deployment.table}: {line}; nothing was written, apply again once it is fixed") from None
    if args.output == "json":
        emit({"changes": found, "applied": not args.dry_run})
        return 0
    print_warnings(config, source)
    print(f"changes against what is applied to {deployment.table}:")
    print("\n".join(apply_module.change_lines(found)))
    if args.dry_run:
        print(f"dry run: nothing was written; without --dry-run this applies {source} (issuer {config.issuer})")
        return 0
    print(f"applied {source} to {deployment.table}: issuer {config.issuer}")
    if line := apply_module.warm_hint(previous, config):
        print(line)
    return 0


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as local mode's server binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cmd_local(args: argparse.Namespace) -> int:
    from . import local

    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port {args.port}: takes a port number, 0 to 65535 (0: any free port)")
    if args.port and not port_free(args.port):
        raise CommandError(f"port {args.port} is in use (another local mode?): stop what uses it, or choose "
                           "another with --port N (make run PORT=N)")
    root = project_root()
    config_path = Path(args.config) if args.config else root / "examples" / "local.yaml"
    return local.run(root, config_path, args.port)


def _b64json(segment: str) -> object:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def cmd_decode(args: argparse.Namespace) -> int:
    token = args.token if args.token != "-" else sys.stdin.read().strip()
    try:
        head, body, _ = token.split(".")
        decoded = {"header": _b64json(head), "claims": _b64json(body)}
    except ValueError:
        raise CommandError("not a JWS compact token") from None
    emit(decoded)
    return 0


def add_output(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--output", choices=("text", "json"), default="text", help=f"json: {what}")


def add_deployment(p: argparse.ArgumentParser) -> None:
    """--table, or --stack with --region/--profile; neither: the running local mode."""
    where = p.add_argument_group("deployment (default: $TABLE_NAME, else the running local mode)")
    where.add_argument("--table", help="the broker's DynamoDB table (the stack output TableName)")
    where.add_argument("--stack", metavar="NAME", help="the CloudFormation stack (its outputs TableName, IssuerUrl)")
    where.add_argument("--region", help="the stack's or table's region (default: AWS_REGION / the profile's)")
    where.add_argument("--profile", help="the AWS CLI profile to use (default: AWS_PROFILE)")


def build_parser() -> tuple[argparse.ArgumentParser, Any, Any]:
    """The parser, its commands' subparsers and `keys`'s (where a module adds its own, see add_parsers)."""
    parser = Parser(prog="oidc-broker", description="OpenID Connect identity broker for deployment pipelines",
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"oidc-broker {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a configuration file; write nothing")
    p.add_argument("file", help="the configuration file, or - to read it from standard input")
    p.add_argument("--allow-loopback-http", action="store_true", help="accept http:// loopback issuers (local mode)")
    add_output(p, "{file, valid, problems, spaces, targets, trust_rules, warnings}")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("apply", help="validate a configuration file, show what it changes and write it to the "
                                     "broker's table")
    p.add_argument("file", help="the configuration file, or - to read it from standard input")
    p.add_argument("--dry-run", action="store_true", help="validate and show the changes; write nothing")
    p.add_argument("--issuer", metavar="URL",
                   help="the deployment's issuer (stack output IssuerUrl); the file's issuer: must equal it. "
                        "Needed only for a stack that does not record it yet")
    add_deployment(p)
    add_output(p, '{"changes": [...], "applied": true|false}')
    p.add_argument("--allow-loopback-http", action="store_true",
                   help="accept http:// loopback issuers (local mode's own table needs no flag: it is found)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("local", help="run local mode on http://127.0.0.1:PORT")
    p.add_argument("--config", help="configuration file (default: examples/local.yaml)")
    p.add_argument("--port", type=int, default=3000, help="port to serve on (0: any free port)")
    p.set_defaults(func=cmd_local)

    from .explain import __doc__ as explain_doc

    p = sub.add_parser("explain", help="show each trust rule's verdict on a CI token for a target",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes:" + explain_doc.split("Exit codes:", 1)[1].rstrip())
    p.add_argument("--target", required=True, help="<space>/<target>")
    p.add_argument("token", help="the caller's CI token, or - to read it from standard input")
    p.add_argument("--config", help="configuration file, or - for standard input (default: the one applied)")
    p.add_argument("--no-verify", action="store_true", help="do not fetch the issuer's keys; judge the claims only")
    p.add_argument("--allow-loopback-http", action="store_true", help="accept http:// loopback issuers (local mode)")
    add_deployment(p)
    add_output(p, "{target, admitted, exit_code, report: the text's lines}")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("trust-policy", help="print the trust policy a target's cloud role needs: exactly the "
                                            "subjects the trust rules can get minted ('*' only where a caller's "
                                            "claim chooses the value)")
    from oidc_broker.clouds import CLOUDS

    p.add_argument("cloud", choices=[name for name, cloud in CLOUDS.items() if cloud.trust_setup is not None],
                   help="the target's cloud")
    p.add_argument("--target", required=True, help="<space>/<target>")
    p.add_argument("--format", choices=("json", "commands", "terraform", "cloudformation"), default="json",
                   help="json: the setup as the cloud's API takes it (default); commands: the cloud's CLI "
                        "(aws, az, gcloud); terraform; cloudformation (AWS only)")
    p.add_argument("--config", help="configuration file, or - for standard input (default: the one applied)")
    add_deployment(p)
    add_output(p, "the setup JSON (with --format json), else {target, format, text}")
    p.add_argument("--allow-loopback-http", action="store_true",
                   help="accept http:// loopback issuers (local mode's own table needs no flag: it is found)")
    p.set_defaults(func=cmd_trust_policy)

    p = sub.add_parser("keys", help="the broker's signing keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("jwks", help="print the published JWKS for upload to a cloud that cannot reach the "
                                         "issuer: public key members only (no x5c/x5t)")
    p.add_argument("--issuer", metavar="URL", help="the broker's issuer URL (default: the deployment's)")
    p.add_argument("--config", help="configuration file naming the issuer, or - for standard input")
    add_deployment(p)
    add_output(p, "the key set (JSON either way: it is what a cloud uploads)")
    p.add_argument("--allow-loopback-http", action="store_true",
                   help="accept http:// loopback issuers (local mode's own table needs no flag: it is found)")
    p.set_defaults(func=cmd_keys_jwks)
    from . import keys as keys_module

    keys_module.add_parsers(keys_sub, cmd_keys)

    from . import refresh as refresh_module

    refresh_module.add_parser(sub, cmd_refresh)

    p = sub.add_parser("audit", help="who obtained credentials for a target, newest first")
    p.add_argument("--target", required=True, help="<space>/<target>")
    p.add_argument("--since", default="7d", help="how far back: 7d, 12h, 30m (default 7d)")
    p.add_argument("--limit", type=int, default=100, help="at most this many records (default 100)")
    add_deployment(p)
    add_output(p, "the records as a JSON list")
    p.add_argument("--json", action="store_true", help="the same as --output json")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("decode", help="print a token's header and claims (does not verify)")
    p.add_argument("token", help="the token, or - to read it from standard input")
    add_output(p, "{header, claims} (JSON either way: a token's parts are JSON)")
    p.set_defaults(func=cmd_decode)

    from . import doctor as doctor_module
    from . import targets as targets_module

    targets_module.add_parsers(sub, cmd_targets)
    doctor_module.add_parser(sub, cmd_doctor)
    return parser, sub, keys_sub


def aws_line(error: BaseException) -> str | None:
    """A botocore failure as one line with what to check; None for anything else."""
    try:
        import botocore.exceptions as aws
    except ImportError:
        return None
    hint = "check the table or stack name, --region/--profile (or AWS_REGION/AWS_PROFILE) and your credentials"
    if isinstance(error, aws.ClientError):
        detail = error.response.get("Error", {})
        return f"{detail.get('Code', 'error')}: {detail.get('Message', '')}".rstrip(": ") + f"; {hint}"
    if isinstance(error, aws.BotoCoreError):
        return f"{str(error).rstrip('.')}; {hint}"
    return None


def failure_line(error: BaseException) -> str | None:
    """What went wrong, for any failure a user can cause (each class once, for every command); None: a defect."""
    if isinstance(error, (CommandError, DeploymentError, apply_module.ApplyError, config_module.ConfigError)):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if (line := aws_line(error)) is not None:
        return line
    if isinstance(error, OSError):
        return f"{error.strerror or error}{': ' + str(error.filename) if error.filename else ''}"
    return None


def _silence_stdout() -> None:
    """After a broken pipe: nothing more reaches the reader, and the interpreter's final flush must not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: list[str] | None = None) -> int:
    from .keys import kid_arguments

    prog = "oidc-broker"
    try:
        parser, _, _ = build_parser()
        args = parser.parse_args(kid_arguments(sys.argv[1:] if argv is None else list(argv)))
        prog = " ".join(filter(None, (prog, args.command, getattr(args, "keys_command", None))))
        code = args.func(args)
        sys.stdout.flush()
        return code
    except SystemExit:  # --help, --version, a usage error: what argparse printed must reach the reader too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            print(f"{prog}: standard output was closed before everything was written", file=sys.stderr)
            return 2
        raise
    except BrokenPipeError:
        _silence_stdout()
        print(f"{prog}: standard output was closed before everything was written", file=sys.stderr)
        return 2
    except (Exception, KeyboardInterrupt) as e:
        line = failure_line(e)
        if line is None:
            if os.environ.get(DEBUG_ENV):
                raise
            line = f"unexpected error {type(e).__name__}: {e}; set {DEBUG_ENV}=1 for the details and report it"
        print(f"{prog}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
