"""AWS in local mode: the verifying STS emulator, the ECR Public emulator, and each target's role.

moto's STS accepts any token, so STS requests go to the emulator (AWS_ENDPOINT_URL_STS), which
verifies the broker's tokens against an IAM OIDC provider and the role's trust policy read from
moto's IAM, then asks moto for the credentials. moto has no ECR Public: its emulator
(AWS_ENDPOINT_URL_ECR_PUBLIC) accepts only credentials that STS issued. `trust` registers the
broker as an IAM OIDC provider and gives each AWS target's role a trust policy, as an operator
would with `oidc-broker trust-policy aws`. moto's GetAuthorizationToken answers with passwords the
ECR emulator signs (oidc_broker_emulators.ecr), and each ECR feed's registry host gets a docker
registry stand-in that takes only those.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..aws import ACCOUNT_ID

DEFAULT_TARGET = "default/prod-ecr"  # the walk's example when no target is set up
REGISTRY_PORT_OFFSET = 1  # the first ECR stand-in's port: the broker's + 1 (`make run`: 3001)


def start(broker: Any) -> AwsWiring:
    return AwsWiring(broker.aws, broker.issuer, broker.port).start()


class AwsWiring:
    def __init__(self, aws: Any, issuer: str, port: int = 0):
        self.aws = aws
        self.issuer = issuer
        self.port = port
        self.roles: dict[str, str] = {}  # target ref -> role ARN, for the targets set up
        self.feeds: dict[str, str] = {}  # ECR feed target ref -> its registry host
        self.registries: dict[str, Any] = {}  # registry host -> its docker registry stand-in

    def start(self) -> AwsWiring:
        from oidc_broker_emulators.ecr import EcrTokens, patch_moto_ecr
        from oidc_broker_emulators.ecr_public import EcrPublicEmulator, IssuedCredentials
        from oidc_broker_emulators.sts import IamDirectory, StsEmulator, Verifier, moto_credentials

        self.ecr_tokens = EcrTokens()
        patch_moto_ecr(self.ecr_tokens)
        self.iam = self.aws.client("iam")
        issued = IssuedCredentials()  # what STS hands out is what ECR Public accepts
        self.sts = StsEmulator(Verifier(IamDirectory(self.iam, ACCOUNT_ID)),
                               issued.recording(moto_credentials(self.aws.client("sts"))),
                               passthrough=self.aws.endpoint).start()
        os.environ["AWS_ENDPOINT_URL_STS"] = self.sts.url
        try:
            self.ecr_public = EcrPublicEmulator(issued).start()
        except BaseException:
            self.sts.stop()
            raise
        os.environ["AWS_ENDPOINT_URL_ECR_PUBLIC"] = self.ecr_public.url
        return self

    def banner(self) -> list[tuple[str, str]]:
        from oidc_broker_emulators.ecr import DOCKER_USERNAME

        from . import registry_lines

        return [
            ("AWS STS", f"{self.sts.url} (verifying emulator; OIDC provider {self.issuer})"),
            ("ECR Public", f"{self.ecr_public.url} (emulator; signed with role credentials from AWS STS only)"),
        ] + registry_lines("ECR docker", self.registries, "its authorization tokens only", DOCKER_USERNAME)

    def trust(self, config: Any) -> None:
        from oidc_broker_emulators.ecr import EcrLogin

        from . import registries

        self.roles = trust_targets(config, self.iam, self.issuer)
        # ECR feeds whose role local mode set up: moto answers for the role's account and the target's region.
        self.feeds = {t.ref: f"{ACCOUNT_ID}.dkr.ecr.{t.setting('region')}.amazonaws.com"
                      for space in config.spaces.values() for t in space.targets.values()
                      if t.ref in self.roles and t.kind == "feed" and t.setting("registry") == "ecr"}
        self.registries = registries(list(self.feeds.values()), EcrLogin(self.ecr_tokens), self.port,
                                     REGISTRY_PORT_OFFSET)

    def walk(self, base_url: str, ci_token: str) -> tuple[str, str]:
        from oidc_broker_emulators.ecr import DOCKER_USERNAME

        from . import exchange_walk

        target = next(iter(self.roles), DEFAULT_TARGET)
        return ("AWS credentials for a target (a fresh CI token: each is accepted once per target)",
                exchange_walk(base_url, ci_token, "aws", target, self.feeds, self.registries, DOCKER_USERNAME))

    def stop(self) -> None:
        for registry in self.registries.values():
            registry.stop()
        self.sts.stop()
        self.ecr_public.stop()


def trust_targets(config: Any, iam: Any, issuer: str) -> dict[str, str]:
    """Register the issuer as an IAM OIDC provider and give each AWS target's role a trust policy.

    Each role trusts exactly the subjects the broker mints for its targets: literal subject values
    as they are, values a trust rule takes from a caller claim as `*` (StringLike). Roles in other
    accounts are left alone (the broker then meets STS's "no OIDC provider" answer, as in AWS).
    Returns target ref -> role ARN for the targets set up.
    """
    from oidc_broker.clouds.aws import trust_policy
    from oidc_broker_emulators.sts import ROLE_ARN

    subjects: dict[str, set[str]] = {}
    audiences: dict[str, set[str]] = {}
    set_up: dict[str, str] = {}
    for space in config.spaces.values():
        for target in space.targets.values():
            role_arn = target.setting("role_arn")
            m = ROLE_ARN.fullmatch(role_arn or "")
            if target.provider != "aws" or not m or m.group(1) != ACCOUNT_ID:
                continue
            subjects.setdefault(role_arn, set()).update(config.subject_patterns(target))
            audiences.setdefault(role_arn, set()).add(target.audience)
            set_up[target.ref] = role_arn
    if not set_up:
        return set_up
    client_ids = sorted({a for auds in audiences.values() for a in auds})
    iam.create_open_id_connect_provider(Url=issuer, ClientIDList=client_ids, ThumbprintList=[])
    for role_arn, subs in subjects.items():
        policy = trust_policy(ACCOUNT_ID, issuer, sorted(audiences[role_arn]), sorted(subs), like=True)
        path, _, name = role_arn.split(":role", 1)[1].rpartition("/")
        iam.create_role(RoleName=name, Path=f"{path}/" if path else "/", AssumeRolePolicyDocument=json.dumps(policy),
                        MaxSessionDuration=43200)
    return set_up
