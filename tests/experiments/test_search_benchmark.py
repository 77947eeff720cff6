"""The sampler benchmark on a tiny space: a real (tiny) supernet, a real table, resumable."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments import search_benchmark
from nas.arch.space import load_space
from nas.cost.harness import HarnessConfig
from nas.cost.lut import LatencyTable
from nas.supernet.train import SupernetTrainConfig, checkpoint_file, new_supernet, train_supernet
from nas.training.data_config import DataConfig

SPACE_FILE = Path(__file__).resolve().parents[1] / "data" / "spaces" / "space" / "tiny.yaml"
DATA = {"name": "synthetic", "resolution": 32, "num_classes": 4, "train_samples": 64,
        "val_samples": 32, "batch_size": 16, "seed": 0}
pytestmark = pytest.mark.usefixtures("one_thread")


def test_hypervolume_of_a_front_by_hand():
    points = [(0.5, 2.0), (0.8, 4.0), (0.6, 5.0)]  # (top-1, ms); the last is dominated
    # 0.5 from 2 to 4 ms, 0.8 from 4 to 10 ms
    assert search_benchmark.hypervolume_2d(points, 10.0) == pytest.approx(0.5 * 2 + 0.8 * 6)
    assert search_benchmark.hypervolume_2d([(0.9, 12.0)], 10.0) == 0.0
    assert search_benchmark.trials_to_reach([0.1, 0.3, 0.5], 0.3) == 2


def test_samplers_run_resume_and_are_summarised(tmp_path: Path, capsys):
    space = load_space(SPACE_FILE)
    cfg = SupernetTrainConfig(steps=2, lr=0.05, num_random=1, device="cpu", progress=False)
    train_supernet(new_supernet(space, 4, cfg), DataConfig(**DATA), cfg,
                   checkpoint_dir=tmp_path / "supernet")
    table = LatencyTable.create(HarnessConfig(repeats=3, min_run_time=0.0, warmup=1, warmup_time=0.0,
                                              passes=1, max_run_time=0.05), resolution=64)
    table.build(space, progress=False, save_to=tmp_path / "table")
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({"data": DATA, "train": {"epochs": 1}}))
    argv = ["--checkpoint", str(checkpoint_file(tmp_path / "supernet")), "--space", str(SPACE_FILE),
            "--protocol", str(protocol), "--table", str(tmp_path / "table"), "--samplers", "tpe",
            "random", "--seeds", "0", "1", "--trials", "6", "--bn-batches", "1", "--val-samples", "0",
            "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    search_benchmark.main(argv)
    curves = pd.read_csv(tmp_path / "out" / "curves-pareto.csv")
    assert len(curves) == 2 * 2 * 6
    for _, group in curves.groupby(["sampler", "seed"]):
        assert group["value"].is_monotonic_increasing and group["value"].iloc[-1] > 0
    summary = yaml.safe_load((tmp_path / "out" / "summary-pareto.yaml").read_text())
    assert set(summary["samplers"]) == {"tpe", "random"}
    assert all(r is None or 1 <= r <= 6 for r in summary["samplers"]["tpe"]["trials_to_reach_random_final_mean"])
    assert (tmp_path / "out" / "hypervolume-pareto.png").stat().st_size > 0
    fronts = pd.read_csv(tmp_path / "out" / "fronts.csv")
    assert set(fronts["sampler"]) == {"tpe", "random"}
    scores = (tmp_path / "work" / "scores.jsonl").read_text().splitlines()
    assert len(scores) == len({line for line in scores})  # every network scored once
    # Started again: the studies are complete, nothing is scored twice.
    search_benchmark.main(argv)
    assert (tmp_path / "work" / "scores.jsonl").read_text().splitlines() == scores
    assert pd.read_csv(tmp_path / "out" / "curves-pareto.csv").equals(curves)
    # Other scoring settings would mix scores in the cache: refused, naming the setting.
    with pytest.raises(SystemExit, match="bn_batches: 1 there, 2 now"):
        search_benchmark.main([*argv, "--bn-batches", "2"])
    # MnasNet mode on the same cached scores: the best reward per study, its network kept.
    search_benchmark.main([*argv[:argv.index("--trials")], "--trials", "4", "--mode", "mnasnet",
                           *argv[argv.index("--trials") + 2:]])
    best = pd.read_csv(tmp_path / "out" / "best-mnasnet.csv")
    assert sorted(zip(best["sampler"], best["seed"])) == [("random", 0), ("random", 1), ("tpe", 0), ("tpe", 1)]
    curves = pd.read_csv(tmp_path / "out" / "curves-mnasnet.csv")
    finals = curves.groupby(["sampler", "seed"])["value"].max()
    for row in best.itertuples():
        assert row.reward == pytest.approx(finals[(row.sampler, row.seed)])
        assert 0 < row.top1 <= 1 and row.latency_ms > 0 and isinstance(row.spec, str)
    summary = yaml.safe_load((tmp_path / "out" / "summary-mnasnet.yaml").read_text())
    assert summary["target_ms"] > 0 and len(summary["best_per_study"]) == 4
    assert pd.read_csv(tmp_path / "out" / "fronts.csv").equals(fronts)  # the pareto fronts untouched
