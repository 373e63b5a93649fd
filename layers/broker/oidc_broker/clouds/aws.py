"""AWS: a broker token in, role credentials or ECR docker credentials out.

AssumeRoleWithWebIdentity (unsigned: the broker token is the only credential) with the target's
role ARN, region and session duration; then, for feed targets, GetAuthorizationToken on ECR or
ECR Public with the role's credentials. Transient errors and throttling are retried a bounded
number of times with jittered backoff and then become 503 with Retry-After; every other error,
a 5xx that a retry would not change included, is translated once into an error that names the
role, the subject and the audience AWS was shown and the AWS error code (or HTTP status).
Never logs, returns or raises the broker token, the role credentials or the docker password.

`CLOUD` describes AWS to the rest of the broker: a target's `aws:` settings, the audience STS
expects, and the role trust policy a target needs (`oidc-broker trust-policy aws`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ..checks import one_of, seconds_between
from ..errors import AccessDenied, CloudError, InvalidTarget, Throttled
from . import Backoff, Cloud, Credentials, Request, Setting, TrustSetupError, cloud_message, refresh_at

PROVIDER = "aws"
ECR_PUBLIC_REGION = "us-east-1"  # ECR Public's API lives only there
ECR_PUBLIC_REGISTRY = "public.ecr.aws"
DOCKER_USERNAME = "AWS"

# STS's RoleSessionName pattern (Java's ASCII \w) and length.
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
_NOT_SESSION_CHARS = re.compile(r"[^\w+=,.@-]+", re.ASCII)

THROTTLING = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "RequestLimitExceeded", "TooManyRequestsException", "SlowDown",
})
# Worth another try: AWS could not reach our issuer this time, or answered with its own failure.
TRANSIENT = frozenset({
    "IDPCommunicationError", "InternalFailure", "InternalError", "InternalServerError", "ServiceUnavailable",
    "ServiceUnavailableException", "ServerException", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete",
})
RETRY_AFTER = 2


def session_name(target_ref: str, caller: str) -> str:
    """`<space>.<target>@<caller subject>` in STS's alphabet, at most 64 characters.

    It is what CloudTrail shows for the session: which target, and which caller obtained it.
    A name too long keeps its start and ends with a hash of the whole, so it stays distinct.
    """
    target = _NOT_SESSION_CHARS.sub("-", target_ref.replace("/", ".")).strip("-") or "target"
    who = _NOT_SESSION_CHARS.sub("-", caller).strip("-")
    name = f"{target}@{who}" if who else target
    if len(name) > 64:
        digest = hashlib.sha256(f"{target_ref}\n{caller}".encode()).hexdigest()[:8]
        name = f"{name[:55]}.{digest}"
    return name if len(name) >= 2 else f"{name}--"[:2]


def error_code(error: Exception) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return (response.get("Error") or {}).get("Code")
    return None


def _http_status(error: Exception) -> int:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return 0


def _is_connection_error(error: Exception) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(error, (BotoConnectionError, HTTPClientError))


def retryable(error: Exception) -> bool:
    """Whether another try may get another answer: throttling, a transient code, or no answer at all.

    The HTTP status alone never decides: a 5xx with a code AWS does not document as transient
    (NotImplemented, an unknown code, a body that is no AWS error: the wrong endpoint) comes back
    the same next time, and a 503 with Retry-After for it would have a pipeline retry forever.
    """
    code = error_code(error)
    return code in THROTTLING or code in TRANSIENT or _is_connection_error(error)


def _is_aws_error(error: Exception) -> bool:
    # botocore names an error whose body it could not parse by its HTTP status ("500").
    code = error_code(error)
    return bool(code) and code != str(_http_status(error))


def _said(error: Exception) -> str:
    """What AWS answered, for a message: its code and message, or the HTTP status of a non-AWS body."""
    code = error_code(error)
    if _is_aws_error(error):
        return f"(AWS {code}: {cloud_message(_message(error))})"
    if code:
        return f"(HTTP {_http_status(error)} that is not an AWS error response)"
    return f"({type(error).__name__})"


ClientFactory = Callable[[str, str, "dict[str, str] | None"], Any]


def boto3_clients(session: Any = None) -> ClientFactory:
    """Clients from `session` (the container's one boto3 session): STS unsigned, built once per
    region; ECR with the role's credentials, per exchange."""
    from botocore import UNSIGNED
    from botocore.config import Config

    if session is None:
        import boto3

        session = boto3.session.Session()
    # Our own Backoff retries; each call gets a deadline well inside the function's timeout.
    base = dict(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 1})
    unsigned: dict[str, Any] = {}

    def client(service: str, region: str, credentials: dict[str, str] | None) -> Any:
        if credentials is None:
            if (service, region) not in unsigned:
                # AssumeRoleWithWebIdentity needs no AWS credentials: the function's own role must
                # never be what AWS sees, and none is needed (the template grants no sts: action).
                config = Config(signature_version=UNSIGNED, **base)
                unsigned[(service, region)] = session.client(service, region_name=region, config=config)
            return unsigned[(service, region)]
        return session.client(
            service,
            region_name=region,
            config=Config(**base),
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )

    return client


