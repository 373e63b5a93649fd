"""The OpenAPI document: valid, complete, and true to what the handlers accept and return."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import schemathesis
from schemathesis import checks
import yaml
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate

from oidc_broker_cli.template import Template

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())


def schema_of(name: str) -> dict:
    """A component schema with its references resolved against the document."""
    return {**DOCUMENT["components"]["schemas"][name], "components": DOCUMENT["components"]}


def check(instance, name: str) -> None:
    jsonschema.validate(instance, schema_of(name), format_checker=jsonschema.FormatChecker())


def test_the_document_is_valid_openapi_3_1():
    validate(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1")


def test_every_public_route_of_the_template_is_described_and_nothing_else():
    routes = {(r.method.lower(), r.path) for r in Template(ROOT / "template.yaml").routes()}
    described = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert routes == described


def test_local_mode_serves_the_document(local):
    response = local.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == DOCUMENT


def test_discovery_and_jwks_responses_match_their_schemas(local):
    check(local.http.get("/.well-known/openid-configuration").json(), "Discovery")
    check(local.http.get("/.well-known/jwks.json").json(), "Jwks")


def test_token_responses_and_errors_match_their_schemas(local):
    token = local.ci_token()
    check(local.exchange(token).json(), "TokenResponse")
    check(local.exchange(token).json(), "Error")


# No 5xx, and every status, content type, header and body as the document describes. Positive
# data cannot be accepted here: a schema-valid subject_token is still not a token a CI issuer signed.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
OPERATIONS = [result.ok() for result in schemathesis.openapi.from_dict(DOCUMENT).get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_no_generated_request_gets_a_5xx_or_an_undescribed_response(local, operation):
    """schemathesis generates requests from the document; every answer must be a described, non-5xx one."""

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def run(case):
        case.call_and_validate(base_url=local.base_url, checks=CHECKS)

    run()
