"""benchmarks/bench_rebalance_audit.py: its row parsing, its /metrics reading,
and one short row end to end against the built keel binary."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_rebalance_audit.py"
spec = importlib.util.spec_from_file_location("bench_rebalance_audit", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

KEEL_BIN = os.environ.get("KEEL_BIN")


def test_rows_parse_and_bad_rows_name_themselves():
    assert bench.parse_rows("10:2000:normal,100:500:full") == [(10, 2000, "normal"), (100, 500, "full")]
    for bad, why in [("10:2000", "expected ASSETS:RATE"), ("10:x:normal", "must be integers"),
                     ("0:10:normal", "must be > 0"), ("10:10:fast", "expected ASSETS:RATE")]:
        with pytest.raises(SystemExit, match=re.escape(f"bad row '{bad}'") + ".*" + re.escape(why)):
            bench.parse_rows(bad)


def test_phase_means_from_metrics_text():
    text = "\n".join([
        'keel_request_duration_seconds_sum{method="Rebalance",phase="inference"} 0.5',
        'keel_request_duration_seconds_count{method="Rebalance",phase="inference"} 2000',
        'keel_request_duration_seconds_sum{method="Rebalance",phase="audit"} 0.2',
        'keel_request_duration_seconds_count{method="Rebalance",phase="audit"} 0',
        'keel_request_duration_seconds_sum{method="Check",phase="decode"} 1',
        'keel_request_duration_seconds_count{method="Check",phase="decode"} 1',
    ])
    assert bench.phase_means(text) == {"engine": pytest.approx(250.0)}  # no audit requests, no Rebalance decode


@pytest.mark.skipif(not KEEL_BIN or not Path(KEEL_BIN).exists(),
                    reason="KEEL_BIN is not set to a built keel binary (make test sets it)")
def test_one_short_row_end_to_end():
    run = subprocess.run([sys.executable, str(SCRIPT), "--keel", str(Path(KEEL_BIN).resolve()),
                          "--models", str(REPO / "models"), "--rows", "5:50:normal",
                          "--duration", "1s", "--warmup", "0s"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("| assets | rate | sync | ok |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:4] == ["5", "50/s", "normal", "50 of 50"]
    assert all(re.fullmatch(r"[0-9,]+", c) for c in cells[4:]), cells  # latencies and every phase mean
