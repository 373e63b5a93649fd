"""The AWS call budgets of the README, counted through botocore's event hooks (bench/bench.py)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_route_stays_within_its_aws_call_budget(tmp_path):
    report = tmp_path / "counts.json"
    result = subprocess.run([sys.executable, "bench/bench.py", "--counts-only", "--json", str(report)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = json.loads(report.read_text())
    assert counts["calls.discovery"] == 0
    assert counts["calls.jwks_warm"] == 0
    assert counts["calls.mint_detail"] == {"kms.Sign": 1, "dynamodb.PutItem": 1}
    assert counts["calls.exchange_cached_cloud"] == 0
