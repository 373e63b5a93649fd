"""Wiring for the Lambda functions: settings from the environment, clients, cached state.

Everything here is built once per container, at module scope of the handler that needs it.
Each builder imports only what its function uses, so discovery never imports boto3. A function
makes one boto3 session and every client it uses comes from it: a session per client would load
botocore's data (endpoints, models) again each time, which is most of a cold start.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .errors import ServerError

if TYPE_CHECKING:
    from .config import Config


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


def session():
    """A boto3 session: one per container, passed to every builder below that makes a client."""
    import boto3

    return boto3.session.Session()


def store(boto3_session=None):
    from .store import Store

    return Store((boto3_session or session()).client("dynamodb"), os.environ["TABLE_NAME"])


def signing_key_arns() -> frozenset[str]:
    """The KMS keys this stack created (SIGNING_KEY_ARNS, comma-separated): the only ones trusted."""
    return frozenset(arn.strip() for arn in os.environ.get("SIGNING_KEY_ARNS", "").split(",") if arn.strip())


def key_ring(source=None):
    from .keys import KeyRing

    # Unset means no trusted key at all: nothing is published or signed (fail closed, 503).
    return KeyRing(source or store(), time.time, key_arns=signing_key_arns())


def load_config(source) -> Config:
    from . import config as config_module

    item = source.get_config()
    if item is None:
        raise ServerError("no configuration has been applied (oidc-broker apply FILE)", "no_config")
    try:
        return config_module.parse(item["document"], item["source"], allow_loopback_http=allow_loopback_http())
    except config_module.ConfigError as e:
        # The operator reads what is wrong in the log; the caller learns only that it is the broker's fault.
        raise ServerError("the applied configuration is invalid", "invalid_config",
                          log={"config_source": e.source, "config_problems": [f"{p}: {r}" for p, r in e.problems][:50]}) from e


def broker(source=None, kms=None, boto3_session=None):
    """The Broker: configuration, caller key sets, key ring and KMS signer over one session."""
    from . import config as config_module
    from .callers import HttpFetcher, IssuerKeys
    from .keys import KmsSigner
    from .minting import Broker

    if source is None or kms is None:
        boto3_session = boto3_session or session()
    source = source or store(boto3_session)
    kms = kms or boto3_session.client("kms")
    return Broker(
        config=config_module.ConfigCache(lambda: load_config(source), time.time).get,
        issuer_keys=IssuerKeys(HttpFetcher(allow_loopback_http=allow_loopback_http()), time.time, shared=source),
        key_ring=key_ring(source),
        signer=KmsSigner(kms),
        store=source,
        clock=time.time,
    )


def exchange(cloud: str, boto3_session=None):
    """The exchange for `cloud` (a name in clouds.CLOUDS): the broker, the cloud's exchanger and the
    encrypted credential cache, every client from one session."""
    from .cache import CredentialCache
    from .clouds import CLOUDS
    from .exchange import Exchange

    description = CLOUDS[cloud]
    if description.exchanger is None:
        raise ValueError(f"cloud {cloud!r} has no exchanger")
    boto3_session = boto3_session or session()
    source = store(boto3_session)
    kms = boto3_session.client("kms")
    return Exchange(
        broker=broker(source, kms),
        exchanger=description.exchanger(boto3_session),
        cache=CredentialCache(source, kms, os.environ["CACHE_KEY_ID"], time.time),
    )
