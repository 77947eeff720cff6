"""The predictor benchmark with tiny settings: every part runs, reports, and resumes without
scoring anything again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments import predictor_benchmark, predictor_race
from nas.arch.space import load_space
from nas.cost.harness import HarnessConfig
from nas.cost.lut import LatencyTable
from nas.supernet.evaluator import SupernetEvaluator

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE_FILE = Path(__file__).resolve().parents[1] / "data" / "spaces" / "space" / "tiny.yaml"
SCORER = ["--override", "data=synthetic", "--override", "data.train_samples=64", "--override",
          "data.val_samples=32", "--override", "data.batch_size=16", "--override",
          "evaluator.train.steps=2", "--override", "evaluator.bn_batches=1", "--override",
          "evaluator.device=cpu", "--hidden", "32", "--epochs", "20"]


def _no_scoring(monkeypatch) -> None:
    def refuse(self, spec):
        raise AssertionError("a resumed benchmark scored a network again")

    monkeypatch.setattr(SupernetEvaluator, "evaluate", refuse)


def test_the_timeline_and_the_summary_by_hand():
    events = [(1.0, 0.5, 2.0), (2.0, None, None), (0.5, 0.8, 4.0)]
    assert predictor_race.timeline(events, 10.0) == [[1.0, 0.5 * 8], [3.0, 4.0], [3.5, 0.5 * 2 + 0.8 * 6]]
    curve = [[1.0, 0.1], [2.0, 0.3], [4.0, 0.5]]
    assert predictor_race.reach(curve, 0.3) == 2.0 and predictor_race.reach(curve, 0.6) is None
    runs = [{"method": "tpe", "samples": None, "seed": 0, "supernet_scores": 3, "curve": [[10.0, 0.4]]},
            {"method": "predictor", "samples": 5, "seed": 0, "supernet_scores": 4, "fit_seconds": 0.1,
             "search_seconds": 0.2, "curve": [[1.0, 0.2], [2.0, 0.45]]}]
    summary = predictor_race.search_summary(runs)
    assert summary["predictor_5"]["share_of_tpe_seconds"] == [0.2]
    assert summary["predictor_5"]["target_met_every_seed"]


def test_quality_and_trained_networks_on_the_small_space(tmp_path: Path, monkeypatch):
    argv = [*SCORER, "--parts", "quality", "trained", "--train", "6", "10", "--test", "6",
            "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    predictor_benchmark.main(argv)
    quality = pd.read_csv(tmp_path / "out" / "quality.csv")
    assert sorted(zip(quality["model"], quality["train"])) == [("gbr", 6), ("gbr", 10), ("mlp", 6), ("mlp", 10)]
    assert quality["kendall_tau"].between(-1, 1).all() and (quality["rmse"] > 0).all()
    trained = pd.read_csv(tmp_path / "out" / "trained.csv")
    assert len(trained) == 11 and {"smallest", "largest", "canonical", "found_80", "found_90",
                                   "found_100"} <= set(trained["name"])
    assert trained.set_index("name").loc["canonical", "seeds"] == 3  # the repeatability runs'
    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    assert summary["trained"]["predictor_fitted_on"] == 16 and summary["host"]
    assert all(summary[f"run_{part}"]["loadavg"] for part in ("quality", "trained"))
    assert "## Trained networks" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "quality.png").stat().st_size > 0
    _no_scoring(monkeypatch)
    predictor_benchmark.main(argv)  # every score read back
    assert pd.read_csv(tmp_path / "out" / "quality.csv")[["model", "train", "kendall_tau"]].equals(
        quality[["model", "train", "kendall_tau"]])
    # One part run again keeps the other part's figures and the load it ran under.
    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    predictor_benchmark.main([*argv[:argv.index("--parts")], "--parts", "quality",
                              *argv[argv.index("--train"):]])
    kept = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    assert kept["trained"] == summary["trained"] and kept["run_trained"] == summary["run_trained"]
    assert "## Trained networks" in (tmp_path / "out" / "summary.md").read_text()


def test_the_search_comparison_on_a_tiny_space(tmp_path: Path, monkeypatch):
    space = load_space(SPACE_FILE)
    table = LatencyTable.create(HarnessConfig(repeats=3, min_run_time=0.0, warmup=1, warmup_time=0.0,
                                              passes=1, max_run_time=0.05), resolution=64)
    table.build(space, progress=False, save_to=tmp_path / "table")
    argv = [*SCORER, "--space", str(SPACE_FILE), "--table", str(tmp_path / "table"), "--parts", "search",
            "--seeds", "0", "1", "--tpe-trials", "6", "--samples", "4", "6", "--population-size", "10",
            "--candidates", "40", "--rescore", "3", "--out", str(tmp_path / "out"),
            "--work", str(tmp_path / "work")]
    predictor_benchmark.main(argv)
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(zip(runs["method"], runs["samples"].fillna(0), runs["seed"])) == [
        ("predictor", 4, 0), ("predictor", 4, 1), ("predictor", 6, 0), ("predictor", 6, 1),
        ("tpe", 0, 0), ("tpe", 0, 1)]
    assert (runs[runs["method"] == "tpe"]["supernet_scores"] == 6).all()
    predictor = runs[runs["method"] == "predictor"]
    assert (predictor["supernet_scores"] > predictor["samples"]).all()  # re-scored members counted
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    for _, curve in curves.groupby(["method", curves["samples"].fillna(0), "seed"]):
        assert curve["seconds"].is_monotonic_increasing and curve["hypervolume"].is_monotonic_increasing
    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())["search"]
    assert {"tpe", "predictor_4", "predictor_6"} <= set(summary)
    assert (tmp_path / "out" / "search.png").stat().st_size > 0
    _no_scoring(monkeypatch)
    predictor_benchmark.main(argv)  # every run read back
    assert pd.read_csv(tmp_path / "out" / "curves.csv").equals(curves)


def test_the_noise_ceiling_rescores_the_held_out_networks_once(tmp_path: Path, monkeypatch):
    from experiments import predictor_noise

    work, out = tmp_path / "work", tmp_path / "out"
    predictor_benchmark.main([*SCORER, "--parts", "quality", "--train", "6", "--test", "6",
                              "--out", str(out), "--work", str(work)])
    noise_argv = [*SCORER, "--n", "6", "--pool", "6", "--out", str(out), "--work", str(work)]
    summary = predictor_noise.main(noise_argv)
    assert summary["networks"] == 6 and summary["matches_quality_scores_max_abs"] == 0.0
    assert -1 <= summary["split_half"]["kendall_tau"] <= 1 and summary["other_bn_calibration"]["seed"] == 1
    # The cross-entropy kept beside top-1; the predictors fitted on the pool's 6 losses.
    assert summary["loss"]["spread"] > 0 and -1 <= summary["loss"]["split_half"]["kendall_tau"] <= 1
    fits = summary["loss_predictors"]
    assert fits["fitted_on"] == 6 and fits["held_out"] == 6
    assert all(-1 <= fits[m]["against_loss"]["kendall_tau"] <= 1 and fits[m]["against_loss"]["rmse"] >= 0
               for m in ("mlp", "gbr"))
    assert "Holdout cross-entropy" in (out / "noise.md").read_text()
    assert yaml.safe_load((out / "noise.yaml").read_text())["tau_ceiling"] == summary["tau_ceiling"]
    _no_scoring(monkeypatch)
    monkeypatch.setattr(SupernetEvaluator, "activate", lambda self, spec: (_ for _ in ()).throw(
        AssertionError("a resumed noise run scored a network again")))
    assert predictor_noise.main(noise_argv)["split_half"] == summary["split_half"]


def test_the_tau_ceiling_follows_spearman_brown_and_greiner():
    from experiments.predictor_noise import tau_ceiling

    assert tau_ceiling(1.0) == {"reliability": 1.0, "pearson_ceiling": 1.0, "tau_ceiling": 1.0}
    half = tau_ceiling(0.5)  # R = 2/3; sqrt(R) = 0.816; (2/pi) asin(0.816) = 0.608
    assert half == {"reliability": 0.667, "pearson_ceiling": 0.816, "tau_ceiling": 0.608}


def test_the_timeline_never_falls_when_a_dominated_point_recomputes_the_area_a_bit_lower(monkeypatch):
    # Re-splitting the area's sum for a dominated point can cost the last bit of a float.
    from experiments import predictor_race

    areas = iter([1.0, 1.5, 1.5 - 1e-15, 2.0])
    monkeypatch.setattr(predictor_race, "hypervolume_2d", lambda points, max_latency: next(areas))
    events = [(1.0, 0.5, 1.0), (1.0, 0.6, 1.0), (1.0, 0.55, 1.2), (1.0, 0.7, 0.9)]
    assert [area for _, area in predictor_race.timeline(events, 2.0)] == [1.0, 1.5, 1.5, 2.0]
