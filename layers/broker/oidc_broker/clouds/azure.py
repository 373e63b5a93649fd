"""Azure: a broker token in, an Entra ID access token or ACR docker credentials out, no secret anywhere.

Microsoft Entra workload identity federation: azure-identity's `ClientAssertionCredential` for
the target's tenant and app registration (or user-assigned managed identity) presents a broker
token as the client assertion. Its callback mints a fresh token on every call (`Request.mint`):
Entra refuses an assertion outside its time window (AADSTS700024), so none is ever reused across
token requests. `account` targets get the access token for their scope; `feed` targets trade
the token for the registry scope at `https://<registry>/oauth2/exchange` for an ACR refresh
token, the docker password.

Entra's refusals (`error_codes`) become errors that name the issuer, subject and audience the
broker sent, what to create (`oidc-broker trust-policy azure`) and Entra's trace and correlation
IDs. AADSTS70021 (no matching federated credential) is retried briefly first: a new credential
takes seconds to minutes to propagate. Unreachable or failing services are retried a bounded
number of times, then 503 with Retry-After. Never logs, returns or raises a broker token, an
Entra token or a refresh token.

`CLOUD` describes Azure to the rest of the broker: a target's `azure:` settings, the audience
Entra expects, the federated credential a target needs, and the rule Entra's limit of 20
federated credentials per identity imposes on the whole configuration.

Local mode sets `AZURE_AUTHORITY_HOST` (azure-identity's own setting) to its Entra emulator,
`ACR_ENDPOINT_URL` to its ACR emulator and `REQUESTS_CA_BUNDLE` to a bundle trusting their CA.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AccessDenied, CloudError, InvalidTarget, Throttled
from . import Backoff, Cloud, Credentials, Request, Retry, Setting, TrustSetupError, cloud_message, refresh_at

PROVIDER = "azure"
AUDIENCE = "api://AzureADTokenExchange"  # exact case: what Entra's federated credentials expect
REGISTRY_SCOPE = "https://containerregistry.azure.net/.default"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
DOCKER_USERNAME = "00000000-0000-0000-0000-000000000000"  # ACR's username for a refresh token
MAX_FEDERATED_CREDENTIALS = 20  # per app registration or managed identity; no wildcards for our issuer
ASSERTION_LIFETIME = 300  # the broker token is an assertion used at once: it need not outlive that
RETRY_AFTER = 5

# Entra's codes for a federated credential that does not match, and what each means.
NO_MATCH = 70021
MISMATCH = {
    700211: "no federated credential names the issuer",
    700212: "no federated credential names the audience",
    700213: "no federated credential names the subject",
    7002138: "a federated credential names the subject in other letter case (Entra compares subjects "
             "case-sensitively)",
}
TIME_WINDOW = 700024
ALGORITHM = 5002738


# (tenant_id, client_id, assertion callback, authority host or None) -> a credential with get_token(scope)
CredentialFactory = Callable[[str, str, Callable[[], str], "str | None"], Any]
# (url, form) -> (HTTP status, JSON body or None); raises OSError for no answer at all
Post = Callable[[str, dict[str, str]], "tuple[int, Any]"]


def entra_credentials() -> CredentialFactory:
    """ClientAssertionCredential with our own retries (azure-core's off) and short deadlines."""
    from azure.identity import ClientAssertionCredential

    def credential(tenant_id: str, client_id: str, assertion: Callable[[], str], authority: str | None) -> Any:
        options: dict[str, Any] = {"retry_total": 0, "connection_timeout": 2, "read_timeout": 5}
        if authority:
            options["authority"] = authority  # else AZURE_AUTHORITY_HOST, else the public cloud
        return ClientAssertionCredential(tenant_id, client_id, assertion, **options)

    return credential


def requests_post() -> Post:
    import requests

    session = requests.Session()

    def post(url: str, form: dict[str, str]) -> tuple[int, Any]:
        try:
            response = session.post(url, data=form, timeout=(2, 5), allow_redirects=False)
        except requests.RequestException as e:
            raise OSError(type(e).__name__) from None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    return post


def entra_body(error: Exception) -> dict[str, Any]:
    """Entra's JSON error body from an azure-identity error, or {} when there is none."""
    response = getattr(error, "response", None)
    try:
        body = json.loads(response.text()) if response is not None else None
    except (ValueError, TypeError, AttributeError):
        body = None
    return body if isinstance(body, dict) else {}


def _status(error: Exception) -> int:
    return int(getattr(getattr(error, "response", None), "status_code", 0) or 0)


def _codes(body: dict[str, Any]) -> list[int]:
    codes = body.get("error_codes")
    return [c for c in codes if isinstance(c, int)] if isinstance(codes, list) else []


def _ids(body: dict[str, Any]) -> str:
    ids = [f"{label} {cloud_message(body[key], 80)}" for key, label in (("trace_id", "Trace ID"),
                                                                       ("correlation_id", "Correlation ID"))
           if isinstance(body.get(key), str) and body[key]]
    return f" (Entra {', '.join(ids)})" if ids else ""


def _said(body: dict[str, Any], error: Exception) -> str:
    if body.get("error"):
        first = str(body.get("error_description") or "").split("\n", 1)[0]
        return f"Entra answered {cloud_message(body['error'], 60)}: {cloud_message(first, 240)}"
    return f"Entra answered HTTP {_status(error)}" if _status(error) else f"no answer from Entra ({type(error).__name__})"


def _refresh_token_exp(token: str) -> int | None:
    """The `exp` of ACR's refresh token (a JWT the broker only reads; ACR verifies it)."""
    try:
        payload = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp")
    except (IndexError, ValueError, TypeError, AttributeError):
        return None
    return int(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def acr_host(registry: str) -> str:
    """The login server as docker names it: no scheme, no path."""
    return re.sub(r"^[a-z]+://", "", registry).split("/", 1)[0]


@dataclass
class AzureExchanger:
    credentials: CredentialFactory
    post: Post
    acr_endpoint: str | None = None  # where /oauth2/exchange is called instead of https://<registry>
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=4.0))
    # A new federated credential takes seconds to minutes to reach every Entra region.
    propagation: Backoff = field(default_factory=lambda: Backoff(attempts=4, base=2.0, cap=8.0))
    clock: Callable[[], float] = time.time
    provider: str = PROVIDER

    def token_lifetime(self, target: Any) -> int:
        return ASSERTION_LIFETIME

    def exchange(self, request: Request) -> Credentials:
        target = request.target
        tenant_id, client_id = target.setting("tenant_id"), target.setting("client_id")
        registry = target.setting("registry") if target.kind == "feed" else None
        missing = [f"azure.{name}" for name, value in (("tenant_id", tenant_id), ("client_id", client_id),
                                                      ("registry", registry if target.kind == "feed" else "-"))
                   if not value]
        if missing:
            raise InvalidTarget(f"target {target.ref!r} has no {' or '.join(missing)}: it cannot be exchanged for "
                                "Azure credentials", "incomplete_target")
        scope = REGISTRY_SCOPE if registry else target.setting("scope")
        token, expires_on = self._entra_token(request, tenant_id, client_id, scope)
        if not registry:
            return Credentials(fields={"access_token": token, "token_type": "Bearer", "scope": scope},
                               issued_at=int(self.clock()), expires_at=expires_on)
        return self._acr(request, registry, tenant_id, client_id, token, expires_on)

    # -- Entra -----------------------------------------------------------------------------------
    def _entra_token(self, request: Request, tenant_id: str, client_id: str, scope: str) -> tuple[str, int]:
        credential = self.credentials(tenant_id, client_id, request.fresh_token, request.target.setting("authority"))
        try:
            def attempt() -> Any:
                try:
                    return credential.get_token(scope)
                except Exception as e:
                    error = self._entra_error(e, request, tenant_id, client_id)
                    if isinstance(error, Throttled):
                        raise Retry(error) from None
                    raise error from None

            def propagated() -> Any:
                try:
                    return self.backoff.call(attempt)
                except AccessDenied as e:
                    if e.reason == "azure_no_federated_credential":
                        raise Retry(e) from None
                    raise

            access = self.propagation.call(propagated)
        finally:
            close = getattr(credential, "close", None)
            if close is not None:
                close()
        return access.token, int(access.expires_on)

    def _entra_error(self, error: Exception, request: Request, tenant_id: str, client_id: str) -> Exception:
        from azure.core.exceptions import ClientAuthenticationError

        target = request.target
        body = entra_body(error)
        codes = _codes(body)
        said, ids = _said(body, error), _ids(body)
        sent = (f"issuer {request.issuer!r}, subject {request.subject!r} and audience {target.audience!r}")
        who = f"app {client_id} in tenant {tenant_id}"
        create = (f"Add a federated credential to {who} with exactly that issuer, subject and audience "
                  f"(`oidc-broker trust-policy azure --target {target.ref}` prints it for "
                  f"`az ad app federated-credential create --id {client_id} --parameters`)")
        if NO_MATCH in codes:
            return AccessDenied(f"no federated credential of {who} matches the broker's {sent} ({said}). {create}; "
                                f"a new one takes a few minutes to take effect.{ids}", "azure_no_federated_credential")
        for code, meaning in MISMATCH.items():
            if code in codes:
                return AccessDenied(f"{who} refused the broker's {sent}: {meaning} (AADSTS{code}; {said}). "
                                    f"{create}.{ids}", f"azure_mismatch_{code}")
        if TIME_WINDOW in codes:
            return CloudError(f"Entra found the broker's assertion for {who} outside its time window (AADSTS700024; "
                              f"{said}): check the broker's clock.{ids}", "azure_assertion_time")
        if ALGORITHM in codes:
            return CloudError(f"Entra refused the broker's signing algorithm for {who} (AADSTS5002738; {said}): "
                              f"Entra accepts RSA signatures only.{ids}", "azure_algorithm")
        status = _status(error)
        if not isinstance(error, ClientAuthenticationError) or status == 429 or status >= 500:
            return Throttled(f"Entra ID is unavailable for {who} ({said}); try again shortly.{ids}",
                             "azure_unavailable", RETRY_AFTER)
        return CloudError(f"Entra refused the token request of {who} for the broker's {sent} ({said}).{ids}",
                          "azure_entra_error")

    # -- ACR -------------------------------------------------------------------------------------
    def _acr(self, request: Request, registry: str, tenant_id: str, client_id: str, token: str,
             expires_on: int) -> Credentials:
        host = acr_host(registry)
        url = f"{(self.acr_endpoint or 'https://' + host).rstrip('/')}/oauth2/exchange"
        form = {"grant_type": "access_token", "service": host, "tenant": tenant_id, "access_token": token}
        who = f"registry {host} (app {client_id} in tenant {tenant_id})"

        def attempt() -> tuple[int, Any]:
            try:
                status, body = self.post(url, form)
            except OSError as e:
                raise Retry(Throttled(f"{who} did not answer ({e}); try again shortly", "acr_unavailable",
                                       RETRY_AFTER)) from None
            if status in (429, 502, 503, 504):
                raise Retry(Throttled(f"{who} is unavailable (HTTP {status}); try again shortly", "acr_unavailable",
                                       RETRY_AFTER))
            return status, body

        status, body = self.backoff.call(attempt)
        if status in (401, 403):
            return_error = AccessDenied(
                f"{who} refused the Entra token (HTTP {status}{_acr_said(body)}): give the app AcrPull (or AcrPush) "
                f"on the registry, e.g. `az role assignment create --assignee {client_id} --role AcrPull --scope "
                "<registry resource ID>`", "acr_access_denied")
            raise return_error
        if status >= 500:
            raise CloudError(f"{who} failed (HTTP {status}{_acr_said(body)}), an error that is not transient: "
                             "retrying will not help", "acr_error")
        refresh = body.get("refresh_token") if status == 200 and isinstance(body, dict) else None
        exp = _refresh_token_exp(refresh) if isinstance(refresh, str) else None
        if not refresh or exp is None:
            raise CloudError(f"{who} answered HTTP {status} without a refresh token the broker can read"
                             f"{_acr_said(body)}", "acr_unreadable_token")
        return Credentials(fields={"registry": host, "username": DOCKER_USERNAME, "password": refresh},
                           issued_at=int(self.clock()), expires_at=min(exp, expires_on))


