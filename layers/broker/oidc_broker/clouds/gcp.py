"""Google Cloud: what a target of workload identity federation carries.

A description only, for now: a `gcp:` target's settings, its default audience and Google's
subject limit. Its exchanger (STS token exchange, then service account impersonation) comes
with the Google Cloud exchange; until then /exchange/gcp does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import Cloud, Setting, refresh_at

_PROVIDER = re.compile(
    r"projects/\d+/locations/global/workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}"
)
_SERVICE_ACCOUNT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com")
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


def default_audience(settings: Mapping[str, Any]) -> str | None:
    # Google accepts the provider's full resource name as the audience when no allowedAudiences
    # are set on the provider; without a provider the target must name its audience.
    provider = settings.get("workload_identity_provider")
    return "https://iam.googleapis.com/" + provider if provider else None


CLOUD = Cloud(
    name="gcp",
    title="Google Cloud",
    settings={
        "workload_identity_provider": Setting(
            _PROVIDER, "projects/N/locations/global/workloadIdentityPools/P/providers/X"),
        "service_account": Setting(_SERVICE_ACCOUNT, "a service account e-mail"),
        "registry": Setting(_HOST, "a registry host name"),
        "refresh_at": refresh_at(0.5),
    },
    default_audience=default_audience,
    # Google maps the subject to `google.subject`, which holds at most 127 bytes.
    max_subject_bytes=127,
)
