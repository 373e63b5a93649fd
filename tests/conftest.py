"""Shared test settings: tests never reach a real AWS account."""

import os

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_metrics_carry_over():
    """Powertools keeps metrics, dimensions and metadata in class-level state shared by every
    `Metrics()`; a test that adds metrics without flushing would hand them to the next test's
    handler. Each test starts and ends with none (as each Lambda invocation does)."""
    yield
    import sys

    if "aws_lambda_powertools.metrics" in sys.modules:
        from aws_lambda_powertools import Metrics

        Metrics().clear_metrics()
