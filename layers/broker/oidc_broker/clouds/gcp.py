"""Google Cloud: a broker token in, a Google access token or Artifact Registry / GCR docker credentials out.

Workload identity federation with google-auth's `identity_pool.Credentials`: the broker token is
the subject token (`urn:ietf:params:oauth:token-type:jwt`) exchanged at Google's STS for a
federated access token, then, when the target names a `service_account`, traded at IAM
Credentials' generateAccessToken for that account's token with the target's `token_lifetime`.

How long the credentials live is decided by the token we present: Google gives a directly
federated token `min(exp - now, 3600)` of it, so a 10-minute broker token would yield a
10-minute Google token. The exchanger therefore asks the exchange (`token_lifetime`) for a
broker token living the credentials' lifetime (at most one hour); with impersonation the service
account's `token_lifetime` governs and the broker token only needs to live for the exchange.

Errors: every answer is read from the HTTP response google-auth received (a recording
transport), not from google-auth's exception text, so STS's `invalid_grant` variants,
`unauthorized_client`, `invalid_target` and IAM Credentials' PERMISSION_DENIED are told apart and
each names what the broker sent. Propagation delays (a new pool, provider or IAM binding takes up
to minutes), Google's own 5xx and lost connections are retried a bounded number of times. Never
logs, returns or raises the broker token or an access token.

`CLOUD` describes Google Cloud to the rest of the broker: a target's `gcp:` settings, the default
audience, the 127-byte `google.subject` limit, and the provider and IAM binding a target needs
(`oidc-broker trust-policy gcp`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..checks import seconds_between
from ..errors import AccessDenied, CloudError, InvalidTarget, Throttled
from . import Backoff, Cloud, Credentials, Request, Retry, Setting, TrustSetupError, cloud_message, refresh_at

PROVIDER = "gcp"
DOCKER_USERNAME = "oauth2accesstoken"
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
STS_ENDPOINT = "https://sts.googleapis.com/v1/token"
IAMCREDENTIALS_ENDPOINT = "https://iamcredentials.googleapis.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Where local mode (or a private endpoint) points every target that names no endpoint of its own.
STS_ENDPOINT_ENV = "GCP_STS_ENDPOINT"
IAMCREDENTIALS_ENDPOINT_ENV = "GCP_IAMCREDENTIALS_ENDPOINT"
# A directly federated token lives at most this long; a service account's token too, unless the
# organisation policy constraints/iam.allowServiceAccountCredentialLifetimeExtension allows 12 h.
MAX_FEDERATED_LIFETIME = 3600
MAX_LIFETIME = 43200
TIMEOUT = 5.0  # seconds per HTTP call: well inside the function's timeout, whatever google-auth's default
RETRY_AFTER = 2
ORG_POLICY = "constraints/iam.allowServiceAccountCredentialLifetimeExtension"

_PROVIDER = re.compile(
    r"projects/(\d+)/locations/global/workloadIdentityPools/([a-z0-9-]{4,32})/providers/([a-z0-9-]{4,32})"
)
_SERVICE_ACCOUNT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com")
# Artifact Registry (<location>-docker.pkg.dev) and Container Registry (gcr.io and its regional hosts).
_REGISTRY = re.compile(r"[a-z][a-z0-9-]{1,40}-docker\.pkg\.dev|(?:(?:us|eu|asia)\.)?gcr\.io")
_SCOPE = re.compile(r"https://www\.googleapis\.com/auth/[a-z0-9._/-]{1,100}")
_ENDPOINT = re.compile(r"https://[a-z0-9.-]+(?::\d{1,5})?(?:/[\w./-]*)?")

# Worth another try: Google's own failures, throttling, and what a propagation delay looks like.
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
ISSUER_UNREACHABLE = "Error connecting to the given credential's issuer"


def _scopes(value: object) -> tuple[str, ...] | None:
    """A scope URL, a space-separated string of them, or a list: normalised to a tuple."""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or len(items) > 20:
        return None
    if not all(isinstance(s, str) and _SCOPE.fullmatch(s) for s in items):
        return None
    return tuple(dict.fromkeys(items))


def default_audience(settings: Mapping[str, Any]) -> str | None:
    # Google accepts the provider's full resource name as the audience when no allowedAudiences
    # are set on the provider; without a provider the target must name its audience.
    provider = settings.get("workload_identity_provider")
    return "https://iam.googleapis.com/" + provider if provider else None


# -- the transport: bounded time, and a record of what Google answered ---------------------------

@dataclass(frozen=True)
class Answer:
    url: str
    status: int
    body: str = field(repr=False)


class RecordingTransport:
    """A google-auth transport that bounds each call's time and records each answer (status and
    body), so refusals are read from what Google sent, whatever exception google-auth made of it."""

    def __init__(self, inner: Callable[..., Any], timeout: float | None = None):
        self._inner = inner
        self._timeout = timeout or TIMEOUT
        self.answers: list[Answer] = []

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        response = self._inner(url=url, method=method, body=body, headers=headers,
                               timeout=min(timeout or self._timeout, self._timeout), **kwargs)
        data = response.data.decode("utf-8", "replace") if hasattr(response.data, "decode") else str(response.data)
        self.answers.append(Answer(url, int(response.status), data))
        return response


def requests_transport() -> Callable[[], Callable[..., Any]]:
    """google-auth's requests transport over one requests session (imported here: cold start)."""
    import google.auth.transport.requests
    import requests

    session = requests.Session()
    return lambda: google.auth.transport.requests.Request(session)


