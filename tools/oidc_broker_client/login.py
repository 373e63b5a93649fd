"""`oidc-broker login` and `oidc-broker credential-process`: the job's CI token traded at the broker for
a target's credentials, then handed to the tool that needs them.

Secrets go only where the user asked: a feed's password into docker's config (or to standard output
with `--print`), an account's credentials to standard output in the chosen format or to
$GITHUB_ENV. Everything said about the run goes to standard error, and never a token.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from . import ambient, output
from .broker import Broker, is_feed
from .cache import Cache, default_dir
from .docker import config_path, write_login
from .errors import ClientError
from .transport import checked_url

CLOUDS = ("aws", "azure", "gcp")
# The pipeline commands, with their one-line help.
COMMANDS = {
    "login": "trade this job's CI token for a target's credentials: a docker login for feeds, environment "
             "variables for accounts",
    "credential-process": "AWS credential_process: an AWS account target's role credentials as JSON, cached "
                          "until half their lifetime",
}


@dataclass
class Context:
    """What a command reads and writes, so a test can hand in its own."""

    where: ambient.Environment
    out: TextIO
    err: TextIO
    clock: Callable[[], float]


def checked_target(target: str) -> str:
    space, sep, name = target.partition("/")
    if not sep or not space or not name or "/" in name:
        raise ClientError(f"--target {target!r} is not <space>/<target>", "e.g. --target default/prod-ecr")
    return target


def obtain(url: str, cloud: str, target: str, source: ambient.Source, audience: str | None,
           context: Context) -> dict[str, Any]:
    """The target's credentials: the CI token for the broker's audience, exchanged at /exchange/<cloud>."""
    broker = Broker(url, request=context.where.http)
    token = ambient.ci_token(source, audience or broker.issuer(), context.where)
    if token.note:
        context.err.write(f"warning: {token.note}\n")
    return broker.exchange(cloud, checked_target(target), token.value)


def source_of(args: argparse.Namespace) -> ambient.Source:
    if args.token is not None and args.token != "-":
        raise ClientError("--token takes only '-' (read the token from standard input): a token on the command "
                          "line is visible to every process on the machine", "use --token - or --token-file FILE")
    if args.token is not None and args.token_file is not None:
        raise ClientError("give --token - or --token-file, not both")
    return ambient.Source(token_file="-" if args.token == "-" else args.token_file, token_env=args.token_env,
                          azure_service_connection=args.azure_service_connection)


def cmd_login(args: argparse.Namespace, context: Context) -> int:
    form = "github" if args.github_env else args.format
    if form == "github":
        output.github_env_path(context.where.env)  # refused before the CI token is spent
    credentials = obtain(args.url, args.cloud, args.target, source_of(args), args.audience, context)
    expires = credentials["expires_at"]
    if is_feed(credentials):
        registry, username = credentials["registry"], credentials["username"]
        # Other formats are for accounts: a feed's login goes to docker's config whatever they say, so one
        # invocation (`eval "$(oidc-broker login … --format shell)"`, the GitHub Action) serves both kinds.
        if form == "json":
            context.out.write(output.render("json", args.cloud, credentials, context.where.env))
        elif args.print:
            context.out.write(credentials["password"] + "\n")
            context.err.write(f"pipe this into: docker login --username {username} --password-stdin {registry}"
                              f"  (valid until {expires})\n")
        else:
            path = config_path(context.where.env)
            host = write_login(path, registry, username, credentials["password"])
            context.err.write(f"logged in to {host} as {username} until {expires} ({path})\n")
        return 0
    form = form or "env"
    context.out.write(output.render(form, args.cloud, credentials, context.where.env))
    names = ", ".join(name for name, _ in output.variables(args.cloud, credentials)) if form != "json" else "credentials"
    done = "set for the job's next steps" if form == "github" else "printed"
    context.err.write(f"{args.target}: {names} {done}, valid until {expires}\n")
    return 0


def cmd_credential_process(args: argparse.Namespace, context: Context) -> int:
    def fetch() -> dict[str, Any]:
        return obtain(args.url, "aws", args.target, source_of(args), args.audience, context)

    if args.no_cache:
        credentials = fetch()
    else:
        cache = Cache(default_dir(context.where.env), context.clock)
        credentials = cache.obtain(Cache.key(checked_url(args.url, "--url"), "aws", args.target), fetch)
    context.out.write(output.credential_process(credentials))
    return 0


def add_token_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the broker's URL (its IssuerUrl)")
    p.add_argument("--target", required=True, help="<space>/<target>")
    p.add_argument("--audience", help="the audience to request the CI token for (default: the broker's issuer, "
                                      "from URL/.well-known/openid-configuration)")
    p.add_argument("--token-file", metavar="FILE", help="read the CI token from FILE instead of the CI")
    p.add_argument("--token", metavar="-", help="'-': read the CI token from standard input")
    p.add_argument("--token-env", metavar="NAME", default=ambient.DEFAULT_TOKEN_ENV,
                   help=f"the environment variable holding the CI token, if set (default {ambient.DEFAULT_TOKEN_ENV}; "
                        "GitLab: the id_tokens: name)")
    p.add_argument("--azure-service-connection", metavar="ID",
                   help="Azure Pipelines: the service connection's ID to request the token for")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("login", help=COMMANDS["login"],
                       description="Trade this job's own OIDC token (GitHub Actions, GitLab CI, Buildkite, CircleCI, "
                                   "Azure Pipelines, or --token-file) for a target's credentials.")
    add_token_options(p)
    p.add_argument("--cloud", required=True, choices=CLOUDS, help="the target's provider")
    p.add_argument("--print", action="store_true",
                   help="feeds: print the password for `docker login --password-stdin` instead of writing "
                        "docker's config ($DOCKER_CONFIG/config.json or ~/.docker/config.json)")
    p.add_argument("--format", choices=output.FORMATS,
                   help="accounts: env (NAME=value, default), shell (export lines for eval), json, or github "
                        "(append to $GITHUB_ENV, masking each value); feeds: json prints the login, the others "
                        "write docker's config as without --format")
    p.add_argument("--github-env", action="store_true", help="the same as --format github")
    p.set_defaults(run=cmd_login)

    p = sub.add_parser("credential-process", help=COMMANDS["credential-process"],
                       description="Print AWS credential_process JSON for an AWS account target. Credentials are "
                                   "cached (owner-only, $OIDC_BROKER_CACHE_DIR or ~/.cache/oidc-broker) until "
                                   "half their lifetime has passed.")
    add_token_options(p)
    p.add_argument("--no-cache", action="store_true", help="always ask the broker")
    p.set_defaults(run=cmd_credential_process)


def default_context(stdin: TextIO, out: TextIO, err: TextIO, clock: Callable[[], float]) -> Context:
    return Context(ambient.Environment(os.environ, stdin=stdin.read), out, err, clock)
