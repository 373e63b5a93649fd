"""oidc_broker_cli/doctor.py: the steps of `oidc-broker doctor` against a deployment whose network
answers are given here (a broker at https://id.example.com, a registry, a DynamoDB table holding a
configuration), so each way a real deployment fails can be shown: the step that fails and its fix."""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from oidc_broker_cli import doctor
from oidc_broker_cli.doctor import Answer, NetworkError

ISSUER = "https://id.example.com"
GITHUB = "https://token.actions.githubusercontent.com"
HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
NOW = time.time()
CONFIG = {
    "issuer": ISSUER,
    "trusted_issuers": [{"name": "github", "issuer": GITHUB}],
    "spaces": [{"name": "default",
                "targets": [{"name": "prod-ecr", "kind": "feed", "provider": "aws",
                             "aws": {"role_arn": "arn:aws:iam::123456789012:role/pull", "region": "us-east-1"}},
                            {"name": "deploy", "kind": "account", "provider": "aws",
                             "aws": {"role_arn": "arn:aws:iam::123456789012:role/deploy", "region": "us-east-1"}}],
                "trust": [{"name": "app-main", "issuer": "github",
                           "claims": {"repository_owner_id": "7", "repository": "acme/app", "ref": "refs/heads/main"},
                           "targets": ["prod-ecr", "deploy"]}]}],
}
BROKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CI_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**jwt.algorithms.RSAAlgorithm.to_jwk(BROKER_KEY.public_key(), as_dict=True), "kid": "k1", "alg": "RS256",
       "use": "sig"}
CACHED = {"cache-control": "public, max-age=300"}


def ci_token(**claims: Any) -> str:
    base = {"iss": GITHUB, "aud": ISSUER, "sub": "repo:acme/app:ref:refs/heads/main", "repository": "acme/app",
            "repository_owner_id": "7", "ref": "refs/heads/main", "iat": int(NOW), "exp": int(NOW) + 300, "jti": "j1"}
    return jwt.encode({**base, **claims}, CI_KEY, algorithm="RS256", headers={"kid": "gh"})


def minted(kid: str = "k1", **claims: Any) -> str:
    base = {"iss": ISSUER, "aud": "sts.amazonaws.com", "sub": "space:default:feed:prod-ecr", "iat": int(NOW),
            "exp": int(NOW) + 600}
    return jwt.encode({**base, **claims}, BROKER_KEY, algorithm="RS256", headers={"kid": kid})


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"content-type": "application/json", **(CACHED if headers is None else headers)},
                  json.dumps(body).encode())


def broker_answers(replace: dict[tuple[str, str], Any] | None = None) -> dict[tuple[str, str], Any]:
    """A healthy deployment's answers, (method, URL) -> Answer (or an exception to raise)."""
    answers = {
        ("GET", f"{ISSUER}/.well-known/openid-configuration"): ok({"issuer": ISSUER,
                                                                   "jwks_uri": f"{ISSUER}/.well-known/jwks.json"}),
        ("GET", f"{ISSUER}/.well-known/jwks.json"): ok({"keys": [JWK]}),
        ("POST", f"{ISSUER}/token"): ok({"access_token": minted(), "issued_token_type": "x", "expires_in": 600}),
        ("POST", f"{ISSUER}/exchange/aws"): ok({"registry": f"https://{HOST}", "username": "AWS",
                                                "password": "s3cret-password", "expires_at": "2030-01-01T00:00:00Z"}),
        ("GET", f"https://{HOST}/v2/"): [ok({"errors": []}, 401, {"www-authenticate":
                                                                  f'Basic realm="https://{HOST}/",service="ecr"'}),
                                         ok({}, 200, {})],
    }
    answers.update(replace or {})
    return answers


@dataclass
class FakeHttp:
    """The network: each (method, URL) answers as given (a list: one answer per request, in turn)."""

    answers: dict[tuple[str, str], Any]
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> Answer:
        self.sent.append((method, url, kwargs))
        answer = self.answers.get((method, url))
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if answer is None:
            raise NetworkError(f"{method} {url}: connection refused: nothing listens there")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


class FakeDynamoDB:
    def __init__(self, document: dict[str, Any] | None):
        self.document = document

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        if self.document is None:
            return {}
        return {"Item": {"document": {"S": json.dumps(self.document)}, "source": {"S": "broker.yaml"},
                         "sha256": {"S": "0"}, "applied_at": {"N": "1"}}}


