"""Tests of tools/oidc_broker_cli/local/."""
