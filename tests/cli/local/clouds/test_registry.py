"""oidc_broker_cli/local/clouds/__init__.py: every cloud module is registered, and each can be started."""

from __future__ import annotations

import pkgutil

import pytest

from oidc_broker_cli.local import clouds


def test_every_module_in_local_clouds_is_registered_in_clouds():
    modules = {m.name for m in pkgutil.iter_modules(clouds.__path__)}
    assert modules == {m.__name__.rsplit(".", 1)[1] for m in clouds.CLOUDS}


@pytest.mark.parametrize("cloud", clouds.CLOUDS, ids=lambda m: m.__name__)
def test_each_registered_cloud_has_a_start(cloud):
    assert callable(getattr(cloud, "start", None))


class Started:
    def __init__(self, log, name, fail=False):
        self.log, self.name = log, name
        if fail:
            raise RuntimeError(name)
        log.append(f"start {name}")

    def stop(self):
        self.log.append(f"stop {self.name}")


def test_a_cloud_that_fails_to_start_stops_those_started_before_it(monkeypatch):
    log = []
    first = type("first", (), {"start": staticmethod(lambda broker: Started(log, "first"))})
    second = type("second", (), {"start": staticmethod(lambda broker: Started(log, "second", fail=True))})
    monkeypatch.setattr(clouds, "CLOUDS", (first, second))
    with pytest.raises(RuntimeError, match="second"):
        clouds.start_all(object())
    assert log == ["start first", "stop first"]
