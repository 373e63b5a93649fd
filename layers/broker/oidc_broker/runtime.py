"""Wiring for the Lambda functions: settings from the environment, clients, cached state.

Everything here is built once per container, at module scope of the handler that needs it.
Each builder imports only what its function uses, so discovery never imports boto3, and the JWKS
and token functions reach DynamoDB and KMS through the lean awsjson client. A function that needs
boto3 makes one session and every client it uses comes from it: a session per client would load
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


def seal(kms):
    """The stack's key ring seal (KEY_RING_SEAL_KEY, the ARN of its HMAC key).

    Unset means nothing verifies: nothing is published or signed (fail closed, 503)."""
    from .keys import Seal

    return Seal(kms, os.environ.get("KEY_RING_SEAL_KEY", "").strip())


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(name: str, default: int) -> int:
    """A duration variable: seconds, or a number with s, m, h or d (the template sets `90d`)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    number, unit = value.rstrip("smhd"), value[len(value.rstrip("smhd")):]
    if not number.isdigit() or unit not in _DURATION_UNITS or int(number) * _DURATION_UNITS[unit] <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive number of seconds, or with s, m, h or d")
    return int(number) * _DURATION_UNITS[unit]


def jwks_max_age() -> int:
    """JWKS_MAX_AGE: the JWKS response's Cache-Control max-age (seconds)."""
    from .keys import JWKS_MAX_AGE

    return _seconds("JWKS_MAX_AGE", JWKS_MAX_AGE)


def ring_ttl() -> int:
    """KEY_RING_TTL: how long each function keeps the key ring in memory (seconds)."""
    from .keys import RING_TTL

    return _seconds("KEY_RING_TTL", RING_TTL)


def lifecycle():
    """The signing keys' lifecycle: KEY_ROTATION_PERIOD and KEY_ROTATION_MARGIN with the two caches.

    The one place these are read: the JWKS max-age, every key ring cache and the rotation plan follow it.
    """
    from .rotation import Lifecycle

    defaults = Lifecycle()
    return Lifecycle(period=_seconds("KEY_ROTATION_PERIOD", defaults.period), jwks_max_age=jwks_max_age(),
                     ring_ttl=ring_ttl(), margin=_seconds("KEY_ROTATION_MARGIN", defaults.margin))


def key_ring(source=None, kms=None, boto3_session=None):
    """The key ring as readers see it: sealed entries only, cached for the lifecycle's ring_ttl."""
    from .keys import KeyRing

    if source is None or kms is None:
        boto3_session = boto3_session or session()
    return KeyRing(source or store(boto3_session), time.time, ttl=ring_ttl(),
                   seal=seal(kms or boto3_session.client("kms")))


def published_jwks(dynamodb=None, kms=None):
    """The JWKS as the JWKS function serves it (keys.PublishedJwks): the ring's stored JWKS, read
    once per ring_ttl and verified by the stack's seal, over the table's and KMS's clients (the
    lean awsjson clients unless given: the JWKS function imports no boto3)."""
    from .keys import PublishedJwks
    from .store import Store

    if dynamodb is None or kms is None:
        from . import awsjson

        dynamodb, kms = dynamodb or awsjson.client("dynamodb"), kms or awsjson.client("kms")
    return PublishedJwks(Store(dynamodb, os.environ["TABLE_NAME"]), seal(kms), time.time, ttl=ring_ttl())


def rotation(boto3_session=None):
    """The key rotation: the ring, KMS and the key policy of the keys it creates, from the environment.

    KEY_POLICY_SIGNERS (comma-separated role ARNs that sign), KEY_POLICY_READERS (roles that read
    public keys) and KEY_POLICY_ROTATOR (the rotation function's role) name the principals;
    STACK_NAME tags each key.
    """
    from .rotation import NewKeys, Rotation, account_root, signing_key_policy

    def roles(name: str) -> list[str]:
        return [arn.strip() for arn in os.environ.get(name, "").split(",") if arn.strip()]

    # Unset, the rotation still reports and removes; creating a key then fails, saying what is missing.
    rotator = os.environ.get("KEY_POLICY_ROTATOR", "").strip()
    policy = signing_key_policy(account_root=account_root(rotator), signers=roles("KEY_POLICY_SIGNERS"),
                                readers=roles("KEY_POLICY_READERS"), rotator=rotator) if rotator else None
    boto3_session = boto3_session or session()
    kms = boto3_session.client("kms")
    return Rotation(store(boto3_session), kms, seal(kms), lifecycle(), time.time,
                    NewKeys(policy=policy, stack=os.environ.get("STACK_NAME", "").strip()))


