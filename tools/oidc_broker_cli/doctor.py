"""`oidc-broker doctor <space>/<target>`: a real exchange for one target, step by step, and the fix
for the first step that fails.

The steps, each `ok`, `FAIL` (with its fix) or `skip` (with why):

  1. deployment  the stack (`--stack`: outputs IssuerUrl, ApiUrl, TableName) or the running local mode
  2. discovery   the issuer's discovery document and JWKS, fetched from this machine as a cloud would
  3. target      the target in the applied configuration, and the trust rules that admit the caller
  4. token       a broker token minted at /token (RFC 8693) and verified here against the JWKS
  5. cloud       /exchange/<cloud> with a CI token: the cloud accepted the broker's token
  6. registry    for a feed, docker's login at the registry with the credentials the cloud gave

A caller CI token is needed from step 3 on: a real one (`--token-file FILE`, `--token -` for
standard input), or in local mode, with none given, one minted by its development CI issuer with
`--claims`. Each CI token is accepted once per target, so local mode mints a fresh one for step 5;
a real token is spent by step 4 (run again with a fresh one and `--skip-mint` to test the cloud).
Doctor stops at the first failure: the steps after it depend on it. It never prints a token, a
password or a secret key.

Exit codes:
  0  every step ok (or skipped, saying why)
  1  a step failed; its fix is printed
  2  usage or operational error (no local mode and no --stack, a malformed target, unreadable token)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, TextIO
from urllib.parse import urlsplit

from .deployment import DeploymentError, LocalDeployment, find

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
DEV_CI_TOKEN = "/_dev/ci/token?format=raw"
DEFAULT_CLAIMS = {"repository": "acme/app", "ref": "refs/heads/main"}
# Where local mode's docker registry stand-in for a cloud's first registry host answers: the broker's
# port + this offset (local/clouds/*.py REGISTRY_PORT_OFFSET; `make run`: 3001 ECR, 3002 ACR, 3003 GAR).
REGISTRY_OFFSETS = {"aws": 1, "azure": 2, "gcp": 3}
TIMEOUT = 10.0
TARGET = re.compile(r"[^/\s]+/[^/\s]+")
PROBE_PATH = "/v2/oidc-broker-doctor/manifests/latest"  # a repository no one has: its challenge
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class UsageError(Exception):
    """A usage or operational problem, in one line: exit 2."""


class NetworkError(Exception):
    """A request that got no usable answer (DNS, TLS, refused, timeout), in one line."""


class Failed(Exception):
    """A step's verdict of no: what failed and the fix."""

    def __init__(self, detail: str, fix: str):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass
class Step:
    """One step's result: ok True (passed), False (failed, with the fix) or None (skipped, saying why)."""

    step: str
    ok: bool | None
    detail: str
    fix: str = ""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


# -- HTTP: every failure one line -----------------------------------------------------------------

class Http:
    """The network, as doctor uses it: one request, an Answer or a NetworkError naming what failed."""

    def __init__(self, timeout: float = TIMEOUT, verify: Any = True):
        import httpx

        self._client = httpx.Client(timeout=timeout, verify=verify, follow_redirects=False)

    def request(self, method: str, url: str, **kwargs: Any) -> Answer:
        import httpx

        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise NetworkError(f"{method} {url}: timed out after {TIMEOUT:.0f} s") from None
        except httpx.HTTPError as e:
            raise NetworkError(f"{method} {url}: {network_reason(str(e))}") from None
        except (OSError, ValueError) as e:
            raise NetworkError(f"{method} {url}: {type(e).__name__}: {e}") from None
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    def close(self) -> None:
        self._client.close()


def network_reason(message: str) -> str:
    """What an HTTP client's failure message means for the operator: DNS, TLS, refused or other."""
    lowered = message.lower()
    if any(s in lowered for s in ("name or service not known", "nodename nor servname", "getaddrinfo",
                                  "temporary failure in name resolution", "no address associated")):
        return "the host name does not resolve (DNS)"
    if any(s in lowered for s in ("certificate", "ssl", "tls")):
        return f"TLS failed ({message.splitlines()[0][:160]})"
    if "refused" in lowered:
        return "connection refused: nothing listens there"
    return message.splitlines()[0][:200] if message else "no answer"


