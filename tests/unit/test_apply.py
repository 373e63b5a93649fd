"""oidc_broker_cli/apply.py: a configuration is written only to the deployment whose issuer it names."""

from __future__ import annotations

import pytest
from builders import BROKER, config_doc

from oidc_broker.config import ConfigError
from oidc_broker_cli.apply import ApplyError, apply

OTHER = "https://other.example.com"


class FakeStore:
    """The table as apply uses it: the deployment record the stack wrote, and the configuration."""

    def __init__(self, issuer: str | None = BROKER):
        self.deployment = None if issuer is None else {"issuer": issuer, "recorded_at": 1}
        self.configs: list[tuple] = []

    def get_deployment(self):
        return self.deployment

    def put_config(self, document, source, applied_at):
        self.configs.append((document, source, applied_at))
        return "sha"


def test_apply_writes_a_configuration_naming_the_deployments_issuer():
    store = FakeStore()
    config = apply(config_doc(), "broker.yaml", store, now=5)
    assert config.issuer == BROKER
    assert store.configs == [(config_doc(), "broker.yaml", 5)]


def test_apply_refuses_a_configuration_naming_another_issuer_and_writes_nothing():
    store = FakeStore(OTHER)
    with pytest.raises(ApplyError) as info:
        apply(config_doc(), "broker.yaml", store)
    assert str(info.value) == f"broker.yaml: issuer: is {BROKER}, but this deployment's issuer is {OTHER}"
    assert store.configs == []


def test_apply_compares_the_issuer_byte_for_byte():
    store = FakeStore(BROKER.replace("broker", "Broker"))
    with pytest.raises(ApplyError, match="but this deployment's issuer is https://Broker.example.com"):
        apply(config_doc(), "broker.yaml", store)
    assert store.configs == []


def test_apply_refuses_when_the_table_records_no_issuer_and_says_how_to_fix_it():
    store = FakeStore(None)
    with pytest.raises(ApplyError) as info:
        apply(config_doc(), "broker.yaml", store)
    assert "redeploy the stack, or state it with --issuer URL" in str(info.value)
    assert store.configs == []


def test_apply_takes_a_stated_issuer_when_the_table_records_none():
    store = FakeStore(None)
    apply(config_doc(), "broker.yaml", store, issuer=BROKER)
    assert len(store.configs) == 1


def test_apply_refuses_a_stated_issuer_the_document_does_not_name():
    store = FakeStore(None)
    with pytest.raises(ApplyError, match=f"is {BROKER}, but this deployment's issuer is {OTHER}"):
        apply(config_doc(), "broker.yaml", store, issuer=OTHER)
    assert store.configs == []


def test_apply_refuses_a_stated_issuer_the_deployment_contradicts():
    store = FakeStore(BROKER)
    with pytest.raises(ApplyError) as info:
        apply(config_doc(issuer=OTHER), "broker.yaml", store, issuer=OTHER)
    assert str(info.value) == f"--issuer is {OTHER}, but this deployment's issuer is {BROKER}"
    assert store.configs == []


def test_apply_reports_an_invalid_document_before_looking_at_the_deployment():
    store = FakeStore(None)
    with pytest.raises(ConfigError):
        apply(config_doc(issuer="http://broker.example.com"), "broker.yaml", store)
    assert store.configs == []
