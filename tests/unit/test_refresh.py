"""oidc_broker/refresh.py: which cached credentials are due (pure, with a clock), and a run over the
real broker, cache and Exchange with in-memory ports (fakes.py): warming, claim-valued subjects only
when seen recently, one failure never stopping the others, the lease shared with requests.
"""

from __future__ import annotations

import io
import json
import threading

import pytest
from builders import BROKER, NOW, caller_claims, config_doc, space_doc
from fakes import CACHE_KEY_ID, SECRET, CacheKms, CacheStore, Setup

from oidc_broker import config, refresh
from oidc_broker.cache import CredentialCache, fingerprint
from oidc_broker.clouds import Credentials
from oidc_broker.errors import AccessDenied, InvalidRequest, InvalidTarget, ServerError, Throttled
from oidc_broker.exchange import Exchange
from oidc_broker.refresh import Entry, Policy, RunRequest

PROD = "space:acme:environment:production:account:prod"  # acme/prod takes `environment` from a claim
STAGING = PROD.replace("production", "staging")
IMAGES = "space:acme:feed:images"  # acme/images: every value from the configuration
POLICY = Policy(rate=300, seen_within=3600)


def refreshing_doc(**aws) -> dict:
    doc = config_doc()
    for target in space_doc(doc)["targets"]:
        target["refresh"] = True
        target.setdefault("aws", {}).update(aws)
    # acme/prod admits any environment a caller's claim names; acme/images one subject only.
    space_doc(doc)["trust"][0]["claims"] = {"repository": "acme/app"}
    return doc


@pytest.fixture
def conf():
    return config.parse(refreshing_doc())


def entry(target, subject: str, issued_at: float = NOW, lifetime: int = 3600, **kw) -> Entry:
    return Entry(subject, int(issued_at), int(issued_at) + lifetime, kw.pop("fingerprint", fingerprint(target)), **kw)


def due(decisions) -> dict[tuple[str, str], str]:
    return {(d.target.ref, d.subject): d.reason for d in decisions if d.due}


# -- the decision ------------------------------------------------------------------------------

def test_subjects_the_configuration_fixes_are_warmed_before_any_caller_came(conf):
    decisions = refresh.plan(conf, {}, NOW, POLICY)
    assert due(decisions) == {("acme/images", IMAGES): "no credentials cached"}


def test_a_subject_from_a_callers_claim_is_never_invented(conf):
    # acme/prod has no entry: no caller was served it, so there is no value to renew.
    assert [d.target.ref for d in refresh.plan(conf, {}, NOW, POLICY)] == ["acme/images"]


def test_an_entry_is_renewed_two_runs_before_the_cache_stops_serving_it(conf):
    images = conf.target("acme/images")
    cached = {"acme/images": [entry(images, IMAGES)]}  # served until NOW + 1800 (refresh_at 0.5)
    assert not due(refresh.plan(conf, cached, NOW + 1800 - 600 - 1, POLICY))
    assert due(refresh.plan(conf, cached, NOW + 1800 - 600, POLICY)) == {
        ("acme/images", IMAGES): "served from the cache until 2023-11-14T22:43:20Z"}
    (skipped,) = refresh.plan(conf, cached, NOW, POLICY)
    assert skipped.reason == "fresh: renewed from 2023-11-14T22:33:20Z"


def test_short_lived_credentials_are_not_renewed_in_the_first_half_of_their_served_time(conf):
    images = conf.target("acme/images")
    short = entry(images, IMAGES, lifetime=900)  # served 450 s: two runs ahead would be every run
    assert refresh.renew_at(short, images, POLICY.ahead) == NOW + 225


