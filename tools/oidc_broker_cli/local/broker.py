"""LocalBroker: everything local mode runs, started in order and stopped again; `run` for the CLI,
which also records where it runs (deployment.LocalRecord) for the commands that talk to it."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from oidc_broker import config as config_module

from .. import apply as apply_module
from ..deployment import INVOKE_PREFIX, LocalRecord, record_path
from ..devci import PREFIX as DEV_CI_PREFIX
from ..devci import DevCI
from ..template import Schedule, Template
from . import clouds
from .adapter import CLOUDFORMATION_PREFIX, SCHEDULE_PREFIX, handler_for
from .aws import LIFECYCLE, TABLE_NAME, EmbeddedAws
from .functions import Functions

ROTATE_KEYS = "RotateKeysFunction"  # the key rotation function's logical id in template.yaml


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
    # Function variables set differently from the template's (`oidc-broker local`: aws.LIFECYCLE).
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._due: dict[str, tuple[float, threading.Timer]] = {}  # function -> (when, its timer)
        self._due_lock = threading.Lock()
        self._stopping = False

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
        before = dict(os.environ)
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
        # What the embedded AWS and the emulators set (their endpoints, the CA bundle) wins over the
        # template's deployment defaults for the same variables (empty: the clouds' public endpoints).
        ours = {k: v for k, v in os.environ.items() if before.get(k) != v}
        self._store = self.aws.provision(self.template, self.issuer, self.invoke,
                                         self.base_url + CLOUDFORMATION_PREFIX, {**ours, **self.overrides})
        config = apply_module.apply(document, str(self.config_path), self._store, allow_loopback_http=True)
        self.targets = [t.ref for s in config.spaces.values() for t in s.targets.values()]
        for wiring in self.wirings:
            wiring.trust(config)
        if any(s.function == ROTATE_KEYS for s in self.schedules):
            self.fire(ROTATE_KEYS)  # its first scheduled run: the next key published beside the stack's

    def invoke(self, logical_id: str, event: Any) -> Any:
        """Call a function's handler as Lambda would: one request at a time per function."""
        return self.functions.invoke(logical_id, event)

    def fire(self, logical_id: str, event_id: str | None = None) -> tuple[Schedule, Any]:
        """Invoke a scheduled function now with its schedule's event (functions.NotScheduled if it has none)."""
        schedule, result = self.functions.fire(logical_id, event_id)
        self._run_when_due(schedule, result)
        return schedule, result

    def invoke_direct(self, logical_id: str, event: Any) -> Any:
        """Invoke a function with an event of the caller's, as Lambda Invoke does (an operator command)."""
        result = self.invoke(logical_id, event)
        schedule = next((s for s in self.schedules if s.function == logical_id and s.enabled), None)
        if schedule is not None:
            self._run_when_due(schedule, result)
        return result

    def _run_when_due(self, schedule: Schedule, result: Any) -> None:
        """Fire `schedule` again when the function's answer says a requested step falls due (`effective_at`).

        In a deployment the schedule's next run performs it (within its rate); local mode runs it
        then, so `oidc-broker keys rotate` takes effect within the publication delay.
        """
        due = result.get("effective_at") if isinstance(result, dict) else None
        if not isinstance(due, (int, float)) or isinstance(due, bool) or due <= time.time():
            return
        with self._due_lock:
            when, current = self._due.get(schedule.function, (None, None))
            if self._stopping or (current is not None and when <= due):
                return  # an earlier run is set; its answer sets the next one
            if current is not None:
                current.cancel()
            timer = threading.Timer(due - time.time() + 1, self._fire_due, (schedule,))  # +1: times are whole seconds
            timer.daemon = True
            self._due[schedule.function] = (due, timer)
            timer.start()

    def _fire_due(self, schedule: Schedule) -> None:
        with self._due_lock:
            self._due.pop(schedule.function, None)
            if self._stopping:
                return
        try:
            _, result = self.fire(schedule.function, schedule.event)
            steps = result.get("steps") if isinstance(result, dict) else None
            self.log(f"local: ran {schedule.function} ({schedule.event}) when due: "
                     f"{', '.join(str(s.get('step')) for s in steps if isinstance(s, dict)) if steps else 'no step'}")
        except Exception as e:  # as a failed scheduled run: recorded, retried by a later run
            self.log(f"local: {schedule.function} failed on its scheduled event: {type(e).__name__}: {e}")

    def openapi(self) -> dict[str, Any]:
        """The API description (docs/openapi.yaml), served as /openapi.json."""
        from ..yamlfile import load

        return load((self.root / "docs" / "openapi.yaml").read_text())

    def cancel_due(self) -> None:
        """No function runs when due any more (stopping)."""
        with self._due_lock:
            self._stopping = True
            for _, timer in self._due.values():
                timer.cancel()
            self._due.clear()

    def stop(self) -> None:
        self.cancel_due()
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
        if any(s.function == ROTATE_KEYS for s in self.schedules):
            shortened = (f" (lifecycle shortened through the template's variables, "
                         f"{', '.join(f'{k}={v}' for k, v in self.overrides.items())}:\n  `keys rotate` takes effect "
                         f"within seconds, not minutes; local mode runs {ROTATE_KEYS} when it falls due)"
                         if self.overrides else "")
            text += (f"\nSigning keys{shortened}:\n"
                     "  .venv/bin/oidc-broker keys list\n"
                     "  .venv/bin/oidc-broker keys rotate\n"
                     "  .venv/bin/oidc-broker keys revoke KID      # emergencies: out of the JWKS at once\n"
                     f"  (any function: curl -s -X POST {b}{INVOKE_PREFIX}/<FunctionLogicalId> -d '<JSON event>')\n")
        if self.schedules:
            text += "\nFire a scheduled function now (the event its schedule sends; GET lists them):\n" + "".join(
                f"  curl -s -X POST {b}{SCHEDULE_PREFIX}/{s.function}/{s.event}   # {s.expression}"
                f"{'' if s.enabled else ' (disabled)'}\n" for s in self.schedules)
        return text


def run(root: Path, config_path: Path, port: int) -> int:
    from . import samlocal

    broker = LocalBroker(root=root, config_path=config_path, port=port, overrides=LIFECYCLE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    before = dict(os.environ)
    broker.start()
    path = record_path(root)
    record = LocalRecord(url=broker.base_url, issuer=broker.issuer, table=TABLE_NAME,
                         aws_endpoint=broker.aws_endpoint, pid=os.getpid())
    # `sam local --env-vars`: what this local mode's functions run with, beside its record and only with it.
    env_file, env_written = samlocal.env_path(path), False
    try:
        print(broker.banner(), flush=True)
        try:
            if not record.write(path):
                print(f"note: another local mode is recorded in {path}; `oidc-broker keys` without --stack talks "
                      "to that one", flush=True)
            else:
                samlocal.write_env(env_file, samlocal.environments(
                    broker.template, os.environ, samlocal.local_only(broker.template, before, os.environ)))
                env_written = True
                print(f"sam local: --env-vars {env_file} --docker-network host", flush=True)
        except OSError as e:
            print(f"note: cannot record where local mode runs in {path} ({e.strerror}); `oidc-broker keys` "
                  "without --stack will not find it", flush=True)
        print(f"ready: {broker.base_url} (Ctrl-C to stop)", flush=True)
        stop.wait()
    finally:
        if env_written:
            env_file.unlink(missing_ok=True)
        record.remove(path)
        broker.stop()
    print("stopped", flush=True)
    return 0
