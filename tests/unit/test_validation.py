"""oidc_broker/validation.py: validating the configuration document, every problem with its path.

What a cloud adds (its settings, defaults, audience, subject limit) is tested with each cloud in
tests/unit/clouds/; here, the document's own shape and what validation does with any cloud.
"""

from __future__ import annotations

import pytest
from builders import BROKER, CI, config_doc, config_paths as paths, config_problems as problems, space_doc

from oidc_broker import model, validation
from oidc_broker.model import ContextValue
from oidc_broker.validation import ConfigError


def target_doc(doc, name):
    return next(t for t in space_doc(doc)["targets"] if t["name"] == name)


def rule_doc(doc, name):
    return next(r for r in space_doc(doc)["trust"] if r["name"] == name)


# -- a valid document ---------------------------------------------------------------------------

def test_a_valid_document_yields_a_config(doc):
    cfg = validation.parse(doc)
    assert cfg.issuer == BROKER
    assert cfg.trusted_issuers == {"ci": model.TrustedIssuer(name="ci", issuer=CI)}
    assert list(cfg.spaces) == ["acme"]


def test_target_fields_are_parsed(doc):
    prod = validation.parse(doc).target("acme/prod")
    assert prod == model.Target(
        space="acme",
        name="prod",
        kind="account",
        provider="aws",
        audience="sts.amazonaws.com",
        subject_keys=("space", "environment", "account"),
        lifetime=900,
        settings={"role_arn": "arn:aws:iam::123456789012:role/deploy", "region": "us-east-1"},
    )


def test_a_target_without_subject_or_lifetime_gets_the_defaults(doc):
    images = validation.parse(doc).target("acme/images")
    assert (images.subject_keys, images.lifetime) == (("space", "feed"), validation.DEFAULT_LIFETIME)


def test_a_rule_without_audience_expects_the_brokers_issuer(doc):
    deploy = validation.parse(doc).spaces["acme"].trust[0]
    assert deploy.audience == BROKER


def test_rule_fields_are_parsed(doc):
    deploy = validation.parse(doc).spaces["acme"].trust[0]
    assert (deploy.space, deploy.name, deploy.issuer, deploy.targets) == ("acme", "deploy", "ci", ("prod",))
    assert {claim: c.alternatives for claim, c in deploy.claims.items()} == {
        "repository": ("acme/app",), "ref": ("refs/heads/main",)}
    assert deploy.context == {"environment": ContextValue(claim="environment")}


def test_a_literal_context_value_is_kept_as_a_literal(doc):
    rule_doc(doc, "deploy")["context"] = {"environment": "production"}
    deploy = validation.parse(doc).spaces["acme"].trust[0]
    assert deploy.context == {"environment": ContextValue(literal="production")}


def test_a_rule_may_name_its_own_audience(doc):
    rule_doc(doc, "pull")["audience"] = "oidc-broker"
    assert validation.parse(doc).spaces["acme"].trust[1].audience == "oidc-broker"


def test_claim_conditions_may_be_strings_integers_booleans_or_lists_of_them(doc):
    rule_doc(doc, "pull")["claims"] = {"repository_id": 123, "protected": True, "repository": "acme/app",
                                       "ref": ["refs/heads/main", "refs/tags/v1"]}
    claims = validation.parse(doc).spaces["acme"].trust[1].claims
    assert {claim: c.alternatives for claim, c in claims.items()} == {
        "repository_id": (123,), "protected": (True,), "repository": ("acme/app",),
        "ref": ("refs/heads/main", "refs/tags/v1")}


def test_trusted_issuers_are_optional():
    doc = config_doc(trusted_issuers=None)
    del doc["trusted_issuers"]
    space_doc(doc)["trust"] = []
    assert validation.parse(doc).trusted_issuers == {}


