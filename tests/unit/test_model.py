"""oidc_broker/model.py: what a Config answers about itself, and the records it is made of."""

from __future__ import annotations

import pytest
from builders import BROKER, CI, config_doc, space_doc

from oidc_broker import model, validation
from oidc_broker.model import Binding
from oidc_broker.subject import Subject, SubjectError


# -- lookups ------------------------------------------------------------------------------------

def test_issuer_for_matches_byte_for_byte(doc):
    cfg = validation.parse(doc)
    assert cfg.issuer_for(CI) is cfg.trusted_issuers["ci"]
    assert cfg.issuer_for(CI + "/") is None
    assert cfg.issuer_for(CI.upper()) is None
    assert cfg.issuer_for("https://ci.example") is None


@pytest.mark.parametrize("ref", ["acme/nope", "other/prod", "acme", "prod", "acme/prod/x", "/prod", ""])
def test_target_returns_none_for_an_unknown_ref(doc, ref):
    assert validation.parse(doc).target(ref) is None


def test_rules_for_lists_the_rules_naming_the_target(doc):
    cfg = validation.parse(doc)
    assert [r.name for r in cfg.rules_for(cfg.target("acme/images"))] == ["pull"]


# -- subject_patterns: exactly what the rules can get minted --------------------------------------

def _patterns(doc, rules: list[dict], target: str = "acme/prod") -> list[str]:
    space_doc(doc)["trust"] = rules
    cfg = validation.parse(doc)
    return cfg.subject_patterns(cfg.target(target))


def _deploy(claims: dict, context=None, name="d") -> dict:
    return {"name": name, "issuer": "ci", "claims": claims, "targets": ["prod"],
            "context": context or {"environment": {"claim": "environment"}}}


def test_a_context_claim_the_rule_leaves_unpinned_is_a_star(doc):
    assert _patterns(doc, [_deploy({"repository": "acme/app"})]) == ["space:acme:environment:*:account:prod"]


def test_a_context_claim_pinned_by_exact_values_gives_one_subject_per_value(doc):
    rules = [_deploy({"repository": "acme/app", "environment": ["production", "staging"]})]
    assert _patterns(doc, rules) == ["space:acme:environment:production:account:prod",
                                     "space:acme:environment:staging:account:prod"]


def test_a_context_claim_matched_by_a_glob_is_a_star(doc):
    rules = [_deploy({"repository": "acme/app", "environment": ["production", "staging-*"]})]
    assert _patterns(doc, rules) == ["space:acme:environment:*:account:prod"]


def test_literals_that_are_not_slugs_can_never_be_minted(doc):
    rules = [_deploy({"repository": "acme/app", "environment": ["Production", "prod/eu", "ok", 5, True]})]
    assert _patterns(doc, rules) == ["space:acme:environment:ok:account:prod"]


def test_a_rule_whose_pinned_values_are_never_slugs_mints_nothing(doc):
    assert _patterns(doc, [_deploy({"repository": "acme/app", "environment": "Production"})]) == []


def test_a_pinned_case_insensitive_claim_mints_its_lower_case_spelling():
    doc = config_doc(trusted_issuers=[{"name": "ci", "issuer": "https://token.actions.githubusercontent.com"}])
    rules = [_deploy({"repository_id": "42", "repository_owner": ["Acme", "Acme Corp"]},
                     context={"environment": {"claim": "repository_owner"}})]
    assert _patterns(doc, rules) == ["space:acme:environment:acme:account:prod"]


def test_a_literal_context_and_a_context_claim_of_another_rule_combine(doc):
    rules = [_deploy({"repository": "acme/app"}, context={"environment": "production"}, name="a"),
             _deploy({"repository": "acme/app", "environment": "staging"}, name="b")]
    assert _patterns(doc, rules) == ["space:acme:environment:production:account:prod",
                                     "space:acme:environment:staging:account:prod"]


def test_every_subject_the_broker_mints_is_among_the_patterns(doc):
    import fnmatch

    from oidc_broker import callers

    rules = [_deploy({"repository": "acme/app", "environment": ["production", "Staging", "qa-*"]})]
    space_doc(doc)["trust"] = rules
    cfg = validation.parse(doc)
    target = cfg.target("acme/prod")
    patterns = cfg.subject_patterns(target)
    for env in ["production", "Staging", "staging", "qa-1", "qa-", "dev"]:
        caller = callers.VerifiedCaller(cfg.trusted_issuers["ci"], {"repository": "acme/app", "environment": env,
                                                                   "aud": BROKER})
        report = callers.evaluate(cfg.spaces["acme"].trust[0], caller.issuer, caller.claims, target)
        try:
            minted = str(target.subject_for(callers.context_values(report.rule, caller, target)))
        except Exception:
            continue
        if report.admits:
            assert any(fnmatch.fnmatchcase(minted, p) for p in patterns), (env, patterns)


# -- targets and bindings ------------------------------------------------------------------------------

def test_a_target_setting_is_the_configured_value_else_the_clouds_default_for_its_kind():
    target = model.Target(space="a", name="t", kind="feed", provider="x", audience="aud", subject_keys=("space", "feed"),
                          lifetime=600, settings={"tier": "gold"}, defaults={"tier": "silver", "refresh_at": 0.5})
    assert (target.setting("tier"), target.setting("refresh_at"), target.setting("other")) == ("gold", 0.5, None)


def test_defaults_and_the_subject_limit_are_derived_so_take_no_part_in_equality():
    plain = model.Target(space="a", name="t", kind="feed", provider="x", audience="aud", subject_keys=("space", "feed"),
                         lifetime=600)
    described = model.Target(space="a", name="t", kind="feed", provider="x", audience="aud",
                             subject_keys=("space", "feed"), lifetime=600, defaults={"refresh_at": 0.5}, max_subject_bytes=40)
    assert plain == described


def test_a_targets_subject_is_built_with_its_own_values_and_its_clouds_limit():
    target = model.Target(space="acme", name="t", kind="feed", provider="x", audience="aud",
                          subject_keys=("space", "environment", "feed"), lifetime=600, max_subject_bytes=40)
    assert str(target.subject_for({"environment": "prod"})) == "space:acme:environment:prod:feed:t"
    with pytest.raises(SubjectError, match="x targets allow at most 40"):
        target.subject_for({"environment": "e" * 30})


def test_a_binding_is_keyed_by_its_target_and_subject():
    cfg = validation.parse(config_doc())
    binding = Binding(cfg.target("acme/images"), Subject.parse("space:acme:feed:images"))
    assert binding.key == ("acme/images", "space:acme:feed:images")
    assert binding == Binding(cfg.target("acme/images"), Subject.parse("space:acme:feed:images"))