def test_claim_valued_subjects_are_renewed_only_while_callers_use_them(conf):
    prod = conf.target("acme/prod")
    cached = {"acme/prod": [entry(prod, PROD, NOW - 3000, last_used_at=int(NOW) - 600),
                            entry(prod, STAGING, NOW - 3000, last_used_at=int(NOW) - 3601),
                            entry(prod, PROD.replace("production", "qa"), NOW - 3000)]}
    decisions = {d.subject: d for d in refresh.plan(conf, cached, NOW, POLICY) if d.target.ref == "acme/prod"}
    assert decisions[PROD].due
    assert not decisions[STAGING].due and not decisions[STAGING].kept
    assert decisions[STAGING].reason == "not used recently: last served to a caller at 2023-11-14T21:13:19Z"
    qa = decisions[PROD.replace("production", "qa")]
    assert not qa.due and qa.reason == "not used recently: no caller was served it"


def test_a_subject_no_trust_rule_admits_any_more_is_left_alone(ci, other_rsa_key):
    doc = refreshing_doc()
    space_doc(doc)["trust"][0]["claims"] = {"repository": "acme/app", "environment": "production"}
    conf = config.parse(doc)
    prod = conf.target("acme/prod")
    cached = {"acme/prod": [entry(prod, STAGING, NOW - 3000, last_used_at=int(NOW))]}
    (decision,) = [d for d in refresh.plan(conf, cached, NOW, POLICY) if d.target.ref == "acme/prod"]
    assert (decision.due, decision.kept, decision.reason) == (False, False, "no trust rule admits this subject now")


def test_an_entry_of_a_target_whose_settings_changed_is_renewed(conf):
    images = conf.target("acme/images")
    cached = {"acme/images": [entry(images, IMAGES, fingerprint="edited")]}
    assert due(refresh.plan(conf, cached, NOW, POLICY)) == {("acme/images", IMAGES): "the target's settings changed"}


def test_force_renews_every_kept_binding_but_never_an_unused_subject(conf):
    images, prod = conf.target("acme/images"), conf.target("acme/prod")
    cached = {"acme/images": [entry(images, IMAGES)],
              "acme/prod": [entry(prod, PROD, last_used_at=int(NOW)), entry(prod, STAGING)]}
    assert due(refresh.plan(conf, cached, NOW, POLICY, force=True)) == {
        ("acme/images", IMAGES): "forced", ("acme/prod", PROD): "forced"}


def test_targets_without_refresh_or_with_refresh_at_zero_are_never_renewed():
    doc = refreshing_doc()
    space_doc(doc)["targets"][0]["refresh"] = False
    space_doc(doc)["targets"][1]["aws"] = {"refresh_at": 0}
    conf = config.parse(doc)
    assert refresh.refreshable(conf) == []
    assert refresh.plan(conf, {}, NOW, POLICY) == []
    assert ("spaces[0].targets[1].refresh", "has no effect with aws.refresh_at 0: the cache serves nothing, so the "
            "scheduled refresh leaves this target alone") in conf.warnings


def test_naming_a_target_that_is_not_refreshed_is_refused_with_those_that_are(conf):
    doc = refreshing_doc()
    space_doc(doc)["targets"][0]["refresh"] = False
    with pytest.raises(InvalidTarget, match="'acme/prod' is not refreshed.*refresh: true: acme/images"):
        refresh.select(config.parse(doc), ["acme/prod"])
    with pytest.raises(InvalidTarget, match=r"'acme/nope' is not a <space>/<target>"):
        refresh.select(conf, ["acme/nope"])
    assert [t.ref for t in refresh.select(conf, ["acme/images", "acme/images"])] == ["acme/images"]


@pytest.mark.parametrize(("expression", "seconds"), [
    ("rate(5 minutes)", 300), ("rate(1 minute)", 60), ("rate(1 hour)", 3600), ("rate(2 days)", 172800),
    ("rate(0 minutes)", None), ("cron(0 * * * ? *)", None), ("rate(5 weeks)", None), (None, None)])
def test_the_schedules_rate_in_seconds(expression, seconds):
    assert refresh.rate_seconds(expression) == seconds


def test_the_renewal_lead_is_two_runs_of_the_schedule():
    assert Policy(rate=600).ahead == 1200