def test_a_trusted_issuer_may_name_its_jwks_uri():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": CI, "jwks_uri": CI + "/keys"}])
    assert validation.parse(doc).trusted_issuers["ci"].jwks_uri == CI + "/keys"


# -- top level ----------------------------------------------------------------------------------

def test_a_document_that_is_not_a_mapping_is_refused():
    assert problems(["issuer"]) == [("(top)", "must be a mapping")]


def test_issuer_and_spaces_are_required():
    assert paths({}) == ["(top).issuer", "(top).spaces"]


def test_an_unknown_top_level_key_is_refused():
    assert paths(config_doc(issuers=[])) == ["(top).issuers"]


def test_spaces_must_not_be_empty():
    assert problems(config_doc(spaces=[])) == [("spaces", "must list at least one space")]


def test_every_problem_is_reported_at_once(doc):
    doc["issuer"] = "http://broker.example.com"
    target_doc(doc, "images")["aws"] = {"region": "moon"}
    rule_doc(doc, "pull")["issuer"] = "gitlab"
    assert paths(doc) == ["issuer", "spaces[0].targets[1].aws.region", "spaces[0].trust[1].issuer"]


def test_config_error_names_the_source_and_path(doc):
    doc["issuer"] = "http://broker.example.com"
    with pytest.raises(ConfigError, match=r"^broker\.yaml: issuer: must start with https://$"):
        validation.parse(doc, "broker.yaml")


# -- URLs in the document -------------------------------------------------------------------------

def test_parse_passes_local_mode_through_to_url_checks():
    doc = config_doc(issuer="http://localhost:3000", trusted_issuers=[{"name": "ci", "issuer": "http://127.0.0.1:3000/_dev/ci"}])
    space_doc(doc)["trust"] = []
    assert validation.parse(doc, allow_loopback_http=True).issuer == "http://localhost:3000"
    assert paths(doc) == ["issuer", "trusted_issuers[0].issuer"]


def test_a_malformed_ipv6_issuer_is_a_config_problem_not_a_crash():
    assert paths(config_doc(issuer="https://[::1")) == ["issuer"]


# -- trusted issuers ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"issuer": CI}, ["trusted_issuers[0].name"]),
        ({"name": "CI", "issuer": CI}, ["trusted_issuers[0].name"]),
        ({"name": "ci", "issuer": CI + "/"}, ["trusted_issuers[0].issuer"]),
        ({"name": "ci", "issuer": CI, "jwks_uri": "http://ci.example.com/keys"}, ["trusted_issuers[0].jwks_uri"]),
        ({"name": "ci", "issuer": CI, "audience": "x"}, ["trusted_issuers[0].audience"]),
        ("ci", ["trusted_issuers[0]"]),
    ],
)
def test_a_bad_trusted_issuer_is_refused(entry, expected):
    doc = config_doc(trusted_issuers=[entry])
    space_doc(doc)["trust"] = []
    assert paths(doc) == expected


def test_a_trusted_issuer_without_issuer_url_is_a_config_problem_not_a_crash():
    doc = config_doc(trusted_issuers=[{"name": "ci"}])
    space_doc(doc)["trust"] = []
    assert problems(doc) == [("trusted_issuers[0].issuer", "is required")]


def test_a_trusted_issuer_gets_default_leeway_age_and_the_generic_preset(doc):
    ci = validation.parse(doc).trusted_issuers["ci"]
    assert (ci.leeway, ci.max_token_age, ci.preset.name) == (60, 3600, "generic")


@pytest.mark.parametrize("url, preset", [
    ("https://token.actions.githubusercontent.com", "github"),
    ("https://gitlab.com", "gitlab"),
    ("https://agent.buildkite.com", "buildkite"),
    ("https://gitlab.example.com", "generic"),
])
def test_a_trusted_issuers_preset_is_guessed_from_its_url(url, preset):
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": url}])
    space_doc(doc)["trust"] = []
    assert validation.parse(doc).trusted_issuers["ci"].preset.name == preset


