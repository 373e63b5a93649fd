"""The `oidc-broker` command: apply and validate configuration, run local mode, decode tokens."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

from oidc_broker import config as config_module

from . import apply as apply_module


def project_root() -> Path:
    """The directory holding template.yaml: the current one, or the package's checkout."""
    for candidate in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]):
        if (candidate / "template.yaml").is_file():
            return candidate
    raise SystemExit("oidc-broker: template.yaml not found; run from the project directory")


def print_warnings(config: config_module.Config, source: str) -> None:
    for path, advice in config.warnings:
        print(f"warning: {source}: {path}: {advice}", file=sys.stderr)


def load_config(args: argparse.Namespace) -> config_module.Config:
    """The configuration to explain against: a file, or what is applied in the table."""
    if args.config:
        return config_module.parse(apply_module.read(Path(args.config)), args.config,
                                   allow_loopback_http=args.allow_loopback_http)
    import boto3

    from oidc_broker.store import Store

    table = args.table or os.environ.get("TABLE_NAME")
    if not table:
        raise apply_module.ApplyError("name a configuration with --config FILE, or the table with --table / TABLE_NAME")
    import botocore.exceptions

    try:
        item = Store(boto3.client("dynamodb"), table).get_config()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        # No region, no credentials, no such table: one line, never a traceback.
        raise apply_module.ApplyError(f"cannot read the configuration from table {table}: {e}; "
                                      "check the table name, the region and your AWS credentials") from None
    if item is None:
        raise apply_module.ApplyError(f"no configuration has been applied to {table}")
    return config_module.parse(item["document"], item["source"], allow_loopback_http=args.allow_loopback_http)


def cmd_explain(args: argparse.Namespace) -> int:
    import time

    from oidc_broker.callers import HttpFetcher, IssuerKeys

    from .explain import explain

    token = args.token if args.token != "-" else sys.stdin.read().strip()
    try:
        config = load_config(args)
    except (apply_module.ApplyError, config_module.ConfigError) as e:
        print(e, file=sys.stderr)
        return 2
    keys = None if args.no_verify else IssuerKeys(HttpFetcher(allow_loopback_http=args.allow_loopback_http), time.time)
    return explain(token, args.target, config, keys, sys.stdout)


def cmd_audit(args: argparse.Namespace) -> int:
    import time

    import boto3

    from oidc_broker.config import parse_lifetime
    from oidc_broker.store import Store

    table = args.table or os.environ.get("TABLE_NAME")
    if not table:
        print("oidc-broker audit: name the table with --table or TABLE_NAME", file=sys.stderr)
        return 2
    window = parse_lifetime(args.since.replace("d", "")) * 86400 if args.since.endswith("d") else parse_lifetime(args.since)
    if window is None:
        print("oidc-broker audit: --since takes a duration such as 7d, 12h or 30m", file=sys.stderr)
        return 2
    since = int(time.time()) - window
    grants = Store(boto3.client("dynamodb"), table).grants_for(args.target, since=since, limit=args.limit)
    if args.json:
        print(json.dumps(grants, indent=2))
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
    try:
        config = load_config(args)
    except (apply_module.ApplyError, config_module.ConfigError) as e:
        print(e, file=sys.stderr)
        return 2
    target = config.target(args.target)
    if target is None or target.provider != cloud.name:
        print(f"oidc-broker trust-policy: {args.target!r} is not an {cloud.name} target of this configuration", file=sys.stderr)
        return 2
    subjects = config.subject_patterns(target)
    if not subjects:
        print(f"oidc-broker trust-policy: no trust rule admits anyone to {args.target!r} yet", file=sys.stderr)
        return 2
    try:
        setup = cloud.trust_setup(config.issuer, target, subjects)
    except TrustSetupError as e:
        print(f"oidc-broker trust-policy: {e}", file=sys.stderr)
        return 2
    print(json.dumps(setup, indent=2))
    return 0


def cmd_keys_jwks(args: argparse.Namespace) -> int:
    """The broker's published key set as a Google workload identity provider's jwksJson takes it."""
    import urllib.request

    from oidc_broker.clouds.gcp import jwks_for_upload

    issuer = args.issuer
    if not issuer:
        try:
            issuer = load_config(args).issuer
        except (apply_module.ApplyError, config_module.ConfigError) as e:
            print(e, file=sys.stderr)
            return 2
    try:
        with urllib.request.urlopen(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10) as r:
            jwks_uri = json.load(r)["jwks_uri"]
        with urllib.request.urlopen(jwks_uri, timeout=10) as r:
            jwks = json.load(r)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"oidc-broker keys jwks: could not fetch the key set of {issuer}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(jwks_for_upload(jwks), separators=(",", ":")))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys list | rotate | revoke`: the rotation function's report, in a deployment or local mode (keys.py)."""
    from . import keys

    return keys.run(args, project_root)


