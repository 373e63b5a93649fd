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
