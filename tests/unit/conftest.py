"""Fixtures for the unit tests; the builders they use live in builders.py.

RSA keys are slow to generate, so they are made once per session.
"""

from __future__ import annotations

from typing import Any

import pytest
from builders import CallerIssuer, Clock, config_doc
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@pytest.fixture
def doc() -> dict[str, Any]:
    return config_doc()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def ci(rsa_key, ec_key) -> CallerIssuer:
    return CallerIssuer(rsa_key=rsa_key, ec_key=ec_key)
