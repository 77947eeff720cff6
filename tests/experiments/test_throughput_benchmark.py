"""Smoke test of ``python -m experiments.throughput_benchmark``: each run in a worker process of
its own (``experiments/throughput_worker.py``, started by path), on a tiny generated folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from conftest import run_study, write_image_folder


def test_variants_run_in_turn_and_are_summarised(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", {"train": 8, "val": 50}, classes=10, size=32)  # the worker scores 500 val images
    result = run_study("throughput_benchmark", "--data", str(root), "--out", str(tmp_path / "out"),
                       "--variants", "current", "current_nchw", "--rounds", "2", "--images", "64",
                       "--batch-size", "16", "--warmup-steps", "2",
                       env={"NAS_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(zip(runs["round"], runs["variant"])) == [
        (0, "current"), (0, "current_nchw"), (1, "current"), (1, "current_nchw")]
    assert (runs["steps"] == 4).all() and (runs["images_per_second"] > 0).all()
    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    assert summary["ratio_to_current_median"]["current"] == 1.0 and "ratio_to_baseline_median" not in summary
    assert (tmp_path / "out" / "throughput.png").stat().st_size > 0
