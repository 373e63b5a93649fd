"""`oidc-broker apply`: validate a configuration file, show what it changes against what is applied,
and write it to the table, all or nothing.

The difference (`changes`) is computed over the two configuration documents as plain data, so an
applied document that an older or newer broker wrote is still compared, never re-validated.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from oidc_broker import config as config_module

from .yamlfile import describe, load

LOCAL_URL = "${local_url}"
STDIN = "-"  # a file argument of "-" reads standard input
STDIN_NAME = "<stdin>"


class ApplyError(Exception):
    pass


def source_name(file: str | Path) -> str:
    """How messages name a configuration file argument: its path, or <stdin> for "-"."""
    return STDIN_NAME if str(file) == STDIN else str(file)


def read(path: str | Path, *, local_url: str | None = None) -> dict[str, Any]:
    """Read a configuration file ("-": standard input). In local mode `${local_url}` stands for
    local mode's base URL. A YAML error names the file, the line and the column."""
    name = source_name(path)
    try:
        text = sys.stdin.read() if str(path) == STDIN else Path(path).read_text()
    except OSError as e:
        raise ApplyError(f"{name}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ApplyError(f"{name}: cannot read: not UTF-8 text") from None
    if local_url is not None:
        text = text.replace(LOCAL_URL, local_url)
    try:
        document = load(text)
    except yaml.YAMLError as e:
        raise ApplyError(f"{name}: not valid YAML: {describe(e)}") from None
    if not isinstance(document, dict):
        raise ApplyError(f"{name}: (top): must be a mapping")
    return document


def deployment_issuer(store: Any, stated: str | None = None) -> str:
    """The issuer of the deployment behind `store`: recorded by the stack, or `stated` (--issuer).

    When both are known they must agree, and one must be: a configuration whose `issuer` is not
    the deployment's makes every mint fail, so it is refused before anything is written.
    """
    deployment = store.get_deployment()
    recorded = deployment["issuer"] if deployment else None
    if recorded is not None and stated is not None and stated != recorded:
        raise ApplyError(f"--issuer is {stated}, but this deployment's issuer is {recorded}")
    if recorded is None and stated is None:
        raise ApplyError(
            "the table does not record this deployment's issuer (a stack deployed before oidc-broker recorded it): "
            "redeploy the stack, or state it with --issuer URL (the stack output IssuerUrl)"
        )
    return recorded or stated


def check(document: dict[str, Any], source: str, store: Any, *, issuer: str | None = None,
          allow_loopback_http: bool = False) -> config_module.Config:
    """Validate and check the issuer is the deployment's; write nothing.

    Raises ConfigError when anything is invalid and ApplyError when the configuration's `issuer`
    is not this deployment's (see deployment_issuer).
    """
    config = config_module.parse(document, source, allow_loopback_http=allow_loopback_http)
    expected = deployment_issuer(store, issuer)
    if config.issuer != expected:
        raise ApplyError(f"{source}: issuer: is {config.issuer}, but this deployment's issuer is {expected}")
    return config


def apply(document: dict[str, Any], source: str, store: Any, *, issuer: str | None = None,
          allow_loopback_http: bool = False, now: float | None = None) -> config_module.Config:
    """Validate, check the issuer is the deployment's (see check), then write; when anything is
    refused nothing is written."""
    config = check(document, source, store, issuer=issuer, allow_loopback_http=allow_loopback_http)
    store.put_config(document, source, int(time.time() if now is None else now))
    return config


# -- what a configuration changes ------------------------------------------------------------------

ADDED, CHANGED, REMOVED = "added", "changed", "removed"
MARKS = {ADDED: "+", CHANGED: "~", REMOVED: "-"}


def _named(items: Any) -> dict[str, dict[str, Any]]:
    """A document's list of named entries by name, read defensively (entries without a name are skipped)."""
    if not isinstance(items, list):
        return {}
    return {str(item["name"]): item for item in items if isinstance(item, dict) and "name" in item}


def _compare(kind: str, space: str | None, before: dict[str, dict[str, Any]],
             after: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    changes = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        change: dict[str, Any] = {"kind": kind, "space": space, "name": name,
                                  "change": ADDED if old is None else REMOVED if new is None else CHANGED}
        if old is not None and new is not None:
            change["fields"] = sorted(k for k in old.keys() | new.keys() if k != "name" and old.get(k) != new.get(k))
        changes.append(change)
    return changes


def changes(applied: Any, document: dict[str, Any]) -> list[dict[str, Any]]:
    """What applying `document` changes against the `applied` document (None: nothing applied yet).

    One entry per issuer, trusted issuer, target and trust rule added, changed or removed:
    {"kind": "issuer" | "trusted issuer" | "target" | "trust rule", "space": its space (None
    outside one), "name", "change": "added" | "changed" | "removed", and for a change the
    "fields" that differ}. Entries come space by space, in name order.
    """
    applied = applied if isinstance(applied, dict) else {}
    out: list[dict[str, Any]] = []
    if applied.get("issuer") != document.get("issuer"):
        out.append({"kind": "issuer", "space": None, "name": str(document.get("issuer")),
                    "change": CHANGED if "issuer" in applied else ADDED, "was": applied.get("issuer")})
    out += _compare("trusted issuer", None, _named(applied.get("trusted_issuers")),
                    _named(document.get("trusted_issuers")))
    before, after = _named(applied.get("spaces")), _named(document.get("spaces"))
    for space in sorted(before.keys() | after.keys()):
        old, new = before.get(space, {}), after.get(space, {})
        out += _compare("target", space, _named(old.get("targets")), _named(new.get("targets")))
        out += _compare("trust rule", space, _named(old.get("trust")), _named(new.get("trust")))
    return out


def change_lines(found: list[dict[str, Any]]) -> list[str]:
    """The changes for a person: `+ space default: target prod-ecr`, `~ … (fields: aws, refresh)`."""
    if not found:
        return ["  no changes: the configuration is the one applied"]
    lines = []
    for c in found:
        where = f"space {c['space']}: " if c["space"] is not None else ""
        if c["kind"] == "issuer":
            what = f"issuer {c['name']}" + (f" (was {c['was']})" if c.get("was") else "")
        else:
            what = f"{where}{c['kind']} {c['name']}" + (f" ({', '.join(c['fields'])})" if c.get("fields") else "")
        lines.append(f"  {MARKS[c['change']]} {what}")
    return lines


def refreshable_refs(document: Any) -> set[str]:
    """The <space>/<target> a configuration document marks `refresh: true`, read defensively (an
    earlier applied document is only data here)."""
    refs = set()
    spaces = document.get("spaces") if isinstance(document, dict) else None
    for space in spaces if isinstance(spaces, list) else []:
        targets = space.get("targets") if isinstance(space, dict) else None
        for target in targets if isinstance(targets, list) else []:
            if isinstance(target, dict) and target.get("refresh") is True:
                refs.add(f"{space.get('name')}/{target.get('name')}")
    return refs


def warm_hint(previous: dict[str, Any] | None, config: config_module.Config) -> str | None:
    """For targets that now have `refresh: true` and had not in the configuration applied before:
    the command that warms their cache at once (the schedule does within a run)."""
    from oidc_broker.refresh import refreshable

    before = refreshable_refs(previous["document"]) if previous else set()
    new = [t.ref for t in refreshable(config) if t.ref not in before]
    if not new:
        return None
    targets = " ".join(f"--target {ref}" for ref in new)
    return (f"refresh: true is new for {', '.join(new)}: the scheduled refresh warms their cached credentials on "
            f"its next run; to warm them now: oidc-broker refresh {targets} [--stack NAME]")
