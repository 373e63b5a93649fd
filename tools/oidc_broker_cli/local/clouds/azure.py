"""Azure in local mode: the verifying Entra emulator, the ACR emulator, and each target's identity.

azure-identity requires an https:// authority, so both emulators serve HTTPS with a CA made at
start. The broker's process is pointed at them by configuration only: `AZURE_AUTHORITY_HOST`
(azure-identity's own setting) names the Entra emulator, `ACR_ENDPOINT_URL` the ACR emulator
(the exchanger calls /oauth2/exchange there, with `service` still the target's registry host),
and `REQUESTS_CA_BUNDLE` a bundle of certifi's CAs and the local CA (requests, under azure-core,
honours it). `trust` creates, for each Azure target, its app and one federated credential per
subject the broker can mint, and gives feed targets' apps AcrPull on their registry, as an
operator would with `oidc-broker trust-policy azure`. Each feed's registry host then gets a
docker registry stand-in (ACR's login: refresh tokens the ACR emulator issued for that host).
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_TARGET = "default/prod-acr"  # the walk's example when no Azure target is set up
REGISTRY_PORT_OFFSET = 2  # the first ACR stand-in's port: the broker's + 2 (`make run`: 3002)


def start(broker: Any) -> AzureWiring:
    return AzureWiring(broker.issuer, broker.port).start()


class AzureWiring:
    def __init__(self, issuer: str, port: int = 0):
        self.issuer = issuer
        self.port = port
        self.targets: list[str] = []
        self.feeds: dict[str, str] = {}  # feed target ref -> its registry host
        self.registries: dict[str, Any] = {}  # registry host -> its docker registry stand-in

    def start(self) -> AzureWiring:
        import certifi
        from oidc_broker_emulators.acr import AcrEmulator
        from oidc_broker_emulators.entra import Directory, EntraEmulator, IssuedTokens, TestCA, Verifier

        self.ca = TestCA()
        self.directory = Directory()
        issued = IssuedTokens()  # what Entra issues is what ACR accepts
        self.entra = EntraEmulator(Verifier(self.directory), self.ca, issued).start()
        try:
            self.acr = AcrEmulator(issued, self.ca).start()
        except BaseException:
            self.entra.stop()
            raise
        os.environ["REQUESTS_CA_BUNDLE"] = str(self.ca.bundle(certifi.where()))
        os.environ["AZURE_AUTHORITY_HOST"] = self.entra.url
        os.environ["ACR_ENDPOINT_URL"] = self.acr.url
        return self

    def banner(self) -> list[tuple[str, str]]:
        from oidc_broker_emulators.acr import DOCKER_USERNAME

        from . import registry_lines

        return [
            ("Entra ID", f"{self.entra.url} (verifying emulator; federated credentials for {self.issuer})"),
            ("ACR", f"{self.acr.url} (emulator of /oauth2/exchange; Entra tokens only; CA {self.ca.ca_file})"),
        ] + registry_lines("ACR docker", self.registries, "its refresh tokens only", DOCKER_USERNAME)

    def trust(self, config: Any) -> None:
        from oidc_broker_emulators.acr import AcrLogin

        from . import registries

        self.targets = trust_targets(config, self.directory, self.acr, self.issuer)
        self.feeds = {t.ref: t.setting("registry") for s in config.spaces.values() for t in s.targets.values()
                      if t.provider == "azure" and t.kind == "feed" and t.setting("registry")}
        self.registries = registries(list(self.feeds.values()), AcrLogin(self.acr), self.port, REGISTRY_PORT_OFFSET)

    def walk(self, base_url: str, ci_token: str) -> tuple[str, str]:
        from oidc_broker_emulators.acr import DOCKER_USERNAME

        from . import exchange_walk

        target = self.targets[0] if self.targets else DEFAULT_TARGET
        return ("Azure credentials for a target: ACR docker credentials or an Entra access token",
                exchange_walk(base_url, ci_token, "azure", target, self.feeds, self.registries, DOCKER_USERNAME))

    def stop(self) -> None:
        for registry in self.registries.values():
            registry.stop()
        self.entra.stop()
        self.acr.stop()


def trust_targets(config: Any, directory: Any, acr: Any, issuer: str) -> list[str]:
    """Each Azure target's app with a federated credential per exact subject the broker mints
    (a subject with `*` cannot be trusted: Entra has no wildcards), and AcrPull on its registry."""
    from oidc_broker.clouds.azure import credential_name
    from oidc_broker_emulators.entra import FederatedCredential

    set_up = []
    for space in config.spaces.values():
        for target in space.targets.values():
            tenant, client_id = target.setting("tenant_id"), target.setting("client_id")
            if target.provider != "azure" or not tenant or not client_id:
                continue
            directory.add_app(tenant, client_id)
            for subject in config.subject_patterns(target):
                if "*" not in subject:
                    directory.add_credential(tenant, client_id, FederatedCredential(
                        credential_name(target.ref, subject), issuer, subject, (target.audience,)))
            if target.kind == "feed" and target.setting("registry"):
                acr.grant(target.setting("registry"), client_id)
            set_up.append(target.ref)
    return set_up