def _acr_said(body: Any) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return f"; ACR {cloud_message(errors[0].get('code'), 40)}: {cloud_message(errors[0].get('message'), 200)}"
    return ""


def exchanger(session: Any) -> AzureExchanger:
    """The Azure exchanger (azure-identity and requests are imported here, never before)."""
    return AzureExchanger(entra_credentials(), requests_post(), acr_endpoint=os.environ.get("ACR_ENDPOINT_URL") or None)


# -- the cloud-side trust ----------------------------------------------------------------------

def credential_name(target_ref: str, subject: str) -> str:
    """A federated credential name (3-120 URL-safe characters), distinct per target and subject."""
    digest = hashlib.sha256(f"{target_ref}\n{subject}".encode()).hexdigest()[:8]
    base = re.sub(r"[^A-Za-z0-9-]+", "-", target_ref.replace("/", "-")).strip("-")[:100]
    return f"oidc-broker-{base}-{digest}"


def federated_credentials(issuer: str, target: Any, subjects: list[str]) -> dict[str, Any] | list[dict[str, Any]]:
    """The federated credential(s) a target's identity needs, as `az ad app federated-credential
    create --parameters` takes them: one per subject the broker mints (Entra has no wildcards)."""
    if not target.setting("client_id") or not target.setting("tenant_id"):
        raise TrustSetupError(f"target {target.ref!r} names no azure.tenant_id and azure.client_id")
    if any("*" in s for s in subjects):
        raise TrustSetupError(f"a subject of target {target.ref!r} takes a value from a caller's claim "
                              f"({', '.join(s for s in subjects if '*' in s)}): Entra matches subjects exactly")
    made = [{"name": credential_name(target.ref, s), "issuer": issuer, "subject": s, "audiences": [target.audience],
             "description": f"oidc-broker target {target.ref}"} for s in subjects]
    return made[0] if len(made) == 1 else made


