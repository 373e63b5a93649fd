"""Tests of tools/oidc_broker_cli/ (a package: its test names mirror module names used elsewhere)."""