@pytest.mark.parametrize(("event", "request_"), [
    ({"detail-type": "Scheduled Event", "source": "aws.events", "resources": ["arn:aws:events:…:rule/x"]},
     RunRequest()),
    ({}, RunRequest()),
    ({"targets": ["acme/images"], "force": True}, RunRequest(("acme/images",), True)),
])
def test_an_invocation_asks_for_everything_due_or_for_named_targets(event, request_):
    assert refresh.run_request(event) == request_


@pytest.mark.parametrize(("event", "message"), [
    ([], "must be a JSON object"), ({"target": "acme/images"}, "unknown key 'target'"),
    ({"targets": "acme/images"}, "targets must be a list"), ({"targets": []}, "targets must be a list"),
    ({"targets": ["\x00"]}, "targets must be a list"), ({"force": "yes"}, "force must be true or false")])
def test_a_malformed_invocation_is_refused_clearly(event, message):
    with pytest.raises(InvalidRequest, match=message):
        refresh.run_request(event)


def test_refresh_must_be_a_boolean():
    doc = refreshing_doc()
    space_doc(doc)["targets"][1]["refresh"] = "true"
    with pytest.raises(config.ConfigError) as info:
        config.parse(doc)
    assert ("spaces[0].targets[1].refresh", "must be true or false") in info.value.problems


# -- a run -----------------------------------------------------------------------------------------

class Cloud:
    """A cloud's token service: verifies the broker token as a real one would, counts exchanges, can fail."""

    def __init__(self, setup: Setup, clock, provider: str = "aws", lifetime: int = 3600):
        self.setup, self.clock, self.provider, self.lifetime = setup, clock, provider, lifetime
        self.requests = []
        self.issued = 0  # credentials handed out (requests less failures)
        self.error: Exception | None = None
        self.release: threading.Event | None = None
        self.started = threading.Event()
        self.active = self.most = 0
        self.guard = threading.Lock()

    def exchange(self, request) -> Credentials:
        claims = self.setup.verify_minted(request.token, request.target.audience)
        assert claims["sub"] == request.subject
        with self.guard:
            self.requests.append((request, claims))
            self.active += 1
            self.most = max(self.most, self.active)
        self.started.set()
        try:
            if self.release is not None:
                assert self.release.wait(5)
            if self.error:
                raise self.error
            now = int(self.clock())
            self.issued += 1
            return Credentials({"password": SECRET}, now, now + self.lifetime)
        finally:
            with self.guard:
                self.active -= 1


class World:
    def __init__(self, ci, key, clock, doc=None, policy=POLICY):
        self.clock = clock
        self.setup = Setup(ci, key, clock, document=doc or refreshing_doc())
        self.store = CacheStore()
        self.cache = CredentialCache(self.store, CacheKms(), CACHE_KEY_ID, clock)
        self.cloud = Cloud(self.setup, clock)
        self.exchange = Exchange(broker=self.setup.broker, exchanger=self.cloud, cache=self.cache)
        self.refresher = refresh.Refresher(config=lambda: self.setup.config, issuer=lambda: BROKER,
                                           entries=self.store.cache_entries, exchange_for=lambda cloud: self.exchange,
                                           clock=clock, policy=policy)
        self.jti = 0

    def request(self, target: str = "acme/images", **claims):
        self.jti += 1
        token = self.setup.ci.token(caller_claims(now=self.clock(), jti=f"ci-{self.jti}", **claims))
        return self.exchange.credentials(token, target, BROKER)


@pytest.fixture
def world(ci, other_rsa_key, clock):
    return World(ci, other_rsa_key, clock)


def outcomes(report) -> dict[tuple[str, str], str]:
    return {(r.target, r.subject): r.outcome for r in report.results}


def test_a_run_warms_a_fixed_subject_and_callers_are_then_served_from_the_cache(world):
    report = world.refresher.run()
    assert outcomes(report) == {("acme/images", IMAGES): "refreshed"}
    served = world.request()
    assert served.served.from_cache and len(world.cloud.requests) == 1
    assert served.served.source == world.cloud.requests[0][1]["jti"]


