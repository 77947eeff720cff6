"""Smoke test of ``python -m experiments.supernet_ddp_benchmark``: one tiny synthetic run of one
process and one of two (each launched by torchrun), summarised side by side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from conftest import run_study


def test_one_and_two_processes_run_in_turn_and_are_summarised(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    args = ("--data", "synthetic", "--steps", "2", "--repeats", "1", "--set", "data.train_samples=32",
            "--set", "data.val_samples=16", "--set", "data.batch_size=8", "--out", str(out),
            "--work", str(work))
    result = run_study("supernet_ddp_benchmark", *args, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["processes"]) == [1, 2] and (runs["steps"] == 2).all()
    assert (runs["train_seconds"] > 0).all() and (runs["wall_seconds"] > runs["train_seconds"]).all()
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["speedup_train_seconds_median"][1] == 1.0 and summary["speedup_train_seconds_median"][2] > 0
    # The two runs trained one supernet (to float rounding).
    assert summary["max_abs_weight_difference_vs_first"] < 1e-3
    assert "| 2 |" in (out / "summary.md").read_text()
    assert not list(work.glob("run_p*"))  # no checkpoint per run is left behind
    # A second call finds both runs recorded and only summarises.
    again = run_study("supernet_ddp_benchmark", *args, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "process(es):" not in again.stdout
