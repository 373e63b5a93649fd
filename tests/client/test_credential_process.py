"""`oidc-broker credential-process` against local mode: AWS's credential_process JSON, and the cache that
lets a job's one CI token serve every `aws` command until half the credentials' lifetime."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import datetime

import boto3
from clientrun import MAIN, PRODUCTION

from oidc_broker_client.cache import EXPIRY_MARGIN


def process(client, local, target="default/prod-deploy", *extra):
    return client("credential-process", "--url", local.base_url, "--target", target, *extra)


def expiry(output: dict) -> float:
    return datetime.fromisoformat(output["Expiration"].replace("Z", "+00:00")).timestamp()


def cache_files(client):
    return list((client.home / ".cache" / "oidc-broker").glob("*.json"))


def test_it_prints_credential_process_json_that_aws_accepts_as_the_role(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**PRODUCTION)
    ran = process(client, local)
    assert ran.code == 0, ran.err
    output = json.loads(ran.out)
    assert set(output) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert output["Version"] == 1 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", output["Expiration"])
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=local.aws_endpoint,
                       aws_access_key_id=output["AccessKeyId"], aws_secret_access_key=output["SecretAccessKey"],
                       aws_session_token=output["SessionToken"])
    assert ":assumed-role/deploy/" in sts.get_caller_identity()["Arn"]


def test_a_second_call_is_served_from_the_owner_only_cache_without_spending_a_token(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**PRODUCTION)
    first = process(client, local)
    second = process(client, local)  # the same CI token: the broker would refuse it as already used
    assert first.code == second.code == 0, second.err
    assert second.out == first.out
    directory = client.home / ".cache" / "oidc-broker"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [entry] = cache_files(client)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_past_half_the_lifetime_new_credentials_are_fetched(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**PRODUCTION)
    first = json.loads(process(client, local).out)
    client.now += (expiry(first) - client.now) * 0.5 + 1
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**PRODUCTION)
    ran = process(client, local)
    assert ran.code == 0, ran.err
    # The broker's own cache serves the same role credentials; what matters is that it was asked:
    # the new CI token is now spent for this target.
    again = process(client, local, "default/prod-deploy", "--no-cache")
    assert again.code == 1 and "already used" in again.err


def test_when_the_refresh_is_refused_as_a_replay_the_cached_credentials_serve_while_still_good(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**PRODUCTION)
    first = process(client, local)
    client.now += (expiry(json.loads(first.out)) - client.now) * 0.5 + 1  # refresh due; the same token
    ran = process(client, local)
    assert ran.code == 0 and ran.out == first.out


def test_credentials_near_their_expiry_are_never_served(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**PRODUCTION)
    first = json.loads(process(client, local).out)
    client.now = expiry(first) - EXPIRY_MARGIN + 1  # the refresh fails (the token is spent): nothing is served
    ran = process(client, local)
    assert ran.code == 1 and ran.out == ""
    assert "already used" in ran.err


def test_a_cache_entry_anyone_else_can_read_is_not_trusted(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**PRODUCTION)
    assert process(client, local).code == 0
    [entry] = cache_files(client)
    os.chmod(entry, 0o644)
    ran = process(client, local)  # so the broker is asked again, and refuses the spent token
    assert ran.code == 1 and "already used" in ran.err


def test_a_feed_target_is_refused_with_what_to_name_instead(local, client):
    client.env["OIDC_BROKER_ID_TOKEN"] = local.ci_token(**MAIN)
    ran = process(client, local, "default/prod-ecr")
    assert ran.code == 1 and "serves AWS account targets" in ran.err and "registry credentials (a feed)" in ran.err