class FakeStack:
    """A stack as deployment.find finds it: its outputs and a session for its table."""

    def __init__(self, document: dict[str, Any] | None = CONFIG, outputs: dict[str, str] | None = None):
        self.name = "stack oidc-broker"
        self.outputs = {"IssuerUrl": ISSUER, "ApiUrl": ISSUER, "TableName": "broker"} if outputs is None else outputs
        self.session = self
        self.db = FakeDynamoDB(document)

    def client(self, name: str) -> Any:
        assert name == "dynamodb"
        return self.db


def doctor_run(argv: list[str], http: FakeHttp, stack: Any = None, stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="oidc-broker")
    doctor.add_parser(parser.add_subparsers(dest="command", required=True), lambda args: 0)
    args = parser.parse_args(["doctor", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = doctor.run(args, lambda: None, stdin=io.StringIO(stdin), stdout=out, stderr=err, http=http,
                      deployment=stack or FakeStack())
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


def report(argv: list[str], http: FakeHttp, stack: Any = None, token: str | None = None) -> tuple[int, list[dict]]:
    code, out, err = doctor_run([*argv, "--token", "-", "--output", "json"], http, stack,
                                ci_token() if token is None else token)
    assert err == "", err
    return code, json.loads(out)


def last(steps: list[dict]) -> dict:
    return steps[-1]


# -- a healthy deployment -------------------------------------------------------------------------

def test_a_healthy_stack_passes_every_step_with_skip_mint():
    http = FakeHttp(broker_answers())
    code, steps = report(["default/prod-ecr", "--skip-mint"], http)
    assert code == 0, steps
    assert [(s["step"], s["ok"]) for s in steps] == [("deployment", True), ("discovery", True), ("target", True),
                                                     ("token", None), ("cloud", True), ("registry", True)]
    assert "reachable over HTTPS" in steps[1]["detail"] and "admitted by rule app-main" in steps[2]["detail"]
    assert f"docker login to {HOST} as AWS succeeded" in steps[-1]["detail"]
    assert "s3cret-password" not in json.dumps(steps)
    exchange = next(kw for method, url, kw in http.sent if url.endswith("/exchange/aws"))
    assert exchange["json"] == {"target": "default/prod-ecr"}
    assert exchange["headers"]["Authorization"].startswith("Bearer ey")


def test_the_token_step_sends_rfc_8693_and_verifies_what_it_got():
    http = FakeHttp(broker_answers())
    code, steps = report(["default/prod-ecr"], http)
    assert code == 0, steps
    assert steps[3]["ok"] is True and "sub 'space:default:feed:prod-ecr', aud 'sts.amazonaws.com'" in steps[3]["detail"]
    assert steps[4] == {"step": "cloud", "ok": None, "fix": "", "detail": steps[4]["detail"]}
    assert "spent by step 4" in steps[4]["detail"] and "--skip-mint" in steps[4]["detail"]
    form = next(kw for method, url, kw in http.sent if url.endswith("/token"))["data"]
    assert form == {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": "default/prod-ecr",
                    "subject_token": form["subject_token"]}


def test_text_output_names_each_step_and_the_fix():
    http = FakeHttp(broker_answers({("POST", f"{ISSUER}/exchange/aws"): ok(
        {"error": "access_denied", "error_description": "role arn:aws:iam::123456789012:role/pull did not trust …"},
        403)}))
    code, out, _ = doctor_run(["default/prod-ecr", "--skip-mint", "--token", "-"], http, stdin=ci_token())
    assert code == 1
    lines = out.splitlines()
    assert [line[:4] for line in lines] == ["ok  ", "ok  ", "ok  ", "skip", "FAIL", "    "]
    assert lines[-1].startswith("      fix: ") and "oidc-broker trust-policy aws --target default/prod-ecr" in lines[-1]


# -- discovery and JWKS ---------------------------------------------------------------------------

DISCOVERY = ("GET", f"{ISSUER}/.well-known/openid-configuration")
JWKS = ("GET", f"{ISSUER}/.well-known/jwks.json")


@pytest.mark.parametrize("answer, says, fix", [
    (ok({"issuer": ISSUER + "/", "jwks_uri": f"{ISSUER}/.well-known/jwks.json"}), "not 'https://id.example.com' exactly",
     "trailing slash"),
    (ok({"issuer": ISSUER}), "no jwks_uri", "deploy"),
    (ok({"issuer": ISSUER, "jwks_uri": f"{ISSUER}/.well-known/jwks.json"}, headers={}), "without Cache-Control",
     "deploy"),
    (Answer(200, {}, b"<html>hello</html>"), "other than a JSON object", "custom domain"),
    (ok({"message": "Not Found"}, 404), "HTTP 404", "check the URL"),
    (NetworkError("GET https://id.example.com/.well-known/openid-configuration: the host name does not resolve (DNS)"),
     "does not resolve (DNS)", "reachable over HTTPS"),
    (NetworkError("GET …: timed out after 10 s"), "timed out", "DNS record, the TLS certificate"),
])
def test_discovery_failures_are_named_with_their_fix(answer, says, fix):
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers({DISCOVERY: answer})))
    assert code == 1
    assert last(steps)["step"] == "discovery" and last(steps)["ok"] is False
    assert says in last(steps)["detail"] and fix in last(steps)["fix"]