# -- what went wrong -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """One failed attempt: the answer that ended it (None: no answer at all) and which service gave it."""

    service: str  # "sts", "iamcredentials", or "" (no answer)
    status: int
    code: str  # STS: the OAuth error; IAM Credentials: the status (PERMISSION_DENIED)
    message: str
    error: str = ""  # the exception's type, when there was no answer

    @property
    def retryable(self) -> bool:
        if not self.service:
            return True  # a timeout or a lost connection
        if self.status in TRANSIENT_STATUS:
            return True
        # What a pool, provider or binding created moments ago looks like until it has propagated,
        # and Google failing to fetch our keys this time.
        return (self.code in ("invalid_target", "PERMISSION_DENIED")
                or (self.code == "invalid_grant" and ISSUER_UNREACHABLE in self.message))


def _failure(transport: RecordingTransport, error: Exception, sts_url: str) -> Failure:
    answer = next((a for a in reversed(transport.answers) if a.status != 200), None)
    if answer is None and transport.answers:  # Google answered 200 with a body google-auth could not read
        last = transport.answers[-1]
        return Failure("sts" if last.url == sts_url else "iamcredentials", 200, "unreadable",
                       "an answer the broker cannot read")
    if answer is None:
        return Failure("", 0, "", "", type(error).__name__)
    service = "sts" if answer.url == sts_url else "iamcredentials"
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    code, message = "", ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):  # OAuth: STS
        code, message = body["error"], str(body.get("error_description") or "")
    elif isinstance(body, dict) and isinstance(body.get("error"), dict):  # Google API error
        code = str(body["error"].get("status") or "")
        message = str(body["error"].get("message") or "")
    return Failure(service, answer.status, code, cloud_message(message))


# -- the exchanger -------------------------------------------------------------------------------

