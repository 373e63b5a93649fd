"""oidc-broker benchmarks: ratios and counts, not raw times (machines are noisy).

    make bench            # or: .venv/bin/python bench/bench.py [--runs N] [--json FILE]

Reports, and checks against the budgets in BUDGETS (a regression past one exits 1):
- cold start per function: import and initialise its handler in a fresh interpreter, median of
  runs, as a ratio to `python -c "import boto3"` measured in the same run;
- AWS calls per request, counted through botocore's event hooks and the lean client's observers;
  for the Azure and Google Cloud exchanges, fresh and cached, also the calls their cloud received
  (local mode's emulators count them);
- the warm handler's own CPU time per mint, and per verification of a caller token, as a ratio to
  PyJWT verifying a fresh caller token, interleaved one for one with the requests (thread CPU
  time: the embedded AWS runs on other threads);
- the cost per million mints, from the counted calls and list prices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = tuple(sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "app.py").is_file()))

BUDGETS = {
    "calls.discovery": 0,
    "calls.jwks_warm": 0,
    "calls.mint": 2,  # one KMS Sign, one DynamoDB write (replay guard + audit record)
    "calls.exchange_cached_cloud": 0,  # an exchange served from the cache calls no cloud
    "calls.exchange_cached": 2,  # the cache read and the grant write
    # Azure (Entra token, ACR refresh token) and Google Cloud (STS): the exchange function's own calls.
    # Fresh: cache read, lease put, cache re-read under the lease, grant, data key, cache write,
    # lease delete, one Sign (one assertion).
    "calls.exchange_azure_fresh": 8,
    "calls.exchange_azure_fresh_cloud": 2,  # one Entra token request, one ACR /oauth2/exchange
    "calls.exchange_azure_cached": 2,
    "calls.exchange_azure_cached_cloud": 0,
    "calls.exchange_gcp_fresh": 8,
    "calls.exchange_gcp_fresh_cloud": 1,  # one STS token exchange (a feed federated directly)
    "calls.exchange_gcp_cached": 2,
    "calls.exchange_gcp_cached_cloud": 0,
    "imports_boto3.discovery": False,
    "cold_start_ratio.discovery": 0.4,  # discovery imports no boto3: well under boto3 alone
    # The JWKS and token functions reach DynamoDB and KMS through the lean awsjson client (botocore's
    # SigV4 signer, no session, no service model): measured 0.6-1.05 (JWKS) and 0.93 (token).
    "imports_boto3.jwks": False,
    "imports_boto3.token": False,
    "cold_start_ratio.jwks": 1.2,
    "cold_start_ratio.token": 1.5,
    # A caller check verifies with cryptography directly, from a cached public key: measured 0.80-0.87
    # of PyJWT verifying the same kind of token.
    "cpu_ratio.verify": 1.2,
    # A whole mint: the caller check plus the client-side work of its two AWS calls (signing,
    # serialising); 31 with botocore's clients and PyJWT, measured 11.3 with the lean client. The
    # budget is half of the former.
    "cpu_ratio.mint": 15.0,
}

# us-east-1 list prices (USD), and the assumptions the cost line states.
PRICES = {
    "http_api_per_million": 1.00,
    "lambda_request_per_million": 0.20,
    "lambda_arm64_gb_second": 0.0000133334,
    "kms_rsa_2048_sign_per_10k": 0.03,
    "dynamodb_write_per_million": 0.625,
    "dynamodb_read_per_million": 0.125,
}
LAMBDA_MEMORY_GB = 0.5
LAMBDA_WARM_MS = 60


def _median_seconds(code: str, env: dict[str, str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def cold_starts(runs: int) -> dict[str, object]:
    env = {**os.environ, "TABLE_NAME": "bench", "ISSUER_URL": "https://id.example.com", "AWS_DEFAULT_REGION": "us-east-1",
           "POWERTOOLS_SERVICE_NAME": "oidc-broker", "POWERTOOLS_METRICS_NAMESPACE": "OidcBroker",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "CACHE_KEY_ID": "alias/bench",
           "KEY_RING_SEAL_KEY": "alias/bench-seal", "KEY_POLICY_ROTATOR": "arn:aws:iam::123456789012:role/bench",
           "STACK_NAME": "bench"}
    baseline = _median_seconds("import boto3", env, runs)
    empty = _median_seconds("pass", env, runs)
    results: dict[str, object] = {"baseline_boto3_s": round(baseline, 4)}
    for name in FUNCTIONS:
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'functions' / name)!r}); import app; "
                "print('boto3' in sys.modules)")
        seconds = _median_seconds(code, env, runs)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT).stdout
        # Both sides less the bare interpreter start, so the ratio compares imports with imports.
        results[f"cold_start_ratio.{name}"] = round((seconds - empty) / (baseline - empty), 2)
        results[f"imports_boto3.{name}"] = out.strip() == "True"
    return results


class CallCounter:
    """Counts AWS API calls by service and operation, through botocore's event hooks and the lean
    client's observers alike, so a budget means the same whichever client made the call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.own: Counter[str] = Counter()  # made on the installing thread (the handlers the bench invokes)
        self._thread = threading.get_ident()
        self._lock = threading.Lock()

    def install(self) -> None:
        import botocore.session

        counter = self
        original = botocore.session.Session.__init__

        def init(session, *args, **kwargs):
            original(session, *args, **kwargs)
            session.register("before-call", counter._count)

        botocore.session.Session.__init__ = init
        try:
            from oidc_broker import awsjson
        except ImportError:
            return
        awsjson.OBSERVERS.append(self._record)

    def _count(self, model, **_):
        self._record(model.service_model.service_name, model.name)

    def _record(self, service: str, operation: str) -> None:
        with self._lock:
            self.calls[f"{service}.{operation}"] += 1
            if threading.get_ident() == self._thread:
                self.own[f"{service}.{operation}"] += 1

    def take(self) -> Counter[str]:
        with self._lock:
            taken, self.calls, self.own = self.calls, Counter(), Counter()
        return taken

    def take_own(self) -> Counter[str]:
        """The calls of the bench's own thread only: not those of a cloud emulator fetching our JWKS."""
        with self._lock:
            taken, self.calls, self.own = self.own, Counter(), Counter()
        return taken


