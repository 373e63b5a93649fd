"""oidc_broker/minting.py: the Broker from caller token to signed token, with in-memory ports.

The "KMS" is a real RSA key, so the minted token is checked with PyJWT against the JWK the key
ring publishes, the way a cloud would check it.
"""

from __future__ import annotations

import pytest
from builders import BROKER, CI, NOW, caller_claims, config_doc, public_der, space_doc
from fakes import KEY_ARN, Setup

from oidc_broker import callers, keys, minting, model, tokens
from oidc_broker.errors import BrokerError, InvalidGrant, InvalidTarget, ServerError
from oidc_broker.store import Grant
from oidc_broker.subject import Subject


@pytest.fixture
def setup(ci, other_rsa_key, clock) -> Setup:
    return Setup(ci, other_rsa_key, clock)


def gcp_document() -> dict:
    doc = config_doc()
    space_doc(doc)["targets"].append({
        "name": "gar", "kind": "feed", "provider": "gcp", "audience": "gcp-audience",
        "subject": ["space", "project", "environment", "feed"], "gcp": {"registry": "gcr.io"},
    })
    space_doc(doc)["trust"].append({
        "name": "gar", "issuer": "ci", "claims": {"repository": "acme/app"}, "targets": ["gar"],
        "context": {"project": {"claim": "project"}, "environment": {"claim": "environment"}},
    })
    return doc


# -- a minted token -----------------------------------------------------------------------------

def test_issue_mints_a_token_verifiable_against_the_published_jwk(setup):
    issued = setup.issue()
    claims = setup.verify_minted(issued.token, "sts.amazonaws.com")
    assert claims == issued.claims


def test_issued_token_names_the_subject_built_from_the_target_and_context_claim(setup):
    claims = setup.verify_minted(setup.issue().token, "sts.amazonaws.com")
    assert claims["sub"] == "space:acme:environment:production:account:prod"
    assert (claims["space"], claims["environment"], claims["account"]) == ("acme", "production", "prod")


def test_the_context_claim_value_flows_into_the_subject(setup):
    token = setup.ci.token(caller_claims(environment="staging"))
    assert setup.issue(token).claims["sub"] == "space:acme:environment:staging:account:prod"


def test_issued_token_lives_for_the_targets_lifetime(setup):
    issued = setup.issue()
    assert (issued.claims["iat"], issued.claims["nbf"], issued.claims["exp"]) == (int(NOW), int(NOW), int(NOW) + 900)
    assert issued.expires_in == 900


def test_issued_token_names_the_caller_as_actor(setup):
    assert setup.issue().claims["act"] == {"iss": CI, "sub": "repo:acme/app:ref:refs/heads/main"}


def test_issued_token_has_a_fresh_jti_unrelated_to_the_callers(setup):
    first = setup.issue()
    second = setup.issue(setup.ci.token(caller_claims(jti="caller-jti-2")))
    assert first.claims["jti"] != second.claims["jti"]
    assert "caller-jti" not in first.claims["jti"]


def test_issue_signs_with_the_active_keys_kms_arn(setup):
    setup.issue()
    assert [arn for arn, _ in setup.signer.calls] == [KEY_ARN]


def test_issue_reports_the_rule_target_and_caller(setup):
    issued = setup.issue()
    assert (issued.rule.name, issued.target.ref, issued.caller.subject) == ("deploy", "acme/prod", "repo:acme/app:ref:refs/heads/main")


def test_issue_mints_for_a_target_without_context(setup):
    issued = setup.issue(audience="acme/images")
    assert setup.verify_minted(issued.token, "sts.amazonaws.com")["sub"] == "space:acme:feed:images"


# -- the grant ----------------------------------------------------------------------------------

def test_issue_records_the_grant_before_returning(setup):
    issued = setup.issue()
    (grant,) = setup.store.grants.values()
    assert grant == Grant(
        caller_issuer=CI,
        caller_subject="repo:acme/app:ref:refs/heads/main",
        caller_jti="caller-jti-1",
        trust_rule="deploy",
        target="acme/prod",
        subject="space:acme:environment:production:account:prod",
        audience="sts.amazonaws.com",
        token_jti=issued.claims["jti"],
        issued_at=int(NOW),
        token_expires_at=int(NOW) + 900,
        keep_until=int(NOW) + minting.AUDIT_RETENTION,
    )