@pytest.mark.parametrize("answer, says", [
    (ok({"keys": []}), "has no keys"),
    (ok({"keys": [{**JWK, "alg": "RS512"}]}), "not RSA keys with a kid and alg RS256"),
    (ok({"keys": [{k: v for k, v in JWK.items() if k != "kid"}]}), "not RSA keys with a kid"),
    (ok({"keys": [JWK]}, headers={}), "without Cache-Control"),
    (Answer(200, {}, b"not json"), "other than a JSON object"),
])
def test_jwks_failures_are_named(answer, says):
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers({JWKS: answer})))
    assert code == 1 and last(steps)["step"] == "discovery" and says in last(steps)["detail"]


def test_an_issuer_that_is_not_https_fails_unless_it_is_local_mode():
    stack = FakeStack(outputs={"IssuerUrl": "http://id.example.com", "TableName": "broker"})
    code, steps = report(["default/prod-ecr"], FakeHttp({}), stack)
    assert code == 1 and "is not HTTPS" in last(steps)["detail"] and "https://" in last(steps)["fix"]


# -- the target and its rules ---------------------------------------------------------------------

def test_an_unknown_target_names_the_targets_there_are():
    code, steps = report(["default/nope"], FakeHttp(broker_answers()))
    assert code == 1 and last(steps)["step"] == "target"
    assert "default/deploy, default/prod-ecr" in last(steps)["detail"] and "oidc-broker apply" in last(steps)["fix"]


def test_an_untrusted_issuer_and_refused_claims_are_named():
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers()), token=ci_token(iss="https://gitlab.com"))
    assert code == 1 and "'https://gitlab.com' is not a trusted issuer" in last(steps)["detail"]
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers()), token=ci_token(aud="sts.amazonaws.com"))
    assert code == 1 and "aud rule expects 'https://id.example.com', token has 'sts.amazonaws.com'" in last(steps)["detail"]


def test_a_table_without_configuration_or_unreadable_is_a_failed_step():
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers()), FakeStack(document=None))
    assert code == 1 and "no configuration has been applied to table broker" in last(steps)["detail"]
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers()), FakeStack(document={"spaces": 1}))
    assert code == 1 and "does not validate" in last(steps)["detail"]


def test_a_stack_without_a_table_output_skips_the_target_and_the_cloud():
    stack = FakeStack(outputs={"IssuerUrl": ISSUER})
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers()), stack)
    assert code == 0
    assert [(s["step"], s["ok"]) for s in steps][2:] == [("target", None), ("token", True), ("cloud", None)]


# -- the minted token -----------------------------------------------------------------------------

@pytest.mark.parametrize("token, says", [
    (minted(kid="k9"), "kid 'k9', which the JWKS does not publish"),
    (minted(aud="api://AzureADTokenExchange"), "does not verify against the JWKS: Audience"),
    (minted(iss="https://other.example.com"), "does not verify against the JWKS: Invalid issuer"),
    (minted(exp=int(NOW) - 3600), "Signature has expired"),
])
def test_a_minted_token_that_a_cloud_would_refuse_fails_the_token_step(token, says):
    answers = broker_answers({("POST", f"{ISSUER}/token"): ok({"access_token": token})})
    code, steps = report(["default/prod-ecr"], FakeHttp(answers))
    assert code == 1 and last(steps)["step"] == "token" and says in last(steps)["detail"]
    assert token not in json.dumps(steps)


