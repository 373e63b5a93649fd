"""`oidc-broker targets list` and `oidc-broker preview-subject <space>/<target>`: what the broker mints.

For an operator writing a cloud's trust by hand: every target with its kind, cloud, audience, the
subject it is minted (a part a caller's claim supplies shown as `<claim NAME>`), its lifetime and
the trust rules that admit to it; and for one target, the exact `sub`, `aud` and claims a token
would carry for a caller with the claims given, judged by the trust rule and checked against every
cloud's limits. Nothing is minted, signed or written; no token is read or printed.

The configuration is a file (`--config FILE`, `-` for standard input), or the one applied to the
table of a deployment: `--stack NAME`, else the running local mode (`configuration` below, for
any command that needs it).

Exit codes:
  0  preview-subject: a token could be minted for these claims and it fits every limit; targets list: listed
  1  preview-subject: a trust rule or a limit says no (the reason is printed)
  2  usage or operational error (the configuration cannot be read, an unknown target, malformed claims)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import urlsplit

from oidc_broker import config as config_module
from oidc_broker import subject

from . import apply as apply_module
from .deployment import DeploymentError, table_deployment

# A kid as the key ring makes them (an RFC 7638 thumbprint, 43 characters): the header's size in a preview.
_KID = "k" * 43


class UsageError(Exception):
    """A mistake in what the command was given: one line, exit 2."""


# -- where the configuration comes from ---------------------------------------------------------

def _document(name: str, stdin: TextIO) -> dict[str, Any]:
    """A configuration document from a file, or from standard input for `-` (YAML, duplicates refused);
    a YAML mistake in one line naming the file, the line and the column."""
    import yaml

    from .yamlfile import load

    source = "<stdin>" if name == "-" else name
    try:
        text = stdin.read() if name == "-" else Path(name).read_text()
    except OSError as e:
        raise apply_module.ApplyError(f"{source}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise apply_module.ApplyError(f"{source}: cannot read: not UTF-8 text") from None
    try:
        document = load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise apply_module.ApplyError(f"{source}: not valid YAML: {where}{getattr(e, 'problem', None) or e}") from None
    if not isinstance(document, dict):
        raise apply_module.ApplyError(f"{source}: (top): must be a mapping")
    return document


def _loopback(document: dict[str, Any]) -> bool:
    """Local mode's configuration: its issuer is a loopback URL, so http:// loopback issuers are allowed."""
    issuer = document.get("issuer")
    return isinstance(issuer, str) and config_module.is_loopback(urlsplit(issuer).hostname)


def _applied(client: Any, table: str, where: str) -> tuple[dict[str, Any], str]:
    """The document applied to `table` and its source name; DeploymentError in one line otherwise."""
    import botocore.exceptions

    from oidc_broker.configstore import CorruptBlob
    from oidc_broker.store import Store

    try:
        item = Store(client, table).get_config()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, CorruptBlob) as e:
        raise DeploymentError(f"cannot read the configuration from table {table} of {where}: {e}; check the "
                              "region (--region) and your AWS credentials (--profile)") from None
    if item is None:
        raise DeploymentError(f"no configuration has been applied to {where} yet: oidc-broker apply FILE")
    return item["document"], f"{item['source']} (applied to {where})"


def configuration(args: argparse.Namespace, root: Path | None, stdin: TextIO | None = None) -> config_module.Config:
    """The configuration a command works on: `--config FILE` (`-`: standard input), else the one
    applied to `--stack NAME`'s table (its output TableName), else to the running local mode's.

    Raises DeploymentError, ApplyError or ConfigError, each with a message for the operator."""
    config_file = getattr(args, "config", None)
    stack, region, profile = getattr(args, "stack", None), getattr(args, "region", None), getattr(args, "profile", None)
    if config_file is not None:
        if stack or region or profile or getattr(args, "table", None):
            raise DeploymentError("--config names the configuration itself: give it, or --stack NAME, not both")
        document, source = _document(config_file, stdin or sys.stdin), "<stdin>" if config_file == "-" else config_file
    else:
        if stack is None and root is None and not getattr(args, "table", None):
            raise DeploymentError("name a configuration with --config FILE, or a deployment with --stack NAME")
        table = getattr(args, "table", None) or os.environ.get("TABLE_NAME")
        deployment = table_deployment(table, stack, region, profile, root or Path.cwd())
        name = f"stack {stack}" if stack else "the AWS account" if table else f"local mode at {deployment.local_url}"
        document, source = _applied(deployment.dynamodb, deployment.table, name)
    return config_module.parse(document, source, allow_loopback_http=_loopback(document))