def test_a_trusted_issuer_may_name_its_preset_leeway_and_token_age():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": "https://gitlab.example.com", "preset": "gitlab",
                                       "leeway": "5m", "max_token_age": "2h"}])
    space_doc(doc)["trust"] = []
    ci = validation.parse(doc).trusted_issuers["ci"]
    assert (ci.preset.name, ci.leeway, ci.max_token_age) == ("gitlab", 300, 7200)


@pytest.mark.parametrize("change, path", [
    ({"preset": "jenkins"}, "trusted_issuers[0].preset"),
    ({"preset": ["github"]}, "trusted_issuers[0].preset"),
    ({"leeway": 301}, "trusted_issuers[0].leeway"),
    ({"leeway": -1}, "trusted_issuers[0].leeway"),
    ({"max_token_age": 59}, "trusted_issuers[0].max_token_age"),
    ({"max_token_age": "2d"}, "trusted_issuers[0].max_token_age"),
])
def test_a_bad_trusted_issuer_setting_is_refused(change, path):
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": CI, **change}])
    space_doc(doc)["trust"] = []
    assert paths(doc) == [path]


def _github_doc(claims: dict) -> dict:
    doc = config_doc(trusted_issuers=[{"name": "gh", "issuer": "https://token.actions.githubusercontent.com"}])
    space_doc(doc)["trust"] = [{"name": "r", "issuer": "gh", "claims": claims, "targets": ["images"]}]
    return doc


def test_a_number_for_a_claim_github_sends_as_a_string_is_refused():
    assert problems(_github_doc({"repository_id": 123})) == [
        ("spaces[0].trust[0].claims.repository_id", "GitHub Actions sends repository_id as a string: quote the value")]


def test_a_claim_the_preset_does_not_know_draws_a_warning_not_an_error():
    cfg = validation.parse(_github_doc({"repository_id": "123", "repo": "acme/app"}))
    assert ("spaces[0].trust[0].claims.repo",
            "GitHub Actions tokens carry no 'repo' claim; this rule can never match") in cfg.warnings


def test_a_well_formed_rule_draws_no_warning():
    assert validation.parse(_github_doc({"repository_id": "123", "ref": "refs/heads/main"})).warnings == ()


# -- tenant pinning on shared issuers -----------------------------------------------------------

SHARED = {
    "github": "https://token.actions.githubusercontent.com",
    "gitlab": "https://gitlab.com",
    "buildkite": "https://agent.buildkite.com",
    "circleci": "https://oidc.circleci.com/org/0f3c9e26-4a36-4f0b-8e86-6b5e2f6b8c11",
}


def _issuer_doc(claims: dict, **issuer) -> dict:
    doc = config_doc(trusted_issuers=[{"name": "gh", "issuer": SHARED["github"], **issuer}])
    space_doc(doc)["trust"] = [{"name": "r", "issuer": "gh", "claims": claims, "targets": ["images"]}]
    return doc


def _pinning_problems(claims: dict, **issuer) -> list[tuple[str, str]]:
    try:
        validation.parse(_issuer_doc(claims, **issuer))
    except ConfigError as e:
        return [(path, rule) for path, rule in e.problems if "pins no tenant" in rule]
    return []


