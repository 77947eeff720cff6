"""Smoke test of ``python -m experiments.host_speed`` (two rounds, two sessions)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("openvino")


def test_host_speed_writes_every_round_of_both_checks(tmp_path: Path) -> None:
    from experiments import host_speed

    summary = host_speed.main(["--rounds", "3", "--sessions", "2", "--out", str(tmp_path)])
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert len(rounds[rounds.check == "matmul"]) == 3 and len(rounds[rounds.check == "openvino_small"]) == 6
    assert (rounds["best_ms"] > 0).all()
    assert summary["matmul_round_best_ms"]["max_over_min"] >= 1.0
    assert -1.0 <= summary["openvino_sessions"]["session_order_tau_between_rounds_mean"] <= 1.0
    assert summary["openvino_sessions"]["sessions"] == 2
