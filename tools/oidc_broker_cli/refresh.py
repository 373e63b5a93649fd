"""`oidc-broker refresh [--target <space>/<target>]... [--force]`: renew cached credentials now.

The stack's refresh function (RefreshFunction) does the work with its own role: only it and the
exchange functions may sign with the broker's key and use the cache's key (the keys' policies name
them), so no operator's credentials could. This command invokes it — in a deployment (`--stack`)
or in the running local mode (deployment.py) — and prints its report: per binding (target and
subject) refreshed, current (renewed meanwhile by a request), skipped or failed, with the reason
and when its cached credentials expire; never a credential. Exit codes: 0 nothing failed, 1 a
binding failed (its last good credentials stay cached until they expire), 2 a usage or operational
error, said in one line on standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, TextIO

from .deployment import Deployment, DeploymentError, Function, find
from .keys import when

REFRESH = Function("RefreshFunction", "RefreshFunctionName")
OUTCOMES = ("refreshed", "current", "skipped", "failed")


def checked(answer: Any) -> dict[str, Any]:
    """The function's report; its refusal (`error_description`) or a non-report as one line."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        raise DeploymentError(str(answer.get("error_description") or answer["error"]))
    if (not isinstance(answer, dict) or not isinstance(answer.get("results"), list)
            or not all(isinstance(r, dict) and isinstance(r.get("outcome"), str) for r in answer["results"])
            or not isinstance(answer.get("counts"), dict)):
        raise DeploymentError("the refresh function answered without a refresh report; is the deployment older "
                              "than `oidc-broker refresh`?")
    return answer


def summary(report: dict[str, Any], deployment: Deployment, now: float) -> list[str]:
    counts = report["counts"]
    lines = [f"refresh in {deployment.name}: " + ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES)]
    results = report["results"]
    width = max((len(str(r.get("target"))) for r in results), default=0)
    for r in results:
        expiry = f"expires {when(r.get('expires_at'), now)}" if r.get("expires_at") else "nothing cached"
        lines.append(f"  {r['outcome']:<9}  {str(r.get('target')):<{width}}  {r.get('subject')}  {expiry}"
                     f"  ({r.get('reason')})")
    if not results:
        lines.append("  no target has refresh: true, or none of them has a subject to keep fresh yet")
    return lines


def run(args: argparse.Namespace, root_of: Callable[[], Any], stdout: TextIO | None = None,
        stderr: TextIO | None = None, clock: Callable[[], float] = time.time,
        deployment: Deployment | None = None) -> int:
    """One `refresh` command; its exit code. `root_of` finds the project (local mode's record).

    The streams default to sys's at the call, not at import (a caller may have redirected them since)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    event: dict[str, Any] = {"force": bool(args.force)}
    if args.target:
        event["targets"] = list(args.target)
    try:
        deployment = deployment or find(args.stack, args.region, args.profile, root_of())
        report = checked(deployment.invoke(REFRESH, event))
    except DeploymentError as e:
        print(f"oidc-broker refresh: {e}", file=stderr)
        return 2
    except KeyboardInterrupt:
        print("oidc-broker refresh: interrupted", file=stderr)
        return 2
    text = json.dumps(report, indent=2) if args.output == "json" else "\n".join(summary(report, deployment, clock()))
    stdout.write(text + "\n")
    stdout.flush()
    return 1 if report["counts"].get("failed") else 0


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser("refresh", help="renew the cached credentials of targets with refresh: true now, as the "
                                       "scheduled refresh does (the refresh function's report)")
    p.add_argument("--target", action="append", metavar="SPACE/TARGET",
                   help="only this target (repeat for more); default: every target with refresh: true")
    p.add_argument("--force", action="store_true",
                   help="renew every binding kept fresh, not only those due (never a subject no caller used recently)")
    where = p.add_argument_group("deployment (default: the running local mode)")
    where.add_argument("--stack", metavar="NAME", help="the CloudFormation stack (its output RefreshFunctionName)")
    where.add_argument("--region", help="the stack's region (default: AWS_REGION / the profile's)")
    where.add_argument("--profile", help="the AWS CLI profile to use (default: AWS_PROFILE)")
    p.add_argument("--output", choices=("text", "json"), default="text",
                   help="json: the refresh function's report as it answered")
    p.set_defaults(func=func)
