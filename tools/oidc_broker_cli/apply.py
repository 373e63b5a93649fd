"""`oidc-broker apply`: validate a configuration file and write it to the table, all or nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from oidc_broker import config as config_module

from .yamlfile import load

LOCAL_URL = "${local_url}"


class ApplyError(Exception):
    pass


def read(path: Path, *, local_url: str | None = None) -> dict[str, Any]:
    """Read a configuration file. In local mode `${local_url}` stands for local mode's base URL."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ApplyError(f"{path}: cannot read: {e.strerror}") from None
    if local_url is not None:
        text = text.replace(LOCAL_URL, local_url)
    try:
        document = load(text)
    except Exception as e:  # yaml errors carry line and column
        raise ApplyError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(document, dict):
        raise ApplyError(f"{path}: (top): must be a mapping")
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


def apply(document: dict[str, Any], source: str, store: Any, *, issuer: str | None = None,
          allow_loopback_http: bool = False, now: float | None = None) -> config_module.Config:
    """Validate, check the issuer is the deployment's, then write.

    Raises ConfigError when anything is invalid and ApplyError when the configuration's `issuer`
    is not this deployment's (see deployment_issuer); either way nothing is written.
    """
    config = config_module.parse(document, source, allow_loopback_http=allow_loopback_http)
    expected = deployment_issuer(store, issuer)
    if config.issuer != expected:
        raise ApplyError(f"{source}: issuer: is {config.issuer}, but this deployment's issuer is {expected}")
    store.put_config(document, source, int(time.time() if now is None else now))
    return config


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
