"""Smoke test of ``python -m experiments.weight_averaging_pilot`` on a tiny generated folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import jsonl_rows, run_study, study_folders, write_image_folder

from experiments import weight_averaging_pilot as pilot


def test_pilot_scores_every_average_caches_runs_and_summarises(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", {"train": 6, "val": 3}, classes=10, size=32)
    args = ["--root", str(root), *study_folders(tmp_path), "--specs", "3", "--pool", "8", "--seeds", "0", "1",
            "--train-per-class", "4", "--epochs", "2"]
    first = run_study("weight_averaging_pilot", *args, env={"NAS_CACHE_DIR": str(tmp_path / "cache")})
    assert first.returncode == 0, first.stderr[-3000:]
    rows = jsonl_rows(tmp_path / "runs")
    assert len(rows) == 3 * 2  # specs x seeds
    variants = ["plain", "ema_f05", "ema_f15", "ema_f30", "swa_last25"]
    assert all(0.0 <= row[v] <= 1.0 for row in rows for v in variants)
    again = run_study("weight_averaging_pilot", *args, env={"NAS_CACHE_DIR": str(tmp_path / "cache")})
    assert again.returncode == 0 and "training" not in again.stdout  # all cached: nothing retrained
    summary = yaml.safe_load((tmp_path / "out" / "summary-proxy-e2-c4.yaml").read_text())
    assert summary["runs"] == 6 and list(summary["variants"]) == variants
    assert summary["variants"]["plain"]["gain_over_plain_points"] == 0.0
    assert summary["variants"]["ema_f15"]["seed_std_points_pooled"]["degrees_of_freedom"] == 3
    assert 0 <= summary["variants"]["swa_last25"]["val_images_flipping_between_seeds_median"] <= 30
    assert not any((tmp_path / "work").iterdir())  # finished runs leave no checkpoints


def test_a_run_resumed_mid_way_scores_as_the_uninterrupted_run(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """The run's checkpoint and its averages resume together: every figure bit-identical."""
    import torch

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 8, "val": 3}, classes=10, size=32)
    common = ["--root", str(root), "--out", str(tmp_path / "out"), "--specs", "3", "--pool", "8",
              "--seeds", "0", "--train-per-class", "8", "--epochs", "20", "--only", "smallest",
              "--checkpoint-every", "1"]
    interrupted = common + ["--runs", str(tmp_path / "parts"), "--work", str(tmp_path / "w2")]

    class Stop(Exception):
        pass

    original = pilot.ResumableAverages.on_step

    def killed_before_step_10_is_saved(self, step, metrics):  # type: ignore[no-untyped-def]
        if step == 10:  # one step an epoch here: the run checkpointed step 9, and so did the averages
            raise Stop
        original(self, step, metrics)

    threads = torch.get_num_threads()  # run_all sets one thread; the rest of the session keeps its own
    try:
        pilot.run_all(pilot.parse_args(common + ["--runs", str(tmp_path / "whole"),
                                                 "--work", str(tmp_path / "w1")]))
        with monkeypatch.context() as patch:
            patch.setattr(pilot.ResumableAverages, "on_step", killed_before_step_10_is_saved)
            try:
                pilot.run_all(pilot.parse_args(interrupted))
            except Stop:
                pass
        saved = torch.load(tmp_path / "w2" / "proxy-e20-c8-smallest-seed0" / "averages.pt", weights_only=True)
        assert saved["step"] == 9
        capsys.readouterr()
        pilot.run_all(pilot.parse_args(interrupted))
        assert "starting this run over" not in capsys.readouterr().out  # resumed, not restarted
    finally:
        torch.set_num_threads(threads)
    whole = json.loads((tmp_path / "whole" / "runs-proxy-e20-c8-seed0.jsonl").read_text())
    resumed = json.loads((tmp_path / "parts" / "runs-proxy-e20-c8-seed0.jsonl").read_text())
    figures = [key for v in pilot.VARIANTS for key in (v, f"{v}_loss")]
    assert [whole[k] for k in figures] == [resumed[k] for k in figures]
    # 20 steps: ema_f05's time constant is one step (the last weights); the others average.
    assert all(whole[f"{v}_loss"] != whole["plain_loss"] for v in ("ema_f15", "ema_f30", "swa_last25"))