def is_loopback_http(url: str) -> bool:
    split = urlsplit(url)
    return split.scheme == "http" and (split.hostname or "") in LOOPBACK


def broker_error(answer: Answer) -> tuple[str, str]:
    """The broker's (error, error_description), or a description of an answer that is not one."""
    body = answer.json()
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], str(body.get("error_description") or "")
    return "", f"HTTP {answer.status} with {'no JSON' if body is None else 'an unexpected JSON'} body"


# -- what doctor works on ------------------------------------------------------------------------

@dataclass
class Where:
    """The broker doctor talks to: its base URL, issuer, and how to read its applied configuration."""

    name: str
    url: str
    issuer: str
    local: bool
    read_config: Callable[[], Any] | None  # -> oidc_broker Config; Failed if it cannot be read


def parse_target(ref: str) -> str:
    if not TARGET.fullmatch(ref or ""):
        raise UsageError(f"{ref!r} is not <space>/<target> (for example default/prod-ecr)")
    return ref


def parse_claims(text: str | None) -> dict[str, Any]:
    if text is None:
        return dict(DEFAULT_CLAIMS)
    try:
        claims = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--claims is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(claims, dict):
        raise UsageError('--claims takes a JSON object, e.g. \'{"repository": "acme/app", "ref": "refs/heads/main"}\'')
    return claims


def read_token(args: argparse.Namespace, stdin: TextIO) -> str | None:
    """The caller's real CI token, if one is given (`--token -` or `--token-file FILE`, '-' for stdin)."""
    if args.token is not None and args.token != "-":
        raise UsageError("--token takes only '-' (the token on standard input): a token on the command line is "
                         "visible to other users of this machine; or use --token-file FILE")
    source = "-" if args.token == "-" else args.token_file
    if source is None:
        return None
    try:
        text = stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the CI token from {source}: {getattr(e, 'strerror', None) or e}") from None
    token = text.strip()
    if not token:
        raise UsageError(f"no CI token in {'standard input' if source == '-' else source}")
    return token


def _parse_config(document: Any, source: str, allow_loopback_http: bool) -> Any:
    from oidc_broker import config as config_module

    try:
        return config_module.parse(document, source, allow_loopback_http=allow_loopback_http)
    except config_module.ConfigError as e:
        raise Failed(f"the applied configuration does not validate: {str(e).splitlines()[0]}",
                     "fix the file and apply it again: `oidc-broker apply FILE`") from None


def config_reader(client: Callable[[], Any], table: str, allow_loopback_http: bool) -> Callable[[], Any]:
    """Read the applied configuration from `table` with a DynamoDB client; every failure a Failed."""
    def read() -> Any:
        import botocore.exceptions

        from oidc_broker.configstore import CorruptBlob
        from oidc_broker.store import Store

        try:
            item = Store(client(), table).get_config()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, CorruptBlob) as e:
            raise Failed(f"cannot read the configuration from table {table}: {str(e).splitlines()[0]}",
                         "check the region (--region), your AWS credentials (--profile) and that the table "
                         "exists") from None
        if item is None:
            raise Failed(f"no configuration has been applied to table {table}", "`oidc-broker apply FILE`")
        return _parse_config(item["document"], item["source"], allow_loopback_http)
    return read


def where_of(deployment: Any, url: str | None) -> Where:
    """The broker of a found deployment (local mode or a stack), its URL overridden by --url."""
    if isinstance(deployment, LocalDeployment):
        record = deployment.record

        def client() -> Any:
            import boto3

            return boto3.client("dynamodb", endpoint_url=record.aws_endpoint, region_name="us-east-1",
                                aws_access_key_id="local", aws_secret_access_key="local")
        return Where(deployment.name, (url or record.url).rstrip("/"), record.issuer, True,
                     config_reader(client, record.table, allow_loopback_http=True))
    outputs = getattr(deployment, "outputs", {})
    issuer = outputs.get("IssuerUrl")
    if not issuer:
        raise UsageError(f"{deployment.name} has no output IssuerUrl: is it an oidc-broker stack?")
    table = outputs.get("TableName")
    reader = config_reader(lambda: deployment.session.client("dynamodb"), table, False) if table else None
    return Where(deployment.name, (url or outputs.get("ApiUrl") or issuer).rstrip("/"), issuer, False, reader)