def warm_paths(iterations: int) -> dict[str, object]:
    import jwt

    from oidc_broker import callers
    from oidc_broker_cli.local import LocalBroker, http_api_event
    from oidc_broker_cli.template import Route

    counter = CallCounter()
    counter.install()
    config = Path(tempfile.mkdtemp(prefix="oidc-broker-bench-")) / "broker.yaml"
    config.write_text(bench_config())
    local = LocalBroker(root=ROOT, config_path=config, port=0, log=lambda _: None)
    local.start()
    try:
        routes = {r.function: r for r in local.routes}

        def event(function: str, body: bytes = b"", headers: dict | None = None):
            route: Route = routes[function]
            return http_api_event(route, route.method, route.path, "", {"host": "127.0.0.1", **(headers or {})},
                                  body, "127.0.0.1", {})

        def mint_event():
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "subject_token": local.dev_ci.mint({}), "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "audience": "default/prod-ecr"}
            return event("TokenFunction", urlencode(form).encode(), {"content-type": "application/x-www-form-urlencoded"})

        # Warm every container once, then count one request of each kind.
        for function in ("DiscoveryFunction", "JwksFunction"):
            local.invoke(function, event(function))
        assert local.invoke("TokenFunction", mint_event())["statusCode"] == 200
        counter.take()
        results: dict[str, object] = {}
        for name, function in (("discovery", "DiscoveryFunction"), ("jwks_warm", "JwksFunction")):
            local.invoke(function, event(function))
            results[f"calls.{name}"] = sum(counter.take().values())
        response = local.invoke("TokenFunction", mint_event())
        assert response["statusCode"] == 200, response
        mint_calls = counter.take()
        results["calls.mint"] = sum(mint_calls.values())
        results["calls.mint_detail"] = dict(mint_calls)

        def exchange_event():
            body = json.dumps({"target": "default/prod-ecr"}).encode()
            return event("ExchangeAwsFunction", body, {"content-type": "application/json",
                                                       "authorization": f"Bearer {local.dev_ci.mint({})}"})

        assert local.invoke("ExchangeAwsFunction", exchange_event())["statusCode"] == 200  # fills the cache
        counter.take()
        assert local.invoke("ExchangeAwsFunction", exchange_event())["statusCode"] == 200
        cached = counter.take()
        results["calls.exchange_cached"] = sum(cached.values())
        results["calls.exchange_cached_cloud"] = sum(n for op, n in cached.items() if op.split(".")[0] in ("sts", "ecr", "ecr-public"))
        results["calls.exchange_cached_detail"] = dict(cached)
        results["cost_per_million_cached_exchanges_usd"] = cost_per_million(cached, signs_per_call=0)
        results.update(cloud_exchanges(local, event, counter))

        # CPU: the handler's own thread, per mint and per caller check, against PyJWT verifying a
        # fresh caller token. Interleaved one for one, so both sides run with the same cache state.
        from oidc_broker import runtime

        public = jwt.PyJWK(local.dev_ci.jwk).key

        def pyjwt_verify() -> float:
            token = local.dev_ci.mint({})
            started = time.thread_time()
            jwt.decode(token, public, algorithms=["RS256"], audience=local.issuer)
            return time.thread_time() - started

        mint_cpu = pyjwt_for_mint = 0.0
        for _ in range(iterations):
            e = mint_event()
            started = time.thread_time()
            local.invoke("TokenFunction", e)
            mint_cpu += time.thread_time() - started
            pyjwt_for_mint += pyjwt_verify()

        config = runtime.load_config(local._store)
        keys = callers.IssuerKeys(callers.HttpFetcher(allow_loopback_http=True), time.time)
        callers.verify(local.dev_ci.mint({}), config, keys, time.time())
        verify_cpu = pyjwt_for_verify = 0.0
        for _ in range(iterations):
            token = local.dev_ci.mint({})
            started = time.thread_time()
            callers.verify(token, config, keys, time.time())
            verify_cpu += time.thread_time() - started
            pyjwt_for_verify += pyjwt_verify()

        results["cpu_ratio.mint"] = round(mint_cpu / pyjwt_for_mint, 2)
        results["cpu_ratio.verify"] = round(verify_cpu / pyjwt_for_verify, 2)
        results["cost_per_million_mints_usd"] = cost_per_million(mint_calls)
    finally:
        local.stop()
    return results


