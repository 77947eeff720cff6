"""NetAdapt versus uniform width from one trained start: both arms get the same final
training per seed, the uniform arm stays at or under NetAdapt's latency, and a rerun
repeats nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments import netadapt_cifar10
from nas.arch.codecs import load_spec
from nas.cost.harness import HarnessConfig
from nas.cost.lut import LatencyTable

DATA = {"name": "synthetic", "resolution": 32, "num_classes": 4, "train_samples": 96,
        "val_samples": 32, "batch_size": 16, "seed": 0}
pytestmark = pytest.mark.usefixtures("one_thread")


def test_both_arms_trained_per_seed_and_resumed(tmp_path: Path, capsys, monkeypatch):
    table = LatencyTable.create(HarnessConfig(repeats=3, min_run_time=0.0, warmup=1, warmup_time=0.0,
                                              passes=1, max_run_time=0.05), resolution=224)
    table.build([load_spec("small")], progress=False, save_to=tmp_path / "table")
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({"data": DATA, "train": {"epochs": 1, "lr": 0.05,
                                                                "bn_recalibration_batches": 1}}))
    argv = ["--protocol", str(protocol), "--table", str(tmp_path / "table"), "--seeds", "0", "1",
            "--fraction", "0.97", "--short-steps", "1", "--final-epochs", "1", "--latency-passes", "1",
            "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    summary = netadapt_cifar10.main(argv)
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(zip(runs["arm"], runs["seed"])) == [("netadapt", 0), ("netadapt", 1), ("uniform", 0),
                                                       ("uniform", 1), ("uniform_e2e", 0), ("uniform_e2e", 1)]
    start_ms = summary["start"]["table_ms"]
    for seed in (0, 1):
        na = runs[(runs["arm"] == "netadapt") & (runs["seed"] == seed)].iloc[0]
        un = runs[(runs["arm"] == "uniform") & (runs["seed"] == seed)].iloc[0]
        assert na["table_ms"] <= 0.97 * start_ms + 1e-9
        assert un["table_ms"] <= na["table_ms"] + 1e-9 and 0 < un["multiplier"] < 1
        assert un["path_steps"] == na["path_steps"] == na["netadapt_steps"]  # T = 1 per step
        assert load_spec(tmp_path / "out" / f"netadapt_small_seed{seed}.yaml").name.endswith(f"seed{seed}")
    for seed, match in summary["e2e_match"].items():  # measured in the same rounds, not above NetAdapt
        assert match["ms"] <= match["netadapt_ms"] and match["measured"][f"x{match['multiplier']:.2f}"] == \
            pytest.approx(match["ms"], abs=1e-3)
        e2e = runs[(runs["arm"] == "uniform_e2e") & (runs["seed"] == seed)].iloc[0]
        assert e2e["multiplier"] == match["multiplier"] and e2e["spec"] == match["spec"]
    assert set(summary["arms"]) == {"netadapt", "uniform", "uniform_e2e"}
    assert set(summary["verdicts"]) == {"uniform", "uniform_e2e"}
    assert all("points" in v for v in summary["verdicts"].values())
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 0
    assert "| netadapt | 0 |" in (tmp_path / "out" / "summary.md").read_text()

    capsys.readouterr()

    def measured_again(*args, **kwargs):
        raise AssertionError("the same networks timed again on a resume")

    monkeypatch.setattr(netadapt_cifar10, "measured_now", measured_again)
    netadapt_cifar10.main(argv)  # everything cached: no training or timing again, no rows added
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 6
    assert "train epoch" not in capsys.readouterr().err
    # Without the start those rows came from, a resume would train another start: refused.
    lost = [a if a != str(tmp_path / "work") else str(tmp_path / "other-work") for a in argv]
    with pytest.raises(SystemExit, match=r"holds runs of seeds \[0, 1\].*no longer holds"):
        netadapt_cifar10.main(lost)