# -- targets list -------------------------------------------------------------------------------

def subject_shape(target: config_module.Target, rule: config_module.TrustRule | None) -> str:
    """The subject `rule` gets minted for `target`: `<claim NAME>` where a caller's claim supplies
    a part, `<no rule supplies it>` where no rule is given for a part a rule must supply."""
    values: dict[str, str] = dict(target.fixed_values)
    for key in target.subject_keys:
        source = rule.context.get(key) if rule else None
        if source is not None:
            values[key] = source.literal if source.literal is not None else f"<claim {source.claim}>"
        elif key not in values:
            values[key] = "<no rule supplies it>"
    return subject.pattern(target.subject_keys, values)


def target_row(config: config_module.Config, target: config_module.Target) -> dict[str, Any]:
    rules = config.rules_for(target)
    subjects = sorted({subject_shape(target, r) for r in rules} or {subject_shape(target, None)})
    return {"target": target.ref, "kind": target.kind, "provider": target.provider, "audience": target.audience,
            "subjects": subjects, "lifetime": target.lifetime, "refresh": target.refresh,
            "rules": [r.name for r in rules]}


def table(rows: list[list[str]]) -> list[str]:
    """Rows as aligned columns (the first row the heading), two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def list_targets(config: config_module.Config, space: str | None) -> list[dict[str, Any]]:
    if space is not None and space not in config.spaces:
        raise UsageError(f"no space {space!r} in this configuration; spaces: {', '.join(config.spaces)}")
    return [target_row(config, t) for s in config.spaces.values() if space in (None, s.name) for t in s.targets.values()]


def list_text(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no targets"]
    heading = ["TARGET", "KIND", "PROVIDER", "AUDIENCE", "SUBJECT", "LIFETIME", "REFRESH", "TRUST RULES"]
    return table([heading] + [[r["target"], r["kind"], r["provider"], r["audience"], ", ".join(r["subjects"]),
                               f"{r['lifetime']}s", "yes" if r["refresh"] else "no",
                               ", ".join(r["rules"]) or "(none: no one is admitted)"] for r in rows])


# -- preview-subject ----------------------------------------------------------------------------

def caller_claims(text: str, stdin: TextIO) -> dict[str, Any]:
    """The caller's claims: a JSON object (`-` reads it from standard input), refused as a CI token's
    payload would be: duplicate members, nesting deeper than the broker accepts, strings not Unicode."""
    from oidc_broker import callers

    if text == "-":
        text = stdin.read()
    try:
        value = json.loads(text, object_pairs_hook=callers._no_duplicates)
    except RecursionError:
        raise UsageError(f"--claims is nested deeper than {callers.MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise UsageError(f"--claims is not JSON ({e}); give an object such as '{{\"environment\": \"production\"}}'") from None
    if not isinstance(value, dict):
        raise UsageError("--claims must be a JSON object of claim names to values, such as '{\"ref\": \"refs/heads/main\"}'")
    if problem := callers._unsafe_json(value):
        raise UsageError(f"--claims {problem}")
    return value


def _rule_named(config: config_module.Config, target: config_module.Target, name: str) -> config_module.TrustRule:
    for rule in config.spaces[target.space].trust:
        if rule.name == name:
            return rule
    names = ", ".join(r.name for r in config.spaces[target.space].trust) or "none"
    raise UsageError(f"no trust rule {name!r} in space {target.space!r}; its rules: {names}")


def judge(config: config_module.Config, target: config_module.Target, claims: dict[str, Any] | None,
          rule_name: str | None) -> tuple[config_module.TrustRule | None, list[dict[str, Any]], str | None]:
    """The rule a preview mints with, each rule's verdict on the claims, and why none admits (or None).

    With claims, the rules are judged as for a verified caller token (minting's first admitting rule;
    `iss` and `aud` default to what the rule expects); without, the first rule (or the one named)
    that lists the target is taken as admitting, its claim conditions unjudged."""
    from oidc_broker import callers

    rules = [_rule_named(config, target, rule_name)] if rule_name else list(config.rules_for(target))
    if not rules:
        return None, [], f"no trust rule admits anyone to {target.ref}"
    if claims is None:
        rule = rules[0]
        if target.name not in rule.targets:
            return rule, [], f"rule {rule.name} does not list target {target.name}"
        return rule, [], None
    verdicts, admitted = [], None
    for rule in rules:
        issuer = config.issuer_named(rule.issuer)
        report = callers.evaluate(rule, issuer, {"iss": issuer.issuer, "aud": rule.audience, **claims}, target)
        failed = report.first_failure()
        verdicts.append({"rule": rule.name, "admits": report.admits,
                         "check": failed.name if failed else None, "detail": failed.detail if failed else None,
                         "claims_have": _shown(failed.name, claims) if failed else None})
        if report.admits and admitted is None:
            admitted = rule
    if admitted is not None:
        return admitted, verdicts, None
    first = verdicts[0]
    has = f"; the claims have {first['claims_have']!r}" if first["claims_have"] is not None else "; the claims have none"
    return rules[0], verdicts, f"rule {first['rule']} refuses: {first['check']}: {first['detail']}{has}"


def _shown(check: str, claims: dict[str, Any]) -> Any:
    if check.startswith("claim "):
        return claims.get(check[6:])
    if check.endswith(" value"):
        return claims.get(check[:-6])
    return claims.get(check) if check == "aud" else None


def limits(config: config_module.Config, target: config_module.Target, sub: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Each cloud's verdict on the subject (only the target's own cloud decides), Entra's count of
    federated credentials for an Azure target's identity, and the size KMS signs."""
    from oidc_broker import tokens
    from oidc_broker.clouds import CLOUDS, azure

    size = len(sub.encode())
    checks = []
    for cloud in CLOUDS.values():
        mine = cloud.name == target.provider
        checks.append({"cloud": cloud.name, "check": "subject bytes", "decides": mine, "ok": size <= cloud.max_subject_bytes,
                       "detail": f"sub is {size} bytes; {cloud.title} allows at most {cloud.max_subject_bytes}"
                                 + ("" if mine else f" (decides for {cloud.name} targets only)")})
    if target.provider == azure.PROVIDER:
        checks.append(_entra(config, target, sub))
    try:
        signed = len(tokens.signing_input(tokens.header(_KID), body))
        checks.append({"cloud": "kms", "check": "signing input", "decides": True, "ok": True,
                       "detail": f"{signed} bytes to sign; KMS signs at most {tokens.MAX_SIGNING_INPUT}"})
    except tokens.TooLarge as e:
        checks.append({"cloud": "kms", "check": "signing input", "decides": True, "ok": False,
                       "detail": f"{e.size} bytes to sign; KMS signs at most {tokens.MAX_SIGNING_INPUT}: the caller's "
                                 "sub is too long"})
    return checks