def test_the_refresher_mints_as_the_broker_itself_and_its_grant_is_recorded_like_any_other(world):
    world.refresher.run()
    ((request, claims),) = world.cloud.requests
    assert claims["act"] == {"iss": BROKER, "sub": refresh.ACTOR_SUBJECT}
    assert request.caller == refresh.ACTOR_SUBJECT  # what the cloud's session name says
    (grant,) = world.setup.store.grants.values()
    assert (grant.caller_issuer, grant.caller_subject, grant.trust_rule, grant.target, grant.subject) == (
        BROKER, refresh.ACTOR_SUBJECT, refresh.ACTOR_RULE, "acme/images", IMAGES)
    assert grant.token_jti == claims["jti"]


def test_a_claim_valued_subject_is_renewed_once_a_caller_was_served_it(world, clock):
    world.refresher.run()
    world.request("acme/prod", environment="production")
    clock.advance(1800 - 600)
    report = world.refresher.run()
    assert outcomes(report) == {("acme/prod", PROD): "refreshed", ("acme/images", IMAGES): "refreshed"}


def test_a_refresh_keeps_the_time_a_caller_last_used_the_entry(world, clock):
    world.request("acme/prod", environment="production")
    used = int(clock())
    clock.advance(1200)
    world.refresher.run()
    (prod,) = [e for e in world.store.cache_entries("acme/prod")]
    assert prod["issued_at"] == used + 1200 and prod["last_used_at"] == used


def test_one_targets_failure_never_stops_the_others(ci, other_rsa_key, clock):
    doc = refreshing_doc()
    space_doc(doc)["targets"].append({"name": "more", "kind": "feed", "provider": "aws", "refresh": True})
    space_doc(doc)["trust"][1]["targets"].append("more")
    world = World(ci, other_rsa_key, clock, doc)
    denied = AccessDenied("role R does not trust subject S", "aws_access_denied")
    world.cloud.exchange = (lambda original: lambda request: (
        (_ for _ in ()).throw(denied) if request.target.name == "images" else original(request)))(world.cloud.exchange)
    report = world.refresher.run()
    assert outcomes(report) == {("acme/images", IMAGES): "failed", ("acme/more", "space:acme:feed:more"): "refreshed"}
    failed = report.results[0]
    assert failed.reason == "aws_access_denied: role R does not trust subject S"
    assert (failed.expires_at, report.min_served_remaining()) == (None, 0)
    assert not [g for g in world.setup.store.grants.values() if g.target == "acme/images"]  # withdrawn


def test_a_failed_refresh_keeps_the_last_good_credentials_and_never_serves_them_expired(world, clock):
    world.refresher.run()
    first = world.request().credentials
    world.cloud.error = Throttled("the cloud is unavailable", "aws_unavailable", 2)
    clock.advance(1800)  # past the served share: requests try the cloud, which is down
    report = world.refresher.run()
    (result,) = report.results
    assert (result.outcome, result.expires_at) == ("failed", first.expires_at)
    served = world.request()
    assert served.served.from_cache and served.served.fallback == "aws_unavailable"
    assert served.credentials.expires_at == first.expires_at
    clock.advance(1800 - 60)  # within a minute of expiry: nothing valid is left to serve
    with pytest.raises(Throttled):
        world.request()


def test_a_refusal_is_never_answered_with_the_last_credentials(world, clock):
    world.refresher.run()
    world.request()
    clock.advance(1800)
    world.cloud.error = AccessDenied("role R does not trust subject S", "aws_access_denied")
    with pytest.raises(AccessDenied):
        world.request()


def test_refreshes_run_a_few_at_a_time(ci, other_rsa_key, clock):
    doc = refreshing_doc()
    for n in range(6):
        space_doc(doc)["targets"].append({"name": f"feed-{n}", "kind": "feed", "provider": "aws", "refresh": True})
        space_doc(doc)["trust"][1]["targets"].append(f"feed-{n}")
    world = World(ci, other_rsa_key, clock, doc, Policy(concurrency=2))
    world.cloud.release = threading.Event()
    threading.Timer(0.3, world.cloud.release.set).start()
    report = world.refresher.run()
    assert report.counts()["refreshed"] == 7 and world.cloud.most == 2


