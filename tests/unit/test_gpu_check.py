"""bench/gpu_check.sh, the one prepared run for a GPU machine, works: its dry run on the CPU goes
through every step (install check, engine tests, parity, throughput, one stream)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["machine"]["device"] == "cpu"
    for step in ("parity float32", "parity bf16"):
        rows = report[step]["result"]
        assert set(rows) == {"llama3", "qwen2"} and all(row["ok"] for row in rows.values())
    assert report["parity float32"]["result"]["llama3"]["greedy_identical"] is True
    speed = report["throughput float32"]["result"]
    assert speed["stratus_tok_s"] > 0 and speed["transformers_tok_s"] > 0
    assert 0 < report["one stream float32"]["result"]["fraction_of_limit"] < 1
    assert (out / "gpu_check.md").read_text().startswith("# GPU check")
    assert "passed" in (out / "tests.log").read_text()