@dataclass
class GcpExchanger:
    transport: Callable[[], Callable[..., Any]]  # a fresh google-auth transport callable
    credentials: Callable[..., Any]  # identity_pool.Credentials
    supplier: type  # identity_pool.SubjectTokenSupplier
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5))
    clock: Callable[[], float] = time.time
    sts_endpoint: str = STS_ENDPOINT
    iamcredentials_endpoint: str = IAMCREDENTIALS_ENDPOINT
    provider: str = PROVIDER

    def token_lifetime(self, target: Any) -> int | None:
        """Directly federated, the credentials live as long as the broker token: mint it that long.
        With impersonation the service account's token_lifetime governs: the target's own lifetime."""
        if target.setting("service_account"):
            return None
        return min(int(target.setting("token_lifetime") or MAX_FEDERATED_LIFETIME), MAX_FEDERATED_LIFETIME)

    def exchange(self, request: Request) -> Credentials:
        target = request.target
        provider = target.setting("workload_identity_provider")
        account = target.setting("service_account")
        lifetime = int(target.setting("token_lifetime") or MAX_FEDERATED_LIFETIME)
        if not provider:
            raise InvalidTarget(f"target {target.ref!r} has no gcp.workload_identity_provider: it cannot be exchanged "
                                "for Google Cloud credentials", "incomplete_target")
        if target.kind == "feed" and not target.setting("registry"):
            raise InvalidTarget(f"target {target.ref!r} has no gcp.registry (e.g. europe-docker.pkg.dev or gcr.io)",
                                "incomplete_target")
        if not account and lifetime > MAX_FEDERATED_LIFETIME:
            raise InvalidTarget(
                f"target {target.ref!r} asks for gcp.token_lifetime {lifetime}s without gcp.service_account: a directly "
                f"federated token lives at most {MAX_FEDERATED_LIFETIME}s; name a service account to impersonate",
                "gcp_lifetime_needs_service_account")
        scopes = list(target.setting("scopes") or (CLOUD_PLATFORM,))
        sts_url = target.setting("sts_endpoint") or self.sts_endpoint
        iam_base = (target.setting("iamcredentials_endpoint") or self.iamcredentials_endpoint).rstrip("/")
        impersonation_url = f"{iam_base}/v1/projects/-/serviceAccounts/{account}:generateAccessToken" if account else None

        token = request.token

        class Supplier(self.supplier):  # type: ignore[misc, name-defined]
            def get_subject_token(self, context: Any, http: Any) -> str:
                # The broker token minted for this exchange, moments ago (google-auth caches nothing).
                return token

        def attempt() -> Credentials:
            transport = RecordingTransport(self.transport())
            credentials = self.credentials(
                audience="//iam.googleapis.com/" + provider,
                subject_token_type=SUBJECT_TOKEN_TYPE,
                token_url=sts_url,
                subject_token_supplier=Supplier(),
                service_account_impersonation_url=impersonation_url,
                service_account_impersonation_options={"token_lifetime_seconds": lifetime} if account else {},
                scopes=scopes,
            )
            try:
                credentials.refresh(transport)
            except Exception as e:
                failure = _failure(transport, e, sts_url)
                error = self._error(failure, request, provider, account, lifetime)
                raise (Retry(error) if failure.retryable else error) from None
            return self._credentials(request, transport, credentials, scopes, sts_url)

        return self.backoff.call(attempt)

    def _credentials(self, request: Request, transport: RecordingTransport, credentials: Any, scopes: list[str],
                     sts_url: str) -> Credentials:
        now = int(self.clock())
        expires_at = _expiry(transport.answers[-1] if transport.answers else None, sts_url, now)
        access_token = getattr(credentials, "token", None)
        if not access_token or expires_at is None:
            raise CloudError("Google answered with an access token the broker cannot read", "gcp_unreadable_token")
        target = request.target
        if target.kind == "account":
            fields = {"access_token": access_token, "token_type": "Bearer", "scope": " ".join(scopes)}
        else:
            fields = {"registry": target.setting("registry"), "username": DOCKER_USERNAME, "password": access_token}
        return Credentials(fields=fields, issued_at=now, expires_at=expires_at)

    # -- refusals --------------------------------------------------------------------------------
    def _error(self, failure: Failure, request: Request, provider: str, account: str | None,
               lifetime: int) -> Exception:
        target = request.target
        sent = (f"the broker's token (issuer {request.issuer}, subject {request.subject!r}, "
                f"audience {target.audience!r})")
        said = (f"(Google {failure.code or 'HTTP ' + str(failure.status)}: {failure.message})" if failure.service
                else f"({failure.error})")
        where = f"provider {provider}"
        if not failure.service:
            return Throttled(f"Google Cloud could not be reached or did not answer in time for {where} {said}; "
                             "try again shortly",
                             "gcp_unavailable", RETRY_AFTER)
        if failure.status in TRANSIENT_STATUS:
            who = "Google STS" if failure.service == "sts" else "IAM Credentials"
            return Throttled(f"{who} is unavailable for {where} {said}; try again shortly", "gcp_unavailable",
                             RETRY_AFTER)
        if failure.service == "sts":
            return self._sts_error(failure, sent, said, request, provider)
        return self._iam_error(failure, sent, said, request, provider, account or "", lifetime)

    def _sts_error(self, failure: Failure, sent: str, said: str, request: Request, provider: str) -> Exception:
        code, message = failure.code, failure.message.lower()
        target = request.target
        if code == "invalid_grant" and "audience" in message:
            return AccessDenied(
                f"Google STS refused {sent} for {provider} {said}: the provider's allowedAudiences must include "
                f"{target.audience!r} (or be empty, when the audience is the provider's resource name)",
                "gcp_audience_mismatch")
        if code == "invalid_grant" and "issuer" in message and ISSUER_UNREACHABLE.lower() not in message:
            return CloudError(
                f"Google STS refused {sent} for {provider} {said}: the provider's oidc.issuerUri must be exactly "
                f"{request.issuer}", "gcp_issuer_mismatch")
        if code == "invalid_grant" and ISSUER_UNREACHABLE.lower() in message:
            return CloudError(
                f"Google STS could not obtain the key that signed {sent} for {provider} {said}: Google must reach "
                f"{request.issuer}/.well-known/openid-configuration and its jwks_uri over public HTTPS, or the "
                "provider's uploaded jwksJson must hold the broker's current keys (`oidc-broker keys jwks` prints "
                "them)", "gcp_issuer_unreachable")
        if code == "invalid_grant" and "signature" in message:
            return CloudError(
                f"Google STS could not verify the signature of {sent} for {provider} {said}: if the provider holds "
                "an uploaded jwksJson, upload the broker's current keys (`oidc-broker keys jwks`)", "gcp_bad_signature")
        if code == "invalid_grant" and ("stale" in message or "expired" in message or "future" in message):
            return CloudError(f"Google STS found {sent} outside its validity for {provider} {said}: check the "
                              "broker's clock", "gcp_stale_token")
        if code == "unauthorized_client" and "127" in message:
            return CloudError(
                f"Google STS refused {sent} for {provider} {said}: a mapped attribute exceeds Google's 127-byte "
                "limit; map google.subject to assertion.sub (broker subjects fit 127 bytes)", "gcp_attribute_too_long")
        if code == "unauthorized_client":
            return AccessDenied(
                f"Google STS refused {sent} for {provider} {said}: the provider's attributeCondition must admit "
                f"subject {request.subject!r} (`oidc-broker trust-policy gcp --target {target.ref}` prints one)",
                "gcp_attribute_condition")
        if code == "invalid_target":
            return CloudError(
                f"Google STS does not know {provider}, to which it was sent {sent} {said}: the workload identity "
                "pool or provider is missing, "
                "disabled or deleted (one created in the last few minutes may still be propagating: try again "
                "shortly)", "gcp_invalid_target")
        if failure.status >= 500:
            return CloudError(f"Google STS failed for {provider} {said}, an error that is not transient: retrying "
                              "will not help", "gcp_sts_error")
        return CloudError(f"Google STS refused {sent} for {provider} {said}", "gcp_sts_error")

    def _iam_error(self, failure: Failure, sent: str, said: str, request: Request, provider: str, account: str,
                   lifetime: int) -> Exception:
        m = _PROVIDER.fullmatch(provider)
        pool = f"projects/{m.group(1)}/locations/global/workloadIdentityPools/{m.group(2)}" if m else provider
        member = f"principal://iam.googleapis.com/{pool}/subject/{request.subject}"
        if "lifetime" in failure.message.lower() and lifetime > MAX_FEDERATED_LIFETIME:
            return CloudError(
                f"IAM Credentials refused a {lifetime}s token for {account} {said}: lifetimes over "
                f"{MAX_FEDERATED_LIFETIME}s need the organisation policy {ORG_POLICY} to list the service account; "
                f"lower gcp.token_lifetime to {MAX_FEDERATED_LIFETIME}s or less otherwise", "gcp_lifetime_not_allowed")
        if failure.code == "PERMISSION_DENIED" or failure.status == 403:
            return AccessDenied(
                f"service account {account} may not be impersonated with {sent} {said}: grant "
                f"roles/iam.workloadIdentityUser on it to {member} (`oidc-broker trust-policy gcp --target "
                f"{request.target.ref}` prints the binding)", "gcp_impersonation_denied")
        if failure.code == "NOT_FOUND" or failure.status == 404:
            return CloudError(f"IAM Credentials does not know service account {account} {said}",
                              "gcp_service_account_not_found")
        if failure.status >= 500:
            return CloudError(f"IAM Credentials failed for {account} {said}, an error that is not transient: "
                              "retrying will not help", "gcp_iamcredentials_error")
        return CloudError(f"IAM Credentials refused a token for {account} {said}", "gcp_iamcredentials_error")


