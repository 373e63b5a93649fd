"""oidc_broker/subject.py: slugs, key order, building and parsing subjects, length limits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oidc_broker import subject
from oidc_broker.subject import Subject, SubjectError

# The slug rule as the documentation states it, written out independently of the module's regex.
SPEC = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
slugs = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,62}\Z")
non_slugs = st.one_of(
    st.text().filter(lambda s: SPEC.fullmatch(s) is None),
    st.text(alphabet="abcXYZ09-:_/. é", min_size=1, max_size=70).filter(lambda s: SPEC.fullmatch(s) is None),
    st.integers(),
    st.booleans(),
    st.none(),
)


# -- slugs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a", "0", "prod", "eu-west-1", "a-", "x" * 63, "9lives"])
def test_is_slug_accepts_lowercase_alphanumerics_and_hyphens(value):
    assert subject.is_slug(value)


@pytest.mark.parametrize(
    "value",
    ["", "-prod", "Prod", "PROD", "a:b", "a/b", "a_b", "a.b", "a b", "x" * 64, "prod\n", "é", 123, None, True],
)
def test_is_slug_refuses_anything_else(value):
    assert not subject.is_slug(value)


@given(slugs)
def test_every_slug_is_a_slug(value):
    assert subject.is_slug(value)


@given(non_slugs)
def test_a_non_slug_is_never_a_slug(value):
    assert not subject.is_slug(value)


# -- key lists ----------------------------------------------------------------------------------

def test_default_keys_are_the_space_and_the_target():
    assert subject.default_keys("feed") == ("space", "feed")


@pytest.mark.parametrize(
    "keys, kind",
    [
        (("space", "feed"), "feed"),
        (("space", "account"), "account"),
        (("space", "project", "runbook", "tenant", "environment", "account", "type"), "account"),
        (("space", "environment", "feed"), "feed"),
    ],
)
def test_check_keys_accepts_ordered_keys_with_space_and_target(keys, kind):
    subject.check_keys(keys, kind)


@pytest.mark.parametrize(
    "keys, kind, message",
    [
        (("space", "colour", "feed"), "feed", "unknown subject key 'colour'"),
        (("space", "feed", "feed"), "feed", "listed twice"),
        (("feed", "space"), "feed", "must follow the order"),
        (("space", "environment", "project", "feed"), "feed", "must follow the order"),
        (("space", "feed", "account"), "feed", "'account' does not fit a feed target"),
        (("space", "account"), "feed", "'account' does not fit a feed target"),
        (("feed",), "feed", "must include 'space'"),
        (("space", "environment"), "feed", "must include 'feed'"),
    ],
)
def test_check_keys_refuses_a_bad_key_list_naming_the_rule(keys, kind, message):
    with pytest.raises(SubjectError, match=message):
        subject.check_keys(keys, kind)


# -- building subjects --------------------------------------------------------------------------

def test_build_renders_key_value_pairs_in_the_given_order():
    built = subject.build(("space", "environment", "account"), {"account": "prod", "space": "acme", "environment": "production"})
    assert str(built) == "space:acme:environment:production:account:prod"


def test_subject_claims_are_one_per_part():
    built = subject.build(("space", "feed"), {"space": "acme", "feed": "images"})
    assert built.claims() == {"space": "acme", "feed": "images"}


def test_build_ignores_values_for_keys_not_chosen():
    built = subject.build(("space", "feed"), {"space": "acme", "feed": "images", "environment": "prod"})
    assert str(built) == "space:acme:feed:images"


@pytest.mark.parametrize("values", [{"space": "acme"}, {"space": "acme", "feed": ""}, {"space": "acme", "feed": None}])
def test_build_refuses_a_key_without_value(values):
    with pytest.raises(SubjectError, match="'feed' has no value"):
        subject.build(("space", "feed"), values)


@pytest.mark.parametrize("value", ["Prod", "a:b", "prod ", "-x", 1])
def test_build_refuses_a_non_slug_value_and_never_rewrites_it(value):
    with pytest.raises(SubjectError, match="'feed' is not a slug"):
        subject.build(("space", "feed"), {"space": "acme", "feed": value})


def _values_of_length(total: int) -> dict[str, str]:
    """Values for keys (space, environment, feed) whose subject is `total` bytes long."""
    fixed = len("space:") + 20 + len(":environment:") + len(":feed:") + 20
    return {"space": "s" * 20, "feed": "f" * 20, "environment": "e" * (total - fixed)}


KEYS = ("space", "environment", "feed")


def test_build_accepts_a_subject_of_exactly_the_limit_it_is_given():
    built = subject.build(KEYS, _values_of_length(127), 127)
    assert len(str(built).encode()) == 127


def test_build_refuses_a_subject_one_byte_over_its_limit_naming_what_limits_it():
    with pytest.raises(SubjectError, match="128 bytes; gcp targets allow at most 127"):
        subject.build(KEYS, _values_of_length(128), 127, limited_by="gcp targets")


def test_a_subject_over_a_lower_limit_fits_the_default_one():
    built = subject.build(KEYS, _values_of_length(128))
    assert len(str(built).encode()) == 128


def test_build_refuses_a_subject_over_the_default_limit():
    keys = ("space", "project", "runbook", "tenant", "feed")
    values = {k: "x" * 63 for k in keys}
    with pytest.raises(SubjectError, match="targets allow at most 255"):
        subject.build(keys, values)


all_keys = st.lists(st.sampled_from(subject.KEY_ORDER), unique=True).map(
    lambda ks: tuple(sorted(ks, key=subject.KEY_ORDER.index))
)


@given(all_keys, st.data(), st.sampled_from([127, 255]))
def test_a_subject_of_slugs_round_trips_or_is_refused_for_length(keys, data, limit):
    values = {k: data.draw(slugs, label=k) for k in keys}
    try:
        built = subject.build(keys, values, limit)
    except SubjectError as e:
        assert "bytes" in str(e)
        assert len(":".join(f"{k}:{values[k]}" for k in keys).encode()) > limit
        return
    text = str(built)
    assert len(text.encode()) <= limit
    parts = text.split(":") if keys else []
    assert list(zip(parts[::2], parts[1::2])) == [(k, values[k]) for k in keys]


# -- parsing subjects back ---------------------------------------------------------------------

def test_parse_reads_back_what_build_renders():
    parsed = Subject.parse("space:default:feed:x")
    assert parsed == subject.build(("space", "feed"), {"space": "default", "feed": "x"})
    assert str(parsed) == "space:default:feed:x"


@pytest.mark.parametrize("text", [
    "", "space", "space:acme:feed", "feed:x:space:acme", "space:acme:project:p", "space:acme:feed:x:account:y",
    "space:acme:feed:X", "space:acme:feed:", "space:acme:space:b:feed:x", "space:acme:colour:red:feed:x",
    "feed:x", "space::feed:x",
])
def test_parse_refuses_what_build_would_not_produce(text):
    with pytest.raises(SubjectError):
        Subject.parse(text)


def test_parse_refuses_a_subject_over_the_limit_it_is_given():
    text = str(subject.build(KEYS, _values_of_length(128)))
    assert str(Subject.parse(text)) == text
    with pytest.raises(SubjectError, match="at most 127"):
        Subject.parse(text, 127)


# A target's keys: its space, its kind (feed or account, one), and any of the context keys; built,
# not filtered out of all_keys (most of which name neither kind or both).
target_keys = st.tuples(st.sampled_from(("feed", "account")),
                        st.lists(st.sampled_from(sorted(subject.CONTEXT_KEYS)), unique=True)).map(
    lambda drawn: tuple(sorted(("space", drawn[0], *drawn[1]), key=subject.KEY_ORDER.index)))


@given(target_keys, st.data())
def test_every_subject_build_produces_parses_back_to_itself(keys, data):
    values = {k: data.draw(slugs, label=k) for k in keys}
    try:
        built = subject.build(keys, values)
    except SubjectError:
        return
    assert Subject.parse(str(built)) == built


@given(st.sampled_from(subject.KEY_ORDER), non_slugs.filter(lambda v: v not in (None, "")))
def test_a_non_slug_value_is_always_refused(key, value):
    with pytest.raises(SubjectError, match="not a slug"):
        subject.build((key,), {key: value})


@given(all_keys, st.data())
def test_shortest_length_is_the_length_with_one_byte_unknown_values(keys, data):
    fixed = {k: data.draw(slugs, label=k) for k in keys if data.draw(st.booleans(), label=f"fix {k}")}
    values = {k: fixed.get(k, "x") for k in keys}
    rendered = ":".join(f"{k}:{values[k]}" for k in keys)
    assert subject.shortest_length(keys, fixed) == len(rendered)
