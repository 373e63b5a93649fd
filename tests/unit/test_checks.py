"""oidc_broker/checks.py: the generic setting checks (durations, fractions, choices, patterns)."""

from __future__ import annotations

import re

import pytest

from oidc_broker import checks


@pytest.mark.parametrize("value, seconds", [(600, 600), ("600", 600), ("5s", 5), ("2m", 120), ("1h", 3600),
                                            (True, None), (1.5, None), ("1d", None), ("m", None), ("", None), (None, None)])
def test_parse_lifetime(value, seconds):
    assert checks.parse_lifetime(value) == seconds


def test_seconds_between_accepts_durations_within_its_bounds():
    check = checks.seconds_between(900, 43200)
    assert [check(v) for v in (900, "15m", "12h")] == [900, 900, 43200]
    assert [check(v) for v in (899, "13h", True, None)] == [None, None, None, None]


def test_fraction_between_refuses_booleans_strings_and_values_outside_it():
    check = checks.fraction_between(0.0, 0.9)
    assert [check(v) for v in (0, 0.9, 1 / 3)] == [0.0, 0.9, 1 / 3]
    assert [check(v) for v in (True, "0.5", 0.95, -0.1)] == [None, None, None, None]


def test_one_of_accepts_only_its_choices():
    check = checks.one_of("ecr", "ecr-public")
    assert (check("ecr"), check("docker.io"), check(None)) == ("ecr", None, None)


def test_normalise_matches_a_pattern_whole_or_calls_the_function():
    assert checks.normalise(re.compile(r"[a-z]+"), "abc") == "abc"
    assert checks.normalise(re.compile(r"[a-z]+"), "abc1") is None
    assert checks.normalise(re.compile(r"[a-z]+"), 5) is None
    assert checks.normalise(checks.seconds_between(1, 10), "5s") == 5
