"""SAM local against local mode: the `--env-vars` file local mode writes, and fresh tokens for events/.

While it runs, local mode writes `env.json` beside its record (`.oidc-broker/env.json`): for each
function of template.yaml, every variable the template declares for it (Globals' and its own) and
every variable local mode set for its functions that the template does not declare (the embedded
AWS's endpoint and credentials, each cloud's emulators, the CA bundle, loopback issuers allowed,
the shortened key lifecycle), each with the value local mode's own functions run with, for
`sam local start-api --env-vars .oidc-broker/env.json --docker-network host`. The URLs are loopback
ones: on Linux, `--docker-network host` gives the container the host's loopback. SAM CLI sets in a
container only the variables the template declares for its function (and AWS_* ones of its own:
the region and the shell's credentials); the others are in the file so that it says all that
local mode's functions see. template.yaml declares each variable local mode points elsewhere (with
a deployment's value: empty endpoints, the public authority), so all of them reach a container.

`python -m oidc_broker_cli.local.samlocal events` (`make events`) puts a fresh token from local
mode's development CI issuer into each sample event that carries one (events/token.json's
subject_token, each exchange event's Authorization header), keeping each event's content-length
the byte length of its body.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ..deployment import NOT_RUNNING, LocalRecord, record_path
from ..devci import LIFETIME
from ..devci import PREFIX as DEV_CI_PREFIX
from ..template import Template

ENV_FILE = "env.json"
FUNCTION = "AWS::Serverless::Function"


def env_path(record: Path) -> Path:
    """Where the `--env-vars` file is: beside local mode's record."""
    return record.with_name(ENV_FILE)


def declared(template: Template, logical_id: str) -> list[str]:
    """The variables the template declares for a function: Globals' then its own, in order."""
    def names(holder: Mapping[str, Any]) -> list[str]:
        return list(((holder.get("Environment") or {}).get("Variables")) or {})

    own = template.resources[logical_id]["Properties"]
    return list(dict.fromkeys(names(template.globals) + names(own)))


def local_only(template: Template, before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """The variables starting local mode set in its process that no function of the template declares:
    the embedded AWS's endpoint and credentials, each cloud's emulators, loopback issuers allowed."""
    everyone = {n for logical_id in template.of_type(FUNCTION) for n in declared(template, logical_id)}
    return sorted(k for k, v in after.items() if before.get(k) != v and k not in everyone)


def environments(template: Template, environ: Mapping[str, str], local: list[str]) -> dict[str, dict[str, str]]:
    """The `sam local --env-vars` document: per function, its declared variables then `local`, local
    mode's own, with the values in `environ` (local mode's functions share one process, so one
    environment: a variable two functions declare has one value there).

    A declared variable local mode gave no value to is an error: the file would run the function
    with the template's value (or none) where local mode's functions run with another.
    """
    document: dict[str, dict[str, str]] = {}
    for logical_id in template.of_type(FUNCTION):
        names = list(dict.fromkeys(declared(template, logical_id) + list(local)))
        missing = [n for n in names if n not in environ]
        if missing:
            raise ValueError(f"local mode set no value for {', '.join(missing)} ({logical_id} in "
                             f"{template.path.name})")
        document[logical_id] = {n: environ[n] for n in names}
    return document


def write_env(path: Path, document: dict[str, dict[str, str]]) -> None:
    """Write the `--env-vars` file whole (readers never see half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)


def with_token(event: dict[str, Any], token: str) -> dict[str, Any] | None:
    """The event carrying `token` where it carries a caller's token, its content-length kept right;
    None for an event that carries none.

    A token request (form body) carries it as `subject_token`; an exchange request as its
    `Authorization: Bearer` header.
    """
    headers = dict(event.get("headers") or {})
    body = event.get("body")
    carries = False
    if headers.get("authorization", "").startswith("Bearer "):
        headers["authorization"] = f"Bearer {token}"
        carries = True
    if (isinstance(body, str) and not event.get("isBase64Encoded")
            and headers.get("content-type", "").startswith("application/x-www-form-urlencoded")):
        form = parse_qsl(body, keep_blank_values=True)
        if any(k == "subject_token" for k, _ in form):
            body = urlencode([(k, token if k == "subject_token" else v) for k, v in form])
            carries = True
    if not carries:
        return None
    if isinstance(body, str):
        headers["content-length"] = str(len(body.encode()))
    return {**event, "headers": headers, **({"body": body} if body is not None else {})}


def carries_token(event: dict[str, Any]) -> bool:
    """Whether the event carries a caller's token (a token or exchange request)."""
    return with_token(event, "") is not None


def body_length(event: dict[str, Any]) -> int:
    """The byte length of an event's body as API Gateway received it."""
    import base64

    body = event.get("body") or ""
    return len(base64.b64decode(body) if event.get("isBase64Encoded") else body.encode())


def mint(base_url: str) -> str:
    """A fresh token from local mode's development CI issuer (its default, GitHub Actions-shaped claims)."""
    request = urllib.request.Request(f"{base_url}{DEV_CI_PREFIX}/token?format=raw", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def refresh_events(directory: Path, base_url: str) -> list[Path]:
    """Give every event in `directory` that carries a caller's token a fresh one (each its own: an
    exchange accepts a CI token once per target). The files rewritten."""
    rewritten = []
    for path in sorted(directory.glob("*.json")):
        event = json.loads(path.read_text())
        if not isinstance(event, dict) or not carries_token(event):
            continue
        path.write_text(json.dumps(with_token(event, mint(base_url)), indent=2) + "\n")
        rewritten.append(path)
    return rewritten


def running(root: Path) -> LocalRecord:
    """The running local mode's record; LookupError (one line) when none runs."""
    record = LocalRecord.read(record_path(root))
    if record is None or not record.alive():
        raise LookupError(NOT_RUNNING.split(", or name")[0])
    return record


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """`events`: refresh the token-bearing sample events from the running local mode (exit 0; 2: cannot)."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["events"]:
        print("usage: python -m oidc_broker_cli.local.samlocal events", file=sys.stderr)
        return 2
    root = root or Path.cwd()
    try:
        record = running(root)
        rewritten = refresh_events(root / "events", record.url)
    except LookupError as e:
        print(f"error: {e}; `make events` mints from its development CI issuer", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as e:
        print(f"error: cannot mint from local mode's development CI issuer at {record.url}{DEV_CI_PREFIX} "
              f"({getattr(e, 'reason', None) or e}); is it still running?", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: an event in {root / 'events'} is not JSON ({e})", file=sys.stderr)
        return 2
    for path in rewritten:
        print(f"{path.relative_to(root)}: a fresh CI token from {record.url}{DEV_CI_PREFIX} (valid {LIFETIME // 60} "
              "minutes; an exchange accepts it once per target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