def test_a_grant_is_kept_past_the_caller_tokens_expiry_as_a_replay_guard(setup, monkeypatch):
    monkeypatch.setattr(minting, "AUDIT_RETENTION", 0)
    setup.issue(setup.ci.token(caller_claims(exp=int(NOW) + 300)))
    (grant,) = setup.store.grants.values()
    assert grant.keep_until == int(NOW) + 300 + 60 + minting.REPLAY_MARGIN


def test_a_grant_is_kept_only_while_a_far_expiring_caller_token_is_not_too_old(setup, monkeypatch):
    monkeypatch.setattr(minting, "AUDIT_RETENTION", 0)
    iat = int(NOW) - 10
    setup.issue(setup.ci.token(caller_claims(iat=iat, exp=int(NOW) + 10**9)))
    (grant,) = setup.store.grants.values()
    # Past iat + max_token_age + leeway the caller token is refused as too old, whatever its exp.
    assert grant.keep_until == iat + 3600 + 60 + minting.REPLAY_MARGIN


@pytest.mark.parametrize("exp", [int(NOW) + 10**9, NOW + 1e9 + 0.5, callers.MAX_TIME])
def test_a_grants_ttl_does_not_follow_an_absurd_caller_expiry(setup, exp):
    setup.issue(setup.ci.token(caller_claims(exp=exp)))
    (grant,) = setup.store.grants.values()
    assert grant.keep_until == int(NOW) + minting.AUDIT_RETENTION


def test_a_replayed_caller_token_is_refused(setup):
    token = setup.ci.token()
    setup.issue(token)
    with pytest.raises(InvalidGrant) as info:
        setup.issue(token)
    assert info.value.reason == "replayed"
    assert len(setup.signer.calls) == 1


def test_a_caller_token_may_be_exchanged_once_for_each_target(setup):
    token = setup.ci.token()
    setup.issue(token, "acme/prod")
    assert setup.issue(token, "acme/images").target.ref == "acme/images"


def test_nothing_is_signed_when_the_grant_cannot_be_recorded(setup):
    def broken(grant):
        raise RuntimeError("table unavailable")

    setup.store.record_grant = broken
    with pytest.raises(RuntimeError):
        setup.issue()
    assert setup.signer.calls == []


def test_a_grant_whose_token_could_not_be_signed_is_withdrawn(setup):
    setup.signer.error = RuntimeError("KMS throttled")
    with pytest.raises(RuntimeError, match="KMS throttled"):
        setup.issue()
    assert setup.store.grants == {}
    assert len(setup.store.withdrawn) == 1


def test_the_caller_token_works_after_a_signing_failure(setup):
    token = setup.ci.token()
    setup.signer.error = RuntimeError("KMS throttled")
    with pytest.raises(RuntimeError):
        setup.issue(token)
    setup.signer.error = None
    assert setup.verify_minted(setup.issue(token).token, "sts.amazonaws.com")


def test_authorize_records_and_signs_nothing(setup):
    auth = setup.broker.authorize(setup.ci.token(), "acme/prod", BROKER)
    assert str(auth.subject) == "space:acme:environment:production:account:prod"
    assert (setup.store.grants, setup.signer.calls) == ({}, [])


def test_record_keeps_a_grant_for_credentials_served_without_minting(setup):
    auth = setup.broker.authorize(setup.ci.token(), "acme/prod", BROKER)
    grant = setup.broker.record(auth, token_jti="cached-jti", expires_at=int(NOW) + 100)
    assert (grant.token_jti, grant.token_expires_at, grant.target) == ("cached-jti", int(NOW) + 100, "acme/prod")
    assert list(setup.store.grants.values()) == [grant] and setup.signer.calls == []


def test_record_refuses_a_replayed_caller_token(setup):
    token = setup.ci.token()
    setup.issue(token)
    auth = setup.broker.authorize(token, "acme/prod", BROKER)
    with pytest.raises(InvalidGrant) as info:
        setup.broker.record(auth, token_jti="cached-jti", expires_at=int(NOW) + 100)
    assert info.value.reason == "replayed"


def test_withdrawing_an_issued_token_frees_the_caller_token(setup):
    token = setup.ci.token()
    setup.broker.withdraw(setup.issue(token))
    assert setup.store.grants == {}
    assert setup.issue(token).target.ref == "acme/prod"


