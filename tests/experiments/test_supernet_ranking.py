"""Supernet ranking against the repeatability benchmark's reference: a tiny supernet, a tiny
benchmark folder, the figures written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments import supernet_ranking
from nas.arch.codecs import to_string
from nas.arch.space import load_space
from nas.supernet.train import SupernetTrainConfig, checkpoint_file, new_supernet, train_supernet
from nas.training.data_config import DataConfig

SPACE_FILE = Path(__file__).resolve().parents[1] / "data" / "spaces" / "space" / "tiny.yaml"
DATA = {"name": "synthetic", "resolution": 32, "num_classes": 4, "train_samples": 64,
        "val_samples": 32, "batch_size": 16, "seed": 0}
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_supernet(tmp_path: Path, steps: int):
    """A supernet of the tiny space trained for ``steps`` on synthetic data, in ``tmp_path/sn``."""
    space = load_space(SPACE_FILE)
    cfg = SupernetTrainConfig(steps=steps, lr=0.05, num_random=1, device="cpu", progress=False)
    train_supernet(new_supernet(space, 4, cfg), DataConfig(**DATA), cfg, checkpoint_dir=tmp_path / "sn")
    return space


def rank(tmp_path: Path, *reference: str) -> dict:
    """Rank the tiny supernet on the synthetic protocol against ``reference`` (its options)."""
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({"data": DATA, "train": {"epochs": 1}}))
    return supernet_ranking.main(["--checkpoint", str(checkpoint_file(tmp_path / "sn")),
                                  "--protocol", str(protocol), "--bn-batches", "1", *reference,
                                  "--out", str(tmp_path / "out")])


def test_ranking_against_the_reference_mean_is_written(tmp_path: Path):
    space = tiny_supernet(tmp_path, steps=2)
    rng = random.Random(0)
    specs = [space.sample(rng) for _ in range(4)]
    runs = [{"protocol": "reference", "spec": f"s{i}", "arch": to_string(s), "seed": seed,
             "top1": 0.5 + 0.01 * i + 0.001 * seed} for i, s in enumerate(specs) for seed in (0, 1)]
    bench = tmp_path / "bench"
    bench.mkdir()
    pd.DataFrame(runs).to_csv(bench / "runs.csv", index=False)
    (bench / "summary.yaml").write_text(yaml.safe_dump(
        {"protocols": {"reference": {"seed_to_seed_tau_mean": 0.79}}}))
    summary = rank(tmp_path, "--benchmark", str(bench))
    assert summary["specs"] == 4 and summary["reference_seeds"] == [0, 1]
    assert -1 <= summary["kendall_tau_vs_reference_mean"] <= 1
    assert summary["reference_seed_to_seed_tau"] == 0.79 and summary["supernet_steps"] == 2
    ranking = pd.read_csv(tmp_path / "out" / "ranking.csv")
    assert ranking["supernet_top1"].between(0, 1).all() and len(ranking) == 4


def test_scoring_sweep_writes_one_row_per_budget(tmp_path: Path):
    space = tiny_supernet(tmp_path, steps=1)
    rng = random.Random(1)
    runs = [{"protocol": "reference", "spec": f"s{i}", "arch": to_string(space.sample(rng)),
             "seed": 0, "top1": 0.5 + 0.01 * i} for i in range(3)]
    bench = tmp_path / "bench"
    bench.mkdir()
    pd.DataFrame(runs).to_csv(bench / "runs.csv", index=False)
    (bench / "summary.yaml").write_text(yaml.safe_dump(
        {"protocols": {"reference": {"seed_to_seed_tau_mean": None}}}))
    rank(tmp_path, "--benchmark", str(bench), "--val-samples", "16", "--sweep-bn", "1", "2",
         "--sweep-val", "0", "16")
    sweep = pd.read_csv(tmp_path / "out" / "scoring_sweep.csv")
    assert sweep[["bn_batches", "val_images"]].astype(str).values.tolist() == [
        ["1", "all"], ["1", "16"], ["2", "all"], ["2", "16"]]
    assert (sweep["seconds_per_candidate_median"] > 0).all()
    assert yaml.safe_load((tmp_path / "out" / "ranking.yaml").read_text())["val_images"] == 16


def test_ranking_against_the_transfer_study_leaves_out_the_scale_networks(tmp_path: Path):
    space = tiny_supernet(tmp_path, steps=1)
    study = tmp_path / "transfer"
    (study / "runs").mkdir(parents=True)
    for seed in (0, 1):
        rows = [{"spec": f"s{i}", "arch": to_string(space.sample(random.Random(i))), "seed": seed,
                 "top1": 0.4 + 0.01 * i + 0.002 * seed} for i in range(3)]
        # Canonical Large is trained for scale, but it is not a network of the Small space.
        rows.append({"spec": "large", "arch": "not a network of this space", "seed": seed, "top1": 0.5})
        (study / "runs" / f"runs-reference_tin-seed{seed}.jsonl").write_text(
            "".join(f"{json.dumps(row)}\n" for row in rows))
    (study / "summary.yaml").write_text(yaml.safe_dump(
        {"repeatability": {"seed_pairs": {"0-1": {"tau": 0.73, "networks": 3}}}}))
    summary = rank(tmp_path, "--transfer", str(study))
    assert summary["specs"] == 3 and summary["reference_seeds"] == [0, 1]
    assert summary["reference_seed_to_seed_tau"] == 0.73 and summary["reference"] == str(study)
    ranking = pd.read_csv(tmp_path / "out" / "ranking.csv")
    assert sorted(ranking["spec"]) == ["s0", "s1", "s2"]
    assert ranking["reference_top1_mean"].round(3).tolist() == [0.401, 0.411, 0.421]
    assert "kendall_tau_interval_90" in summary
    # A subset by name (the held-out networks), and a clear error when too few match.
    assert rank(tmp_path, "--transfer", str(study), "--networks-matching", "s[0-2]$")["specs"] == 3
    with pytest.raises(SystemExit, match="'s\\[01\\]': 2 reference network"):
        rank(tmp_path, "--transfer", str(study), "--networks-matching", "s[01]")
