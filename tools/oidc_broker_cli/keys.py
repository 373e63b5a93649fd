"""`oidc-broker keys list | rotate | revoke <kid>`: the signing keys' lifecycle, for an operator.

The stack's key rotation function (RotateKeysFunction) does the work and answers every action
with a report: the keys with their states, dates and next steps, the lifecycle, notices. These
commands invoke it — in a deployment (`--stack`) or in the running local mode (deployment.py) —
and print the report for a person, or as JSON (`--output json`). Exit codes: 0 done, 2 a usage
or operational error, said in one line on standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Callable, TextIO

from .deployment import Deployment, DeploymentError, Function, find

ROTATE_KEYS = Function("RotateKeysFunction", "KeyRotationFunctionName")
STATES = ("pending", "active", "retired")  # the lifecycle's order, as the table lists keys
# The report's notices the text output states itself, with UTC times and the exact commands
# (--output json keeps every notice).
STATED = ("rotation requested:", "verifiers may keep the revoked key", "Google providers holding an uploaded JWKS")


def iso(epoch: Any) -> str:
    """UTC ISO-8601, to the second; "-" for no time."""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def duration(seconds: Any) -> str:
    """A span as an operator reads it: 90d, 6m 5s, 1h 6m 5s, 0s."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "?"
    left, parts = int(round(seconds)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts)


def when(epoch: Any, now: float) -> str:
    """A time and how far it is from now: `2026-01-01T00:00:00Z (in 10s)`."""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return "-"
    delta = epoch - now
    return f"{iso(epoch)} ({'in ' + duration(delta) if delta > 0 else duration(-delta) + ' ago' if delta < 0 else 'now'})"