def _account(role_arn: str) -> str:
    parts = role_arn.split(":")
    return parts[4] if len(parts) > 4 else "?"


@dataclass
class AwsExchanger:
    clients: ClientFactory
    default_region: str | None = None
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.time
    provider: str = PROVIDER

    def exchange(self, request: Request) -> Credentials:
        target = request.target
        role_arn = target.setting("role_arn")
        region = target.setting("region") or self.default_region
        if not role_arn or not region:
            missing = "aws.role_arn" if not role_arn else "aws.region"
            raise InvalidTarget(f"target {target.ref!r} has no {missing}: it cannot be exchanged for AWS credentials",
                                "incomplete_target")
        session = self._assume_role(request, role_arn, region)
        if target.kind == "account":
            return Credentials(
                fields={
                    "access_key_id": session["AccessKeyId"],
                    "secret_access_key": session["SecretAccessKey"],
                    "session_token": session["SessionToken"],
                },
                issued_at=int(self.clock()),
                expires_at=_epoch(session["Expiration"]),
            )
        if target.setting("registry") == "ecr-public":
            return self._ecr_public(request, role_arn, session)
        return self._ecr(request, role_arn, region, session)

    # -- STS -------------------------------------------------------------------------------------
    def _assume_role(self, request: Request, role_arn: str, region: str) -> dict[str, Any]:
        sts = self.clients("sts", region, None)
        try:
            response = self.backoff.call(lambda: sts.assume_role_with_web_identity(
                RoleArn=role_arn,
                RoleSessionName=session_name(request.target.ref, request.caller),
                WebIdentityToken=request.token,
                DurationSeconds=int(request.target.setting("session_duration")),
            ), retryable)
        except Exception as e:
            raise self._sts_error(e, request, role_arn) from None
        return response["Credentials"]

    def _sts_error(self, error: Exception, request: Request, role_arn: str) -> Exception:
        code = error_code(error)
        said = _said(error)
        host = provider_host(request.issuer)
        sent = f"subject {request.subject!r} with audience {request.target.audience!r}"
        if code == "AccessDenied":
            return AccessDenied(
                f"role {role_arn} does not trust {sent} {said}. Its trust policy must allow "
                f"sts:AssumeRoleWithWebIdentity for Federated arn:aws:iam::{_account(role_arn)}:oidc-provider/{host} "
                f"with StringEquals {host}:sub = {request.subject} and {host}:aud = {request.target.audience} "
                f"(`oidc-broker trust-policy aws --target {request.target.ref}` prints it).",
                "aws_access_denied",
            )
        if code == "InvalidIdentityToken":
            return CloudError(
                f"AWS STS refused the broker's token for role {role_arn} {said}: AWS found no IAM OIDC provider "
                f"for issuer {request.issuer} in account {_account(role_arn)}, or could not fetch the issuer's "
                f"keys. Register an OIDC provider with URL {request.issuer} and audience "
                f"{request.target.audience}, and check that {request.issuer}/.well-known/openid-configuration "
                "and its jwks_uri answer within 5 seconds.",
                "aws_invalid_identity_token",
            )
        if code == "IDPRejectedClaim":
            return AccessDenied(f"AWS rejected a claim of the broker's token for role {role_arn} ({sent}) {said}",
                                "aws_rejected_claim")
        if code == "ExpiredTokenException":
            return CloudError(f"AWS STS found the broker's token for role {role_arn} expired {said}: "
                              "check the broker's clock", "aws_expired_token")
        if code == "IDPCommunicationError":
            return CloudError(f"AWS STS could not reach issuer {request.issuer} to fetch its keys {said}; "
                              "it answered too slowly or not at all", "aws_idp_unreachable")
        if code == "ValidationError":
            return CloudError(
                f"AWS STS refused the request for role {role_arn} {said}. If it names DurationSeconds, the "
                f"target's aws.session_duration ({request.target.setting('session_duration')} s) exceeds the "
                "role's maximum session duration.",
                "aws_validation_error",
            )
        return _unavailable_or_cloud_error(error, code, said, f"AWS STS (role {role_arn})", "aws_sts_error")

    # -- ECR -------------------------------------------------------------------------------------
    def _ecr(self, request: Request, role_arn: str, region: str, session: dict[str, Any]) -> Credentials:
        ecr = self.clients("ecr", region, session)
        try:
            data = self.backoff.call(ecr.get_authorization_token, retryable)["authorizationData"][0]
        except Exception as e:
            raise _ecr_error(e, role_arn, "ecr:GetAuthorizationToken") from None
        return self._docker(data, data.get("proxyEndpoint"), session, "ECR")

    def _ecr_public(self, request: Request, role_arn: str, session: dict[str, Any]) -> Credentials:
        ecr = self.clients("ecr-public", ECR_PUBLIC_REGION, session)
        try:
            data = self.backoff.call(ecr.get_authorization_token, retryable)["authorizationData"]
        except Exception as e:
            raise _ecr_error(e, role_arn, "ecr-public:GetAuthorizationToken and sts:GetServiceBearerToken",
                             "ECR Public") from None
        return self._docker(data, ECR_PUBLIC_REGISTRY, session, "ECR Public")

    def _docker(self, data: dict[str, Any], registry: str | None, session: dict[str, Any], what: str) -> Credentials:
        try:
            username, _, password = base64.b64decode(data["authorizationToken"], validate=True).decode().partition(":")
        except (KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            username, password = "", ""
        if username != DOCKER_USERNAME or not password or not registry:
            raise CloudError(f"{what} returned an authorization token the broker cannot read", "ecr_unreadable_token")
        # A registry token obtained with role credentials lasts no longer than we count on them.
        expires_at = min(_epoch(data["expiresAt"]), _epoch(session["Expiration"]))
        return Credentials(
            fields={"registry": registry, "username": username, "password": password},
            issued_at=int(self.clock()),
            expires_at=expires_at,
        )


def _ecr_error(error: Exception, role_arn: str, permissions: str, what: str = "ECR") -> Exception:
    code = error_code(error)
    said = _said(error)
    if code in ("AccessDeniedException", "AccessDenied"):
        return AccessDenied(f"role {role_arn} may not obtain a registry token {said}: grant it {permissions}",
                            "ecr_access_denied")
    return _unavailable_or_cloud_error(error, code, said, f"{what} (role {role_arn})", "ecr_error")


def _unavailable_or_cloud_error(error: Exception, code: str | None, said: str, who: str, reason: str) -> Exception:
    if code in THROTTLING:
        return Throttled(f"{who} is throttling requests {said}; try again shortly", "aws_throttled", RETRY_AFTER)
    if retryable(error):
        return Throttled(f"{who} is unavailable {said}; try again shortly", "aws_unavailable", RETRY_AFTER)
    if _http_status(error) >= 500:
        return CloudError(f"{who} failed {said}, an error that is not transient: retrying will not help", reason)
    return CloudError(f"{who} refused the request {said}", reason)


def _message(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return (response.get("Error") or {}).get("Message") or ""
    return ""


def _epoch(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(float(value))


def provider_host(issuer: str) -> str:
    """The issuer as IAM names its OIDC provider and condition keys: host and path, no scheme."""
    parts = urlsplit(issuer)
    return f"{parts.netloc}{parts.path}"


def trust_policy(account: str, issuer: str, audience: str | list[str], subject: str | list[str], *,
                 like: bool = False) -> dict[str, Any]:
    """The trust policy a role needs so that broker tokens for `subject` may assume it.

    `like` uses StringLike for the subject, for patterns with `*` standing for a value the broker
    takes from a caller's claim. That is safe only because broker subjects are built from slugs,
    which never contain `:` — a `*` cannot reach into another subject part.
    """
    host = provider_host(issuer)
    condition: dict[str, dict[str, Any]] = {"StringEquals": {f"{host}:aud": audience}}
    condition.setdefault("StringLike" if like else "StringEquals", {})[f"{host}:sub"] = subject
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": f"arn:aws:iam::{account}:oidc-provider/{host}"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": condition,
        }],
    }