def test_no_refresh_starts_without_time_left_in_the_run(world):
    report = world.refresher.run(time_left=lambda: refresh.RESERVE - 1)
    (result,) = report.results
    assert (result.outcome, result.reason) == ("skipped", "no time left in this run; the next run renews it")
    assert not world.cloud.requests


def test_the_report_names_times_and_reasons_and_never_a_credential(world, clock):
    world.refresher.run()
    world.request("acme/prod", environment="production")
    clock.advance(1500)
    text = json.dumps(world.refresher.run(RunRequest(force=True)).to_dict())
    assert SECRET not in text and "eyJ" not in text
    assert set(json.loads(text)) == {"started_at", "finished_at", "counts", "min_served_remaining", "results"}


def test_a_run_refuses_a_configuration_of_another_issuer(world):
    world.refresher._issuer = lambda: "https://other.example.com"
    with pytest.raises(ServerError, match="another issuer"):
        world.refresher.run()
    assert not world.cloud.requests


def test_a_target_whose_entries_cannot_be_read_is_one_failure(world):
    world.refresher._entries = lambda target: (
        (_ for _ in ()).throw(RuntimeError("DynamoDB is down")) if target == "acme/prod" else [])
    results = {(r.target, r.outcome, r.reason) for r in world.refresher.run().results}
    assert results == {("acme/prod", "failed", "the cache's entries could not be read (RuntimeError)"),
                       ("acme/images", "refreshed", "no credentials cached")}


# -- the refresher and requests share the lease -------------------------------------------------

def test_a_refresher_racing_a_request_makes_one_exchange(world):
    world.cloud.release = threading.Event()
    run = threading.Thread(target=lambda: setattr(world, "report", world.refresher.run()))
    run.start()
    assert world.cloud.started.wait(5)  # the refresher is exchanging
    served = []
    request = threading.Thread(target=lambda: served.append(world.request()))
    request.start()
    world.cloud.release.set()
    run.join(5)
    request.join(5)
    assert len(world.cloud.requests) == 1
    assert served[0].served.from_cache and outcomes(world.report) == {("acme/images", IMAGES): "refreshed"}


def test_a_request_racing_the_refresher_makes_one_exchange(world):
    world.cloud.release = threading.Event()
    served = []
    request = threading.Thread(target=lambda: served.append(world.request()))
    request.start()
    assert world.cloud.started.wait(5)  # the request is exchanging
    run = threading.Thread(target=lambda: setattr(world, "report", world.refresher.run()))
    run.start()
    world.cloud.release.set()
    request.join(5)
    run.join(5)
    assert len(world.cloud.requests) == 1 and not served[0].served.from_cache
    assert outcomes(world.report) == {("acme/images", IMAGES): "current"}


def test_in_two_containers_the_refresher_and_a_request_make_one_exchange(world, clock):
    import time

    other = CredentialCache(world.store, CacheKms(), CACHE_KEY_ID, clock, poll=0.01, sleep=time.sleep)
    other._kms = world.cache._kms  # one KMS key, two containers
    world.exchange = Exchange(broker=world.setup.broker, exchanger=world.cloud, cache=other)
    request_side = Exchange(broker=world.setup.broker, exchanger=world.cloud, cache=world.cache)
    world.cloud.release = threading.Event()
    run = threading.Thread(target=lambda: setattr(world, "report", world.refresher.run()))
    run.start()
    assert world.cloud.started.wait(5)
    served = []
    token = world.setup.ci.token(caller_claims(now=clock(), jti="ci-racing"))
    request = threading.Thread(target=lambda: served.append(request_side.credentials(token, "acme/images", BROKER)))
    request.start()
    threading.Timer(0.2, world.cloud.release.set).start()
    run.join(10)
    request.join(10)
    assert len(world.cloud.requests) == 1 and served[0].served.from_cache