def parse_url(url: str | None) -> str | None:
    """--url: an http(s) URL with a host (and a port that is a number), without query or fragment."""
    if url is None:
        return None
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"--url {url!r} is not the broker's http(s) URL (for example https://id.example.com)")
    return url


def locate(args: argparse.Namespace, root_of: Callable[[], Any]) -> Where:
    """Step 1's subject: --stack, else the running local mode; --url alone names a broker directly."""
    try:
        return where_of(find(args.stack, args.region, args.profile, root_of()), args.url)
    except DeploymentError as e:
        if args.url and args.stack is None and not (args.region or args.profile):
            url = args.url.rstrip("/")
            return Where(f"the broker at {url}", url, url, is_loopback_http(url), None)
        raise UsageError(str(e)) from None


def deployment_step(where: Where) -> Step:
    config = "its table" if where.read_config else "no table (name it with --stack to check the target)"
    return Step("deployment", True, f"{where.name}: API {where.url}, issuer {where.issuer}, configuration from {config}")


# -- step 2: discovery and JWKS ------------------------------------------------------------------

def fetch_json(http: Http, url: str, what: str) -> tuple[Any, Answer]:
    try:
        answer = http.request("GET", url)
    except NetworkError as e:
        raise Failed(f"{what} unreachable: {e}", reach_fix(url)) from None
    if answer.status != 200:
        raise Failed(f"{what}: GET {url} answered HTTP {answer.status}",
                     "check the URL (--url, the stack's ApiUrl/IssuerUrl) and that the API is deployed")
    body = answer.json()
    if not isinstance(body, dict):
        raise Failed(f"{what}: GET {url} answered something other than a JSON object",
                     "the URL does not serve the broker: check the custom domain's mapping to the API")
    return body, answer


def reach_fix(url: str) -> str:
    host = urlsplit(url).hostname or url
    if is_loopback_http(url):
        return f"nothing answers at {url}: start local mode (`make run`), or check --url"
    return (f"make {host} reachable over HTTPS from the internet: its DNS record, the TLS certificate for it, "
            "and the API's stage and custom domain mapping")


def served_at(url: str, issuer: str, base: str | None) -> str:
    """Where to fetch `url` of `issuer`: itself, or under local mode's `base` when the issuer is one
    local mode only stands in for (an `issuer:` of the configuration no one serves here)."""
    if base is None or is_loopback_http(issuer) or not url.startswith(issuer):
        return url
    return base + url[len(issuer):]


def discovery_step(http: Http, issuer: str, local_base: str | None = None) -> tuple[Step, dict[str, Any]]:
    """The discovery document and JWKS as a cloud fetches them; the JWKS for step 4. `local_base`:
    local mode's URL, which serves them for any issuer its configuration names."""
    split = urlsplit(issuer)
    local = is_loopback_http(issuer)
    if split.scheme != "https" and not local:
        raise Failed(f"the issuer {issuer} is not HTTPS", "clouds fetch discovery over HTTPS only: deploy with an "
                                                         "https:// IssuerUrl")
    stand_in = local_base is not None and not local
    discovery, answer = fetch_json(http, served_at(f"{issuer}/.well-known/openid-configuration", issuer, local_base),
                                   "discovery")
    if discovery.get("issuer") != issuer:
        raise Failed(f"discovery names issuer {discovery.get('issuer')!r}, not {issuer!r} exactly",
                     "clouds compare the issuer byte for byte (a trailing slash counts): redeploy with IssuerUrl "
                     "equal to the URL discovery is served at")
    jwks_uri = discovery.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise Failed("discovery has no jwks_uri", "deploy this version of the broker (sam deploy)")
    if not answer.headers.get("cache-control"):
        raise Failed("discovery is served without Cache-Control", "deploy this version of the broker (sam deploy)")
    jwks, jwks_answer = fetch_json(http, served_at(jwks_uri, issuer, local_base), "JWKS")
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise Failed(f"the JWKS at {jwks_uri} has no keys", "`oidc-broker keys list`: the key ring needs an active "
                                                           "key (`oidc-broker keys rotate`)")
    bad = [k for k in keys if not (isinstance(k, dict) and k.get("kty") == "RSA" and k.get("kid")
                                   and k.get("alg") == "RS256")]
    if bad:
        raise Failed(f"{len(bad)} of the JWKS's {len(keys)} keys are not RSA keys with a kid and alg RS256",
                     "clouds need RS256 keys named by kid: deploy this version of the broker")
    if not jwks_answer.headers.get("cache-control"):
        raise Failed("the JWKS is served without Cache-Control", "deploy this version of the broker (sam deploy)")
    where = ("local mode: this http:// loopback issuer answers only on this machine; a real cloud cannot reach "
             "it (local mode's emulators can)" if local else
             f"local mode serves them for {issuer} at {local_base}; a real cloud would fetch them from {issuer}"
             if stand_in else "reachable over HTTPS from this machine")
    detail = (f"{where}; issuer {issuer} matches; JWKS {len(keys)} RS256 key(s) "
              f"({', '.join(str(k['kid'])[:12] + '…' for k in keys)}); Cache-Control "
              f"{answer.headers['cache-control']!r} / {jwks_answer.headers['cache-control']!r}")
    return Step("discovery", True, detail), jwks


