"""oidc_broker/config.py: the AWS exchange settings of a target (session, registry, refresh)."""

from __future__ import annotations

import pytest
from builders import config_doc, space_doc

from oidc_broker import config

ROLE = "arn:aws:iam::123456789012:role/deploy"


def parse_target(kind: str = "account", **aws):
    doc = config_doc()
    space_doc(doc)["targets"] = [{"name": "x", "kind": kind, "provider": "aws", "aws": {"role_arn": ROLE, **aws}}]
    space_doc(doc)["trust"] = []
    return config.parse(doc).target("acme/x")


def problems(kind: str = "account", **aws) -> list[tuple[str, str]]:
    with pytest.raises(config.ConfigError) as e:
        parse_target(kind, **aws)
    return e.value.problems


def test_an_aws_target_defaults_to_one_hour_sessions_refreshed_at_half_life():
    target = parse_target()
    assert (target.setting("session_duration"), target.setting("refresh_at")) == (3600, 0.5)
    assert target.settings == {"role_arn": ROLE}  # defaults are read, not written into the settings


def test_an_aws_feed_defaults_to_the_private_ecr_registry():
    assert parse_target("feed").setting("registry") == "ecr"
    assert parse_target("feed", registry="ecr-public").setting("registry") == "ecr-public"
    assert parse_target("account").setting("registry") is None


@pytest.mark.parametrize(("value", "seconds"), [(900, 900), ("15m", 900), ("1h", 3600), ("12h", 43200), (43200, 43200)])
def test_session_durations_are_durations_within_what_sts_allows(value, seconds):
    assert parse_target(session_duration=value).setting("session_duration") == seconds


@pytest.mark.parametrize("value", [899, "13h", 0, "soon", True, None])
def test_session_durations_outside_sts_limits_are_refused(value):
    assert problems(session_duration=value) == [
        ("spaces[0].targets[0].aws.session_duration", "must be a duration from 900s to 43200s (e.g. 3600, 15m, 12h)")]


@pytest.mark.parametrize("value", [0, 0.25, 0.9, 1 / 3])
def test_refresh_at_is_a_fraction_of_the_lifetime(value):
    assert parse_target(refresh_at=value).setting("refresh_at") == pytest.approx(value)


@pytest.mark.parametrize("value", [0.95, 1, -0.1, "0.5", True])
def test_refresh_at_outside_zero_to_nine_tenths_is_refused(value):
    assert problems(refresh_at=value)[0][0] == "spaces[0].targets[0].aws.refresh_at"


def test_a_registry_on_an_account_target_or_an_unknown_registry_is_refused():
    assert problems("account", registry="ecr") == [("spaces[0].targets[0].aws.registry", "applies to feed targets only")]
    assert problems("feed", registry="docker.io") == [
        ("spaces[0].targets[0].aws.registry", "must be ecr or ecr-public (feed targets only)")]