def test_the_cloud_session_name_of_a_refresh_says_refresh():
    from oidc_broker.clouds.aws import session_name

    assert session_name("default/prod-ecr", refresh.ACTOR_SUBJECT) == "default.prod-ecr@oidc-broker-refresh"


# -- what a run logs and counts -------------------------------------------------------------------

def emitted(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_a_run_counts_failures_and_the_least_served_time_with_the_service_dimension_only(world, clock, capsys,
                                                                                         monkeypatch):
    from aws_lambda_powertools import Logger, Metrics

    from oidc_broker import observe

    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "oidc-broker")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OidcBroker")
    world.cloud.error = AccessDenied("role R does not trust subject S", "aws_access_denied")
    report = world.refresher.run()
    metrics, log = Metrics(), io.StringIO()
    observe.refreshed(Logger(service="refresh-test", stream=log), metrics, report)
    metrics.flush_metrics()
    lines = emitted(capsys) + [json.loads(line) for line in log.getvalue().splitlines()]
    run = next(line for line in lines if "RefreshFailures" in line)
    assert run["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert (run["RefreshFailures"], run["RefreshMinRemaining"]) == ([1.0], [0.0])
    by_outcome = next(line for line in lines if "Refreshes" in line)
    assert (by_outcome["target"], by_outcome["outcome"], by_outcome["Refreshes"]) == ("acme/images", "failed", [1.0])
    failed = next(line for line in lines if line.get("message") == "refresh failed")
    assert (failed["target"], failed["subject"], failed["reason"]) == (
        "acme/images", IMAGES, "aws_access_denied: role R does not trust subject S")
    assert SECRET not in json.dumps(lines)


def test_a_run_that_cannot_start_for_want_of_a_configuration_is_no_refresh_failure(capsys, monkeypatch):
    from aws_lambda_powertools import Logger, Metrics

    from oidc_broker import observe

    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "oidc-broker")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OidcBroker")
    metrics = Metrics()
    body = observe.refresh_refused(Logger(service="oidc-broker"), metrics,
                                   ServerError("no configuration has been applied", "no_config"))
    assert body == {"error": "server_error", "error_description": "no configuration has been applied"}
    assert not [line for line in emitted(capsys) if "RefreshFailures" in line]
    metrics.clear_metrics()  # the next invocation
    observe.refresh_refused(Logger(service="oidc-broker"), metrics, ServerError("the table is unavailable", "table"))
    (line,) = [line for line in emitted(capsys) if "RefreshFailures" in line]
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]


# -- its settings, from the function's environment ----------------------------------------------------

def test_the_policy_follows_the_schedules_rate_and_the_functions_variables(monkeypatch):
    from oidc_broker import runtime

    monkeypatch.setenv("REFRESH_SCHEDULE", "rate(10 minutes)")
    monkeypatch.setenv("REFRESH_SEEN_WITHIN", "7200")
    monkeypatch.setenv("REFRESH_CONCURRENCY", "2")
    assert runtime.refresh_policy() == Policy(rate=600, seen_within=7200, concurrency=2)
    for name in ("REFRESH_SCHEDULE", "REFRESH_SEEN_WITHIN", "REFRESH_CONCURRENCY"):
        monkeypatch.setenv(name, "nonsense")
    assert runtime.refresh_policy() == Policy()


def test_with_no_issuer_url_set_the_refresh_mints_for_the_issuer_the_stack_recorded(monkeypatch):
    from oidc_broker import runtime

    class Table:
        def __init__(self, deployment):
            self.deployment = deployment

        def get_deployment(self):
            return self.deployment

    monkeypatch.setenv("ISSUER_URL", "")
    assert runtime.deployment_issuer(Table({"issuer": BROKER, "recorded_at": 1})) == BROKER
    with pytest.raises(ServerError, match="records no deployment issuer"):
        runtime.deployment_issuer(Table(None))
    monkeypatch.setenv("ISSUER_URL", "https://id.example.com/")
    assert runtime.deployment_issuer(Table(None)) == "https://id.example.com"
