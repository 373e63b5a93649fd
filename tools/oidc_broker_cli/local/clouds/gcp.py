"""Google Cloud in local mode: the verifying Google STS emulator, the IAM Credentials emulator, and
each target's workload identity provider and service account binding.

The broker's process is pointed at them by configuration only: `GCP_STS_ENDPOINT` and
`GCP_IAMCREDENTIALS_ENDPOINT` are the endpoints every Google Cloud target uses when it names none
(google-auth accepts http:// token URLs, so no TLS). `trust` registers, for each Google Cloud
target, its provider (issuer the broker, its audience, `google.subject` mapped from
`assertion.sub`, an attribute condition admitting exactly the subjects the broker can mint) and
binds roles/iam.workloadIdentityUser on its service account, as an operator would with
`oidc-broker trust-policy gcp`. The STS emulator fetches the broker's discovery and JWKS over HTTP.
Each feed's registry host then gets a docker registry stand-in (Artifact Registry's login: access
tokens the two emulators issued) and roles/artifactregistry.reader on it for the feed's principal:
its service account, or the subjects the broker mints for it.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_TARGET = "default/prod-gar"  # the walk's example when no Google Cloud target is set up
REGISTRY_PORT_OFFSET = 3  # the first Artifact Registry stand-in's port: the broker's + 3 (`make run`: 3003)


def start(broker: Any) -> GcpWiring:
    return GcpWiring(broker.issuer, broker.port).start()


class GcpWiring:
    def __init__(self, issuer: str, port: int = 0):
        self.issuer = issuer
        self.port = port
        self.targets: list[str] = []
        self.feeds: dict[str, str] = {}  # feed target ref -> its registry host
        self.registries: dict[str, Any] = {}  # registry host -> its docker registry stand-in

    def start(self) -> GcpWiring:
        from oidc_broker.clouds.gcp import IAMCREDENTIALS_ENDPOINT_ENV, STS_ENDPOINT_ENV
        from oidc_broker_emulators.google_sts import GoogleSts, GoogleStsEmulator
        from oidc_broker_emulators.iamcredentials import IamCredentials, IamCredentialsEmulator

        from oidc_broker_emulators.artifact_registry import ArtifactRegistry

        self.google = GoogleSts()
        self.iam = IamCredentials(self.google.principal_of)
        self.artifact_registry = ArtifactRegistry(self.google.federated, self.iam.impersonated)
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
        from oidc_broker_emulators.artifact_registry import DOCKER_USERNAME

        from . import registry_lines

        return [
            ("Google STS", f"{self.sts.url} (verifying emulator; workload identity providers for {self.issuer})"),
            ("Google IAM", f"{self.iamcredentials.url} (emulator of generateAccessToken; bound principals only)"),
        ] + registry_lines("GAR docker", self.registries, "Google access tokens the emulators issued", DOCKER_USERNAME)

    def trust(self, config: Any) -> None:
        from . import registries

        self.targets = trust_targets(config, self.google, self.iam, self.issuer)
        self.feeds = grant_readers(config, self.artifact_registry)
        self.registries = registries(list(self.feeds.values()), self.artifact_registry, self.port,
                                     REGISTRY_PORT_OFFSET)

    def walk(self, base_url: str, ci_token: str) -> tuple[str, str]:
        from oidc_broker_emulators.artifact_registry import DOCKER_USERNAME

        from . import exchange_walk

        target = self.targets[0] if self.targets else DEFAULT_TARGET
        return ("Google Cloud credentials for a target: Artifact Registry docker credentials or an access token",
                exchange_walk(base_url, ci_token, "gcp", target, self.feeds, self.registries, DOCKER_USERNAME))

    def stop(self) -> None:
        for registry in self.registries.values():
            registry.stop()
        self.sts.stop()
        self.iamcredentials.stop()


def grant_readers(config: Any, artifact_registry: Any) -> dict[str, str]:
    """roles/artifactregistry.reader on each Google Cloud feed's registry for the principal its
    credentials stand for: the service account it impersonates, else each subject the broker mints
    for it (the pool, narrowed by the provider's condition, where a caller's claim chooses part).
    Returns feed target ref -> registry host."""
    feeds = {}
    for space in config.spaces.values():
        for target in space.targets.values():
            provider, registry = target.setting("workload_identity_provider"), target.setting("registry")
            if target.provider != "gcp" or target.kind != "feed" or not provider or not registry:
                continue
            account = target.setting("service_account")
            pool = "iam.googleapis.com/" + provider.split("/providers/", 1)[0]
            members = [f"serviceAccount:{account}"] if account else [
                f"principalSet://{pool}/*" if "*" in s else f"principal://{pool}/subject/{s}"
                for s in config.subject_patterns(target)]
            for member in members:
                artifact_registry.grant(registry, member)
            feeds[target.ref] = registry
    return feeds


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