# The demo configuration, plus one target per cloud that warms its exchange function (key ring,
# configuration, SDK imports) with an exchange of its own, so the demo target's first exchange is
# counted as a warm container makes it.
WARM_TARGETS = """
      - name: warm-acr
        kind: feed
        provider: azure
        azure: {tenant_id: 11111111-2222-3333-4444-555555555555, client_id: 12121212-7777-8888-9999-000000000000, registry: warm.azurecr.io}
      - name: warm-gar
        kind: feed
        provider: gcp
        gcp:
          workload_identity_provider: projects/123456789012/locations/global/workloadIdentityPools/pipelines/providers/oidc-broker
          registry: us-docker.pkg.dev
"""


def bench_config() -> str:
    text = (ROOT / "examples" / "local.yaml").read_text()
    if text.count("    targets:\n") != 1 or text.count("targets: [prod-ecr, ") != 1:
        raise SystemExit("bench: examples/local.yaml no longer has the one targets list and trust rule it extends")
    text = text.replace("    targets:\n", "    targets:" + WARM_TARGETS, 1)
    return text.replace("targets: [prod-ecr, ", "targets: [warm-acr, warm-gar, prod-ecr, ")


def cloud_exchanges(local, event, counter: CallCounter) -> dict[str, object]:
    """Per cloud with its own emulators (Azure, Google Cloud): the AWS calls of a fresh exchange (a
    cache miss) and of a cached one, made by the exchange function itself, and the calls its cloud
    received (the emulators count them)."""
    from oidc_broker_cli.local.clouds.azure import AzureWiring
    from oidc_broker_cli.local.clouds.gcp import GcpWiring

    wirings = {type(w): w for w in local.wirings}
    azure, gcp = wirings[AzureWiring], wirings[GcpWiring]
    clouds = (("azure", "ExchangeAzureFunction", lambda: azure.entra.calls + azure.acr.calls),
              ("gcp", "ExchangeGcpFunction", lambda: gcp.sts.calls + gcp.iamcredentials.calls))
    results: dict[str, object] = {}
    for cloud, function, cloud_calls in clouds:
        def exchange(target: str) -> None:
            body = json.dumps({"target": target}).encode()
            response = local.invoke(function, event(function, body, {
                "content-type": "application/json", "authorization": f"Bearer {local.dev_ci.mint({})}"}))
            assert response["statusCode"] == 200, response

        exchange(f"default/warm-{'acr' if cloud == 'azure' else 'gar'}")
        for outcome in ("fresh", "cached"):  # the demo target's first exchange fills the cache
            counter.take()
            before = cloud_calls()
            exchange(f"default/prod-{'acr' if cloud == 'azure' else 'gar'}")
            own = counter.take_own()
            results[f"calls.exchange_{cloud}_{outcome}"] = sum(own.values())
            results[f"calls.exchange_{cloud}_{outcome}_cloud"] = cloud_calls() - before
            results[f"calls.exchange_{cloud}_{outcome}_detail"] = dict(own)
    return results