def checked(answer: Any, action: str) -> dict[str, Any]:
    """The function's report; its refusal (`error_description`) or a non-report as one line."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        raise DeploymentError(str(answer.get("error_description") or answer["error"]))
    if (not isinstance(answer, dict) or not isinstance(answer.get("keys"), list)
            or not all(isinstance(k, dict) and isinstance(k.get("kid"), str) for k in answer["keys"])
            or not isinstance(answer.get("lifecycle"), dict)):
        raise DeploymentError(f"the key rotation function answered {action} without a key report; "
                              "is the deployment older than `oidc-broker keys`?")
    return answer


def by_state(report: dict[str, Any], state: str) -> list[dict[str, Any]]:
    return [k for k in report["keys"] if k.get("state") == state]


def lifecycle_lines(lifecycle: dict[str, Any]) -> list[str]:
    return ["lifecycle:",
            f"  rotation period    {duration(lifecycle.get('period'))}: how long a key signs before the pending key "
            "takes over",
            f"  publication delay  {duration(lifecycle.get('publication_delay'))}: how long a key is published before it "
            "may sign (JWKS max-age + key ring cache + margin)",
            f"  retention          {duration(lifecycle.get('retention'))}: how long a retired key stays published "
            "(the longest token lifetime + the same caches)",
            f"  JWKS max-age       {duration(lifecycle.get('jwks_max_age'))}; key ring cache "
            f"{duration(lifecycle.get('ring_ttl'))}"]


def table(report: dict[str, Any], now: float) -> list[str]:
    order = {state: n for n, state in enumerate(STATES)}
    rows = [("KID", "STATE", "CREATED", "ACTIVATED/RETIRED", "NEXT")]
    for key in sorted(report["keys"], key=lambda k: (order.get(k.get("state"), len(order)), -(k.get("created_at") or 0))):
        since = {"active": ("activated", key.get("activated_at")), "retired": ("retired", key.get("retired_at")),
                 "pending": ("published", key.get("published_at"))}.get(key.get("state"), ("", None))
        step = key.get("next") if isinstance(key.get("next"), dict) else None
        rows.append((key["kid"], str(key.get("state")), iso(key.get("created_at")),
                     f"{since[0]} {iso(since[1])}" if since[1] is not None else "-",
                     f"{step.get('step')} at {when(step.get('at'), now)}" if step else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]


def notices(report: dict[str, Any]) -> list[str]:
    return [f"note: {n}" for n in report.get("notices") or [] if isinstance(n, str) and not n.startswith(STATED)]


def show_list(report: dict[str, Any], deployment: Deployment, now: float) -> list[str]:
    lines = [f"signing keys of {deployment.name}:", *table(report, now), "", *lifecycle_lines(report["lifecycle"])]
    if report.get("rotate_requested_at"):
        lines.append(f"rotation requested at {iso(report['rotate_requested_at'])}; takes effect at "
                     f"{when(report.get('effective_at'), now)}")
    return lines + notices(report)


def show_rotate(report: dict[str, Any], deployment: Deployment, now: float) -> list[str]:
    lifecycle, steps = report["lifecycle"], [s for s in report.get("steps") or [] if isinstance(s, dict)]
    lines = [f"created pending key {s.get('kid')}: published now, signs after the publication delay"
             for s in steps if s.get("step") == "create"]
    activated = [s for s in steps if s.get("step") == "activate"]
    active = by_state(report, "active")
    if activated:
        lines.append(f"rotated now: {activated[-1].get('kid')} signs every new token (within the key ring cache, "
                     f"{duration(lifecycle.get('ring_ttl'))})")
        lines += [f"{s.get('kid')} is retired: still published, so the tokens it signed keep verifying, for at "
                  f"least {duration(lifecycle.get('retention'))}" for s in steps if s.get("step") == "retire"]
    elif report.get("effective_at"):
        pending = by_state(report, "pending")
        lines.append(f"rotation requested: {pending[0]['kid'] if pending else 'the pending key'} becomes the signing "
                     f"key at {when(report['effective_at'], now)}")
        lines.append(f"why not now: publish before use. A key may sign only once it has been in the JWKS for "
                     f"{duration(lifecycle.get('publication_delay'))}, so that every verifier caching the JWKS "
                     f"(max-age {duration(lifecycle.get('jwks_max_age'))}) has it before a token names it; the "
                     "rotation function's next run makes the switch")
    else:
        lines.append("nothing to rotate now" + (f"; {active[0]['kid']} signs" if active else ""))
    return lines + notices(report)


def show_revoke(report: dict[str, Any], deployment: Deployment, kid: str, now: float) -> list[str]:
    lifecycle, active = report["lifecycle"], by_state(report, "active")
    cached = (lifecycle.get("jwks_max_age") or 0) + (lifecycle.get("ring_ttl") or 0)
    issuer = f" --issuer {deployment.issuer}" if deployment.issuer else ""
    return [
        f"revoked {kid}: out of the key ring and the JWKS now; its KMS key is disabled and scheduled for deletion",
        f"signs now: {active[0]['kid'] if active else 'no key (run `oidc-broker keys list`)'}",
        f"verifiers may keep the revoked key cached until {when(now + cached, now)}: JWKS max-age "
        f"{duration(lifecycle.get('jwks_max_age'))} + key ring cache {duration(lifecycle.get('ring_ttl'))}",
        "Google providers holding an uploaded JWKS must be updated now, each with:",
        f"  oidc-broker keys jwks{issuer} > jwks.json",
        "  gcloud iam workload-identity-pools providers update-oidc PROVIDER --location=global "
        "--workload-identity-pool=POOL --jwk-json-path=jwks.json",
        *notices(report),
    ]


def confirm(kid: str, key: dict[str, Any], deployment: Deployment, stdin: TextIO, stderr: TextIO) -> bool:
    if not stdin.isatty():
        raise DeploymentError("not revoking without confirmation: standard input is not a terminal; add --yes")
    signing = " It signs now: the pending key takes over at once, before its publication delay." \
        if key.get("state") == "active" else ""
    stderr.write(f"Revoke the {key.get('state')} key {kid} of {deployment.name}? It leaves the JWKS at once and "
                 f"tokens it signed stop verifying as verifiers refresh.{signing} [y/N] ")
    stderr.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def run(args: argparse.Namespace, root_of: Callable[[], Any], stdin: TextIO | None = None,
        stdout: TextIO | None = None, stderr: TextIO | None = None, clock: Callable[[], float] = time.time,
        deployment: Deployment | None = None) -> int:
    """One `keys list|rotate|revoke` command; its exit code. `root_of` finds the project (local mode's record).

    The streams default to sys's at the call, not at import (a caller may have redirected them since)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    prog = f"oidc-broker keys {args.keys_command}"
    try:
        deployment = deployment or find(args.stack, args.region, args.profile, root_of())
        if args.keys_command == "list":
            report = checked(deployment.invoke(ROTATE_KEYS, {"action": "status"}), "status")
            lines = show_list(report, deployment, clock())
        elif args.keys_command == "rotate":
            report = checked(deployment.invoke(ROTATE_KEYS, {"action": "rotate"}), "rotate")
            lines = show_rotate(report, deployment, clock())
        else:
            status = checked(deployment.invoke(ROTATE_KEYS, {"action": "status"}), "status")
            key = next((k for k in status["keys"] if k["kid"] == args.kid), None)
            if key is None:
                raise DeploymentError(f"no key {args.kid!r} in the key ring of {deployment.name}; "
                                      "`oidc-broker keys list` shows its keys")
            if not args.yes and not confirm(args.kid, key, deployment, stdin, stderr):
                raise DeploymentError("nothing was revoked")
            report = checked(deployment.invoke(ROTATE_KEYS, {"action": "revoke", "kid": args.kid}), "revoke")
            lines = show_revoke(report, deployment, args.kid, clock())
        stdout.write(json.dumps(report, indent=2) + "\n" if args.output == "json" else "\n".join(lines) + "\n")
        stdout.flush()
    except DeploymentError as e:
        print(f"{prog}: {e}", file=stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`): say so once; nothing more goes to the closed pipe.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        except (OSError, ValueError):
            pass
        print(f"{prog}: output cut short: the reading end of the pipe closed", file=stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; `oidc-broker keys list` shows what was done", file=stderr)
        return 2
    return 0


KID = re.compile(r"-[A-Za-z0-9_-]{42}")  # an RFC 7638 SHA-256 thumbprint (43 base64url characters) led by '-'


def kid_arguments(argv: list[str]) -> list[str]:
    """`keys revoke -Ab…`: a thumbprint may start with '-', which argparse would read as options; such a
    word (exactly a thumbprint's shape, which no option has) becomes the positional it is, after `--`."""
    if argv[:2] != ["keys", "revoke"] or "--" in argv:
        return argv
    kids = [word for word in argv[2:] if KID.fullmatch(word)]
    if len(kids) != 1:
        return argv
    return [word for word in argv if word != kids[0]] + ["--", kids[0]]


def add_parsers(keys_sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """`keys list`, `keys rotate` and `keys revoke` beside `keys jwks`, each running `func`."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("deployment (default: the running local mode)")
    where.add_argument("--stack", metavar="NAME", help="the CloudFormation stack (its outputs KeyRotationFunctionName, "
                                                       "IssuerUrl)")
    where.add_argument("--region", help="the stack's region (default: AWS_REGION / the profile's)")
    where.add_argument("--profile", help="the AWS CLI profile to use (default: AWS_PROFILE)")
    common.add_argument("--output", choices=("text", "json"), default="text",
                        help="json: the rotation function's report as it answered")
    p = keys_sub.add_parser("list", parents=[common], help="each signing key's state, dates and what happens next; the "
                                                          "lifecycle")
    p.set_defaults(func=func)
    p = keys_sub.add_parser("rotate", parents=[common], help="rotate now: the pending key signs once it has been "
                                                            "published for the publication delay (says when)")
    p.set_defaults(func=func)
    p = keys_sub.add_parser("revoke", parents=[common], help="emergency: take a key out of the JWKS at once; the "
                                                            "pending key takes over if it was signing")
    p.add_argument("kid", help="the key's kid (`oidc-broker keys list`), also one that starts with '-'")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=func)
