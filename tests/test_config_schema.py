"""docs/config.schema.json, the configuration's JSON Schema for editors, cannot drift from the validator
(layers/broker/oidc_broker/validation.py): every configuration the tests use that validates is valid
under it, the schema and the validator refuse the same broken documents, and every key the validator
knows (read from its code and from each cloud's description) is in the schema with the same
required keys."""

from __future__ import annotations

import ast
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from oidc_broker import config as config_module
from oidc_broker import presets, subject, validation
from oidc_broker.clouds import CLOUDS
from oidc_broker.model import KINDS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "config.schema.json").read_text())
SCHEMA_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
LOCAL_URL = "http://127.0.0.1:3999"


def schema_errors(document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in SCHEMA_VALIDATOR.iter_errors(document)]


def validator_accepts(document: Any) -> bool:
    try:
        config_module.parse(document, "test.yaml", allow_loopback_http=True)
    except config_module.ConfigError:
        return False
    return True


# -- (a) every configuration the tests use that validates is valid under the schema ---------------

def _test_yaml_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every string constant in the tests that is a YAML configuration document (it has spaces)."""
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "spaces:" in node.value:
                try:
                    document = yaml.safe_load(node.value)
                except yaml.YAMLError:
                    continue
                if isinstance(document, dict) and "spaces" in document:
                    # A fragment a harness completes with the broker's issuer (as local mode does).
                    document.setdefault("issuer", "https://broker.example.com")
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", document


def _builder_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """tests/unit/builders.config_doc(), and every call of it in the tests whose arguments are literals."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    try:
        import builders
    finally:
        sys.path.remove(str(ROOT / "tests" / "unit"))
    yield "tests/unit/builders.py:config_doc()", builders.config_doc()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "config_doc":
                try:
                    top = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
                except ValueError:  # an argument computed at run time
                    continue
                if top and len(top) == len(node.keywords) and not node.args:
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", builders.config_doc(**top)
            elif isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "spaces" for k in node.keys):
                try:
                    document = ast.literal_eval(node)
                except ValueError:
                    continue
                yield f"{path.relative_to(ROOT)}:{node.lineno}", document


def _local_example() -> dict[str, Any]:
    """examples/local.yaml as local mode reads it: `${local_url}` its base URL, which is also its issuer."""
    document = yaml.safe_load((ROOT / "examples" / "local.yaml").read_text().replace("${local_url}", LOCAL_URL))
    document.setdefault("issuer", LOCAL_URL)
    return document


DOCUMENTS = [*_test_yaml_documents(), *_builder_documents(), ("examples/local.yaml (in local mode)", _local_example())]
VALID = [(name, doc) for name, doc in DOCUMENTS if validator_accepts(doc)]


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_tests_configurations_were_found():
    # A scan that finds nothing would make the next test pass vacuously.
    assert len(VALID) >= 8, [name for name, _ in DOCUMENTS]


def test_examples_local_yaml_as_written_is_valid_under_the_schema():
    assert schema_errors(yaml.safe_load((ROOT / "examples" / "local.yaml").read_text())) == []


@pytest.mark.parametrize("name,document", VALID, ids=[name for name, _ in VALID])
def test_every_configuration_the_validator_accepts_in_the_tests_is_valid_under_the_schema(name, document):
    assert schema_errors(document) == []


# -- (b) the schema and the validator refuse the same broken documents ----------------------------

