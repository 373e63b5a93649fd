"""Azure in local mode: the verifying Entra emulator, the ACR emulator, and each target's identity.

azure-identity requires an https:// authority, so both emulators serve HTTPS with a CA made at
start. The broker's process is pointed at them by configuration only: `AZURE_AUTHORITY_HOST`
(azure-identity's own setting) names the Entra emulator, `ACR_ENDPOINT_URL` the ACR emulator
(the exchanger calls /oauth2/exchange there, with `service` still the target's registry host),
and `REQUESTS_CA_BUNDLE` a bundle of certifi's CAs and the local CA (requests, under azure-core,
honours it). `trust` creates, for each Azure target, its app and one federated credential per
subject the broker can mint, and gives feed targets' apps AcrPull on their registry, as an
operator would with `oidc-broker trust-policy azure`.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_TARGET = "default/prod-acr"  # the walk's example when no Azure target is set up


def start(broker: Any) -> AzureWiring:
    return AzureWiring(broker.issuer).start()


class AzureWiring:
    def __init__(self, issuer: str):
        self.issuer = issuer
        self.targets: list[str] = []

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
        return [
            ("Entra ID", f"{self.entra.url} (verifying emulator; federated credentials for {self.issuer})"),
            ("ACR", f"{self.acr.url} (emulator of /oauth2/exchange; Entra tokens only; CA {self.ca.ca_file})"),
        ]

    def trust(self, config: Any) -> None:
        self.targets = trust_targets(config, self.directory, self.acr, self.issuer)

    def walk(self, base_url: str, ci_token: str) -> tuple[str, str]:
        target = self.targets[0] if self.targets else DEFAULT_TARGET
        return ("Azure credentials for a target: ACR docker credentials or an Entra access token",
                f"  {ci_token}\n"
                f"  curl -s {base_url}/exchange/azure -H \"Authorization: Bearer $CI_TOKEN\" "
                "-H 'Content-Type: application/json' \\\n"
                f"    -d '{{\"target\": \"{target}\"}}'\n")

    def stop(self) -> None:
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
