"""Claim conditions: anchored globs that never cross delimiters, any-of lists, strict types."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from oidc_broker.matching import Glob, compile_condition

segment = st.text(alphabet=st.characters(blacklist_characters="/:*", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
delimiter = st.sampled_from(["/", ":"])


@given(prefix=segment, value=segment, sep=delimiter, tail=segment)
def test_a_star_never_matches_across_a_delimiter(prefix, value, sep, tail):
    condition = compile_condition("ref", f"{prefix}*")
    assert condition.matches(prefix + value)
    assert not condition.matches(prefix + value + sep + tail)


@given(head=segment, sep=delimiter, tail=segment)
def test_a_leading_star_never_matches_across_a_delimiter(head, sep, tail):
    condition = compile_condition("ref", f"*{tail}")
    assert not condition.matches(head + sep + tail)


@given(pattern_parts=st.lists(segment, min_size=2, max_size=4), fill=st.lists(segment, min_size=3, max_size=3),
       noise=segment)
def test_a_glob_is_anchored_at_both_ends(pattern_parts, fill, noise):
    pattern = "*".join(pattern_parts)
    value = "".join(p + (fill[i] if i < len(pattern_parts) - 1 else "") for i, p in enumerate(pattern_parts))
    condition = compile_condition("c", pattern)
    assert condition.matches(value)
    assume(not condition.matches(noise + "/" + value))
    assert not condition.matches(noise + "/" + value)
    assert not condition.matches(value + "/" + noise)


@given(value=segment)
def test_glob_metacharacters_other_than_star_are_literal(value):
    assume("." not in value)
    condition = compile_condition("c", "a.c")
    assert condition.matches("a.c")
    assert not condition.matches("abc")


@pytest.mark.parametrize("actual", ["refs/heads/x\n", "refs/heads/\x00", "refs/heads/a\tb"])
def test_a_glob_never_matches_a_control_character(actual):
    assert not compile_condition("ref", "refs/heads/*").matches(actual)


@pytest.mark.parametrize(
    "expected,actual,matches",
    [
        ("123", 123, False),
        (123, "123", False),
        (True, 1, False),
        (1, True, False),
        ("acme/app", ["acme/app"], False),
        ("acme/app", {"x": 1}, False),
        ("acme/app", None, False),
        ("acme/app", "", False),
        (7, 7, True),
        (False, False, True),
    ],
)
def test_types_are_strict(expected, actual, matches):
    assert compile_condition("c", expected).matches(actual) is matches


def test_a_list_means_any_of():
    condition = compile_condition("event_name", ["push", "workflow_dispatch"])
    assert condition.matches("push") and condition.matches("workflow_dispatch")
    assert not condition.matches("pull_request")


def test_an_empty_claim_never_matches_even_a_star_pattern():
    assert not compile_condition("ref", "refs/*").matches("")
    assert not compile_condition("ref", "refs/*").matches(None)


def test_case_insensitive_claims_fold_ascii_only():
    condition = compile_condition("repository", "acme/app", case_insensitive=True)
    assert condition.matches("ACME/App")
    assert not condition.matches("acme/\u0430pp")  # Cyrillic a
    assert not compile_condition("repository", "sk", case_insensitive=True).matches("\u017fk")  # long s


def test_case_sensitive_claims_compare_exactly():
    assert not compile_condition("ref", "refs/heads/main").matches("refs/heads/Main")


@pytest.mark.parametrize("value", ["", "*", "**", [], None, 1.5, {"a": 1}, ["ok", None]])
def test_a_condition_that_would_match_anything_or_nothing_is_refused(value):
    with pytest.raises(ValueError):
        compile_condition("c", value)


def test_literals_are_what_a_rule_names_exactly():
    condition = compile_condition("event_name", ["push", "pull_*", "workflow_run"])
    assert condition.literals() == {"push", "workflow_run"}
    assert any(isinstance(a, Glob) for a in condition.alternatives)