def check_config(config: Any) -> list[tuple[str, str]]:
    """A feed names its registry (the login server its docker credentials are for). Entra allows 20
    federated credentials per identity and matches subjects exactly: per (tenant_id, client_id),
    the distinct subjects the configuration can mint must fit."""
    identities: dict[tuple[str, str], list[Any]] = {}
    problems = []
    for space in config.spaces.values():
        for target in space.targets.values():
            if target.provider != PROVIDER:
                continue
            if target.kind == "feed" and not target.setting("registry"):
                problems.append((target.ref, "a feed target needs registry: the ACR login server its docker "
                                             "credentials are for (e.g. acme.azurecr.io)"))
            if target.setting("tenant_id") and target.setting("client_id"):
                identities.setdefault((target.setting("tenant_id"), target.setting("client_id")), []).append(target)
    for (tenant_id, client_id), targets in identities.items():
        subjects = {s for t in targets for s in config.subject_patterns(t)}
        refs = ", ".join(t.ref for t in targets)
        open_ended = sorted(s for s in subjects if "*" in s)
        if open_ended:
            why = (f"subject {open_ended[0]} takes a value from a caller's claim, so app {client_id} in tenant "
                   f"{tenant_id} would need a federated credential per value (targets {refs}); Entra matches "
                   f"subjects exactly and allows {MAX_FEDERATED_CREDENTIALS}: pin the claim's values in the trust rule")
        elif len(subjects) > MAX_FEDERATED_CREDENTIALS:
            why = (f"app {client_id} in tenant {tenant_id} would need {len(subjects)} federated credentials for "
                   f"targets {refs}; Entra allows {MAX_FEDERATED_CREDENTIALS} per app or managed identity: "
                   "split the targets across identities or give them fewer subjects")
        else:
            continue
        problems += [(t.ref, why) for t in targets]
    return problems


_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_SCOPE = re.compile(r"[A-Za-z0-9._:/-]{1,500}")  # what azure-identity accepts in a scope

CLOUD = Cloud(
    name=PROVIDER,
    title="Azure",
    settings={
        "tenant_id": Setting(_UUID, "a tenant ID (UUID)"),
        "client_id": Setting(_UUID, "an application (client) ID (UUID)"),
        "registry": Setting(_HOST, "a registry host name such as acme.azurecr.io (feed targets only)",
                            kinds=("feed",)),
        "scope": Setting(_SCOPE, "an Entra scope such as https://management.azure.com/.default (account targets only)",
                         default=MANAGEMENT_SCOPE, kinds=("account",)),
        # Sovereign clouds: login.microsoftonline.us, login.chinacloudapi.cn. Default the public cloud.
        "authority": Setting(_HOST, "an Entra authority host such as login.microsoftonline.us"),
        "refresh_at": refresh_at(0.5),
    },
    default_audience=lambda settings: AUDIENCE,
    trust_setup=federated_credentials,
    exchanger=exchanger,
    check_config=check_config,
)