def cmd_refresh(args: argparse.Namespace) -> int:
    """`refresh`: the refresh function's report, in a deployment or local mode (refresh.py)."""
    from . import refresh

    return refresh.run(args, project_root)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        document = apply_module.read(Path(args.file))
        config = config_module.parse(document, args.file, allow_loopback_http=args.allow_loopback_http)
    except (apply_module.ApplyError, config_module.ConfigError) as e:
        print(e, file=sys.stderr)
        return 2
    print_warnings(config, args.file)
    targets = sum(len(s.targets) for s in config.spaces.values())
    rules = sum(len(s.trust) for s in config.spaces.values())
    print(f"{args.file}: valid ({len(config.spaces)} spaces, {targets} targets, {rules} trust rules)")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    import boto3
    import botocore.exceptions

    from oidc_broker.store import Store

    table = args.table or os.environ.get("TABLE_NAME")
    if not table:
        print("oidc-broker apply: name the table with --table or TABLE_NAME (the stack output TableName)", file=sys.stderr)
        return 2
    try:
        document = apply_module.read(Path(args.file))
        store = Store(boto3.client("dynamodb"), table)
        previous = store.get_config()
        config = apply_module.apply(document, args.file, store, issuer=args.issuer,
                                    allow_loopback_http=args.allow_loopback_http)
    except (apply_module.ApplyError, config_module.ConfigError) as e:
        print(e, file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 2
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        # One line, not a traceback; applying again is safe (one whole-item write).
        print(f"oidc-broker apply: {table}: {e}", file=sys.stderr)
        print("check the table name and your AWS credentials, then apply again", file=sys.stderr)
        return 2
    print_warnings(config, args.file)
    print(f"applied {args.file} to {table}: issuer {config.issuer}")
    if line := apply_module.warm_hint(previous, config):
        print(line)
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from . import local

    root = project_root()
    config_path = Path(args.config) if args.config else root / "examples" / "local.yaml"
    try:
        return local.run(root, config_path, args.port)
    except (apply_module.ApplyError, config_module.ConfigError) as e:
        print(e, file=sys.stderr)
        return 2


def _b64json(segment: str) -> object:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def cmd_decode(args: argparse.Namespace) -> int:
    token = args.token if args.token != "-" else sys.stdin.read().strip()
    try:
        head, body, _ = token.split(".")
        print(json.dumps({"header": _b64json(head), "claims": _b64json(body)}, indent=2))
    except ValueError:
        print("oidc-broker decode: not a JWS compact token", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oidc-broker", description="OpenID Connect identity broker for deployment pipelines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a configuration file; write nothing")
    p.add_argument("file")
    p.add_argument("--allow-loopback-http", action="store_true", help="accept http:// loopback issuers (local mode)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("apply", help="validate a configuration file and write it to the broker's table")
    p.add_argument("file")
    p.add_argument("--table", help="the DynamoDB table (default: $TABLE_NAME)")
    p.add_argument("--issuer", metavar="URL",
                   help="the deployment's issuer (stack output IssuerUrl); the file's issuer: must equal it. "
                        "Needed only for a stack that does not record it yet")
    p.add_argument("--allow-loopback-http", action="store_true", help=argparse.SUPPRESS)
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
    p.add_argument("--config", help="configuration file (default: the one applied to --table)")
    p.add_argument("--table", help="the DynamoDB table (default: $TABLE_NAME)")
    p.add_argument("--no-verify", action="store_true", help="do not fetch the issuer's keys; judge the claims only")
    p.add_argument("--allow-loopback-http", action="store_true", help="accept http:// loopback issuers (local mode)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("trust-policy", help="print the trust policy a target's cloud role needs: exactly the "
                                            "subjects the trust rules can get minted ('*' only where a caller's "
                                            "claim chooses the value)")
    from oidc_broker.clouds import CLOUDS

    p.add_argument("cloud", choices=[name for name, cloud in CLOUDS.items() if cloud.trust_setup is not None])
    p.add_argument("--target", required=True, help="<space>/<target>")
    p.add_argument("--config", help="configuration file (default: the one applied to --table)")
    p.add_argument("--table", help="the DynamoDB table (default: $TABLE_NAME)")
    p.add_argument("--allow-loopback-http", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_trust_policy)

    p = sub.add_parser("keys", help="the broker's signing keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("jwks", help="print the published JWKS for upload to a cloud that cannot reach the "
                                         "issuer: public key members only (no x5c/x5t)")
    p.add_argument("--issuer", metavar="URL", help="the broker's issuer URL (default: the configuration's issuer)")
    p.add_argument("--config", help="configuration file naming the issuer")
    p.add_argument("--table", help="the DynamoDB table (default: $TABLE_NAME)")
    p.add_argument("--allow-loopback-http", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_keys_jwks)
    from . import keys as keys_module

    keys_module.add_parsers(keys_sub, cmd_keys)

    from . import refresh as refresh_module

    refresh_module.add_parser(sub, cmd_refresh)

    p = sub.add_parser("audit", help="who obtained credentials for a target, newest first")
    p.add_argument("--target", required=True, help="<space>/<target>")
    p.add_argument("--since", default="7d", help="how far back: 7d, 12h, 30m (default 7d)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--table", help="the DynamoDB table (default: $TABLE_NAME)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("decode", help="print a token's header and claims (does not verify)")
    p.add_argument("token", help="the token, or - to read it from standard input")
    p.set_defaults(func=cmd_decode)

    args = parser.parse_args(keys_module.kid_arguments(sys.argv[1:] if argv is None else list(argv)))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