# -- refusals -----------------------------------------------------------------------------------

def test_a_configuration_for_another_issuer_is_a_server_error(setup):
    with pytest.raises(ServerError) as info:
        setup.issue(issuer="https://other-broker.example.com")
    assert (info.value.status, info.value.reason) == (500, "issuer_mismatch")
    assert setup.ci.fetched == [] and setup.store.grants == {}


def test_an_unknown_target_is_an_invalid_target(setup):
    with pytest.raises(InvalidTarget) as info:
        setup.issue(audience="acme/nope")
    assert info.value.reason == "unknown_target"
    assert setup.store.grants == {}


def test_a_caller_no_rule_admits_is_refused_without_a_grant(setup):
    with pytest.raises(InvalidGrant) as info:
        setup.issue(setup.ci.token(caller_claims(ref="refs/heads/feature")))
    assert info.value.reason == "claim_mismatch"
    assert setup.store.grants == {} and setup.signer.calls == []


def test_an_invalid_caller_token_is_refused_without_a_grant(setup):
    with pytest.raises(InvalidGrant) as info:
        setup.issue(setup.ci.token(caller_claims(exp=NOW - 3600)))
    assert info.value.reason == "expired"
    assert setup.store.grants == {}


def test_a_context_claim_that_is_not_a_slug_is_refused(setup):
    with pytest.raises(InvalidGrant) as info:
        setup.issue(setup.ci.token(caller_claims(environment="Production")))
    assert info.value.reason == "invalid_context"
    assert setup.store.grants == {}


def test_a_context_claim_only_another_target_uses_is_not_required(ci, other_rsa_key, clock):
    doc = config_doc()
    space_doc(doc)["trust"] = [{"name": "both", "issuer": "ci", "claims": {"repository": "acme/app"},
                                "targets": ["prod", "images"], "context": {"environment": {"claim": "environment"}}}]
    setup = Setup(ci, other_rsa_key, clock, doc)
    assert setup.issue(ci.token(caller_claims(environment=None)), "acme/images").claims["sub"] == "space:acme:feed:images"


def test_a_subject_over_the_targets_limit_is_an_invalid_grant(ci, other_rsa_key, clock):
    setup = Setup(ci, other_rsa_key, clock, gcp_document())
    token = ci.token(caller_claims(project="p" * 63, environment="e" * 63))
    with pytest.raises(InvalidGrant) as info:
        setup.issue(token, "acme/gar")
    assert info.value.reason == "invalid_subject"
    assert setup.store.grants == {}


def test_a_subject_within_the_gcp_limit_is_minted(ci, other_rsa_key, clock):
    setup = Setup(ci, other_rsa_key, clock, gcp_document())
    issued = setup.issue(ci.token(caller_claims(project="web")), "acme/gar")
    assert setup.verify_minted(issued.token, "gcp-audience")["sub"] == "space:acme:project:web:environment:production:feed:gar"


@pytest.mark.parametrize("state", [keys.NEXT, keys.RETIRED])
def test_without_an_active_key_nothing_is_minted(ci, other_rsa_key, clock, state):
    jwk = keys.jwk_from_der(public_der(other_rsa_key))
    ring = [{"kid": jwk["kid"], "key_arn": KEY_ARN, "state": state, "jwk": jwk, "created_at": 1}]
    setup = Setup(ci, other_rsa_key, clock, ring=ring)
    with pytest.raises(ServerError) as info:
        setup.issue()
    assert info.value.reason == "no_signing_key"
    assert setup.store.grants == {}


def test_a_caller_sub_too_long_to_sign_is_refused_as_the_callers_fault(setup):
    with pytest.raises(BrokerError) as info:
        setup.issue(setup.ci.token(caller_claims(sub="s" * 4000)))
    assert info.value.status == 400
    assert info.value.reason == "invalid_sub"
    assert setup.store.grants == {}


