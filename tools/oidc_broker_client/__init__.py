"""The pipeline side of oidc-broker: `oidc-broker login`, `credential-process` and the docker credential
helper `docker-credential-oidc-broker`.

It imports the standard library only (tests/client checks every import), so `pip install oidc-broker`
brings nothing else into a pipeline; the operator commands and local mode come with the `operator`
extra. It never logs or echoes a CI token, and prints a secret only where the user asked for it.
"""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("oidc-broker")
    except metadata.PackageNotFoundError:
        return "0+unknown"
