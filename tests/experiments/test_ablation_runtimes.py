"""``python -m experiments.ablation_runtimes`` on the committed sweeps: every LiteRT variant
beside its PyTorch eager and paper ratios."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, run_study

RESULTS = REPO / "experiments" / "results"


def test_the_committed_sweeps_are_put_side_by_side(tmp_path: Path) -> None:
    result = run_study("ablation_runtimes", f"--out={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "runtimes.csv")
    studies = sorted(p.parent.name for p in (RESULTS / "ablations_litert").glob("*/ablation.csv"))
    assert sorted(frame["study"].unique()) == studies
    variants = sum(len(pd.read_csv(RESULTS / "ablations_litert" / s / "ablation.csv")) for s in studies)
    assert len(frame) == variants
    baselines = frame[frame["litert_ratio"] == 1.0]
    assert len(baselines) >= len(studies)  # every study's baseline is its own unit
    summary = yaml.safe_load((tmp_path / "runtimes.yaml").read_text())
    assert set(summary) == {"torch", "litert"}
    assert summary["litert"]["variants"] == int(((frame["paper_ratio"].notna()) & (frame["paper_ratio"] != 1.0)).sum())
    assert (tmp_path / "runtimes.png").stat().st_size > 0


def test_sweeps_of_different_studies_are_refused(tmp_path: Path) -> None:
    litert = tmp_path / "litert"
    shutil.copytree(RESULTS / "ablations_litert" / "se", litert / "se")
    frame = pd.read_csv(litert / "se" / "ablation.csv")
    frame.loc[0, "variant"] = "renamed"
    frame.to_csv(litert / "se" / "ablation.csv", index=False)
    result = run_study("ablation_runtimes", f"--litert-runs={litert}", f"--out={tmp_path / 'out'}")
    assert result.returncode != 0
    assert "variant 'renamed'" in result.stderr and "different study configs" in result.stderr
