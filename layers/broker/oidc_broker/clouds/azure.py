"""Azure: what a target of Microsoft Entra ID workload identity federation carries.

A description only, for now: an `azure:` target's settings and the audience Entra expects. Its
exchanger (client credentials with the broker token as the client assertion) comes with the
Azure exchange; until then /exchange/azure does not exist and no trust setup is printed.
"""

from __future__ import annotations

import re

from . import Cloud, Setting, refresh_at

_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")

CLOUD = Cloud(
    name="azure",
    title="Azure",
    settings={
        "tenant_id": Setting(_UUID, "a tenant ID (UUID)"),
        "client_id": Setting(_UUID, "an application (client) ID (UUID)"),
        "registry": Setting(_HOST, "a registry host name"),
        "refresh_at": refresh_at(0.5),
    },
    # The audience Entra ID's federated identity credentials expect by default.
    default_audience=lambda settings: "api://AzureADTokenExchange",
)
