"""oidc_broker/config.py: the public entry (names the CLI, local mode and functions import) and
the ConfigCache the functions read the configuration through."""

from __future__ import annotations

import pytest
from builders import Clock, config_doc

from oidc_broker import config


# -- ConfigCache --------------------------------------------------------------------------------

class Loader:
    def __init__(self, *results):
        self.results = list(results)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_cache_loads_on_first_use_and_keeps_the_value_for_ttl():
    clock, load = Clock(), Loader("first", "second")
    cache = config.ConfigCache(load, clock, ttl=30)
    assert cache.get() == "first"
    clock.advance(29.9)
    assert (cache.get(), load.calls) == ("first", 1)


def test_cache_reloads_once_ttl_has_passed():
    clock, load = Clock(), Loader("first", "second")
    cache = config.ConfigCache(load, clock, ttl=30)
    cache.get()
    clock.advance(30)
    assert (cache.get(), load.calls) == ("second", 2)


def test_cache_tries_again_after_a_failed_load():
    clock, load = Clock(), Loader(RuntimeError("store down"), "loaded")
    cache = config.ConfigCache(load, clock, ttl=30)
    with pytest.raises(RuntimeError):
        cache.get()
    assert cache.get() == "loaded"


def test_cache_works_with_a_clock_starting_at_zero():
    clock, load = Clock(0.0), Loader("first", "second")
    cache = config.ConfigCache(load, clock, ttl=30)
    assert (cache.get(), cache.get(), load.calls) == ("first", "first", 1)


# -- the public entry -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["parse", "ConfigError", "Config", "ConfigCache", "Target", "TrustedIssuer", "ContextValue",
                                  "TrustRule", "Binding", "parse_lifetime", "url_problem", "is_loopback", "DEFAULT_LIFETIME"])
def test_the_names_the_cli_local_mode_and_functions_use_are_importable_from_config(name):
    assert hasattr(config, name)


def test_parse_through_the_public_entry_yields_the_config():
    assert config.parse(config_doc()).target("acme/prod").provider == "aws"