def target_trust_policy(issuer: str, target: Any, subjects: list[str]) -> dict[str, Any]:
    """The trust policy for a target's role: its audience and every subject the broker mints for it."""
    if not target.setting("role_arn"):
        raise TrustSetupError(f"target {target.ref!r} names no aws.role_arn")
    account = target.setting("role_arn").split(":")[4]
    like = any("*" in s for s in subjects)
    return trust_policy(account, issuer, target.audience, subjects[0] if len(subjects) == 1 else subjects, like=like)


def exchanger(session: Any) -> AwsExchanger:
    """The AWS exchanger with clients of the container's session (botocore is imported here)."""
    import os

    return AwsExchanger(boto3_clients(session), default_region=os.environ.get("AWS_REGION"))


_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")

CLOUD = Cloud(
    name=PROVIDER,
    title="AWS",
    settings={
        "role_arn": Setting(_ROLE_ARN, "an IAM role ARN"),
        "region": Setting(_REGION, "an AWS region such as us-east-1"),
        # STS allows 900 s up to the role's MaxSessionDuration, at most 12 hours.
        "session_duration": Setting(seconds_between(900, 43200), "a duration from 900s to 43200s (e.g. 3600, 15m, 12h)",
                                    default=3600),
        # ECR private (the role's account and region) or ECR Public (public.ecr.aws, us-east-1).
        "registry": Setting(one_of("ecr", "ecr-public"), "ecr or ecr-public (feed targets only)", default="ecr",
                            kinds=("feed",)),
        "refresh_at": refresh_at(0.5),
    },
    default_audience=lambda settings: "sts.amazonaws.com",
    trust_setup=target_trust_policy,
    exchanger=exchanger,
)
