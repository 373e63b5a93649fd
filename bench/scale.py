"""The scale curve: how validate, apply, a function's configuration read and a mint grow with the
configuration, from 10 to 10,000 targets and as many trust rules, spread over up to 1,000 spaces
and all in one space.

    .venv/bin/python bench/scale.py [--sizes 10,100,1000,10000] [--json FILE]

Each point runs in a fresh interpreter with its own local mode (the real handlers over the embedded
AWS), on local mode's demo configuration plus the generated targets and rules:
- validate: read the YAML file and validate it (what `oidc-broker validate` does), seconds;
- apply: what `oidc-broker apply` does past validating: read what is applied, diff, write; with
  every space changed, and with one, seconds;
- read: a new container's first read (pointer, manifest, the one space a mint names), seconds;
- mint: a warm mint's handler CPU (thread time: the best of three medians) to the demo target, as a
  ratio to the same mint at the smallest size of the same layout: the budget is that it does not grow.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10, 100, 1000, 10_000)
LAYOUTS = ("spread", "one_space")
MAX_SPACES = 1000
MINTS = 40
REPEATS = 2

BUDGETS = {
    # The mint at 10,000 targets and rules against the mint at 10, in each layout.
    "scale.spread.mint_ratio": 1.2,
    "scale.one_space.mint_ratio": 1.2,
    # Seconds at 10,000 targets and 10,000 rules (in seconds, not minutes).
    "scale.spread.validate_s": 8.0,
    "scale.one_space.validate_s": 8.0,
    "scale.spread.apply_all_s": 20.0,
    "scale.one_space.apply_all_s": 20.0,
    "scale.spread.apply_one_s": 2.0,
    "scale.spread.read_s": 1.0,
    "scale.one_space.read_s": 3.0,
}

# Roles in an account local mode does not emulate: nothing is set up for them in its IAM.
ROLE = "arn:aws:iam::210987654321:role/svc-{i}"


def _target(i: int, indent: str) -> str:
    return (f"{indent}- name: t-{i}\n{indent}  kind: account\n{indent}  provider: aws\n"
            f"{indent}  aws: {{role_arn: \"{ROLE.format(i=i)}\", region: us-east-1}}\n")


def _rule(i: int, indent: str) -> str:
    return (f"{indent}- name: r-{i}\n{indent}  issuer: dev-ci\n"
            f"{indent}  claims: {{repository: acme/svc-{i}, repository_id: \"{100000 + i}\", ref: refs/heads/main}}\n"
            f"{indent}  targets: [t-{i}]\n")


def config_text(n: int, layout: str) -> str:
    """examples/local.yaml with `n` more targets and `n` more rules, as `layout` places them."""
    text = (ROOT / "examples" / "local.yaml").read_text()
    if text.count("    targets:\n") != 1 or not text.rstrip().endswith("context: {environment: {claim: environment}}"):
        raise SystemExit("bench: examples/local.yaml no longer has the shape the scale curve extends")
    if layout == "one_space":
        targets = "".join(_target(i, "      ") for i in range(n))
        return text.replace("    targets:\n", "    targets:\n" + targets, 1) + "".join(_rule(i, "      ") for i in range(n))
    spaces = min(n, MAX_SPACES)
    blocks = []
    for s in range(spaces):
        mine = range(s, n, spaces)
        blocks.append(f"  - name: s-{s}\n    targets:\n" + "".join(_target(i, "      ") for i in mine)
                      + "    trust:\n" + "".join(_rule(i, "      ") for i in mine))
    return text + "".join(blocks)


def point(n: int, layout: str) -> dict[str, float]:
    """One point of the curve, in this interpreter (a fresh one: local mode's AWS is per process)."""
    import contextlib
    import copy
    import io

    from oidc_broker import config as config_module
    from oidc_broker.store import Store
    from oidc_broker_cli import apply as apply_module
    from oidc_broker_cli.local import LocalBroker, http_api_event

    path = Path(tempfile.mkdtemp(prefix="oidc-broker-scale-")) / "broker.yaml"
    path.write_text(config_text(n, layout))
    results: dict[str, float] = {}

    started = time.perf_counter()
    document = apply_module.read(path, local_url="http://127.0.0.1:1")
    document.setdefault("issuer", "http://127.0.0.1:1")
    config_module.parse(document, str(path), allow_loopback_http=True)
    results["validate_s"] = time.perf_counter() - started

    local = LocalBroker(root=ROOT, config_path=path, port=0, log=lambda _: None)
    with contextlib.redirect_stdout(io.StringIO()):
        local.start()
        try:
            store: Store = local._store
            applied = store.get_config()["document"]
            every = copy.deepcopy(applied)
            for space in every["spaces"]:
                for target in space.get("targets") or []:
                    target["lifetime"] = "20m"
            def apply(document):
                # As `oidc-broker apply` does past validation: read what is applied, diff, write.
                started = time.perf_counter()
                apply_module.changes(store.get_config()["document"], document)
                store.put_config(document, "scale.yaml", int(time.time()))
                return time.perf_counter() - started

            results["apply_all_s"] = apply(every)
            one = copy.deepcopy(every)
            one["spaces"][-1]["targets"][0]["lifetime"] = "25m"
            results["apply_one_s"] = apply(one)
            store.put_config(applied, "scale.yaml", int(time.time()))

            started = time.perf_counter()
            fresh = config_module.StoredConfig(store, allow_loopback_http=True)
            big = "default" if layout == "one_space" else "s-0"
            fresh().spaces[big].targets["t-0"]
            results["read_s"] = time.perf_counter() - started

            route = next(r for r in local.routes if r.function == "TokenFunction")

            def mint_event():
                form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                        "subject_token": local.dev_ci.mint({}),
                        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": "default/prod-ecr"}
                return http_api_event(route, route.method, route.path, "",
                                      {"host": "127.0.0.1", "content-type": "application/x-www-form-urlencoded"},
                                      urlencode(form).encode(), "127.0.0.1", {})

            # The token function reads the configuration at its first mint: the one applied last.
            for _ in range(5):
                assert local.invoke("TokenFunction", mint_event())["statusCode"] == 200
            # What this process holds besides a function's container (the embedded AWS's items, the
            # whole parsed configuration apply validated) is left out of the garbage collector's walks.
            gc.collect()
            gc.freeze()
            batches = []
            for _ in range(3):
                samples = []
                for event in [mint_event() for _ in range(MINTS)]:
                    before = time.thread_time()
                    response = local.invoke("TokenFunction", event)
                    samples.append(time.thread_time() - before)
                    assert response["statusCode"] == 200, response
                batches.append(statistics.median(samples))
            results["mint_cpu_ms"] = min(batches) * 1000
        finally:
            local.stop()
    return {k: round(v, 4) for k, v in results.items()}


def curve(sizes: tuple[int, ...] = SIZES) -> dict[str, object]:
    """Every point, each in a fresh interpreter; the figures at the largest size, and the curve."""
    results: dict[str, object] = {}
    for layout in LAYOUTS:
        points = {n: _run_point(n, layout) for n in sizes}
        # The two ends once more each, alternately: the mint ratio takes each end's best, so a busy
        # moment of the machine during one run does not read as growth.
        for n in (min(sizes), max(sizes)) * (REPEATS - 1):
            points[n]["mint_cpu_ms"] = min(points[n]["mint_cpu_ms"], _run_point(n, layout)["mint_cpu_ms"])
        smallest, largest = points[min(sizes)], points[max(sizes)]
        for key in ("validate_s", "apply_all_s", "apply_one_s", "read_s"):
            results[f"scale.{layout}.{key}"] = largest[key]
        results[f"scale.{layout}.mint_ratio"] = round(largest["mint_cpu_ms"] / smallest["mint_cpu_ms"], 2)
        results[f"scale.{layout}.curve"] = {n: p for n, p in points.items()}
    return results


def _run_point(n: int, layout: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--point", str(n), layout], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"bench: scale point {n} {layout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="targets (and rules) per point")
    parser.add_argument("--point", nargs=2, metavar=("N", "LAYOUT"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.point:
        print(json.dumps(point(int(args.point[0]), args.point[1])))
        return 0
    results = curve(tuple(int(n) for n in args.sizes.split(",")))
    failures = report(results)
    for failure in failures:
        print(f"OVER BUDGET: {failure}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failures else 0


def report(results: dict[str, object]) -> list[str]:
    """Print the curve and the figures against their budgets; the figures over budget."""
    for layout in LAYOUTS:
        points = results.get(f"scale.{layout}.curve")
        if not points:
            continue
        print(f"scale, {layout.replace('_', ' ')}: targets+rules  validate_s  apply_all_s  apply_one_s  read_s  mint_cpu_ms")
        for n, p in points.items():
            print(f"  {int(n):>6} + {int(n):<6}  {p['validate_s']:>10}  {p['apply_all_s']:>11}  {p['apply_one_s']:>11}"
                  f"  {p['read_s']:>6}  {p['mint_cpu_ms']:>11}")
    failures = []
    for key, budget in BUDGETS.items():
        if key in results:
            value = results[key]
            print(f"{key:<32}  {value}   (budget {budget})")
            if value > budget:
                failures.append(f"{key} = {value} (budget {budget})")
    return failures


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    sys.exit(main())