# A sub at the limit in the costliest characters: each escapes to 6 (\u4e00) or 12 (a surrogate pair) bytes.
@pytest.mark.parametrize("sub", ["\u4e00" * (callers.MAX_SUB_BYTES // 6), "\U0001f600" * (callers.MAX_SUB_BYTES // 12),
                                 "\"" * (callers.MAX_SUB_BYTES // 2), "s" * callers.MAX_SUB_BYTES])
def test_a_caller_sub_at_the_serialized_limit_is_minted(setup, sub):
    issued = setup.issue(setup.ci.token(caller_claims(sub=sub)))
    assert setup.verify_minted(issued.token, "sts.amazonaws.com")["act"]["sub"] == sub


@pytest.mark.parametrize("sub", ["\u4e00" * (callers.MAX_SUB_BYTES // 6 + 1), "\U0001f600" * (callers.MAX_SUB_BYTES // 12 + 1),
                                 "\"" * (callers.MAX_SUB_BYTES // 2 + 1)])
def test_a_caller_sub_over_the_serialized_limit_is_refused_though_its_characters_are_few(setup, sub):
    with pytest.raises(InvalidGrant) as info:
        setup.issue(setup.ci.token(caller_claims(sub=sub)))
    assert (info.value.status, info.value.reason) == (400, "invalid_sub")
    assert (setup.store.grants, setup.signer.calls) == ({}, [])


def test_a_token_too_large_to_sign_is_a_refusal_that_records_and_signs_nothing(setup, monkeypatch):
    monkeypatch.setattr(tokens, "MAX_SIGNING_INPUT", 600)
    with pytest.raises(InvalidGrant) as info:
        setup.issue(setup.ci.token(caller_claims(sub="s" * 300)))
    assert (info.value.status, info.value.reason) == (400, "minted_token_too_large")
    assert "KMS signs at most 600" in info.value.description
    assert (info.value.caller.issuer.issuer, info.value.caller.subject) == (CI, "s" * 300)
    assert (setup.store.grants, setup.signer.calls) == ({}, [])


# -- signing without a caller (work the broker does on its own) ----------------------------------

def _refresh_actor(jti: str = "refresh-1") -> minting.Actor:
    return minting.Actor(issuer=BROKER, subject="scheduled-refresh", jti=jti, trust_rule="refresh")


def test_sign_mints_for_a_binding_naming_the_actor_given_with_no_caller_to_verify(setup):
    binding = model.Binding(setup.config.target("acme/images"), Subject.parse("space:acme:feed:images"))
    signed = setup.broker.sign(BROKER, binding, _refresh_actor())
    claims = setup.verify_minted(signed.token, "sts.amazonaws.com")
    assert (claims["sub"], claims["act"]) == ("space:acme:feed:images", {"iss": BROKER, "sub": "scheduled-refresh"})
    assert not setup.ci.fetched  # no caller token, no caller key set


def test_sign_records_the_grant_before_signing_as_for_a_caller(setup):
    binding = model.Binding(setup.config.target("acme/images"), Subject.parse("space:acme:feed:images"))
    signed = setup.broker.sign(BROKER, binding, _refresh_actor())
    (grant,) = setup.store.grants.values()
    assert grant == signed.grant
    assert (grant.caller_subject, grant.trust_rule, grant.subject, grant.token_jti) == (
        "scheduled-refresh", "refresh", "space:acme:feed:images", signed.claims["jti"])
    assert grant.keep_until == int(NOW) + minting.AUDIT_RETENTION


def test_sign_withdraws_its_grant_when_signing_fails(setup):
    binding = model.Binding(setup.config.target("acme/images"), Subject.parse("space:acme:feed:images"))
    setup.signer.error = RuntimeError("KMS down")
    with pytest.raises(RuntimeError):
        setup.broker.sign(BROKER, binding, _refresh_actor())
    assert not setup.store.grants and len(setup.store.withdrawn) == 1


def test_an_actor_is_granted_once_per_target_like_a_caller_token(setup):
    binding = model.Binding(setup.config.target("acme/images"), Subject.parse("space:acme:feed:images"))
    setup.broker.sign(BROKER, binding, _refresh_actor("same"))
    with pytest.raises(InvalidGrant, match="already used"):
        setup.broker.sign(BROKER, binding, _refresh_actor("same"))


def test_the_grant_of_a_caller_is_the_actor_its_authorization_names(setup):
    auth = setup.broker.authorize(setup.ci.token(), "acme/prod", BROKER)
    assert auth.actor == minting.Actor(issuer=CI, subject="repo:acme/app:ref:refs/heads/main", jti="caller-jti-1",
                                       trust_rule="deploy", usable_until=int(NOW) + 300 + 60)
    assert auth.binding.key == ("acme/prod", "space:acme:environment:production:account:prod")