def _entra(config: config_module.Config, target: config_module.Target, sub: str) -> dict[str, Any]:
    """Entra matches subjects exactly, at most 20 federated credentials per app or managed identity:
    the verdict is Azure's own rule across the configuration (azure.check_config)."""
    from oidc_broker.clouds import azure

    identity = (target.setting("tenant_id"), target.setting("client_id"))
    sharing = [t for s in config.spaces.values() for t in s.targets.values()
               if t.provider == azure.PROVIDER and (t.setting("tenant_id"), t.setting("client_id")) == identity]
    count = len({s for t in sharing for s in config.subject_patterns(t)})
    problems = [why for ref, why in azure.check_config(config) if ref == target.ref]
    exact = sub in config.subject_patterns(target)
    detail = (f"a federated credential with exactly subject {sub}; app {identity[1]} in tenant {identity[0]} needs "
              f"{count} of the {azure.MAX_FEDERATED_CREDENTIALS} Entra allows")
    if not exact:
        problems.append(f"{sub} is not among the exact subjects the trust rules can get minted for {target.ref}")
    return {"cloud": azure.PROVIDER, "check": "federated credentials", "decides": True, "ok": not problems,
            "detail": problems[0] if problems else detail}


def preview(config: config_module.Config, ref: str, claims: dict[str, Any] | None, rule_name: str | None,
            now: int) -> dict[str, Any]:
    """What a token minted for `ref` would carry for a caller with `claims` (None: not judged), and
    every verdict on it; `ok` says whether it could be minted and fits every limit that decides."""
    from oidc_broker import callers, tokens
    from oidc_broker.errors import BrokerError

    target = config.target(ref)
    if target is None:
        raise UsageError(f"{ref!r} is not a <space>/<target> of this configuration; `oidc-broker targets list` "
                         "shows them")
    rule, verdicts, refused = judge(config, target, claims, rule_name)
    result: dict[str, Any] = {"target": target.ref, "kind": target.kind, "provider": target.provider,
                              "rule": rule.name if rule else None, "claims_judged": claims is not None,
                              "rules": verdicts, "sub": None, "aud": target.audience, "claims": None, "limits": [],
                              "ok": False, "reason": refused}
    if rule is None:
        return result
    given = claims or {}
    if claims is None:
        needed = [f"{src.claim!r} (subject key {key!r})" for key, src in rule.context.items()
                  if key in target.subject_keys and src.claim is not None]
        if needed:
            raise UsageError(f"rule {rule.name} takes {', '.join(needed)} from the caller's claims: give them with "
                             "--claims JSON")
    issuer = config.issuer_named(rule.issuer)
    try:
        context = callers.context_values(rule, callers.VerifiedCaller(issuer, given), target)
        # Built without a length limit so that a subject too long is shown with the limits it breaks.
        unbounded = subject.build(target.subject_keys, {**target.fixed_values, **context}, 1 << 20)
    except (BrokerError, subject.SubjectError) as e:
        result["reason"] = refused or getattr(e, "description", str(e))
        return result
    sub = str(unbounded)
    body = tokens.claims(issuer=config.issuer, target=target, subject=unbounded, now=now, jti="<a fresh UUID per token>",
                         caller=tokens.Caller(issuer=issuer.issuer, subject=str(given.get("sub", "<the caller's sub>"))))
    result.update(sub=sub, claims=body, limits=limits(config, target, sub, body))
    try:
        target.subject_for(context)  # the mint's own check of the subject, its cloud's limit included
    except subject.SubjectError as e:
        refused = refused or str(e)
    failed = next((c for c in result["limits"] if c["decides"] and not c["ok"]), None)
    result["reason"] = refused or (f"{failed['cloud']} {failed['check']}: {failed['detail']}" if failed else None)
    result["ok"] = result["reason"] is None
    return result


