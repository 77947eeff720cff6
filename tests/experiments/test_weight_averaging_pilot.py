"""Smoke test of experiments/weight_averaging_pilot.py on a tiny generated folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import write_image_folder

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "weight_averaging_pilot.py"


def test_pilot_scores_every_average_caches_runs_and_summarises(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", {"train": 6, "val": 3}, classes=10, size=32)
    args = [sys.executable, str(SCRIPT), "--root", str(root), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--specs", "3", "--pool", "8", "--seeds", "0", "1",
            "--train-per-class", "4", "--epochs", "2"]
    env = {**os.environ, "NAS_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for f in sorted((tmp_path / "runs").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    assert len(rows) == 3 * 2  # specs x seeds
    variants = ["plain", "ema_f05", "ema_f15", "ema_f30", "swa_last25"]
    assert all(0.0 <= row[v] <= 1.0 for row in rows for v in variants)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "training" not in again.stdout  # all cached: nothing retrained
    summary = yaml.safe_load((tmp_path / "out" / "summary-proxy.yaml").read_text())
    assert summary["runs"] == 6 and list(summary["variants"]) == variants
    assert summary["variants"]["plain"]["gain_over_plain_points"] == 0.0
    assert summary["variants"]["ema_f15"]["seed_std_points_pooled"]["degrees_of_freedom"] == 3