# -- the caller's CI token -------------------------------------------------------------------------

def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, not verified (to judge them against the rules before the broker does)."""
    try:
        segment = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, ValueError):
        raise Failed("the CI token is not a JWT", "pass the pipeline's OIDC token itself (a JWT: three "
                                                  "base64url parts separated by dots)") from None
    if not isinstance(claims, dict):
        raise Failed("the CI token's claims are not a JSON object", "pass the pipeline's OIDC token itself")
    return claims


class Callers:
    """Where CI tokens come from: the operator's real one, or local mode's development CI issuer."""

    def __init__(self, http: Http, url: str, token: str | None, claims: dict[str, Any], can_mint: bool):
        self.http, self.url, self.claims, self.can_mint = http, url, claims, can_mint
        self.real = token is not None
        self._next = token  # the token to present next, not used yet

    def fresh(self) -> str:
        """A CI token not used yet: the real one once, else a newly minted one."""
        if self._next is not None:
            token, self._next = self._next, None
            return token
        if self.real:
            raise Failed("the CI token was spent by step 4 (each is accepted once per target)",
                         "run doctor again with a fresh CI token and --skip-mint to test the cloud")
        return self._mint()

    def _mint(self) -> str:
        if not self.can_mint:
            raise UsageError("a deployment's doctor needs a real CI token: --token-file FILE, or --token - to read "
                             "it from standard input")
        try:
            answer = self.http.request("POST", self.url + DEV_CI_TOKEN, json=self.claims)
        except NetworkError as e:
            raise Failed(f"local mode's development CI issuer unreachable: {e}", "start local mode: `make run`") from None
        token = answer.body.decode("utf-8", "replace").strip()
        if answer.status != 200 or token.count(".") != 2:
            raise Failed(f"local mode's development CI issuer did not mint a token (HTTP {answer.status})",
                         "check --claims: a JSON object of claims, null to leave one out")
        return token

    def known_claims(self) -> dict[str, Any] | None:
        """The claims of the next token doctor presents, when it has or can mint one."""
        if self._next is None and not self.real and self.can_mint:
            self._next = self._mint()
        return unverified_claims(self._next) if self._next else None


# -- step 3: the target and its trust rules -------------------------------------------------------

def target_step(config: Any, ref: str, claims: dict[str, Any] | None) -> tuple[Step, Any]:
    """The target in the configuration and the rules admitting `claims` to it (all that list it if unknown)."""
    from oidc_broker import callers

    target = config.target(ref)
    if target is None:
        known = sorted(t.ref for s in config.spaces.values() for t in s.targets.values())
        raise Failed(f"{ref} is not a target of the applied configuration (it has {', '.join(known) or 'none'})",
                     f"check the spelling, or add {ref} to the configuration and `oidc-broker apply FILE`")
    rules = config.rules_for(target)
    described = f"{target.provider} {target.kind}, audience {target.audience!r}"
    if not rules:
        raise Failed(f"{ref} ({described}): no trust rule lists it",
                     f"add a trust rule to space {target.space} with `targets: [{target.name}]` and apply it")
    if claims is None:
        return Step("target", True, f"{ref} ({described}); rules listing it: "
                                    f"{', '.join(r.name for r in rules)}"), target
    issuer = config.issuer_for(claims.get("iss")) if isinstance(claims.get("iss"), str) else None
    if issuer is None:
        raise Failed(f"the CI token's issuer {claims.get('iss')!r} is not a trusted issuer",
                     "add it under trusted_issuers (exactly as the token's iss) and apply the configuration")
    reports = [r for r in callers.explain(config, callers.VerifiedCaller(issuer, claims), target)
               if target.name in r.rule.targets]
    admitting = [r.rule.name for r in reports if r.admits]
    if not admitting:
        refusals = "; ".join(f"rule {r.rule.name}: {_refusal(r.first_failure(), claims)}" for r in reports)
        raise Failed(f"{ref} ({described}): no trust rule admits the CI token ({refusals})",
                     f"run the pipeline as a rule expects, or change the rule and apply it; "
                     f"`oidc-broker explain --target {ref} -` shows every check")
    return Step("target", True, f"{ref} ({described}); admitted by rule {', '.join(admitting)} "
                                f"(rules listing it: {', '.join(r.name for r in rules)})"), target


def _refusal(check: Any, claims: dict[str, Any]) -> str:
    if check is None:
        return "?"
    shown = f", token has {claims.get(check.name[6:])!r}" if check.name.startswith("claim ") else \
        f", token has {claims.get('aud')!r}" if check.name == "aud" else ""
    return f"{check.name} {check.detail}{shown}"


# -- step 4: a token minted -----------------------------------------------------------------------

def refusal_fix(error: str, description: str, ref: str, provider: str | None, issuer: str) -> str:
    """The fix for a broker refusal (its `error`, `error_description`), as the operator acts on it."""
    lowered = description.lower()
    cloud = provider or "aws|azure|gcp"
    if error == "access_denied":
        return (f"the cloud does not trust the broker's token for {ref}: `oidc-broker trust-policy {cloud} --target "
                f"{ref}` prints the trust to set up (role trust policy, federated credential, provider condition)")
    if error == "invalid_grant" and ("already" in lowered or "replay" in lowered or "used" in lowered):
        return "each CI token is accepted once per target: use a fresh one (a new job run)"
    if error == "invalid_grant" and "aud" in lowered:
        return (f"request the audience the trust rule expects (the broker's issuer {issuer} unless the rule sets "
                f"`audience:`): GitHub Actions `core.getIDToken('{issuer}')`, GitLab `id_tokens: "
                f"BROKER_ID_TOKEN: {{aud: {issuer}}}`")
    if error == "invalid_grant" and ("exp" in lowered or "old" in lowered or "nbf" in lowered or "iat" in lowered):
        return "the CI token is expired or too old: use one minted just now, and check this machine's clock"
    if error == "invalid_grant":
        return f"`oidc-broker explain --target {ref} -` (the CI token on stdin) shows each trust rule's verdict"
    if error == "invalid_target":
        return (f"{ref} is not a target of this deployment (or not of this cloud): check the spelling and "
                "`oidc-broker apply FILE`")
    if error == "temporarily_unavailable":
        return "the broker or the cloud is busy or down for a moment: retry shortly; if it persists, see its logs"
    if error == "cloud_error":
        return (f"the cloud refused the broker itself: register the issuer {issuer} with it as `oidc-broker "
                f"trust-policy {cloud} --target {ref}` prints (an OIDC provider / federated credential / workload "
                "identity provider)")
    if error == "invalid_request":
        return "the request was malformed: check --url points at the broker's API"
    return "see the broker's logs for the request (no known fix for this answer)"


def token_step(http: Http, where: Where, ref: str, ci_token: str, jwks: dict[str, Any], target: Any,
               now: float) -> Step:
    """POST /token; the minted token verified against the JWKS (signature, iss, aud, exp)."""
    import jwt

    form = {"grant_type": EXCHANGE, "subject_token_type": JWT_TYPE, "audience": ref, "subject_token": ci_token}
    try:
        answer = http.request("POST", f"{where.url}/token", data=form)
    except NetworkError as e:
        raise Failed(f"token endpoint unreachable: {e}", reach_fix(where.url)) from None
    provider = target.provider if target is not None else None
    if answer.status != 200:
        error, description = broker_error(answer)
        raise Failed(f"/token refused: {error or 'no error'}: {description}",
                     refusal_fix(error, description, ref, provider, where.issuer))
    body = answer.json()
    minted = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(minted, str):
        raise Failed("/token answered without an access_token", "deploy this version of the broker")
    try:
        kid = jwt.get_unverified_header(minted).get("kid")
        jwk = next((k for k in jwks["keys"] if k.get("kid") == kid), None)
        if jwk is None:
            raise Failed(f"the minted token names kid {kid!r}, which the JWKS does not publish",
                         "a cloud would refuse it: the key ring publishes keys before use; see `oidc-broker keys list`")
        audience = target.audience if target is not None else None
        claims = jwt.decode(minted, jwt.PyJWK(jwk).key, algorithms=["RS256"], issuer=where.issuer, audience=audience,
                            options={"verify_aud": audience is not None, "require": ["exp", "iat", "sub", "aud"]},
                            leeway=60)
    except jwt.PyJWTError as e:
        raise Failed(f"the minted token does not verify against the JWKS: {e}",
                     "a cloud would refuse it: check the issuer and the key ring (`oidc-broker keys list`)") from None
    return Step("token", True, f"minted and verified (RS256, kid {str(kid)[:12]}…): sub {claims['sub']!r}, "
                               f"aud {claims['aud']!r}, expires in {int(claims['exp'] - now)} s")


# -- step 5: the cloud accepted -------------------------------------------------------------------

SECRET_FIELDS = ("password", "secret_access_key", "session_token", "access_token")


def cloud_step(http: Http, where: Where, ref: str, ci_token: str, provider: str) -> tuple[Step, dict[str, Any]]:
    """POST /exchange/<cloud>: the cloud's credentials for the target (for step 6), named, never shown."""
    try:
        answer = http.request("POST", f"{where.url}/exchange/{provider}", json={"target": ref},
                              headers={"Authorization": f"Bearer {ci_token}"})
    except NetworkError as e:
        raise Failed(f"exchange endpoint unreachable: {e}", reach_fix(where.url)) from None
    if answer.status != 200:
        error, description = broker_error(answer)
        raise Failed(f"/exchange/{provider} refused (HTTP {answer.status}): {error or 'no error'}: {description}",
                     refusal_fix(error, description, ref, provider, where.issuer))
    body = answer.json()
    if not isinstance(body, dict):
        raise Failed(f"/exchange/{provider} answered something other than a JSON object",
                     "deploy this version of the broker")
    shown = ", ".join(f"{k} {'(set)' if k in SECRET_FIELDS else repr(v)}" for k, v in body.items())
    return Step("cloud", True, f"{provider} accepted the broker's token: {shown}"), body