# -- the broker's and the cloud's refusals, each with its fix ------------------------------------

@pytest.mark.parametrize("status, error, description, fix", [
    (403, "access_denied", "role … did not trust subject …", "oidc-broker trust-policy aws --target default/prod-ecr"),
    (400, "invalid_grant", "subject_token aud must be 'https://id.example.com'", "core.getIDToken('https://id.example.com')"),
    (400, "invalid_grant", "subject_token was already used for target 'default/prod-ecr'", "once per target"),
    (400, "invalid_grant", "subject_token has expired (exp)", "expired or too old"),
    (400, "invalid_grant", "claim 'ref' does not match any trust rule", "oidc-broker explain --target default/prod-ecr"),
    (400, "invalid_target", "audience 'default/x' is not a known <space>/<target>", "check the spelling"),
    (503, "temporarily_unavailable", "the cloud did not answer in time", "retry shortly"),
    (502, "cloud_error", "InvalidIdentityToken: No OpenIDConnect provider found", "register the issuer"),
])
def test_each_refusal_names_its_fix(status, error, description, fix):
    body = ok({"error": error, "error_description": description}, status)
    code, steps = report(["default/prod-ecr", "--skip-mint"],
                         FakeHttp(broker_answers({("POST", f"{ISSUER}/exchange/aws"): body})))
    assert code == 1 and last(steps)["step"] == "cloud"
    assert error in last(steps)["detail"] and description in last(steps)["detail"] and fix in last(steps)["fix"]


def test_a_token_endpoint_refusal_or_non_json_answer_fails_the_token_step():
    body = ok({"error": "invalid_grant", "error_description": "subject_token aud must be 'https://id.example.com'"}, 400)
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers({("POST", f"{ISSUER}/token"): body})))
    assert code == 1 and last(steps)["step"] == "token" and "GitLab" in last(steps)["fix"]
    gateway = Answer(502, {}, b"Bad Gateway")
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers({("POST", f"{ISSUER}/token"): gateway})))
    assert code == 1 and "HTTP 502 with no JSON body" in last(steps)["detail"]


# -- the registry ---------------------------------------------------------------------------------

def test_a_registry_that_refuses_the_credentials_fails_with_its_fix():
    refusal = ok({"errors": [{"code": "DENIED", "message": "Your authorization token has expired"}]}, 401)
    challenge = ok({}, 401, {"www-authenticate": f'Basic realm="https://{HOST}/"'})
    answers = broker_answers({("GET", f"https://{HOST}/v2/"): [challenge, refusal]})
    code, steps = report(["default/prod-ecr", "--skip-mint"], FakeHttp(answers))
    assert code == 1 and last(steps)["step"] == "registry"
    assert "DENIED: Your authorization token has expired" in last(steps)["detail"]
    assert "pull access" in last(steps)["fix"] and "AcrPull" in last(steps)["fix"]


def test_a_bearer_registry_is_logged_in_to_through_its_token_service():
    realm = "https://auth.example.com/token"
    answers = broker_answers({
        ("GET", f"https://{HOST}/v2/"): [ok({}, 401, {"www-authenticate": f'Bearer realm="{realm}",service="{HOST}"'}),
                                         ok({}, 200, {})],
        ("GET", realm): ok({"token": "registry-token"}),
    })
    http = FakeHttp(answers)
    code, steps = report(["default/prod-ecr", "--skip-mint"], http)
    assert code == 0 and "Bearer login: HTTP 200" in last(steps)["detail"]
    token_request = next(kw for method, url, kw in http.sent if url == realm)
    assert token_request["params"]["service"] == HOST and token_request["params"]["account"] == "AWS"
    assert token_request["headers"]["Authorization"].startswith("Basic ")
    assert "registry-token" not in json.dumps(steps)


def test_an_account_target_has_no_registry_step():
    answers = broker_answers({("POST", f"{ISSUER}/exchange/aws"): ok(
        {"access_key_id": "ASIA…", "secret_access_key": "secret!", "session_token": "tok!", "expires_at": "…"})})
    code, out, _ = doctor_run(["default/deploy", "--skip-mint", "--token", "-"], FakeHttp(answers), stdin=ci_token())
    assert code == 0 and "skip  registry" in out and "not a feed" in out
    assert "secret!" not in out and "tok!" not in out and "secret_access_key (set)" in out


