"""oidc_broker/clouds/azure.py: what an Azure target carries (no exchanger yet)."""

from __future__ import annotations

from builders import config_doc

from oidc_broker import validation
from oidc_broker.clouds import CLOUDS


def one_target(**target) -> dict:
    return config_doc(spaces=[{"name": "acme", "targets": [target]}])


def only_target(**target):
    (parsed,) = validation.parse(one_target(**target)).spaces["acme"].targets.values()
    return parsed


def test_azure_targets_default_to_the_token_exchange_audience():
    assert only_target(name="x", kind="feed", provider="azure").audience == "api://AzureADTokenExchange"


def test_valid_provider_settings_are_kept():
    azure = {"tenant_id": "11111111-2222-3333-4444-555555555555", "client_id": "66666666-7777-8888-9999-000000000000",
             "registry": "acme.azurecr.io"}
    assert only_target(name="x", kind="feed", provider="azure", azure=azure).settings == azure


def test_an_azure_target_is_cached_until_half_its_lifetime_unless_it_says_otherwise():
    assert only_target(name="x", kind="feed", provider="azure").setting("refresh_at") == 0.5
    assert only_target(name="x", kind="feed", provider="azure", azure={"refresh_at": 0.75}).setting("refresh_at") == 0.75


def test_azure_subjects_may_be_255_bytes_and_no_exchange_or_trust_setup_exists_yet():
    cloud = CLOUDS["azure"]
    assert (cloud.max_subject_bytes, cloud.exchanger, cloud.trust_setup) == (255, None, None)