# -- step 6: the registry answered ----------------------------------------------------------------

def challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = (header or "").partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def answers_for(header: str, host: str) -> bool:
    """Whether a registry's challenge to `GET /v2/` is that of `host` (bearer: its service; basic: its realm)."""
    scheme, params = challenge(header)
    if scheme == "bearer":
        return params.get("service") == host
    return scheme == "basic" and urlsplit(params.get("realm", "")).hostname == host


def login(http: Http, base: str, username: str, password: str) -> tuple[bool, str]:
    """docker login as the docker CLI does it: /v2/, its challenge (Basic, or a Bearer token service), /v2/ again."""
    first = http.request("GET", f"{base}/v2/")
    if first.status == 200:
        return True, "answered /v2/ without credentials"
    if first.status != 401:
        return False, f"GET {base}/v2/ answered HTTP {first.status}"
    scheme, params = challenge(first.headers.get("www-authenticate", ""))
    auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    if scheme == "basic":
        again = http.request("GET", f"{base}/v2/", headers={"Authorization": auth})
        return again.status == 200, f"Basic login: HTTP {again.status}{_registry_error(again)}"
    if scheme != "bearer" or not params.get("realm"):
        return False, f"GET {base}/v2/ challenged with {scheme or 'nothing'}, not Basic or Bearer"
    query = {k: v for k, v in (("service", params.get("service")), ("scope", params.get("scope"))) if v}
    query.update(offline_token="true", client_id="docker", account=username)
    answer = http.request("GET", params["realm"], params=query, headers={"Authorization": auth})
    token = answer.json().get("token") or answer.json().get("access_token") if isinstance(answer.json(), dict) else None
    if answer.status != 200 or not isinstance(token, str):
        return False, f"the token service {params['realm']} refused: HTTP {answer.status}{_registry_error(answer)}"
    again = http.request("GET", f"{base}/v2/", headers={"Authorization": f"Bearer {token}"})
    return again.status == 200, f"Bearer login: HTTP {again.status}{_registry_error(again)}"


