"""`oidc-broker explain`: why a CI token would or would not get a token for a target.

For administrators: it shows the caller token's claims (never the token itself), each trust
rule's verdict check by check, and the subject and audience that would be minted. A rule whose
claims match a token that failed its signature or time checks is shown as "claims match, but
the token is not valid", never as admitting it.

Exit codes:
  0  a trust rule admits the token to the target, and its signature and times were verified
  1  not admitted: no rule admits it, the token is not valid, or (--no-verify) not verified
  2  usage or configuration error (the configuration cannot be read, the target does not exist)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from oidc_broker import callers
    from oidc_broker.config import Config


def explain(token: str, target_ref: str, config: Config, keys: callers.IssuerKeys | None, out: TextIO,
            now: float | None = None) -> int:
    """Print the explanation; the exit code as the module docstring says (0, 1 or 2)."""
    # Imported here so that `--help` (which reads this module's docstring) loads no broker code.
    from oidc_broker import callers, subject
    from oidc_broker.errors import BrokerError

    now = time.time() if now is None else now
    try:
        header, claims = callers.parse(token)
    except BrokerError as e:
        print(f"token      refused: {e.description}", file=out)
        return 1
    issuer = config.issuer_for(claims.get("iss")) if isinstance(claims.get("iss"), str) else None
    print(f"token      iss {claims.get('iss')!r}, sub {claims.get('sub')!r}, aud {claims.get('aud')!r}", file=out)
    if issuer is None:
        print("issuer     NOT TRUSTED: no trusted_issuers entry has this URL", file=out)
        return 1
    print(f"issuer     {issuer.name} ({issuer.preset.title}; leeway {issuer.leeway}s, max age {issuer.max_token_age}s)", file=out)

    # verified: the signature was checked and held; valid: nothing checked failed.
    verified, valid = keys is not None, True
    if keys is None:
        print("signature  not checked (--no-verify)", file=out)
        try:
            callers.check_claims(claims, issuer, now)
            print("time       ok", file=out)
        except BrokerError as e:
            print(f"time       FAIL: {e.description}", file=out)
            valid = False
    else:
        try:
            claims = callers.verify(token, config, keys, now).claims
            print("signature  ok; time ok", file=out)
        except BrokerError as e:
            print(f"signature  FAIL: {e.description}", file=out)
            verified = valid = False

    target = config.target(target_ref)
    if target is None:
        print(f"target     NOT FOUND: {target_ref!r} is not a <space>/<target> of this configuration", file=out)
        return 2
    print(f"target     {target.ref} ({target.provider} {target.kind}), audience {target.audience!r}", file=out)

    caller = callers.VerifiedCaller(issuer, claims)
    admitted = None
    for report in callers.explain(config, caller, target):
        verdict = "refuses" if not report.admits else "ADMITS" if valid else "claims match, but the token is not valid"
        print(f"\nrule {report.rule.name}: {verdict}", file=out)
        for check in report.checks:
            actual = _actual(check.name, claims)
            shown = f"; token has {actual!r}" if actual is not _NONE else ""
            print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name:<28} {check.detail}{shown}", file=out)
        if report.admits and admitted is None:
            admitted = report.rule

    if admitted is None:
        print("\nno trust rule admits this token to the target", file=out)
        return 1
    if not valid:
        print(f"\nwould refuse: the token is not valid (see above); rule {admitted.name} matches its claims", file=out)
        return 1
    try:
        minted = target.subject_for(callers.context_values(admitted, caller, target))
    except (BrokerError, subject.SubjectError) as e:
        print(f"\nwould refuse: {getattr(e, 'description', e)}", file=out)
        return 1
    print(f"\nwould mint  sub {str(minted)!r}\n            aud {target.audience!r}\n            via rule {admitted.name}", file=out)
    if not verified:
        print("(the signature was not verified: the verdict assumes the token is genuine)", file=out)
    return 0 if verified else 1


_NONE: Any = object()


def _actual(check_name: str, claims: dict[str, Any]) -> Any:
    if check_name.startswith("claim "):
        return claims.get(check_name[6:], _NONE)
    if check_name == "aud":
        return claims.get("aud", _NONE)
    return _NONE
