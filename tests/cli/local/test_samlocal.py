"""oidc_broker_cli/local/samlocal.py: the `sam local --env-vars` document, and fresh tokens for events/."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from oidc_broker_cli.deployment import RECORD_ENV
from oidc_broker_cli.local import samlocal
from oidc_broker_cli.template import Template

REPO = Path(__file__).resolve().parents[3]
EVENTS = sorted((REPO / "events").glob("*.json"))
TEMPLATE = """
Globals:
  Function:
    Environment:
      Variables:
        TABLE_NAME: !Ref Table
        ISSUER_URL: !Ref IssuerUrl
Resources:
  Table: {Type: AWS::DynamoDB::Table}
  PlainFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: functions/plain/}
  CachingFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/caching/
      Environment:
        Variables:
          CACHE_KEY_ID: !GetAtt CacheKey.Arn
          TABLE_NAME: !Ref Table
"""
ENVIRON = {"TABLE_NAME": "t", "ISSUER_URL": "http://127.0.0.1:1", "CACHE_KEY_ID": "arn:key",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:2", "HOME": "/home/me"}


@pytest.fixture
def template(tmp_path) -> Template:
    return Template(tmp_path / "template.yaml", TEMPLATE)


def test_each_function_gets_its_declared_variables_and_local_modes_own(template):
    document = samlocal.environments(template, ENVIRON, ["AWS_ENDPOINT_URL"])
    assert document == {
        "PlainFunction": {"TABLE_NAME": "t", "ISSUER_URL": "http://127.0.0.1:1",
                          "AWS_ENDPOINT_URL": "http://127.0.0.1:2"},
        "CachingFunction": {"TABLE_NAME": "t", "ISSUER_URL": "http://127.0.0.1:1", "CACHE_KEY_ID": "arn:key",
                            "AWS_ENDPOINT_URL": "http://127.0.0.1:2"},
    }


def test_a_declared_variable_local_mode_gave_no_value_is_named(template):
    environ = {k: v for k, v in ENVIRON.items() if k != "CACHE_KEY_ID"}
    with pytest.raises(ValueError, match=r"no value for CACHE_KEY_ID \(CachingFunction in template.yaml\)"):
        samlocal.environments(template, environ, [])


def test_local_modes_own_variables_are_those_it_set_that_no_function_declares(template):
    before = {"HOME": "/home/me", "AWS_REGION": "us-east-1"}
    after = {**ENVIRON, "AWS_REGION": "us-east-1", "AZURE_AUTHORITY_HOST": "https://127.0.0.1:3"}
    assert samlocal.local_only(template, before, after) == ["AWS_ENDPOINT_URL", "AZURE_AUTHORITY_HOST"]


def test_every_function_of_the_template_has_an_entry_with_every_variable_it_declares():
    template = Template(REPO / "template.yaml")
    names = {n for f in template.of_type("AWS::Serverless::Function") for n in samlocal.declared(template, f)}
    document = samlocal.environments(template, {n: f"value of {n}" for n in names}, [])
    assert set(document) == set(template.of_type("AWS::Serverless::Function"))
    for function, variables in document.items():
        props = template.resources[function]["Properties"]
        own = set((props.get("Environment") or {}).get("Variables") or {})
        assert set(variables) == set(template.globals["Environment"]["Variables"]) | own, function


def test_the_env_file_is_beside_the_record(tmp_path):
    assert samlocal.env_path(tmp_path / "local.json") == tmp_path / "env.json"


def test_writing_the_env_file_writes_json_whole(tmp_path):
    path = tmp_path / ".oidc-broker" / "env.json"
    samlocal.write_env(path, {"PlainFunction": {"TABLE_NAME": "t"}})
    assert json.loads(path.read_text()) == {"PlainFunction": {"TABLE_NAME": "t"}}
    assert [p.name for p in path.parent.iterdir()] == ["env.json"]


def event(name: str) -> dict:
    return json.loads((REPO / "events" / name).read_text())


def test_a_token_request_gets_the_token_as_its_subject_token_and_its_content_length_follows():
    refreshed = samlocal.with_token(event("token.json"), "a.fresh.token")
    form = parse_qs(refreshed["body"])
    assert form["subject_token"] == ["a.fresh.token"]
    assert form["audience"] == ["default/prod-ecr"]
    assert refreshed["headers"]["content-length"] == str(len(refreshed["body"].encode()))


def test_an_exchange_request_gets_the_token_as_its_bearer_token_and_keeps_its_body():
    original = event("exchange_aws.json")
    refreshed = samlocal.with_token(original, "a.fresh.token")
    assert refreshed["headers"]["authorization"] == "Bearer a.fresh.token"
    assert refreshed["body"] == original["body"]
    assert refreshed["headers"]["content-length"] == "30"


@pytest.mark.parametrize("name", ["discovery.json", "jwks.json", "refresh.json", "rotate_keys.json", "key_ring.json"])
def test_an_event_without_a_callers_token_is_left_alone(name):
    assert samlocal.with_token(event(name), "a.fresh.token") is None


@pytest.mark.parametrize("path", EVENTS, ids=lambda p: p.name)
def test_every_events_content_length_is_its_bodys_byte_length(path):
    e = json.loads(path.read_text())
    if "routeKey" not in e:
        return
    headers = e.get("headers") or {}
    if "body" in e:
        assert headers["content-length"] == str(samlocal.body_length(e))
    else:
        assert "content-length" not in headers


def test_the_token_bearing_events_are_the_token_and_exchange_functions():
    assert [p.name for p in EVENTS if samlocal.carries_token(json.loads(p.read_text()))] == [
        "exchange_aws.json", "exchange_azure.json", "exchange_gcp.json", "token.json"]


def test_every_event_has_a_documented_answer():
    readme = (REPO / "events" / "README.md").read_text()
    for path in EVENTS:
        assert f"| `{path.name}` |" in readme, path.name


def test_events_without_a_running_local_mode_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(RECORD_ENV, str(tmp_path / "local.json"))
    assert samlocal.main(["events"], root=tmp_path) == 2
    err = capsys.readouterr().err
    assert err == ("error: local mode is not running (start it with `make run`); `make events` mints from its "
                   "development CI issuer\n")


def test_an_unknown_command_is_a_usage_line_and_exit_2(capsys):
    assert samlocal.main(["tokens"]) == 2
    assert capsys.readouterr().err == "usage: python -m oidc_broker_cli.local.samlocal events\n"