def _registry_error(answer: Answer) -> str:
    body = answer.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return f" ({errors[0].get('code')}: {errors[0].get('message')})"
    return ""


def registry_base(http: Http, where: Where, host: str, provider: str) -> str | None:
    """Where docker logs in to `host`: the registry itself, or in local mode its stand-in, when found."""
    if not where.local:
        return f"https://{host}"
    port = urlsplit(where.url).port
    offset = REGISTRY_OFFSETS.get(provider)
    if port is None or offset is None:
        return None
    base = f"http://127.0.0.1:{port + offset}"
    # A registry's challenge to /v2/ may not name its service (Artifact Registry's); one for a
    # repository always does (docker needs it to ask for the scope).
    for path in ("/v2/", PROBE_PATH):
        try:
            answer = http.request("GET", base + path)
        except NetworkError:
            return None
        if answer.status == 401 and answers_for(answer.headers.get("www-authenticate", ""), host):
            return base
    return None


def registry_step(http: Http, where: Where, target: Any, credentials: dict[str, Any]) -> Step:
    registry = credentials.get("registry")
    if target is None or target.kind != "feed" or not isinstance(registry, str):
        return Step("registry", None, "skipped: not a feed (no registry to log in to)")
    host = registry.split("://", 1)[-1].rstrip("/")
    base = registry_base(http, where, host, target.provider)
    if base is None:
        return Step("registry", None, f"skipped: local mode has no registry stand-in for {host} at its usual port "
                                      "(its banner lists the stand-ins it runs)")
    username, password = str(credentials.get("username") or ""), str(credentials.get("password") or "")
    try:
        ok, detail = login(http, base, username, password)
    except NetworkError as e:
        raise Failed(f"registry {host} unreachable: {e}", f"check that {host} is the registry's host and reachable "
                                                          "from here (DNS, proxy, firewall)") from None
    shown = f"{host}" + (f" (local mode's stand-in at {base.removeprefix('http://')})" if where.local else "")
    if not ok:
        raise Failed(f"docker login to {shown} as {username} failed: {detail}",
                     f"the credentials do not admit a login: grant the target's identity pull access on {host} "
                     "(AWS: ecr:GetAuthorizationToken and the repository's pull actions; Azure: AcrPull; "
                     "Google: Artifact Registry Reader)")
    return Step("registry", True, f"docker login to {shown} as {username} succeeded ({detail})")


