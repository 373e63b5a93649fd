"""Fixtures every emulator test may use: two RSA keys (slow to make, so once), a loopback issuer and
a clock a test moves on."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_issuer import Issuer


@pytest.fixture(scope="session")
def keys():
    """The issuer's key, and another one it never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048), \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def issuer(keys):
    issuer = Issuer(keys[0])
    yield issuer
    issuer.stop()


@pytest.fixture(autouse=True)
def _discovery_names_the_issuer(issuer):
    """A test that makes discovery name another issuer does not leak it into the next test."""
    yield
    issuer.claimed_issuer = None


class Clock:
    """Now, until a test moves `now` on."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock(time.time())
