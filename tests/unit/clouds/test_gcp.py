"""oidc_broker/clouds/gcp.py: what a Google Cloud target carries (no exchanger yet)."""

from __future__ import annotations

from builders import config_doc, config_problems as problems

from oidc_broker import validation
from oidc_broker.clouds import CLOUDS


def one_target(**target) -> dict:
    return config_doc(spaces=[{"name": "acme", "targets": [target]}])


def only_target(**target):
    (parsed,) = validation.parse(one_target(**target)).spaces["acme"].targets.values()
    return parsed


def test_gcp_targets_default_to_the_providers_resource_name_as_audience():
    wip = "projects/123/locations/global/workloadIdentityPools/pipelines/providers/broker"
    target = only_target(name="x", kind="feed", provider="gcp", gcp={"workload_identity_provider": wip})
    assert target.audience == "https://iam.googleapis.com/" + wip


def test_a_gcp_target_without_provider_or_audience_is_refused():
    assert problems(one_target(name="x", kind="feed", provider="gcp")) == [
        ("spaces[0].targets[0].audience", "is required for this provider")
    ]


def test_a_gcp_target_whose_shortest_subject_cannot_fit_127_bytes_is_refused():
    doc = config_doc(spaces=[{"name": "s" * 63, "targets": [
        {"name": "f" * 63, "kind": "feed", "provider": "gcp", "audience": "a"}]}])
    assert problems(doc) == [("spaces[0].targets[0].subject", "cannot fit the 127-byte subject limit for gcp targets")]


def test_the_same_long_names_fit_an_aws_target():
    doc = config_doc(spaces=[{"name": "s" * 63, "targets": [{"name": "f" * 63, "kind": "feed", "provider": "aws"}]}])
    assert ("s" * 63) in validation.parse(doc).spaces


def test_a_literal_context_too_long_for_a_gcp_subject_is_refused():
    wip = "projects/1/locations/global/workloadIdentityPools/pool/providers/prov"
    doc = config_doc(spaces=[{
        "name": "acme",
        "targets": [{"name": "x", "kind": "feed", "provider": "gcp", "subject": ["space", "project", "environment", "feed"],
                     "gcp": {"workload_identity_provider": wip}}],
        "trust": [{"name": "r", "issuer": "ci", "claims": {"repository": "acme/app"}, "targets": ["x"],
                   "context": {"project": "p" * 63, "environment": "e" * 40}}],
    }])
    assert problems(doc) == [("spaces[0].trust[0].context", "target 'x': the subject cannot fit 127 bytes")]


def test_a_gcp_target_is_cached_until_half_its_lifetime_unless_it_says_otherwise():
    target = only_target(name="x", kind="feed", provider="gcp", audience="a")
    assert target.setting("refresh_at") == 0.5
    assert only_target(name="x", kind="feed", provider="gcp", audience="a", gcp={"refresh_at": 0}).setting("refresh_at") == 0


def test_google_allows_127_byte_subjects_and_no_exchange_or_trust_setup_exists_yet():
    cloud = CLOUDS["gcp"]
    assert (cloud.max_subject_bytes, cloud.exchanger, cloud.trust_setup) == (127, None, None)