@pytest.mark.parametrize("claims", [
    {"event_name": "push"},
    {"environment": "production"},
    {"job_workflow_ref": "*/*/.github/workflows/deploy.yml@refs/heads/main"},
    {"ref_protected": "true"},
    {"repository": "acme/app", "ref": "refs/heads/main"},
    {"repository_owner": "acme"},
    {"repository_id": "4*"},
    {"repository_owner_id": ["7", "8*"]},
    {"sub": "repo:acme/app:ref:refs/heads/main"},
    {"sub": "repo:*@7/app@42:ref:refs/heads/main"},
    {"sub": "repo:acme@7*/app@42:ref:refs/heads/main"},
    {"sub": ["repo:acme@7/app@42:ref:refs/heads/main", "repo:evil/app:ref:refs/heads/main"]},
], ids=repr)
def test_a_github_rule_that_pins_no_tenant_is_refused(claims):
    assert _pinning_problems(claims) == [("spaces[0].trust[0].claims",
        "pins no tenant, so it admits any GitHub Actions customer's pipelines (they share this issuer); match "
        "'repository_id' or 'repository_owner_id' with exact values (or sub in the immutable form "
        "'repo:OWNER@OWNER-ID/REPO@REPO-ID:...'), or set single_tenant: true on a trusted issuer that serves "
        "one organisation only")]


@pytest.mark.parametrize("claims", [
    {"repository_id": "42", "event_name": "push"},
    {"repository_owner_id": "7", "environment": "production"},
    {"repository_owner_id": ["7", "8"], "ref": "refs/heads/*"},
    {"sub": "repo:acme@7/app@42:ref:refs/heads/main"},
    {"sub": "repo:acme@7/*:environment:production"},
    {"sub": ["repo:acme@7/app@42:ref:refs/heads/main", "repo:acme@7/web@43:ref:refs/heads/main"]},
    {"repository_id": "42", "sub": "repo:acme/app:ref:refs/heads/main"},
], ids=repr)
def test_a_github_rule_pinned_by_an_exact_tenant_id_or_immutable_subject_is_accepted(claims):
    assert _pinning_problems(claims) == []


@pytest.mark.parametrize("preset, claims", [
    ("gitlab", {"ref": "main", "ref_protected": "true"}),
    ("gitlab", {"namespace_path": "acme", "namespace_id": "1*"}),
    ("buildkite", {"organization_slug": "acme", "build_branch": "main"}),
    ("circleci", {"oidc.circleci.com/vcs-ref": "refs/heads/main"}),
])
def test_every_shared_issuer_preset_refuses_an_unpinned_rule(preset, claims):
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": SHARED[preset]}])
    space_doc(doc)["trust"] = [{"name": "r", "issuer": "ci", "claims": claims, "targets": ["images"]}]
    assert [path for path, rule in problems(doc) if "pins no tenant" in rule] == ["spaces[0].trust[0].claims"]


@pytest.mark.parametrize("preset, claims", [
    ("gitlab", {"namespace_id": "10", "ref": "main"}),
    ("gitlab", {"project_id": ["11", "12"]}),
    ("buildkite", {"organization_id": "0188f2a4-1c9e-4b7e-9f1a-3d2c1b0a9e8f"}),
    ("circleci", {"oidc.circleci.com/org-id": "0f3c9e26-4a36-4f0b-8e86-6b5e2f6b8c11"}),
    ("circleci", {"oidc.circleci.com/project-id": "5e1a6f2b-0c3d-4e5f-8a9b-1c2d3e4f5a6b"}),
])
def test_every_shared_issuer_preset_accepts_a_rule_pinned_by_its_tenant_ids(preset, claims):
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": SHARED[preset]}])
    space_doc(doc)["trust"] = [{"name": "r", "issuer": "ci", "claims": claims, "targets": ["images"]}]
    validation.parse(doc)


def test_a_self_managed_gitlab_requires_pinning_unless_it_says_it_is_single_tenant():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": "https://gitlab.example.com", "preset": "gitlab"}])
    space_doc(doc)["trust"] = [{"name": "r", "issuer": "ci", "claims": {"ref": "main"}, "targets": ["images"]}]
    assert [path for path, rule in problems(doc) if "pins no tenant" in rule] == ["spaces[0].trust[0].claims"]
    doc["trusted_issuers"][0]["single_tenant"] = True
    assert validation.parse(doc).spaces["acme"].trust[0].name == "r"