def _expiry(answer: Answer | None, sts_url: str, now: int) -> int | None:
    """When the token in Google's last answer expires: STS's expires_in, IAM Credentials' expireTime."""
    if answer is None or answer.status != 200:
        return None
    try:
        body = json.loads(answer.body)
        if answer.url == sts_url:
            return now + int(body["expires_in"])
        expire = datetime.strptime(body["expireTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return int(expire.timestamp())
    except (ValueError, KeyError, TypeError):
        return None


def exchanger(session: Any = None) -> GcpExchanger:
    """The Google Cloud exchanger (google-auth is imported here: a cold-start cost only this function pays)."""
    from google.auth import identity_pool

    return GcpExchanger(
        transport=requests_transport(),
        credentials=identity_pool.Credentials,
        supplier=identity_pool.SubjectTokenSupplier,
        sts_endpoint=os.environ.get(STS_ENDPOINT_ENV) or STS_ENDPOINT,
        iamcredentials_endpoint=os.environ.get(IAMCREDENTIALS_ENDPOINT_ENV) or IAMCREDENTIALS_ENDPOINT,
    )


# -- the cloud-side trust ------------------------------------------------------------------------

def attribute_condition(subjects: list[str]) -> str:
    """A CEL condition admitting exactly `subjects` (a `*` stands for a value a caller's claim chooses:
    a slug, which never holds `:`, so the prefix before it cannot reach into another subject part)."""
    parts = []
    for s in subjects:
        if "*" in s:
            prefix, _, rest = s.partition("*")
            parts.append(f"assertion.sub.startsWith({json.dumps(prefix)})" if not rest.strip("*")
                         else f"assertion.sub.matches({json.dumps('^' + re.escape(s).replace(chr(92) + '*', '[a-z0-9._-]+') + '$')})")
        else:
            parts.append(f"assertion.sub == {json.dumps(s)}")
    return " || ".join(parts)


def target_trust_setup(issuer: str, target: Any, subjects: list[str]) -> dict[str, Any]:
    """The workload identity provider a target needs (gcloud), and the IAM binding for its service account."""
    provider = target.setting("workload_identity_provider")
    m = _PROVIDER.fullmatch(provider or "")
    if not m:
        raise TrustSetupError(f"target {target.ref!r} names no gcp.workload_identity_provider")
    number, pool, name = m.groups()
    condition = attribute_condition(subjects)
    audiences = [] if target.audience in ("https://iam.googleapis.com/" + provider, "//iam.googleapis.com/" + provider) \
        else [target.audience]
    create = (f"gcloud iam workload-identity-pools providers create-oidc {name} --project={number} "
              f"--location=global --workload-identity-pool={pool} --issuer-uri={issuer} "
              "--attribute-mapping=google.subject=assertion.sub "
              f"--attribute-condition='{condition}'")
    if audiences:
        create += f" --allowed-audiences={','.join(audiences)}"
    setup: dict[str, Any] = {
        "provider": {
            "name": provider,
            "oidc": {"issuerUri": issuer, "allowedAudiences": audiences},
            "attributeMapping": {"google.subject": "assertion.sub"},
            "attributeCondition": condition,
        },
        "commands": [create],
    }
    account = target.setting("service_account")
    pool_name = f"projects/{number}/locations/global/workloadIdentityPools/{pool}"
    if account:
        members = [f"principal://iam.googleapis.com/{pool_name}/subject/{s}" for s in subjects if "*" not in s]
        if any("*" in s for s in subjects):
            # A caller's claim chooses part of the subject: the pool, narrowed by the provider's condition.
            members.append(f"principalSet://iam.googleapis.com/{pool_name}/*")
        setup["bindings"] = [{"serviceAccount": account, "role": "roles/iam.workloadIdentityUser", "members": members}]
        setup["commands"] += [f"gcloud iam service-accounts add-iam-policy-binding {account} "
                              f"--role=roles/iam.workloadIdentityUser --member='{member}'" for member in members]
    return setup


def check_config(config: Any) -> list[tuple[str, str]]:
    """What a Google Cloud target needs across its settings: a feed its registry (docker credentials
    name it), and a directly federated target (no service account) a token_lifetime Google can
    give, at most one hour."""
    problems = []
    for space in config.spaces.values():
        for target in space.targets.values():
            if target.provider != PROVIDER:
                continue
            if target.kind == "feed" and not target.setting("registry"):
                problems.append((target.ref, "a feed target needs registry: the docker registry its credentials are "
                                             "for (<location>-docker.pkg.dev, gcr.io, us.gcr.io, eu.gcr.io or "
                                             "asia.gcr.io)"))
            lifetime = target.setting("token_lifetime")
            if not target.setting("service_account") and lifetime and lifetime > MAX_FEDERATED_LIFETIME:
                problems.append((target.ref, f"token_lifetime {lifetime}s needs service_account: a directly federated "
                                             f"token lives at most {MAX_FEDERATED_LIFETIME}s"))
    return problems


def jwks_for_upload(jwks: Mapping[str, Any]) -> dict[str, Any]:
    """A JWKS as a provider's `jwksJson` accepts it: the public members only, no x5c/x5t (Google refuses them)."""
    allowed = ("kty", "kid", "use", "alg", "n", "e", "crv", "x", "y")
    return {"keys": [{k: v for k, v in key.items() if k in allowed} for key in jwks.get("keys", []) if isinstance(key, dict)]}


CLOUD = Cloud(
    name=PROVIDER,
    title="Google Cloud",
    settings={
        "workload_identity_provider": Setting(
            _PROVIDER, "projects/N/locations/global/workloadIdentityPools/P/providers/X (N the project number)"),
        "service_account": Setting(_SERVICE_ACCOUNT, "a service account e-mail"),
        # Impersonated: up to 12 h with the organisation policy, 1 h without; directly federated: 1 h at most.
        "token_lifetime": Setting(seconds_between(300, MAX_LIFETIME), "a duration from 300s to 43200s (e.g. 3600, 1h)",
                                  default=MAX_FEDERATED_LIFETIME),
        "scopes": Setting(_scopes, "a list of https://www.googleapis.com/auth/... scopes", default=(CLOUD_PLATFORM,)),
        "registry": Setting(_REGISTRY, "<location>-docker.pkg.dev, gcr.io, us.gcr.io, eu.gcr.io or asia.gcr.io "
                                       "(feed targets only)", kinds=("feed",)),
        "sts_endpoint": Setting(_ENDPOINT, "an https:// URL of Google's STS token endpoint"),
        "iamcredentials_endpoint": Setting(_ENDPOINT, "an https:// URL of IAM Credentials"),
        "refresh_at": refresh_at(0.5),
    },
    default_audience=default_audience,
    # Google maps the subject to `google.subject`, which holds at most 127 bytes.
    max_subject_bytes=127,
    trust_setup=target_trust_setup,
    exchanger=exchanger,
    check_config=check_config,
)