BASE: dict[str, Any] = {
    "issuer": "https://id.example.com",
    "trusted_issuers": [{"name": "github", "issuer": "https://token.actions.githubusercontent.com", "preset": "github",
                         "leeway": 30, "max_token_age": "1h", "max_key_set_age": "3h", "single_tenant": False}],
    "spaces": [{
        "name": "default",
        "targets": [
            {"name": "prod-ecr", "kind": "feed", "provider": "aws", "lifetime": "10m", "refresh": True,
             "aws": {"role_arn": "arn:aws:iam::123456789012:role/pull", "region": "us-east-1", "registry": "ecr",
                     "session_duration": 3600, "refresh_at": 0.5}},
            {"name": "prod-deploy", "kind": "account", "provider": "aws", "subject": ["space", "environment", "account"],
             "aws": {"role_arn": "arn:aws:iam::123456789012:role/deploy"}},
            {"name": "prod-acr", "kind": "feed", "provider": "azure",
             "azure": {"tenant_id": "11111111-2222-3333-4444-555555555555",
                       "client_id": "66666666-7777-8888-9999-000000000000", "registry": "acme.azurecr.io"}},
            {"name": "prod-gar", "kind": "feed", "provider": "gcp",
             "gcp": {"workload_identity_provider":
                     "projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker",
                     "registry": "europe-docker.pkg.dev", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}},
        ],
        "trust": [
            {"name": "app-main", "issuer": "github",
             "claims": {"repository_owner_id": "7", "repository": "acme/app", "ref": ["refs/heads/main", "refs/tags/v*"]},
             "targets": ["prod-ecr", "prod-acr", "prod-gar"]},
            {"name": "app-deploy", "issuer": "github",
             "claims": {"repository_owner_id": "7", "repository": "acme/app", "environment": "production"},
             "targets": ["prod-deploy"], "context": {"environment": {"claim": "environment"}}},
        ],
    }],
}


def _target(doc: dict, i: int) -> dict:
    return doc["spaces"][0]["targets"][i]


def _rule(doc: dict, i: int) -> dict:
    return doc["spaces"][0]["trust"][i]


def _set(where: Callable[[dict], dict], key: str, value: Any) -> Callable[[dict], None]:
    return lambda doc: where(doc).__setitem__(key, value)


def _delete(where: Callable[[dict], dict], key: str) -> Callable[[dict], None]:
    return lambda doc: where(doc).pop(key)


