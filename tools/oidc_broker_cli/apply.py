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


def apply(document: dict[str, Any], source: str, store: Any, *, allow_loopback_http: bool = False,
          now: float | None = None) -> config_module.Config:
    """Validate, then write. Raises ConfigError (nothing written) when anything is invalid."""
    config = config_module.parse(document, source, allow_loopback_http=allow_loopback_http)
    store.put_config(document, source, int(time.time() if now is None else now))
    return config