def preview_text(result: dict[str, Any]) -> list[str]:
    lines = [f"target   {result['target']} ({result['provider']} {result['kind']})"]
    if not result["claims_judged"] and result["rule"]:
        lines.append(f"rule     {result['rule']} (its claim conditions not judged: give --claims to judge a caller's)")
    for v in result["rules"]:
        verdict = "ADMITS" if v["admits"] else f"refuses: {v['check']}: {v['detail']}"
        lines.append(f"rule     {v['rule']}: {verdict}")
    if result["sub"] is not None:
        lines += [f"sub      {result['sub']}", f"aud      {result['aud']}", "claims"]
        lines += ["  " + line for line in json.dumps(result["claims"], indent=2, sort_keys=True).splitlines()]
        lines.append("limits")
        lines += [f"  {'ok  ' if c['ok'] else 'FAIL' if c['decides'] else 'note'}  {c['cloud']:<6} {c['check']:<22} "
                  f"{c['detail']}" for c in result["limits"]]
    lines.append("verdict  could be minted, and fits every limit" if result["ok"] else f"verdict  NO: {result['reason']}")
    return lines


# -- the commands -------------------------------------------------------------------------------

def run(args: argparse.Namespace, root_of: Callable[[], Any] | None = None, stdout: TextIO | None = None,
        stderr: TextIO | None = None, stdin: TextIO | None = None, clock: Callable[[], float] | None = None) -> int:
    """One `targets list` or `preview-subject` command; its exit code (the module docstring's).

    `root_of` finds the project (local mode's record); the streams default to sys's at the call."""
    import time

    stdout, stderr, stdin = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    command = "preview-subject" if args.targets_action == "preview" else "targets list"
    try:
        if args.targets_action == "preview" and args.claims == "-" and getattr(args, "config", None) == "-":
            raise UsageError("only one of --config and --claims can read standard input")
        claims = caller_claims(args.claims, stdin) if args.targets_action == "preview" and args.claims is not None else None
        root = root_of() if root_of is not None and getattr(args, "config", None) is None else None
        config = configuration(args, root, stdin)
        if args.targets_action == "list":
            rows = list_targets(config, args.space)
            text = json.dumps(rows, indent=2) if args.output == "json" else "\n".join(list_text(rows))
            code = 0
        else:
            result = preview(config, args.target, claims, args.rule, int((clock or time.time)()))
            text = json.dumps(result, indent=2) if args.output == "json" else "\n".join(preview_text(result))
            code = 0 if result["ok"] else 1
    except (UsageError, DeploymentError, apply_module.ApplyError) as e:
        print(f"oidc-broker {command}: {e}", file=stderr)
        return 2
    except config_module.ConfigError as e:
        print(e, file=stderr)
        return 2
    except SystemExit as e:  # project_root's refusal: already one line
        print(e, file=stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oidc-broker {command}: interrupted", file=stderr)
        return 2
    stdout.write(text + "\n")
    stdout.flush()
    return code


def _source(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("configuration (default: the one applied to the running local mode)")
    where.add_argument("--config", metavar="FILE", help="a configuration file (YAML), or - to read it from standard input")
    where.add_argument("--stack", metavar="NAME", help="the CloudFormation stack whose applied configuration to read "
                                                       "(its output TableName)")
    where.add_argument("--table", help="the broker's DynamoDB table whose applied configuration to read "
                                       "(default: $TABLE_NAME)")
    where.add_argument("--region", help="the stack's region (default: AWS_REGION / the profile's)")
    where.add_argument("--profile", help="the AWS CLI profile to use (default: AWS_PROFILE)")


def add_parsers(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """`targets list` and `preview-subject`, each calling `func(args)`."""
    epilog = "exit codes:" + __doc__.split("Exit codes:", 1)[1].rstrip()
    p = sub.add_parser("targets", help="the configuration's targets")
    targets_sub = p.add_subparsers(dest="targets_command", required=True)
    p = targets_sub.add_parser("list", help="every target: kind, cloud, audience, subject, lifetime, refresh and "
                                            "the trust rules that admit to it",
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    p.add_argument("--space", metavar="SPACE", help="only the targets of this space")
    _source(p)
    p.add_argument("--output", choices=("text", "json"), default="text", help="json: a list of objects, one per target")
    p.set_defaults(func=func, targets_action="list")

    p = sub.add_parser("preview-subject", help="the exact sub, aud and claims a token for a target would carry, "
                                               "judged by its trust rule and every cloud's limits",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    p.add_argument("target", metavar="SPACE/TARGET", help="the target, as <space>/<target>")
    p.add_argument("--claims", metavar="JSON",
                   help="the caller token's claims as a JSON object (- reads them from standard input); they supply "
                        "the subject parts a trust rule takes from a claim, and are judged by the trust rules")
    p.add_argument("--rule", metavar="NAME", help="judge with this trust rule only (default: every rule listing the "
                                                  "target; the first that admits mints, as the broker does)")
    _source(p)
    p.add_argument("--output", choices=("text", "json"), default="text", help="json: one object with every verdict")
    p.set_defaults(func=func, targets_action="preview")