def test_single_tenant_opts_a_github_enterprise_server_out_of_pinning():
    assert _pinning_problems({"environment": "production"}, issuer="https://ghes.example.com/_services/token",
                             single_tenant=True) == []


def test_a_generic_issuer_needs_no_tenant_pin(doc):
    rule_doc(doc, "pull")["claims"] = {"environment": "production"}
    assert validation.parse(doc).spaces["acme"].trust[1].name == "pull"


# -- globs that do not mean what they seem to ---------------------------------------------------

def _glob_warnings(claims: dict) -> list[tuple[str, str]]:
    return [w for w in validation.parse(_issuer_doc({"repository_id": "42", **claims})).warnings if "never matches" in w[1]]


def test_a_sub_glob_standing_for_the_whole_context_warns_what_it_matches():
    assert _glob_warnings({"sub": "repo:acme/app:*"}) == [("spaces[0].trust[0].claims.sub",
        "'*' never matches '/' or ':', so 'repo:acme/app:*' matches 'repo:acme/app:pull_request' but not "
        "'repo:acme/app:ref:refs/heads/main'; name the context ('...:ref:refs/heads/main', "
        "'...:environment:production') or match the repository_id and ref claims instead")]


@pytest.mark.parametrize("claim, pattern", [
    ("ref", "refs/heads/*"),
    ("ref", "refs/tags/*"),
    ("head_ref", "feature/*"),
    ("workflow_ref", "acme/app/.github/workflows/deploy.yml@refs/heads/*"),
    ("job_workflow_ref", "acme/shared/.github/workflows/*"),
    ("sub", "repo:acme@7/app@42:ref:refs/heads/*"),
])
def test_a_glob_ending_in_slash_star_where_names_hold_slashes_warns(claim, pattern):
    (warning,) = _glob_warnings({claim: pattern})
    assert warning[0] == f"spaces[0].trust[0].claims.{claim}"
    assert f"matches {pattern[:-1] + 'main'!r} but not {pattern[:-1] + 'feature/login'!r}" in warning[1]


def test_the_warning_follows_the_claims_shape_not_the_string():
    # The same text on a claim whose values hold no '/' there draws no warning.
    assert _glob_warnings({"environment": "refs/heads/*", "ref": "refs/heads/release-*", "actor": "bot-*"}) == []


def test_a_glob_in_a_list_is_checked_too():
    assert [w[0] for w in _glob_warnings({"ref": ["refs/heads/main", "refs/heads/*"]})] == ["spaces[0].trust[0].claims.ref"]


def test_a_generic_issuer_draws_no_glob_warning(doc):
    rule_doc(doc, "pull")["claims"] = {"repository": "acme/app", "ref": "refs/heads/*"}
    assert validation.parse(doc).warnings == ()


def test_a_gitlab_sub_glob_for_the_branch_warns():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": SHARED["gitlab"]}])
    space_doc(doc)["trust"] = [{"name": "r", "issuer": "ci", "targets": ["images"],
                                "claims": {"project_id": "1", "sub": "project_path:acme/app:ref_type:branch:ref:*"}}]
    (warning,) = [w for w in validation.parse(doc).warnings if "never matches" in w[1]]
    assert "but not 'project_path:acme/app:ref_type:branch:ref:feature/login'" in warning[1]


def test_trusted_issuers_must_be_a_list():
    doc = config_doc(trusted_issuers={"ci": CI})
    space_doc(doc)["trust"] = []
    assert problems(doc) == [("trusted_issuers", "must be a list")]


def test_a_duplicate_trusted_issuer_name_is_refused():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": CI}, {"name": "ci", "issuer": "https://other.example.com"}])
    assert problems(doc) == [("trusted_issuers[1].name", "duplicate trusted issuer name 'ci'")]


def test_the_same_issuer_url_under_two_names_is_refused():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": CI}, {"name": "ci2", "issuer": CI}])
    assert problems(doc) == [("trusted_issuers[1].issuer", "this issuer URL is already listed")]