def cost_per_million(calls: Counter[str], signs_per_call: int | None = None) -> float:
    signs = calls.get("kms.Sign", 0) if signs_per_call is None else signs_per_call
    writes = sum(n for op, n in calls.items() if op.startswith("dynamodb.") and op.split(".")[1] in ("PutItem", "DeleteItem", "UpdateItem"))
    reads = sum(n for op, n in calls.items() if op.startswith("dynamodb.") and op.split(".")[1] in ("GetItem", "Query"))
    per_million = (
        PRICES["http_api_per_million"]
        + PRICES["lambda_request_per_million"]
        + 1_000_000 * LAMBDA_MEMORY_GB * LAMBDA_WARM_MS / 1000 * PRICES["lambda_arm64_gb_second"]
        + signs * PRICES["kms_rsa_2048_sign_per_10k"] * 100
        + writes * PRICES["dynamodb_write_per_million"]
        + reads * PRICES["dynamodb_read_per_million"]
    )
    return round(per_million, 2)


def check(results: dict[str, object]) -> list[str]:
    failures = []
    for key, budget in BUDGETS.items():
        if key not in results:
            continue
        value = results.get(key)
        if isinstance(budget, bool):
            ok = value is budget
        elif key.startswith("calls."):
            ok = value is not None and value <= budget
        else:
            ok = value is not None and value <= budget
        if not ok:
            failures.append(f"{key} = {value} (budget {budget})")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per cold-start figure")
    parser.add_argument("--iterations", type=int, default=200, help="warm requests per CPU figure")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--counts-only", action="store_true",
                        help="only the AWS call counts (deterministic: what `make test` checks)")
    parser.add_argument("--no-scale", action="store_true",
                        help="leave out the scale curve (bench/scale.py: several minutes)")
    args = parser.parse_args()

    import contextlib
    import io

    # The handlers' JSON logs and metrics go to stdout: keep them out of the report.
    with contextlib.redirect_stdout(io.StringIO()):
        warm = warm_paths(1 if args.counts_only else args.iterations)
    if args.counts_only:
        results = {k: v for k, v in warm.items() if k.startswith("calls.")}
    else:
        results = {**cold_starts(args.runs), **warm}
    width = max(len(k) for k in results)
    for key, value in results.items():
        budget = BUDGETS.get(key)
        print(f"{key:<{width}}  {value}" + (f"   (budget {budget})" if budget is not None else ""))
    print(f"\ncost assumptions: HTTP API, Lambda arm64 {int(LAMBDA_MEMORY_GB * 1024)} MB x {LAMBDA_WARM_MS} ms, "
          "KMS RSA_2048 Sign $0.03/10k, DynamoDB on-demand writes $0.625/M, reads $0.125/M (us-east-1 list prices)")
    failures = check(results)
    if not (args.counts_only or args.no_scale):
        sys.path.insert(0, str(ROOT / "bench"))
        import scale

        print()
        curve = scale.curve()
        failures += scale.report(curve)
        results.update(curve)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    for failure in failures:
        print(f"OVER BUDGET: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
