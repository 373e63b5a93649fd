"""GET /.well-known/jwks.json: Cache-Control from the lifecycle, a strong ETag, 304 for If-None-Match
(api.cacheable_json_response), and functions/jwks/app.py serving the ring's stored JWKS
(keys.PublishedJwks): sealed and current, else the sealed entries, never an empty key set; what
it imports."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from builders import Clock
from keyring_fakes import SEAL_KEY, FakeKms, MemoryRing

from oidc_broker import api, keys, rotation, runtime
from oidc_broker.keys import ACTIVE, PENDING, RETIRED, KeyEntry

REPO = Path(__file__).resolve().parents[2]
DOC = {"keys": [{"kty": "RSA", "kid": "a", "use": "sig", "alg": "RS256", "n": "n", "e": "AQAB"}]}


def event(**headers: str) -> dict:
    return {"headers": headers, "requestContext": {"domainName": "id.example.com"}}


def test_the_response_carries_the_max_age_and_a_strong_etag_of_its_body():
    response = api.cacheable_json_response(event(), DOC, max_age=300)
    assert response["statusCode"] == 200
    assert response["headers"]["Cache-Control"] == "public, max-age=300"
    etag = response["headers"]["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert json.loads(response["body"]) == DOC


def test_the_etag_changes_with_the_body_and_only_with_it():
    one = api.cacheable_json_response(event(), DOC, max_age=300)["headers"]["ETag"]
    assert api.cacheable_json_response(event(), DOC, max_age=60)["headers"]["ETag"] == one
    other = {"keys": [*DOC["keys"], {**DOC["keys"][0], "kid": "b"}]}
    assert api.cacheable_json_response(event(), other, max_age=300)["headers"]["ETag"] != one


@pytest.mark.parametrize("value", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
def test_if_none_match_naming_the_etag_answers_304_with_no_body_and_the_same_headers(value):
    etag = api.cacheable_json_response(event(), DOC, max_age=300)["headers"]["ETag"]
    response = api.cacheable_json_response(event(**{"If-None-Match": value.format(etag=etag)}), DOC, max_age=300)
    assert response["statusCode"] == 304
    assert response["body"] == ""
    assert response["headers"] == {"Cache-Control": "public, max-age=300", "ETag": etag}


@pytest.mark.parametrize("value", ['"stale"', "", "W/", "x" * 5000])
def test_if_none_match_naming_another_etag_answers_the_document(value):
    response = api.cacheable_json_response(event(**{"if-none-match": value}), DOC, max_age=300)
    assert response["statusCode"] == 200 and json.loads(response["body"]) == DOC


# -- the function ----------------------------------------------------------------------------------

class CountingRing(MemoryRing):
    """The ring's store, counting the reads of its state item (GetItem) and of its entries (Query)."""

    def __init__(self, *entries: KeyEntry):
        super().__init__(*entries)
        self.state_reads = self.entry_reads = 0

    def ring_jwks(self):
        self.state_reads += 1
        return super().ring_jwks()

    def key_ring(self):
        self.entry_reads += 1
        return super().key_ring()