# -- spaces -------------------------------------------------------------------------------------

def test_a_duplicate_space_name_is_refused(doc):
    doc["spaces"].append({"name": "acme"})
    assert problems(doc) == [("spaces[1].name", "duplicate space name 'acme'")]


@pytest.mark.parametrize("name", ["Acme", "a:b", "", 1])
def test_a_space_name_must_be_a_slug(name):
    assert paths(config_doc(spaces=[{"name": name}])) == ["spaces[0].name"]


def test_a_space_needs_no_targets_or_rules():
    assert validation.parse(config_doc(spaces=[{"name": "empty"}])).spaces["empty"].targets == {}


# -- targets ------------------------------------------------------------------------------------

def _one_target(**target) -> dict:
    return config_doc(spaces=[{"name": "acme", "targets": [target]}])


def _only_target(**target) -> model.Target:
    (parsed,) = validation.parse(_one_target(**target)).spaces["acme"].targets.values()
    return parsed


@pytest.mark.parametrize(
    "target, path",
    [
        ({"kind": "feed", "provider": "aws"}, "spaces[0].targets[0].name"),
        ({"name": "x", "provider": "aws"}, "spaces[0].targets[0].kind"),
        ({"name": "x", "kind": "feed"}, "spaces[0].targets[0].provider"),
        ({"name": "X", "kind": "feed", "provider": "aws"}, "spaces[0].targets[0].name"),
        ({"name": "x", "kind": "bucket", "provider": "aws"}, "spaces[0].targets[0].kind"),
        ({"name": "x", "kind": "feed", "provider": "oci"}, "spaces[0].targets[0].provider"),
        ({"name": "x", "kind": "feed", "provider": "aws", "region": "us-east-1"}, "spaces[0].targets[0].region"),
        ({"name": "x", "kind": "feed", "provider": "aws", "azure": {}}, "spaces[0].targets[0].azure"),
        ({"name": "x", "kind": "feed", "provider": "aws", "aws": {"role_arn": "arn:aws:iam::1:role/x"}},
         "spaces[0].targets[0].aws.role_arn"),
        ({"name": "x", "kind": "feed", "provider": "aws", "aws": {"region": "US-EAST-1"}}, "spaces[0].targets[0].aws.region"),
        ({"name": "x", "kind": "feed", "provider": "aws", "aws": {"bucket": "b"}}, "spaces[0].targets[0].aws.bucket"),
        ({"name": "x", "kind": "feed", "provider": "aws", "aws": "role"}, "spaces[0].targets[0].aws"),
        ({"name": "x", "kind": "feed", "provider": "azure", "azure": {"tenant_id": "not-a-uuid"}},
         "spaces[0].targets[0].azure.tenant_id"),
        ({"name": "x", "kind": "feed", "provider": "gcp", "gcp": {"service_account": "x@example.com"}},
         "spaces[0].targets[0].gcp.service_account"),
        ({"name": "x", "kind": "feed", "provider": "aws", "audience": ""}, "spaces[0].targets[0].audience"),
        ({"name": "x", "kind": "feed", "provider": "aws", "audience": "a" * 513}, "spaces[0].targets[0].audience"),
        ({"name": "x", "kind": "feed", "provider": "aws", "subject": "space,feed"}, "spaces[0].targets[0].subject"),
        ({"name": "x", "kind": "feed", "provider": "aws", "subject": ["feed", "space"]}, "spaces[0].targets[0].subject"),
        ({"name": "x", "kind": "feed", "provider": "aws", "subject": ["space", "account"]}, "spaces[0].targets[0].subject"),
    ],
)
def test_a_bad_target_is_refused_at_its_path(target, path):
    assert path in paths(_one_target(**target))


def test_a_duplicate_target_name_is_refused(doc):
    space_doc(doc)["targets"].append({"name": "images", "kind": "feed", "provider": "aws"})
    assert problems(doc) == [("spaces[0].targets[2].name", "duplicate target name 'images' in space 'acme'")]


