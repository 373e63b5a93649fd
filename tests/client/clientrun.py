"""The client run in-process as a pipeline step runs it: `oidc-broker <argv>` with an environment of the
test's own (a CI's variables, HOME, DOCKER_CONFIG) and a clock it can move."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

from oidc_broker_client import ambient, login
from oidc_broker_client.main import run_client

MAIN = {"repository": "acme/app", "ref": "refs/heads/main"}
PRODUCTION = {**MAIN, "environment": "production"}


@dataclass
class Ran:
    code: int
    out: str
    err: str


class Client:
    """`oidc-broker <argv>` in-process, with `env` as the whole environment and `now` as the clock."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
        self.now = time.time()

    def __call__(self, *argv: str, stdin: str = "") -> Ran:
        out, err = io.StringIO(), io.StringIO()
        context = login.Context(ambient.Environment(self.env, stdin=io.StringIO(stdin).read), out, err,
                                lambda: self.now)
        code = run_client(list(argv), context)
        return Ran(code, out.getvalue(), err.getvalue())
