"""oidc_broker/clouds/__init__.py: the Cloud description, its Settings, and the one registry."""

from __future__ import annotations

import re

import pytest

from oidc_broker import clouds
from oidc_broker.clouds import CLOUDS, Cloud, Setting, refresh_at


def test_the_registry_holds_the_built_in_clouds_in_the_order_refusals_list_them():
    assert list(CLOUDS) == ["aws", "azure", "gcp"]
    assert all(name == cloud.name for name, cloud in CLOUDS.items())


def test_every_registered_cloud_describes_the_caches_refresh_fraction_with_a_default():
    # cache.py reads refresh_at for every target: a cloud without it would silently never be cached.
    for cloud in CLOUDS.values():
        assert cloud.settings["refresh_at"].default == 0.5, cloud.name


def test_the_refresh_fraction_is_a_fraction_from_zero_to_nine_tenths():
    check = refresh_at().check
    assert [check(v) for v in (0, 0.5, 0.9)] == [0.0, 0.5, 0.9]
    assert [check(v) for v in (0.95, -0.1, "0.5", True)] == [None, None, None, None]


def test_registered_adds_a_cloud_for_a_block_and_removes_it_after():
    cloud = Cloud(name="test", title="Test", settings={"refresh_at": refresh_at()})
    with clouds.registered(cloud):
        assert CLOUDS["test"] is cloud
    assert "test" not in CLOUDS


def test_a_cloud_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        clouds.register(Cloud(name="aws", title="Again", settings={"refresh_at": refresh_at()}))
    assert CLOUDS["aws"].title == "AWS"


def test_defaults_are_per_kind_of_target():
    cloud = Cloud(name="test", title="Test", settings={
        "x": Setting(re.compile("x"), "x", default="x", kinds=("feed",)),
        "y": Setting(re.compile("y"), "y"),
        "refresh_at": refresh_at(0.3),
    })
    assert cloud.defaults("feed") == {"x": "x", "refresh_at": 0.3}
    assert cloud.defaults("account") == {"refresh_at": 0.3}


def test_a_cloud_without_a_default_audience_leaves_the_target_to_name_one():
    assert Cloud(name="test", title="Test", settings={"refresh_at": refresh_at()}).default_audience({}) is None