MUTATIONS: dict[str, Callable[[dict], None]] = {
    # an unknown key at each level
    "unknown top-level key": _set(lambda d: d, "colour", "blue"),
    "unknown trusted issuer key": _set(lambda d: d["trusted_issuers"][0], "audience", "x"),
    "unknown space key": _set(lambda d: d["spaces"][0], "owner", "me"),
    "unknown target key": _set(lambda d: _target(d, 0), "role_arn", "x"),
    "unknown trust rule key": _set(lambda d: _rule(d, 0), "subject", "x"),
    "unknown context key": _set(lambda d: _rule(d, 1)["context"], "feed", "prod-ecr"),
    "unknown key beside a context claim": _set(lambda d: _rule(d, 1)["context"]["environment"], "default", "prod"),
    **{f"unknown {name} setting": _set(lambda d, i=i, name=name: _target(d, i)[name], "colour", "blue")
       for i, name in ((0, "aws"), (2, "azure"), (3, "gcp"))},
    # a required key missing
    "no spaces": _delete(lambda d: d, "spaces"),
    "no space name": _delete(lambda d: d["spaces"][0], "name"),
    "no target kind": _delete(lambda d: _target(d, 0), "kind"),
    "no target provider": _delete(lambda d: _target(d, 0), "provider"),
    "no trusted issuer URL": _delete(lambda d: d["trusted_issuers"][0], "issuer"),
    "no rule claims": _delete(lambda d: _rule(d, 0), "claims"),
    "no rule targets": _delete(lambda d: _rule(d, 0), "targets"),
    # a wrong type
    "spaces not a list": _set(lambda d: d, "spaces", {"name": "default"}),
    "no space at all": _set(lambda d: d, "spaces", []),
    "targets not a list": _set(lambda d: d["spaces"][0], "targets", "prod-ecr"),
    "lifetime a list": _set(lambda d: _target(d, 0), "lifetime", [600]),
    "lifetime a float": _set(lambda d: _target(d, 0), "lifetime", 600.5),
    "refresh a string": _set(lambda d: _target(d, 0), "refresh", "yes"),
    "single_tenant a string": _set(lambda d: d["trusted_issuers"][0], "single_tenant", "no"),
    "leeway a bad duration": _set(lambda d: d["trusted_issuers"][0], "leeway", "1 minute"),
    "refresh_at a string": _set(lambda d: _target(d, 0)["aws"], "refresh_at", "half"),
    "refresh_at above 0.9": _set(lambda d: _target(d, 0)["aws"], "refresh_at", 0.95),
    "session_duration a bad duration": _set(lambda d: _target(d, 0)["aws"], "session_duration", "one hour"),
    "claims not a mapping": _set(lambda d: _rule(d, 0), "claims", ["repository"]),
    "claims empty": _set(lambda d: _rule(d, 0), "claims", {}),
    "a claim value a mapping": _set(lambda d: _rule(d, 0)["claims"], "ref", {"glob": "refs/*"}),
    "a claim value only '*'": _set(lambda d: _rule(d, 0)["claims"], "ref", "*"),
    "a claim value an empty list": _set(lambda d: _rule(d, 0)["claims"], "ref", []),
    "a broker-checked claim": _set(lambda d: _rule(d, 0)["claims"], "aud", "x"),
    "a claim name not ASCII": _set(lambda d: _rule(d, 0)["claims"], "ſub", "x"),
    "rule targets empty": _set(lambda d: _rule(d, 0), "targets", []),
    "subject not a list": _set(lambda d: _target(d, 1), "subject", "space:account"),
    "scopes not a scope": _set(lambda d: _target(d, 3)["gcp"], "scopes", ["cloud-platform"]),
    "audience empty": _set(lambda d: _target(d, 0), "audience", ""),
    # a bad choice
    "kind unknown": _set(lambda d: _target(d, 0), "kind", "bucket"),
    "provider unknown": _set(lambda d: _target(d, 0), "provider", "ibm"),
    "preset unknown": _set(lambda d: d["trusted_issuers"][0], "preset", "jenkins"),
    "subject key unknown": _set(lambda d: _target(d, 1), "subject", ["space", "colour", "account"]),
    "aws registry unknown": _set(lambda d: _target(d, 0)["aws"], "registry", "gcr"),
    "a setting of another cloud": _set(lambda d: _target(d, 0), "azure", {"tenant_id": "x"}),
    "a feed-only setting on an account": _set(lambda d: _target(d, 1)["aws"], "registry", "ecr"),
    # a setting's pattern
    "role_arn not an ARN": _set(lambda d: _target(d, 0)["aws"], "role_arn", "ecr-pull"),
    "region not a region": _set(lambda d: _target(d, 0)["aws"], "region", "Frankfurt"),
    "tenant_id not a UUID": _set(lambda d: _target(d, 2)["azure"], "tenant_id", "acme"),
    "workload_identity_provider malformed": _set(lambda d: _target(d, 3)["gcp"], "workload_identity_provider", "pool"),
    "gcp registry unknown": _set(lambda d: _target(d, 3)["gcp"], "registry", "docker.io"),
    # a bad slug
    "space name not a slug": _set(lambda d: d["spaces"][0], "name", "Default"),
    "target name not a slug": _set(lambda d: _target(d, 0), "name", "-prod"),
    "rule name not a slug": _set(lambda d: _rule(d, 0), "name", "app_main"),
    "trusted issuer name not a slug": _set(lambda d: d["trusted_issuers"][0], "name", "GitHub"),
    "context literal not a slug": _set(lambda d: _rule(d, 1), "context", {"environment": "Production"}),
    "context claim not a claim name": _set(lambda d: _rule(d, 1), "context", {"environment": {"claim": "env ironment"}}),
}


def test_the_base_document_is_valid_for_both():
    assert validator_accepts(BASE)
    assert schema_errors(BASE) == []


@pytest.mark.parametrize("name", MUTATIONS)
def test_the_schema_and_the_validator_both_refuse(name):
    document = copy.deepcopy(BASE)
    MUTATIONS[name](document)
    assert not validator_accepts(document), "the validator accepts it: the mutation tests nothing"
    assert schema_errors(document), "the schema accepts what the validator refuses"