def stored_config(source):
    """The applied configuration read from the table: the pointer each time it is called, a space
    only when named and changed (config.StoredConfig)."""
    from .config import StoredConfig

    return StoredConfig(source, allow_loopback_http=allow_loopback_http())


def load_config(source) -> Config:
    """The applied configuration, read once (the CLI and scheduled work; the functions keep a StoredConfig)."""
    return stored_config(source)()


def broker(source=None, kms=None, boto3_session=None):
    """The Broker: configuration, caller key sets, key ring and KMS signer.

    Given nothing (the token function), its table and KMS clients are the lean awsjson ones: a mint
    makes a few DynamoDB and KMS calls, and boto3's sessions and clients would be most of its cold
    start and of its CPU. Given a session (the exchange functions, which need boto3 for their
    clouds anyway), every client comes from it."""
    from . import config as config_module
    from .callers import HttpFetcher, IssuerKeys
    from .keys import KmsSigner
    from .minting import Broker

    if source is None and kms is None and boto3_session is None:
        from . import awsjson
        from .store import Store

        source, kms = Store(awsjson.client("dynamodb"), os.environ["TABLE_NAME"]), awsjson.client("kms")
    if source is None or kms is None:
        boto3_session = boto3_session or session()
    source = source or store(boto3_session)
    kms = kms or boto3_session.client("kms")
    return Broker(
        config=config_module.ConfigCache(stored_config(source), time.time).get,
        issuer_keys=IssuerKeys(HttpFetcher(allow_loopback_http=allow_loopback_http()), time.time, shared=source),
        key_ring=key_ring(source, kms),
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


def deployment_issuer(source) -> str:
    """The issuer URL with no request to derive it from (scheduled work): ISSUER_URL, else the one the
    stack recorded in its table at deploy time."""
    configured = os.environ.get("ISSUER_URL", "").rstrip("/")
    if configured:
        return configured
    deployment = source.get_deployment()
    if deployment is None:
        raise ServerError("ISSUER_URL is not set and the table records no deployment issuer", "issuer_unknown")
    return deployment["issuer"]


def refresh_policy():
    """The refresh's settings from the environment: REFRESH_SCHEDULE (the rule's rate expression),
    REFRESH_SEEN_WITHIN (seconds), REFRESH_CONCURRENCY; defaults where unset or unreadable."""
    from .refresh import DEFAULT_CONCURRENCY, DEFAULT_RATE, DEFAULT_SEEN_WITHIN, Policy, rate_seconds

    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() and int(value) > 0 else default

    return Policy(rate=rate_seconds(os.environ.get("REFRESH_SCHEDULE", "")) or DEFAULT_RATE,
                  seen_within=number("REFRESH_SEEN_WITHIN", DEFAULT_SEEN_WITHIN),
                  concurrency=number("REFRESH_CONCURRENCY", DEFAULT_CONCURRENCY))


class _SerialClients:
    """A boto3 session whose `client()` calls take turns: a Session is not safe to make clients from
    in several threads at once, and the refresh exchanges on a few threads."""

    def __init__(self, boto3_session):
        import threading

        self._session = boto3_session
        self._lock = threading.Lock()

    def client(self, *args, **kwargs):
        with self._lock:
            return self._session.client(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


def refresher(boto3_session=None):
    """The scheduled refresh: the applied configuration, the cache's entries and one Exchange per cloud
    (built when a target of it is first renewed), sharing the broker and the cache; one session."""
    import threading

    from .cache import CredentialCache
    from .clouds import CLOUDS
    from .exchange import Exchange
    from .refresh import Refresher

    boto3_session = boto3_session or session()
    source = store(boto3_session)
    kms = boto3_session.client("kms")
    shared_broker = broker(source, kms)
    cache = CredentialCache(source, kms, os.environ["CACHE_KEY_ID"], time.time)
    clients = _SerialClients(boto3_session)
    exchanges: dict[str, Exchange] = {}
    guard = threading.Lock()

    def exchange_for(cloud: str) -> Exchange:
        with guard:
            if cloud not in exchanges:
                description = CLOUDS[cloud]
                if description.exchanger is None:
                    raise ValueError(f"cloud {cloud!r} has no exchanger")
                exchanges[cloud] = Exchange(broker=shared_broker, exchanger=description.exchanger(clients), cache=cache)
            return exchanges[cloud]

    return Refresher(config=stored_config(source), issuer=lambda: deployment_issuer(source),
                     entries=source.cache_entries, exchange_for=exchange_for, clock=time.time,
                     policy=refresh_policy())
