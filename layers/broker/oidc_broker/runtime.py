"""Wiring for the Lambda functions: settings from the environment, clients, cached state.

Everything here is built once per container, at module scope of the handler that needs it.
Each builder imports only what its function uses, so discovery never imports boto3.
"""

from __future__ import annotations

import os
import time

from . import config as config_module
from .errors import ServerError


def issuer_url(request_domain: str | None) -> str:
    """The issuer URL: the deployment's setting, or the API's own domain when none is set."""
    configured = os.environ.get("ISSUER_URL", "").rstrip("/")
    if configured:
        return configured
    if not request_domain:
        raise ServerError("ISSUER_URL is not set and the request names no domain", "issuer_unknown")
    return f"https://{request_domain}"


def allow_loopback_http() -> bool:
    # Set only by local mode: http:// issuers on loopback hosts. Loopback is unreachable in Lambda.
    return os.environ.get("BROKER_ALLOW_LOOPBACK_HTTP", "") == "true"


def _clients(*services: str):
    import boto3

    session = boto3.session.Session()
    return [session.client(s) for s in services]


def store():
    from .store import Store

    (dynamodb,) = _clients("dynamodb")
    return Store(dynamodb, os.environ["TABLE_NAME"])


def signing_key_arns() -> frozenset[str]:
    """The KMS keys this stack created (SIGNING_KEY_ARNS, comma-separated): the only ones trusted."""
    return frozenset(arn.strip() for arn in os.environ.get("SIGNING_KEY_ARNS", "").split(",") if arn.strip())


def key_ring(source=None):
    from .keys import KeyRing

    # Unset means no trusted key at all: nothing is published or signed (fail closed, 503).
    return KeyRing(source or store(), time.time, key_arns=signing_key_arns())


def load_config(source) -> config_module.Config:
    item = source.get_config()
    if item is None:
        raise ServerError("no configuration has been applied (oidc-broker apply FILE)", "no_config")
    try:
        return config_module.parse(item["document"], item["source"], allow_loopback_http=allow_loopback_http())
    except config_module.ConfigError as e:
        # The operator reads what is wrong in the log; the caller learns only that it is the broker's fault.
        raise ServerError("the applied configuration is invalid", "invalid_config",
                          log={"config_source": e.source, "config_problems": [f"{p}: {r}" for p, r in e.problems][:50]}) from e


def broker(source=None, kms=None):
    from .callers import HttpFetcher, IssuerKeys
    from .keys import KmsSigner
    from .minting import Broker

    source = source or store()
    (kms,) = (kms,) if kms is not None else _clients("kms")
    return Broker(
        config=config_module.ConfigCache(lambda: load_config(source), time.time).get,
        caller_keys=IssuerKeys(HttpFetcher(allow_loopback_http=allow_loopback_http()), time.time, shared=source),
        key_ring=key_ring(source),
        signer=KmsSigner(kms),
        store=source,
        clock=time.time,
    )


def exchange_aws():
    """The AWS exchange: the broker, the AWS exchanger and the encrypted credential cache."""
    from .cache import CredentialCache
    from .clouds.aws import AwsExchanger, boto3_clients
    from .exchange import Exchange

    source = store()
    (kms,) = _clients("kms")
    return Exchange(
        broker=broker(source, kms),
        exchanger=AwsExchanger(boto3_clients(), default_region=os.environ.get("AWS_REGION")),
        cache=CredentialCache(source, kms, os.environ["CACHE_KEY_ID"], time.time),
    )
