"""Smoke test of experiments/depthwise_trim_benchmark.py: both arms run and agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "depthwise_trim_benchmark.py"


def test_benchmark_times_both_arms_of_the_same_network(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--rounds", "2",
                             "--steps", "1", "--batch-sizes", "4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load((tmp_path / "summary.yaml").read_text())
    assert [r["spec"] for r in summary["results"]] == ["smallest", "canonical", "largest", "supernet_largest"]
    for row in summary["results"]:
        assert row["plain_ms_per_step"] > 0 and row["trimmed_ms_per_step"] > 0 and row["speedup"] > 0
        assert row["max_logit_difference"] < 1e-4  # the same function both ways
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 4 * 2 * 2  # networks x rounds x arms