# -- the whole diagnosis --------------------------------------------------------------------------

def diagnose(where: Where, ref: str, callers: Callers, http: Http, skip_mint: bool,
             clock: Callable[[], float] = time.time) -> list[Step]:
    """Every step in order up to the first failure."""
    steps = [deployment_step(where)]
    name = "discovery"
    try:
        step, jwks = discovery_step(http, where.issuer, where.url if where.local else None)
        steps.append(step)
        name = "target"
        target = None
        if where.read_config is None:
            steps.append(Step("target", None, "skipped: no table to read the configuration from (give --stack)"))
        else:
            config = where.read_config()
            step, target = target_step(config, ref, callers.known_claims())
            steps.append(step)
        name = "token"
        if skip_mint:
            steps.append(Step("token", None, "skipped (--skip-mint): the CI token goes to the cloud step"))
        else:
            steps.append(token_step(http, where, ref, callers.fresh(), jwks, target, clock()))
        name = "cloud"
        if target is None:
            steps.append(Step("cloud", None, "skipped: the target's cloud is not known without its configuration"))
            return steps
        if callers.real and not skip_mint:
            steps.append(Step("cloud", None, "skipped: the CI token was spent by step 4 (each is accepted once per "
                                             "target); run again with a fresh CI token and --skip-mint to test the "
                                             "cloud"))
            return steps
        step, credentials = cloud_step(http, where, ref, callers.fresh(), target.provider)
        steps.append(step)
        name = "registry"
        steps.append(registry_step(http, where, target, credentials))
    except Failed as e:
        steps.append(Step(name, False, e.detail, e.fix))
    return steps


