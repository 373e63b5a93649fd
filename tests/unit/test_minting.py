"""oidc_broker/minting.py: the Broker from caller token to signed token, with in-memory ports.

The "KMS" is a real RSA key, so the minted token is checked with PyJWT against the JWK the key
ring publishes, the way a cloud would check it.
"""

from __future__ import annotations

import jwt
import pytest
from builders import BROKER, CI, NOW, caller_claims, config_doc, public_der, space_doc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from oidc_broker import callers, config, keys, minting, tokens
from oidc_broker.callers import IssuerKeys
from oidc_broker.errors import BrokerError, InvalidGrant, InvalidTarget, ServerError
from oidc_broker.store import AlreadyUsed, Grant

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/active"


class RsaSigner:
    """The signer port backed by a local RSA key: what KMS Sign does for RSASSA_PKCS1_V1_5_SHA_256."""

    def __init__(self, key):
        self.key = key
        self.calls: list[tuple[str, bytes]] = []
        self.error: Exception | None = None

    def sign(self, key_arn: str, message: bytes) -> bytes:
        self.calls.append((key_arn, message))
        if self.error:
            raise self.error
        return self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())


class MemoryStore:
    """The grant half of the store: a conditional put and a conditional delete."""

    def __init__(self):
        self.grants: dict[tuple[str, str], Grant] = {}
        self.withdrawn: list[Grant] = []

    @staticmethod
    def _key(grant: Grant) -> tuple[str, str]:
        key = grant.key()
        return key["pk"]["S"], key["sk"]["S"]

    def record_grant(self, grant: Grant) -> None:
        if self._key(grant) in self.grants:
            raise AlreadyUsed()
        self.grants[self._key(grant)] = grant

    def withdraw_grant(self, grant: Grant) -> None:
        if self.grants.get(self._key(grant), None) is not None and self.grants[self._key(grant)].token_jti == grant.token_jti:
            del self.grants[self._key(grant)]
            self.withdrawn.append(grant)


class RingSource:
    def __init__(self, items: list[dict]):
        self.items = items

    def key_ring(self) -> list[dict]:
        return self.items


class Setup:
    def __init__(self, ci, broker_key, clock, document=None, ring=None):
        self.ci = ci
        self.clock = clock
        self.jwk = keys.jwk_from_der(public_der(broker_key))
        if ring is None:
            ring = [{"kid": self.jwk["kid"], "key_arn": KEY_ARN, "state": keys.ACTIVE, "jwk": self.jwk, "created_at": 1}]
        self.key_ring = keys.KeyRing(RingSource(ring), clock)
        self.signer = RsaSigner(broker_key)
        self.store = MemoryStore()
        self.config = config.parse(document or config_doc())
        self.broker = minting.Broker(
            config=lambda: self.config,
            caller_keys=IssuerKeys(ci.fetch, clock),
            key_ring=self.key_ring,
            signer=self.signer,
            store=self.store,
            clock=clock,
        )

    def issue(self, token: str | None = None, audience: str = "acme/prod", issuer: str = BROKER) -> minting.Issued:
        return self.broker.issue(token or self.ci.token(), audience, issuer)

    def verify_minted(self, token: str, audience: str) -> dict:
        """Check the token as a cloud would: signature against the published JWK, iss, aud."""
        (published,) = self.key_ring.jwks()["keys"]
        assert jwt.get_unverified_header(token)["kid"] == published["kid"]
        return jwt.decode(token, jwt.PyJWK(published).key, algorithms=["RS256"], audience=audience, issuer=BROKER,
                          options={"verify_exp": False, "verify_nbf": False, "verify_iat": False})


@pytest.fixture
def setup(ci, other_rsa_key, clock) -> Setup:
    return Setup(ci, other_rsa_key, clock)


def gcp_document() -> dict:
    doc = config_doc()
    space_doc(doc)["targets"].append({
        "name": "gar", "kind": "feed", "provider": "gcp", "audience": "gcp-audience",
        "subject": ["space", "project", "environment", "feed"],
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
    assert info.value.caller == {"caller_issuer": CI, "caller_subject": "s" * 300}
    assert (setup.store.grants, setup.signer.calls) == ({}, [])
