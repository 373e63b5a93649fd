"""oidc_broker_cli/local/clouds/aws.py: each AWS target's role trusts exactly the broker's subjects for it."""

from __future__ import annotations

import json

from oidc_broker import config as config_module

from oidc_broker_cli.local.clouds.aws import trust_targets
from oidc_broker_emulators.sts import trust_allows

ISSUER = "https://id.example.com"
DOC = {
    "issuer": ISSUER,
    "trusted_issuers": [{"name": "github", "issuer": "https://token.actions.githubusercontent.com"}],
    "spaces": [{
        "name": "default",
        "targets": [
            {"name": "pull", "kind": "feed", "provider": "aws",
             "aws": {"role_arn": "arn:aws:iam::123456789012:role/ci/pull", "region": "us-east-1"}},
            {"name": "elsewhere", "kind": "feed", "provider": "aws",
             "aws": {"role_arn": "arn:aws:iam::210987654321:role/pull", "region": "us-east-1"}},
        ],
        "trust": [{"name": "main", "issuer": "github", "targets": ["pull", "elsewhere"],
                   "claims": {"repository_owner_id": "7", "repository": "acme/app", "ref": "refs/heads/main"}}],
    }],
}


class FakeIam:
    def __init__(self):
        self.providers, self.roles = [], []

    def create_open_id_connect_provider(self, **kwargs):
        self.providers.append(kwargs)

    def create_role(self, **kwargs):
        self.roles.append(kwargs)


def test_the_issuer_becomes_an_oidc_provider_and_a_local_accounts_role_trusts_its_subject():
    iam = FakeIam()
    config = config_module.parse(DOC, "broker.yaml")
    assert trust_targets(config, iam, ISSUER) == {"default/pull": "arn:aws:iam::123456789012:role/ci/pull"}
    assert iam.providers == [{"Url": ISSUER, "ClientIDList": ["sts.amazonaws.com"], "ThumbprintList": []}]
    (role,) = iam.roles
    assert (role["RoleName"], role["Path"], role["MaxSessionDuration"]) == ("pull", "/ci/", 43200)
    policy = json.loads(role["AssumeRolePolicyDocument"])
    provider = "arn:aws:iam::123456789012:oidc-provider/id.example.com"
    context = {"id.example.com:aud": "sts.amazonaws.com"}
    assert trust_allows(policy, provider, {**context, "id.example.com:sub": "space:default:feed:pull"})
    assert not trust_allows(policy, provider, {**context, "id.example.com:sub": "space:default:feed:elsewhere"})


def test_roles_in_other_accounts_are_left_alone_and_no_provider_is_made_for_none():
    doc = json.loads(json.dumps(DOC))
    doc["spaces"][0]["targets"] = doc["spaces"][0]["targets"][1:]
    doc["spaces"][0]["trust"][0]["targets"] = ["elsewhere"]
    iam = FakeIam()
    assert trust_targets(config_module.parse(doc, "broker.yaml"), iam, ISSUER) == {}
    assert iam.providers == [] and iam.roles == []