# -- usage ---------------------------------------------------------------------------------------

def test_a_stack_needs_a_real_ci_token():
    code, out, err = doctor_run(["default/prod-ecr"], FakeHttp(broker_answers()))
    assert code == 2 and out == "" and "needs a real CI token" in err and err.count("\n") == 1


@pytest.mark.parametrize("url", ["ftp://x", "http://[::1", "http://h:99999", "https://", "http://h?x=1", "h:80", ""])
def test_a_url_that_is_not_the_brokers_http_url_is_exit_2(url):
    code, out, err = doctor_run(["default/prod-ecr", "--url", url], FakeHttp({}))
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err == f"oidc-broker doctor: --url {url!r} is not the broker's http(s) URL (for example https://id.example.com)\n"


def test_a_stack_that_is_not_the_broker_is_exit_2():
    code, _, err = doctor_run(["default/prod-ecr", "--token", "-"], FakeHttp({}), FakeStack(outputs={}), stdin="x.y.z")
    assert code == 2 and "no output IssuerUrl" in err


def test_a_ci_token_that_is_not_a_jwt_fails_the_target_step():
    code, steps = report(["default/prod-ecr"], FakeHttp(broker_answers()), token="not-a-jwt")
    assert code == 1 and last(steps)["step"] == "target" and "not a JWT" in last(steps)["detail"]


# -- the small parts ------------------------------------------------------------------------------

@pytest.mark.parametrize("message, says", [
    ("[Errno -2] Name or service not known", "does not resolve (DNS)"),
    ("[Errno -3] Temporary failure in name resolution", "does not resolve (DNS)"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate", "TLS failed"),
    ("[Errno 111] Connection refused", "connection refused"),
    ("", "no answer"),
])
def test_network_failures_are_named(message, says):
    assert says in doctor.network_reason(message)


def test_http_turns_a_refused_connection_into_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        http = doctor.Http(timeout=5)
        with pytest.raises(NetworkError, match="connection refused"):
            http.request("GET", f"http://127.0.0.1:{port}/")
        http.close()


@pytest.mark.parametrize("header, host, answers", [
    (f'Bearer realm="http://127.0.0.1:1/token",service="{HOST}"', HOST, True),
    ('Bearer realm="http://127.0.0.1:1/token",service="other.example.com"', HOST, False),
    ('Bearer realm="http://127.0.0.1:1/token"', HOST, False),
    (f'Basic realm="https://{HOST}/",service="ecr.amazonaws.com"', HOST, True),
    ("", HOST, False),
])
def test_a_registry_challenge_says_which_host_it_answers_for(header, host, answers):
    assert doctor.answers_for(header, host) is answers


def test_loopback_http_is_local_mode():
    assert doctor.is_loopback_http("http://127.0.0.1:3000") and doctor.is_loopback_http("http://localhost:1")
    assert not doctor.is_loopback_http("https://127.0.0.1:3000") and not doctor.is_loopback_http("http://id.example.com")


def test_help_names_every_option_and_the_exit_codes():
    parser = argparse.ArgumentParser(prog="oidc-broker")
    doctor.add_parser(parser.add_subparsers(dest="command"), lambda args: 0)
    text = parser._subparsers._group_actions[0].choices["doctor"].format_help()
    for option in ("--token-file", "--token", "--claims", "--skip-mint", "--stack", "--region", "--profile", "--url",
                   "--output"):
        assert option in text
    assert "exit codes:" in text and "2  usage" in text


def test_local_mode_serves_discovery_for_an_issuer_it_only_stands_in_for():
    """A local mode whose configuration names `issuer: https://id.example.com` serves that issuer's
    discovery and JWKS itself; doctor fetches them there and says a cloud would fetch them from the issuer."""
    base = "http://127.0.0.1:4000"
    answers = {(method, url.replace(ISSUER, base) if "well-known" in url else url): answer
               for (method, url), answer in broker_answers().items()}
    where = doctor.Where("local mode at " + base, base, ISSUER, True, None)
    step, jwks = doctor.discovery_step(FakeHttp(answers), where.issuer, where.url)
    assert step.ok and jwks == {"keys": [JWK]}
    assert f"local mode serves them for {ISSUER} at {base}" in step.detail
