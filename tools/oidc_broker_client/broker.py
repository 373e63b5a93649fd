"""The broker as a pipeline speaks to it: its issuer (the audience CI tokens are requested for) and
`POST /exchange/<cloud>`, with the broker's refusals turned into what to do next.

A refused exchange consumes nothing on the broker's side, so a 503 is retried with the same CI
token after the broker's `Retry-After` (bounded); nothing else is retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import transport
from .errors import ClientError

ATTEMPTS = 3
MAX_RETRY_AFTER = 10  # seconds: a pipeline step should fail in seconds, not minutes

# What each kind of answer must hold (README: the /exchange/<cloud> response shapes).
FEED = ("registry", "username", "password", "expires_at")
AWS_ACCOUNT = ("access_key_id", "secret_access_key", "session_token", "expires_at")
TOKEN_ACCOUNT = ("access_token", "expires_at")

# The next step for each refusal, by the broker's `error` (RFC 6749 section 5.2 and the broker's own).
NEXT_STEPS: dict[str, str] = {
    "invalid_grant": "the broker did not accept this job's CI token for {target}: the description names the "
                     "check that failed; the broker's operator sees each trust rule's verdict in the broker's "
                     "log, or with `oidc-broker explain --target {target}`",
    "invalid_target": "check --target (<space>/<target>) and --cloud against the broker's configuration",
    "access_denied": "{cloud} does not trust the broker's subject for {target} yet: the broker's operator "
                     "prints what to set up with `oidc-broker trust-policy {cloud} --target {target}`",
    "cloud_error": "{cloud} refused for a reason a retry will not change (above); the broker's operator "
                   "fixes the cloud side of {target}",
    "temporarily_unavailable": "the broker or {cloud} is busy or unreachable: run the step again shortly",
    "server_error": "the broker failed on this request: its operator finds it in the broker's log",
    "invalid_request": "the broker did not understand the request: is --url an oidc-broker, and is this "
                       "client as new as the broker?",
}
REPLAYED = ("each CI token is accepted once per target: ask the CI for a fresh token (run the step again; on "
            "GitLab each job's ID token serves one exchange per target, so log in once per job)")


class Refusal(ClientError):
    """The broker answered with an error: its status, `error` and `error_description`."""

    def __init__(self, status: int, error: str, description: str, next_step: str):
        super().__init__(f"the broker refused (HTTP {status} {error}): {description}", next_step)
        self.status = status
        self.error = error
        self.description = description

    @property
    def replayed(self) -> bool:
        """The CI token was already used for this target (by an earlier exchange of this job, most often)."""
        return self.error == "invalid_grant" and "already used" in self.description

    @property
    def unavailable(self) -> bool:
        """A refusal a retry may change: nothing was wrong with the request."""
        return self.status == 503


@dataclass
class Broker:
    url: str
    request: Callable[..., transport.Response] = transport.request
    sleep: Callable[[float], None] = time.sleep
    _issuer: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.url = transport.checked_url(self.url, "--url")

    def issuer(self) -> str:
        """The broker's issuer URL, from its discovery document: the default audience of CI tokens."""
        if self._issuer is None:
            url = self.url + "/.well-known/openid-configuration"
            answer = self.request("GET", url, headers={"Accept": "application/json"})
            try:
                issuer = answer.json()["issuer"] if answer.status == 200 else None
            except (ValueError, KeyError, TypeError):
                issuer = None
            if not isinstance(issuer, str) or not issuer.startswith(("https://", "http://")):
                raise ClientError(f"{url} answered HTTP {answer.status} without an issuer",
                                  "is --url the broker's URL (its IssuerUrl stack output)?")
            self._issuer = issuer
        return self._issuer

    def exchange(self, cloud: str, target: str, ci_token: str) -> dict[str, Any]:
        """`POST /exchange/<cloud>` for `target` with the CI token: the credentials as the broker sent them."""
        url = f"{self.url}/exchange/{cloud}"
        body = json.dumps({"target": target}).encode()
        headers = {"Authorization": f"Bearer {ci_token}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        for attempt in range(1, ATTEMPTS + 1):
            answer = self.request("POST", url, headers=headers, body=body)
            if answer.status != 503 or attempt == ATTEMPTS:
                break
            self.sleep(_retry_after(answer.headers.get("retry-after")))
        return _credentials(answer, url, cloud, target)


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 1.0


def _credentials(answer: transport.Response, url: str, cloud: str, target: str) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status != 200:
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            raise refusal(answer.status, body["error"], str(body.get("error_description", "")), cloud, target)
        raise ClientError(f"{url} answered HTTP {answer.status}, not an oidc-broker answer",
                          "is --url the broker's URL (its IssuerUrl stack output)?")
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in _shape(body)):
        raise ClientError(f"{url} answered without the credentials an exchange returns",
                          "is --url an oidc-broker, and is this client as new as the broker?")
    return body


def _shape(body: dict[str, Any]) -> tuple[str, ...]:
    if "registry" in body:
        return FEED
    return AWS_ACCOUNT if "access_key_id" in body else TOKEN_ACCOUNT


def is_feed(credentials: dict[str, Any]) -> bool:
    """Registry credentials (a feed target), rather than an account's."""
    return _shape(credentials) == FEED


def refusal(status: int, error: str, description: str, cloud: str, target: str) -> Refusal:
    refused = Refusal(status, error, description[:2000], "")
    advice = REPLAYED if refused.replayed else NEXT_STEPS.get(error, NEXT_STEPS["server_error"])
    refused.next_step = advice.format(cloud=cloud, target=target)
    return refused