def render(steps: list[Step]) -> list[str]:
    lines = []
    for s in steps:
        lines.append(f"{'ok  ' if s.ok else 'skip' if s.ok is None else 'FAIL'}  {s.step:<10}  {s.detail}")
        if s.fix:
            lines.append(f"      fix: {s.fix}")
    return lines


def run(args: argparse.Namespace, root_of: Callable[[], Any], stdin: TextIO | None = None,
        stdout: TextIO | None = None, stderr: TextIO | None = None, http: Any = None,
        clock: Callable[[], float] = time.time, deployment: Any = None) -> int:
    """One `doctor` command; its exit code (module docstring). `root_of` finds the project (local mode's
    record); `http` (Http) and `deployment` (deployment.find's) stand in for the network and the lookup."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    own = http is None
    try:
        ref = parse_target(args.target)
        parse_url(args.url)
        claims = parse_claims(args.claims)
        token = read_token(args, stdin)
        where = where_of(deployment, args.url) if deployment is not None else locate(args, root_of)
        if token is None and not where.local:
            raise UsageError("a deployment's doctor needs a real CI token: --token-file FILE, or --token - to read "
                             "it from standard input")
        if own:
            http = Http()
        callers = Callers(http, where.url, token, claims, can_mint=where.local and token is None)
        steps = diagnose(where, ref, callers, http, args.skip_mint, clock)
        if args.output == "json":
            stdout.write(json.dumps([asdict(s) for s in steps], indent=2) + "\n")
        else:
            stdout.write("\n".join(render(steps)) + "\n")
        stdout.flush()
    except UsageError as e:
        print(f"oidc-broker doctor: {e}", file=stderr)
        return 2
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        except (OSError, ValueError):
            pass
        print("oidc-broker doctor: output cut short: the reading end of the pipe closed", file=stderr)
        return 2
    except KeyboardInterrupt:
        print("oidc-broker doctor: interrupted", file=stderr)
        return 2
    finally:
        if own and http is not None:
            http.close()
    return 1 if any(s.ok is False for s in steps) else 0


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """`doctor <space>/<target>`, running `func`."""
    p = sub.add_parser("doctor", help="perform a real exchange for a target step by step (discovery, trust rules, "
                                      "token, cloud, registry) and name the fix for the first failure",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes:" + __doc__.split("Exit codes:", 1)[1].rstrip())
    p.add_argument("target", help="<space>/<target>, e.g. default/prod-ecr")
    caller = p.add_argument_group("the caller's CI token (default in local mode: minted by its development CI issuer)")
    caller.add_argument("--token-file", metavar="FILE", help="a real CI token in FILE ('-': standard input)")
    caller.add_argument("--token", metavar="-", help="'-': read a real CI token from standard input")
    caller.add_argument("--claims", metavar="JSON", help="local mode: the claims of the CI tokens minted (default "
                                                         f"{json.dumps(DEFAULT_CLAIMS)})")
    caller.add_argument("--skip-mint", action="store_true", help="skip the /token step, so that a real CI token "
                                                                 "(accepted once per target) tests the cloud")
    where = p.add_argument_group("deployment (default: the running local mode)")
    where.add_argument("--stack", metavar="NAME", help="the CloudFormation stack (its outputs IssuerUrl, ApiUrl, "
                                                       "TableName)")
    where.add_argument("--region", help="the stack's region (default: AWS_REGION / the profile's)")
    where.add_argument("--profile", help="the AWS CLI profile to use (default: AWS_PROFILE)")
    where.add_argument("--url", metavar="URL", help="the broker's base URL, if not the deployment's (a broker "
                                                    "named by URL alone is checked without its configuration)")
    p.add_argument("--output", choices=("text", "json"), default="text",
                   help="json: a list of {step, ok, detail, fix} (ok null: skipped)")
    p.set_defaults(func=func)