def test_settings_for_another_cloud_are_refused():
    assert problems(_one_target(name="x", kind="feed", provider="aws", gcp={})) == [
        ("spaces[0].targets[0].gcp", "settings for gcp on a aws target")
    ]


def test_a_target_may_name_its_own_audience():
    assert _only_target(name="x", kind="feed", provider="gcp", audience="my-audience",
                        gcp={"registry": "gcr.io"}).audience == "my-audience"


@pytest.mark.parametrize("lifetime, seconds", [(60, 60), (3600, 3600), ("90s", 90), ("10m", 600), ("1h", 3600), ("600", 600)])
def test_lifetimes_are_parsed(lifetime, seconds):
    assert _only_target(name="x", kind="feed", provider="aws", lifetime=lifetime).lifetime == seconds


@pytest.mark.parametrize("lifetime", [59, 3601, "2h", "0", True, 600.0, "10 m", "10d", None, -60])
def test_a_lifetime_outside_one_minute_to_one_hour_is_refused(lifetime):
    assert paths(_one_target(name="x", kind="feed", provider="aws", lifetime=lifetime)) == ["spaces[0].targets[0].lifetime"]


# -- trust rules --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "change, path",
    [
        ({"name": "Deploy"}, "spaces[0].trust[0].name"),
        ({"name": "pull"}, "spaces[0].trust[1].name"),
        ({"issuer": "gitlab"}, "spaces[0].trust[0].issuer"),
        ({"audience": ""}, "spaces[0].trust[0].audience"),
        ({"audience": 5}, "spaces[0].trust[0].audience"),
        ({"claims": {}}, "spaces[0].trust[0].claims"),
        ({"claims": ["repository"]}, "spaces[0].trust[0].claims"),
        ({"claims": {"bad name": "x"}}, "spaces[0].trust[0].claims"),
        ({"claims": {"repository": ""}}, "spaces[0].trust[0].claims.repository"),
        ({"claims": {"repository": 1.5}}, "spaces[0].trust[0].claims.repository"),
        ({"claims": {"repository": []}}, "spaces[0].trust[0].claims.repository"),
        ({"claims": {"repository": [["acme/app"]]}}, "spaces[0].trust[0].claims.repository"),
        ({"claims": {"repository": "*"}}, "spaces[0].trust[0].claims.repository"),
        ({"claims": {"aud": "x"}}, "spaces[0].trust[0].claims.aud"),
        ({"claims": {"iss": CI}}, "spaces[0].trust[0].claims.iss"),
        ({"claims": {"repository": None}}, "spaces[0].trust[0].claims.repository"),
        ({"targets": []}, "spaces[0].trust[0].targets"),
        ({"targets": "prod"}, "spaces[0].trust[0].targets"),
        ({"targets": ["prod", "nope"]}, "spaces[0].trust[0].targets[1]"),
        ({"context": {"environment": "Production"}}, "spaces[0].trust[0].context.environment"),
        ({"context": {"environment": {"claim": "bad claim"}}}, "spaces[0].trust[0].context.environment.claim"),
        ({"context": {"environment": {"claim": "env", "default": "x"}}}, "spaces[0].trust[0].context.environment.default"),
        ({"context": {"space": "other"}}, "spaces[0].trust[0].context.space"),
        ({"context": {"account": "other"}}, "spaces[0].trust[0].context.account"),
        ({"context": ["environment"]}, "spaces[0].trust[0].context"),
        ({"context": {}}, "spaces[0].trust[0].context"),
        ({"subject": "x"}, "spaces[0].trust[0].subject"),
    ],
)
def test_a_bad_trust_rule_is_refused_at_its_path(doc, change, path):
    rule_doc(doc, "deploy").update(change)
    assert path in paths(doc)


