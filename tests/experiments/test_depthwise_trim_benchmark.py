"""Smoke test of ``python -m experiments.depthwise_trim_benchmark``: both arms run and agree."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from conftest import run_study


def test_benchmark_times_both_arms_of_the_same_network(tmp_path: Path) -> None:
    result = run_study("depthwise_trim_benchmark", "--out", str(tmp_path), "--rounds", "2",
                       "--steps", "1", "--batch-sizes", "4", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load((tmp_path / "summary.yaml").read_text())
    assert [r["spec"] for r in summary["results"]] == ["smallest", "canonical", "largest", "supernet_largest"]
    for row in summary["results"]:
        assert row["plain_ms_per_step"] > 0 and row["trimmed_ms_per_step"] > 0 and row["speedup"] > 0
        assert row["max_logit_difference"] < 1e-4  # the same function both ways
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 4 * 2 * 2  # networks x rounds x arms
