"""Google Cloud in local mode: the verifying Google STS emulator, the IAM Credentials emulator, and
each target's workload identity provider and service account binding.

The broker's process is pointed at them by configuration only: `GCP_STS_ENDPOINT` and
`GCP_IAMCREDENTIALS_ENDPOINT` are the endpoints every Google Cloud target uses when it names none
(google-auth accepts http:// token URLs, so no TLS). `trust` registers, for each Google Cloud
target, its provider (issuer the broker, its audience, `google.subject` mapped from
`assertion.sub`, an attribute condition admitting exactly the subjects the broker can mint) and
binds roles/iam.workloadIdentityUser on its service account, as an operator would with
`oidc-broker trust-policy gcp`. The STS emulator fetches the broker's discovery and JWKS over HTTP.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_TARGET = "default/prod-gar"  # the walk's example when no Google Cloud target is set up


def start(broker: Any) -> GcpWiring:
    return GcpWiring(broker.issuer).start()


class GcpWiring:
    def __init__(self, issuer: str):
        self.issuer = issuer
        self.targets: list[str] = []

    def start(self) -> GcpWiring:
        from oidc_broker.clouds.gcp import IAMCREDENTIALS_ENDPOINT_ENV, STS_ENDPOINT_ENV
        from oidc_broker_emulators.google_sts import GoogleSts, GoogleStsEmulator
        from oidc_broker_emulators.iamcredentials import IamCredentials, IamCredentialsEmulator

        self.google = GoogleSts()
        self.iam = IamCredentials(self.google.principal_of)
        self.sts = GoogleStsEmulator(self.google).start()
        try:
            self.iamcredentials = IamCredentialsEmulator(self.iam).start()
        except BaseException:
            self.sts.stop()
            raise
        os.environ[STS_ENDPOINT_ENV] = self.sts.token_url
        os.environ[IAMCREDENTIALS_ENDPOINT_ENV] = self.iamcredentials.url
        return self

    def banner(self) -> list[tuple[str, str]]:
        return [
            ("Google STS", f"{self.sts.url} (verifying emulator; workload identity providers for {self.issuer})"),
            ("Google IAM", f"{self.iamcredentials.url} (emulator of generateAccessToken; bound principals only)"),
        ]

    def trust(self, config: Any) -> None:
        self.targets = trust_targets(config, self.google, self.iam, self.issuer)

    def walk(self, base_url: str, ci_token: str) -> tuple[str, str]:
        target = self.targets[0] if self.targets else DEFAULT_TARGET
        return ("Google Cloud credentials for a target: Artifact Registry docker credentials or an access token",
                f"  {ci_token}\n"
                f"  curl -s {base_url}/exchange/gcp -H \"Authorization: Bearer $CI_TOKEN\" "
                "-H 'Content-Type: application/json' \\\n"
                f"    -d '{{\"target\": \"{target}\"}}'\n")

    def stop(self) -> None:
        self.sts.stop()
        self.iamcredentials.stop()


def trust_targets(config: Any, google: Any, iam: Any, issuer: str) -> list[str]:
    """Each Google Cloud target's provider and service account binding, from what the broker can mint
    for it (the trust setup `oidc-broker trust-policy gcp` prints). Targets sharing a provider share
    its audiences and its condition. Returns the refs of the targets set up."""
    from oidc_broker.clouds.gcp import target_trust_setup
    from oidc_broker_emulators.google_sts import Provider

    providers: dict[str, Provider] = {}
    conditions: dict[str, list[str]] = {}
    set_up = []
    for space in config.spaces.values():
        for target in space.targets.values():
            subjects = config.subject_patterns(target)
            if target.provider != "gcp" or not target.setting("workload_identity_provider") or not subjects:
                continue
            setup = target_trust_setup(issuer, target, subjects)
            spec = setup["provider"]
            provider = providers.setdefault(spec["name"], Provider(spec["name"], issuer, attribute_mapping=dict(
                spec["attributeMapping"])))
            provider.allowed_audiences.extend(a for a in spec["oidc"]["allowedAudiences"]
                                              if a not in provider.allowed_audiences)
            conditions.setdefault(spec["name"], []).append(spec["attributeCondition"])
            for binding in setup.get("bindings", []):
                for member in binding["members"]:
                    iam.bind(binding["serviceAccount"], member)
            set_up.append(target.ref)
    for name, provider in providers.items():
        if provider.allowed_audiences:
            # A provider with allowed audiences accepts only those: the resource name too, for targets using it.
            provider.allowed_audiences.extend(["https://iam.googleapis.com/" + name, "//iam.googleapis.com/" + name])
        provider.attribute_condition = " || ".join(conditions[name])
        google.add_provider(provider)
    return set_up