def test_a_rule_must_supply_every_context_key_its_targets_use(doc):
    del rule_doc(doc, "deploy")["context"]
    assert problems(doc) == [("spaces[0].trust[0].context", "target 'prod' needs a value for subject key 'environment'")]


def test_a_rule_may_not_name_a_target_of_another_space(doc):
    doc["spaces"].append({"name": "other", "targets": [{"name": "mine", "kind": "feed", "provider": "aws"}]})
    rule_doc(doc, "pull")["targets"] = ["mine"]
    assert problems(doc) == [("spaces[0].trust[1].targets[0]", "'mine' is not a target of space 'acme'")]


def test_a_rule_without_claims_is_a_config_problem_not_a_crash(doc):
    del rule_doc(doc, "pull")["claims"]
    assert problems(doc) == [("spaces[0].trust[1].claims", "is required")]


def test_a_rule_issuer_given_as_a_list_is_a_config_problem_not_a_crash(doc):
    rule_doc(doc, "pull")["issuer"] = ["ci"]
    assert paths(doc) == ["spaces[0].trust[1].issuer"]


def test_a_rule_target_given_as_a_list_is_a_config_problem_not_a_crash(doc):
    rule_doc(doc, "pull")["targets"] = [["images"]]
    assert paths(doc) == ["spaces[0].trust[1].targets[0]"]


# -- one space at a time (how the functions read a stored configuration) ------------------------

def test_a_space_parsed_alone_equals_the_same_space_parsed_in_its_document():
    doc = config_doc()
    whole = validation.parse(doc, "broker.yaml")
    shared = validation.parse_shared({k: v for k, v in doc.items() if k != "spaces"}, "broker.yaml")
    assert (shared.issuer, dict(shared.trusted_issuers)) == (whole.issuer, dict(whole.trusted_issuers))
    assert validation.parse_space(doc["spaces"][0], 0, shared, "broker.yaml") == whole.spaces["acme"]


def test_a_space_alone_reports_its_problems_at_its_place_in_the_document():
    doc = config_doc()
    shared = validation.parse_shared({k: v for k, v in doc.items() if k != "spaces"})
    space = doc["spaces"][0]
    space["trust"][0]["issuer"] = "nobody"
    with pytest.raises(ConfigError) as e:
        validation.parse_space(space, 3, shared, "broker.yaml")
    assert ("spaces[3].trust[0].issuer", "must name an entry of trusted_issuers") in e.value.problems


def test_the_rules_of_a_target_are_those_naming_it_in_the_documents_order():
    doc = config_doc()
    rules = doc["spaces"][0]["trust"]
    rules.append({"name": "both", "issuer": "ci", "claims": {"repository": "acme/ops"}, "targets": ["images", "prod"],
                  "context": {"environment": "prod"}})
    rules.insert(0, {"name": "first-pull", "issuer": "ci", "claims": {"repository": "acme/web"}, "targets": ["images"]})
    space = validation.parse(doc).spaces["acme"]
    assert [r.name for r in space.rules_for("images")] == ["first-pull", "pull", "both"]
    assert [r.name for r in space.rules_for("prod")] == ["deploy", "both"]
    assert space.rules_for("nothing") == ()


def test_a_duplicate_rule_name_is_refused_wherever_it_comes_in_a_long_list():
    doc = config_doc()
    rules = doc["spaces"][0]["trust"]
    rules += [{"name": f"r-{i}", "issuer": "ci", "claims": {"repository": f"acme/{i}"}, "targets": ["images"]}
              for i in range(2000)]
    rules.append({"name": "r-1234", "issuer": "ci", "claims": {"repository": "acme/x"}, "targets": ["images"]})
    with pytest.raises(ConfigError) as e:
        validation.parse(doc)
    assert e.value.problems == [("spaces[0].trust[2002].name", "duplicate trust rule name 'r-1234' in space 'acme'")]
