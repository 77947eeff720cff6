"""The supernet benchmark script runs end to end on a sliver of the CIFAR-10 subset and resumes.

The real run (16 epochs, minutes to hours) is the benchmark; this checks that its plumbing
(two reference seeds, cached reference, checkpointed supernet, summary and plot) holds.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from experiments import supernet_benchmark as benchmark


def test_benchmark_runs_resumes_and_summarises(tmp_path, cifar_subset, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--root", str(cifar_subset), "--out", str(out), "--work", str(work),
            "--specs", "10", "--pool", "20", "--resolution", "32",
            "--train-samples", "64", "--val-samples", "64", "--reference-epochs", "1",
            "--supernet-epochs", "1", "--reference-seeds", "0", "1", "--bn-batches", "1",
            "--no-distill"]
    assert benchmark.main(argv) == 0
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 10 and frame["spec"].is_unique
    assert {"standalone_top1_seed0", "standalone_top1_seed1"} <= set(frame.columns)
    # The reference is the mean over the seeds.
    mean = (frame["standalone_top1_seed0"] + frame["standalone_top1_seed1"]) / 2
    assert (frame["standalone_top1"] - mean).abs().max() < 1e-9
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["settings"]["supernet_train"]["distill"] is False
    ranking = summary["ranking"]
    pair = ranking["reference_seed_pairs_kendall_tau"]["seed0_seed1"]
    # With two seeds, "one seed against the mean of the others" is the pair's tau.
    assert ranking["reference_seed_to_seed_kendall_tau"] == pytest.approx(pair, nan_ok=True)
    assert ranking["reference_one_seed_vs_rest_kendall_tau"] == pytest.approx(pair, nan_ok=True)
    assert (work / "supernet_e1_nodistill").is_dir()
    assert (out / "scatter.png").stat().st_size > 0
    assert "labels only (no distillation)" in (out / "summary.md").read_text()

    # A second invocation trains nothing: the references come from their caches and the
    # supernet from its finished checkpoint, so the scores are the same.
    capsys.readouterr()
    assert benchmark.main(argv) == 0
    log = capsys.readouterr().out
    assert log.count(", cached)") == 20
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_series_equal(again["supernet_top1"], frame["supernet_top1"])
    pd.testing.assert_series_equal(again["standalone_top1"], frame["standalone_top1"])

    # --resummarise recomputes the statistics from results.csv without training or scoring.
    assert benchmark.main(argv + ["--resummarise"]) == 0
    # (compared as YAML text, so that a NaN tau of a constant column compares equal)
    again_ranking = yaml.safe_load((out / "summary.yaml").read_text())["ranking"]
    assert yaml.safe_dump(again_ranking) == yaml.safe_dump(summary["ranking"])
