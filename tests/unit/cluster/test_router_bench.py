"""bench/scheduling.py --quick --sim-only runs and its simulated figures make sense."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(120)


def test_quick_simulation(tmp_path):
    out = tmp_path / "scheduling.json"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "scheduling.py"), "--quick", "--sim-only", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=100,
    )
    report = json.loads(out.read_text())
    assert "real" not in report
    runs = {(r["policy"], r["mode"].split(",")[0]): r for r in report["simulation"]["runs"]}
    assert {p for p, _ in runs} == {"round_robin", "p2c", "capacity"}
    assert runs["capacity", "batch"]["makespan_over_bound"] < 1.1
    assert runs["round_robin", "batch"]["makespan_over_bound"] > 1.5  # it ignores capacity
    capacity_p95 = runs["capacity", "open loop"]["p95_latency_s"]
    assert runs["round_robin", "open loop"]["p95_latency_s"] > 1.5 * capacity_p95
    assert all(r["pick_us"] > 0 for r in runs.values())