# -- (c) every key the validator knows is in the schema --------------------------------------------

def _literal(node: ast.AST, assigned: dict[str, ast.AST]) -> set[str] | None:
    """A set literal of key names in validation.py's code; `*clouds.CLOUDS` is every cloud's name."""
    if isinstance(node, ast.Name) and node.id in assigned:
        node = assigned[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "frozenset" and not node.args:
        return set()
    if not isinstance(node, ast.Set):
        return None
    keys: set[str] = set()
    for element in node.elts:
        if isinstance(element, ast.Constant) and isinstance(element.value, str):
            keys.add(element.value)
        elif isinstance(element, ast.Starred) and ast.unparse(element.value) == "clouds.CLOUDS":
            keys |= set(CLOUDS)
        else:
            raise AssertionError(f"validation.py: a key set this test cannot read: {ast.unparse(node)}")
    return keys


def validator_key_sets() -> list[tuple[set[str], set[str]]]:
    """(known keys, required keys) of every mapping validation.py checks with `_Problems.mapping`."""
    tree = ast.parse(Path(validation.__file__).read_text())
    found = []
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        assigned = {t.id: n.value for n in ast.walk(function) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "mapping" and len(call.args) >= 3:
                known = _literal(call.args[2], assigned)
                required = _literal(call.args[3], assigned) if len(call.args) > 3 else set()
                if known is not None:
                    found.append((known, required))
    return found


def schema_objects(node: Any = SCHEMA) -> Iterator[dict[str, Any]]:
    """Every object schema with `properties` in the published schema."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict) and node.get("additionalProperties") is False:
            yield node
        for value in node.values():
            yield from schema_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from schema_objects(value)


def schema_enums(node: Any = SCHEMA) -> list[list[Any]]:
    if isinstance(node, dict):
        return ([node["enum"]] if "enum" in node else []) + [e for v in node.values() for e in schema_enums(v)]
    if isinstance(node, list):
        return [e for v in node for e in schema_enums(v)]
    return []


# The one difference, on purpose: local mode's file names no issuer (local mode supplies its base URL).
REQUIRED_EXCEPT = {frozenset({"issuer", "trusted_issuers", "spaces"}): {"issuer"}}


def test_the_validators_key_sets_were_read_from_its_code():
    sets = [known for known, _ in validator_key_sets()]
    assert {"issuer", "trusted_issuers", "spaces"} in sets and {"claim"} in sets
    assert len(sets) >= 6


@pytest.mark.parametrize("known,required", validator_key_sets(), ids=lambda v: ",".join(sorted(v)))
def test_every_mapping_the_validator_checks_is_a_closed_object_of_the_schema_with_the_same_required_keys(known, required):
    matching = [o for o in schema_objects() if set(o["properties"]) == known]
    assert matching, f"no object of the schema has exactly the keys {sorted(known)} with additionalProperties: false"
    expected = required - REQUIRED_EXCEPT.get(frozenset(known), set())
    assert any(set(o.get("required", [])) == expected for o in matching), f"required keys differ from {sorted(expected)}"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_setting_of_every_cloud_is_in_the_schema(cloud):
    settings = set(CLOUDS[cloud].settings)
    assert any(set(o["properties"]) == settings for o in schema_objects()), f"{cloud}: settings {sorted(settings)}"


def test_the_context_keys_are_the_subjects_context_keys():
    assert any(set(o["properties"]) == set(subject.CONTEXT_KEYS) for o in schema_objects())


@pytest.mark.parametrize("choices", [list(KINDS), list(CLOUDS), list(presets.PRESETS), list(subject.KEY_ORDER)],
                         ids=["kinds", "providers", "presets", "subject keys"])
def test_every_choice_the_validator_has_is_an_enum_of_the_schema(choices):
    assert sorted(choices) in [sorted(e) for e in schema_enums()]


def test_a_slug_is_the_subjects_slug():
    assert SCHEMA["$defs"]["slug"]["pattern"] == f"^{subject.SLUG.pattern}$"
