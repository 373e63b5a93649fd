"""Issuer presets: chosen from the issuer URL, and the policy their tables carry."""

import pytest

from oidc_broker import presets


@pytest.mark.parametrize(
    "url,name",
    [
        ("https://token.actions.githubusercontent.com", "github"),
        ("https://token.actions.githubusercontent.com/acme-enterprise", "github"),
        ("https://ghes.example.com/_services/token", "github"),
        ("https://gitlab.com", "gitlab"),
        ("https://agent.buildkite.com", "buildkite"),
        ("https://oidc.circleci.com/org/0f3c9e26-4a36-4f0b-8e86-6b5e2f6b8c11", "circleci"),
        ("https://gitlab.example.com", "generic"),
        ("https://token.actions.githubusercontent.com.evil.example", "generic"),
        ("https://gitlab.com.evil.example", "generic"),
    ],
)
def test_the_preset_follows_the_issuer_url_exactly(url, name):
    assert presets.for_issuer(url).name == name


@pytest.mark.parametrize("preset", [p for p in presets.PRESETS.values() if p.claims], ids=lambda p: p.name)
def test_every_claim_a_preset_classifies_is_a_claim_it_knows(preset):
    classified = preset.immutable | preset.case_insensitive | preset.user_controlled | set(preset.dangerous) | preset.strings
    classified |= set(preset.id_for) | set(preset.id_for.values())
    assert classified <= set(preset.claims)


@pytest.mark.parametrize("preset", list(presets.PRESETS.values()), ids=lambda p: p.name)
def test_every_id_a_name_points_to_is_immutable(preset):
    assert set(preset.id_for.values()) <= preset.immutable


def test_github_refuses_pull_request_target_and_workflow_run_by_default():
    assert presets.GITHUB.dangerous["event_name"] == {"pull_request_target", "workflow_run"}


def test_ascii_lower_leaves_unicode_alone():
    assert presets.ascii_lower("ACME/App") == "acme/app"
    assert presets.ascii_lower("\u212a") == "\u212a"  # Kelvin sign does not become 'k'


@pytest.mark.parametrize("preset", [presets.GITHUB, presets.GITLAB, presets.BUILDKITE, presets.CIRCLECI], ids=lambda p: p.name)
def test_every_shared_issuer_preset_names_immutable_tenant_ids(preset):
    assert preset.tenant and preset.tenant <= preset.immutable


def test_the_generic_preset_pins_no_tenant():
    assert presets.GENERIC.tenant == frozenset() and presets.GENERIC.tenant_subject is None


@pytest.mark.parametrize("preset", [p for p in presets.PRESETS.values() if p.claims], ids=lambda p: p.name)
def test_every_claim_with_a_span_is_a_claim_the_preset_knows(preset):
    assert set(preset.spans) <= set(preset.claims)


@pytest.mark.parametrize("sub, pinned", [
    ("repo:acme@7/app@42:ref:refs/heads/main", True),
    ("repo:acme@7/*:environment:production", True),
    ("repo:acme/app:ref:refs/heads/main", False),
    ("repo:*@7/app@42:ref:refs/heads/main", False),
    ("repo:acme@7*/app@42:ref:refs/heads/main", False),
    ("repo:acme@x/app@42:ref:refs/heads/main", False),
    ("repo:acme@7", False),
])
def test_githubs_immutable_subject_form_needs_a_literal_owner_and_id(sub, pinned):
    assert bool(presets.GITHUB.tenant_subject.fullmatch(sub)) is pinned


@pytest.mark.parametrize("pattern, spans", [("refs/heads/*", True), ("feature/*", True), ("refs/heads/release-*", False),
                                            ("refs/heads/*-rc", False)])
def test_the_branch_span_covers_a_star_after_the_last_slash(pattern, spans):
    assert bool(presets.BRANCH.where.fullmatch(pattern)) is spans