class Jwks:
    """functions/jwks/app.py as Lambda loads it (JWKS_MAX_AGE=120, KEY_RING_TTL=60) over an in-memory
    ring with two sealed keys, and the stack's seal to change the ring as rotation would."""

    def __init__(self, monkeypatch, seal_key: str = SEAL_KEY):
        monkeypatch.setenv("TABLE_NAME", "unused")
        monkeypatch.setenv("JWKS_MAX_AGE", "120")
        monkeypatch.setenv("KEY_RING_TTL", "60")
        monkeypatch.setenv("KEY_RING_SEAL_KEY", seal_key)
        self.kms = FakeKms()
        self.seal = keys.Seal(self.kms, SEAL_KEY)
        self.ring = CountingRing(self.sealed("a", ACTIVE, 2), self.sealed("p", PENDING, 3))
        self.clock = Clock()
        # What runtime.published_jwks builds, over the ring and KMS instead of AWS clients.
        monkeypatch.setattr(runtime, "published_jwks", lambda: keys.PublishedJwks(
            self.ring, runtime.seal(self.kms), self.clock, ttl=runtime.ring_ttl()))
        spec = importlib.util.spec_from_file_location("jwks_app_under_test", REPO / "functions" / "jwks" / "app.py")
        self.module = importlib.util.module_from_spec(spec)
        sys.modules.pop(spec.name, None)
        spec.loader.exec_module(self.module)

    def sealed(self, kid: str, state: str, created_at: int = 1) -> KeyEntry:
        e = KeyEntry(kid, f"arn:aws:kms:us-east-1:123456789012:key/{kid}", state,
                     {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": f"n-{kid}", "e": "AQAB"}, created_at)
        return replace(e, seal=self.seal.make(e))

    def entries(self) -> list[KeyEntry]:
        return [KeyEntry.from_item(i) for i in self.ring.key_ring()]

    def change(self, *, put=()) -> None:
        """A change of the ring as rotation makes it: the entries and their sealed JWKS together."""
        after = rotation.changed(self.entries(), [(e, ()) for e in put])
        stored = {e.kid: e for e in self.entries()}
        assert self.ring.change_key_ring(self.ring.version, None, jwks=rotation.sealed_jwks(self.seal, after, self.ring.version + 1),
                                         put=[(e, (stored[e.kid].state,) if e.kid in stored else ()) for e in put])

    def get(self, **headers: str) -> dict:
        return self.module.handler(event(**headers), Context())

    def kids(self, **headers: str) -> list[str]:
        response = self.get(**headers)
        assert response["statusCode"] == 200, response
        return [k["kid"] for k in json.loads(response["body"])["keys"]]


@pytest.fixture
def jwks(monkeypatch):
    made = Jwks(monkeypatch)
    made.change()  # the ring as rotation leaves it: its JWKS stored with its version
    made.ring.state_reads = made.ring.entry_reads = 0
    return made


class Context:
    function_name, memory_limit_in_mb, invoked_function_arn, aws_request_id = "jwks", 512, "arn:f", "r-1"


def logged(caplog) -> list[dict]:
    """The function's log records so far (message, reason, kid), and none of them again."""
    records = [{"message": r.getMessage(), "reason": getattr(r, "reason", None), "kid": getattr(r, "kid", None)}
               for r in caplog.records]
    caplog.clear()
    return records


def test_the_function_serves_the_stored_jwks_with_the_max_age_the_lifecycle_sets(jwks):
    response = jwks.get()
    assert response["statusCode"] == 200
    assert response["headers"]["Cache-Control"] == "public, max-age=120"
    assert response["body"].encode() == jwks.ring.jwks["body"]  # the stored bytes, as they are
    assert [k["kid"] for k in json.loads(response["body"])["keys"]] == ["a", "p"]
    assert (jwks.ring.state_reads, jwks.ring.entry_reads) == (1, 0)


def test_the_stored_jwks_and_the_entries_are_served_as_the_same_bytes_with_the_same_etag(jwks):
    stored = jwks.get()
    jwks.ring.jwks = None  # a ring from before the JWKS was stored: rendered from the entries
    jwks.clock.advance(60)
    rendered = jwks.get()
    assert (rendered["body"], rendered["headers"]["ETag"]) == (stored["body"], stored["headers"]["ETag"])


def test_a_warm_container_reads_one_item_per_ring_cache_period_and_verifies_an_unchanged_one_never_again(jwks):
    for _ in range(5):
        jwks.get()
    assert (jwks.ring.state_reads, jwks.kms.count("VerifyMac")) == (1, 1)
    jwks.clock.advance(60)
    for _ in range(5):
        jwks.get()
    assert (jwks.ring.state_reads, jwks.kms.count("VerifyMac"), jwks.ring.entry_reads) == (2, 1, 0)


def test_the_function_answers_a_conditional_request_with_304_until_the_ring_changes(jwks):
    etag = jwks.get()["headers"]["ETag"]
    assert jwks.get(**{"if-none-match": etag})["statusCode"] == 304
    (pending,) = [e for e in jwks.entries() if e.kid == "p"]
    jwks.change(put=[replace(pending, state="revoked")])
    assert jwks.get(**{"if-none-match": etag})["statusCode"] == 304  # within the ring cache period
    jwks.clock.advance(60)
    changed = jwks.get(**{"if-none-match": etag})
    assert changed["statusCode"] == 200 and changed["headers"]["ETag"] != etag
    assert [k["kid"] for k in json.loads(changed["body"])["keys"]] == ["a"]


def test_a_ring_without_a_stored_jwks_is_served_from_its_sealed_entries_and_says_so(jwks, caplog):
    jwks.ring.jwks = None
    jwks.ring.plant({**jwks.ring.items["p"], "kid": "x", "seal": None})
    jwks.clock.advance(60)
    caplog.clear()
    assert jwks.kids() == ["a", "p"]
    lines = logged(caplog)
    assert {"message": "rendered JWKS not served", "reason": keys.NOT_RENDERED}.items() <= lines[0].items()
    refused = next(line for line in lines if line["message"] == "key ring entry not published")
    assert (refused["kid"], refused["reason"]) == ("x", keys.UNKNOWN_KEY)


def planted_jwks(kids: list[str]) -> bytes:
    return json.dumps({"keys": [{"kty": "RSA", "kid": k, "use": "sig", "alg": "RS256", "n": "n-x", "e": "AQAB"}
                                for k in kids]}, separators=(",", ":")).encode()


@pytest.mark.parametrize("tamper", [
    "a key added, the seal kept",
    "no seal",
    "a seal that is not base64",
    "an entry's seal",
])
def test_a_stored_jwks_whose_seal_does_not_verify_is_never_served(jwks, caplog, tamper):
    stored = dict(jwks.ring.jwks)
    if tamper == "a key added, the seal kept":
        stored["body"] = planted_jwks(["a", "p", "attacker"])
    elif tamper == "no seal":
        stored.update(body=planted_jwks(["attacker"]), seal=None)
    elif tamper == "a seal that is not base64":
        stored.update(body=planted_jwks(["attacker"]), seal="***")
    else:
        stored.update(body=planted_jwks(["attacker"]), seal=jwks.entries()[0].seal)
    jwks.ring.jwks = stored
    jwks.clock.advance(60)
    caplog.clear()
    assert jwks.kids() == ["a", "p"]  # the sealed entries instead
    assert {"message": "rendered JWKS not served", "reason": keys.BAD_JWKS_SEAL}.items() <= logged(caplog)[0].items()


def test_a_sealed_jwks_of_another_version_is_never_served(jwks, caplog):
    old = dict(jwks.ring.jwks)  # sealed, with the pending key p
    (pending,) = [e for e in jwks.entries() if e.kid == "p"]
    jwks.change(put=[replace(pending, state="revoked")])
    jwks.ring.jwks = old  # replayed over the newer ring
    jwks.clock.advance(60)
    caplog.clear()
    assert jwks.kids() == ["a"]
    assert {"message": "rendered JWKS not served", "reason": keys.STALE_JWKS}.items() <= logged(caplog)[0].items()


def test_a_sealed_jwks_relabelled_as_the_current_version_is_never_served(jwks, caplog):
    old = dict(jwks.ring.jwks)
    (pending,) = [e for e in jwks.entries() if e.kid == "p"]
    jwks.change(put=[replace(pending, state="revoked")])
    jwks.ring.jwks = {**old, "version": jwks.ring.version}  # its seal covers the version it was made for
    jwks.clock.advance(60)
    caplog.clear()
    assert jwks.kids() == ["a"]
    assert logged(caplog)[0]["reason"] == keys.BAD_JWKS_SEAL


def test_an_empty_key_set_is_never_served_nor_cached(jwks, caplog):
    for entry in jwks.entries():
        jwks.change(put=[replace(entry, state="revoked")])
    jwks.clock.advance(60)
    response = jwks.get()
    assert (response["statusCode"], response["headers"]["Cache-Control"]) == (503, "no-store")
    assert json.loads(response["body"])["error"] == "temporarily_unavailable"
    assert any(line.get("reason") == "empty_key_ring" for line in logged(caplog))
    reads = jwks.ring.state_reads
    jwks.change(put=[jwks.sealed("n", PENDING, 5)])
    assert jwks.kids() == ["n"] and jwks.ring.state_reads == reads + 1  # looked again at once


def test_an_error_reading_the_ring_answers_500_and_is_logged(jwks, caplog):
    def broken():
        raise RuntimeError("DynamoDB unavailable")

    jwks.ring.ring_jwks = broken
    jwks.clock.advance(60)
    caplog.clear()
    assert jwks.get()["statusCode"] == 500
    assert any(line["message"] == "key ring unavailable" for line in logged(caplog))


def test_without_the_seal_key_nothing_is_served(monkeypatch):
    unsealed = Jwks(monkeypatch, seal_key="")
    unsealed.change()  # stored and sealed, but the function cannot verify it: neither it nor an entry
    assert unsealed.get()["statusCode"] == 503


BENCH_ENV = {"TABLE_NAME": "bench", "ISSUER_URL": "https://id.example.com", "AWS_DEFAULT_REGION": "us-east-1",
             "POWERTOOLS_SERVICE_NAME": "oidc-broker", "POWERTOOLS_METRICS_NAMESPACE": "OidcBroker",
             "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "KEY_RING_SEAL_KEY": "alias/bench-seal"}


def test_the_function_imports_neither_boto3_nor_pyjwt_nor_the_rotation():
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'functions' / 'jwks')!r}); import app; "
            "print(sorted(m for m in ('boto3', 'jwt', 'oidc_broker.rotation', 'oidc_broker.config') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, **BENCH_ENV}, capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
