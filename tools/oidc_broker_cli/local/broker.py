"""LocalBroker: everything local mode runs, started in order and stopped again; `run` for the CLI."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from oidc_broker import config as config_module

from .. import apply as apply_module
from ..devci import PREFIX as DEV_CI_PREFIX
from ..devci import DevCI
from ..template import Schedule, Template
from . import clouds
from .adapter import CLOUDFORMATION_PREFIX, SCHEDULE_PREFIX, handler_for
from .aws import EmbeddedAws
from .functions import Functions


@dataclass
class LocalBroker:
    """Everything local mode runs, started by `start()` and stopped by `stop()`."""

    root: Path
    config_path: Path
    port: int = 3000
    host: str = "127.0.0.1"
    log: Callable[[str], None] = print
    base_url: str = ""
    issuer: str = ""
    aws_endpoint: str = ""
    targets: list[str] = field(default_factory=list)

    def start(self) -> None:
        """The embedded AWS, the HTTP server, each cloud's emulators, the stack, then the configuration.

        The configuration is parsed before anything is provisioned, so a bad file fails fast.
        """
        self.template = Template(self.root / "template.yaml")
        self.functions = Functions(self.template)
        self.routes = self.template.routes()
        self.schedules: list[Schedule] = self.functions.schedules
        self.wirings: list[clouds.Wiring] = []
        self.aws = EmbeddedAws()
        self.aws.start()
        self.aws_endpoint = self.aws.endpoint
        self._server = ThreadingHTTPServer((self.host, self.port), handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-http", daemon=True)
        self._thread.start()

        document = apply_module.read(self.config_path, local_url=self.base_url)
        document.setdefault("issuer", self.base_url)
        self.issuer = document["issuer"]
        self.dev_ci = DevCI(self.base_url, audience=self.issuer)
        config_module.parse(document, str(self.config_path), allow_loopback_http=True)  # fail before provisioning
        self.wirings = clouds.start_all(self)
        self._store = self.aws.provision(self.template, self.issuer, self.invoke,
                                         self.base_url + CLOUDFORMATION_PREFIX)
        config = apply_module.apply(document, str(self.config_path), self._store, allow_loopback_http=True)
        self.targets = [t.ref for s in config.spaces.values() for t in s.targets.values()]
        for wiring in self.wirings:
            wiring.trust(config)

    def invoke(self, logical_id: str, event: Any) -> Any:
        """Call a function's handler as Lambda would: one request at a time per function."""
        return self.functions.invoke(logical_id, event)

    def fire(self, logical_id: str, event_id: str | None = None) -> tuple[Schedule, Any]:
        """Invoke a scheduled function now with its schedule's event (functions.NotScheduled if it has none)."""
        return self.functions.fire(logical_id, event_id)

    def openapi(self) -> dict[str, Any]:
        """The API description (docs/openapi.yaml), served as /openapi.json."""
        from ..yamlfile import load

        return load((self.root / "docs" / "openapi.yaml").read_text())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for wiring in reversed(self.wirings):
            wiring.stop()
        self.aws.stop()

    def banner(self) -> str:
        b = self.base_url
        target = self.targets[0] if self.targets else "default/prod-ecr"
        ci_token = (f"CI_TOKEN=$(curl -s -X POST '{b}{DEV_CI_PREFIX}/token?format=raw' "
                    """-d '{"repository": "acme/app", "ref": "refs/heads/main"}')""")
        lines = [("issuer", self.issuer), ("discovery", f"{self.issuer}/.well-known/openid-configuration"),
                 ("embedded AWS", f"{self.aws_endpoint} (moto)")]
        lines += [line for wiring in self.wirings for line in wiring.banner()]
        lines += [("dev CI issuer", self.dev_ci.issuer), ("targets", ", ".join(self.targets))]
        steps = [
            ("a CI token from the development CI issuer (GitHub Actions-shaped; pick the claims)", f"  {ci_token}\n"),
            ("trade it for a broker token scoped to a target",
             f"  curl -s {b}/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\\n"
             f"    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt -d audience={target} \\\n"
             '    --data-urlencode "subject_token=$CI_TOKEN"\n'),
            ("the keys a cloud verifies it with", f"  curl -s {b}/.well-known/jwks.json\n"),
            ("decode the access_token from step 2", "  .venv/bin/oidc-broker decode ACCESS_TOKEN\n"),
        ]
        steps += [step for wiring in self.wirings if (step := wiring.walk(b, ci_token))]
        text = "\noidc-broker local mode\n" + "".join(f"  {label:<15}{value}\n" for label, value in lines)
        text += "\nWalk the flow:\n" + "".join(f"  # {n}. {title}\n{commands}"
                                               for n, (title, commands) in enumerate(steps, 1))
        if self.schedules:
            text += "\nFire a scheduled function now (the event its schedule sends; GET lists them):\n" + "".join(
                f"  curl -s -X POST {b}{SCHEDULE_PREFIX}/{s.function}/{s.event}   # {s.expression}"
                f"{'' if s.enabled else ' (disabled)'}\n" for s in self.schedules)
        return text


def run(root: Path, config_path: Path, port: int) -> int:
    broker = LocalBroker(root=root, config_path=config_path, port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    broker.start()
    print(broker.banner(), flush=True)
    print(f"ready: {broker.base_url} (Ctrl-C to stop)", flush=True)
    stop.wait()
    broker.stop()
    print("stopped", flush=True)
    return 0
