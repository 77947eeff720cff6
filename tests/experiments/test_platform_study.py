"""``python -m experiments.platform_study`` end to end on two runtimes, shortened: real searches
(one shared supernet, synthetic data) on made-up tables of the Small space, then real end-to-end
measurements of the picks in both runtimes."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml
from conftest import run_study

from nas.arch.space import load_space
from nas.cost.harness import HarnessConfig
from nas.cost.keys import keys_for_space
from nas.cost.lut import LatencyTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netadapt"))
from test_netadapt import formula_ms  # noqa: E402

QUICK = {"repeats": 3, "min_run_time": 0.0, "warmup": 1, "warmup_time": 0.0, "max_run_time": 0.05}


def _formula_table(runtime: str, scale: float, folder: Path) -> Path:
    """A table of every key of the Small space, figures made up (``scale`` makes the two
    runtimes disagree), whose harness is a quick real one of ``runtime``."""
    table = LatencyTable.create(HarnessConfig(runtime=runtime, passes=1, **QUICK), resolution=224,
                                note="formula, tests")
    for key in keys_for_space(load_space("mobilenetv3_small")):
        kernel_heavy = scale if "_k7_" in key or "_k5_" in key else 1.0
        table.set_entry(key, formula_ms(key) * kernel_heavy, n=1, passes=1, method="formula")
    return table.save(folder)


def test_two_runtimes_searched_picked_and_cross_measured(tmp_path: Path) -> None:
    tables = [f"--table=torch={_formula_table('torch-cpu', 1.0, tmp_path / 'torch_table')}",
              f"--table=onnxruntime={_formula_table('onnxruntime', 4.0, tmp_path / 'ort_table')}"]
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--backend=torch", "--backend=onnxruntime", *tables, f"--out={out}", f"--work={work}",
            "--trials=6", "--rounds=2", "--supernet-steps=2", "--no-progress",
            "--override=data=synthetic", "--override=data.resolution=32",
            "--override=data.train_samples=64", "--override=data.val_samples=32",
            "--override=data.batch_size=32", "--override=evaluator.bn_batches=1"]
    result = run_study("platform_study", *args, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (work / "supernet.pt").is_file()  # one supernet, trained once
    picks = pd.read_csv(out / "picks.csv")
    assert set(picks["searched_on"]) <= {"torch", "onnxruntime"} and (picks["fraction"] == 1.0).sum() == 2
    assert (picks["table_ms"] <= picks["fraction"] * picks["canonical_table_ms"] + 1e-9).all()
    cross = pd.read_csv(out / "matrix.csv")
    assert len(cross) == 2 * len(picks)  # every pick measured on both runtimes
    assert (cross["ms"] > 0).all() and (cross["ratio_p05"] <= cross["ratio_p95"]).all()
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["backends"] == ["torch", "onnxruntime"]
    flips = pd.read_csv(out / "flips.csv")
    shares = flips[["k3_share", "k5_share", "k7_share"]].sum(axis=1)
    assert ((shares - 1.0).abs() < 0.01).all()
    for name in ("summary.md", "fronts.png", "matrix.png", "loss.csv"):
        assert (out / name).stat().st_size > 0

    # A second start searches nothing again and measures nothing again.
    again = run_study("platform_study", *args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search done" in again.stdout and "end to end" not in again.stdout.replace("end to end,", "")
    measured = (out / "measured.jsonl").read_text().splitlines()
    assert len(measured) == 2  # one row per runtime


def test_a_bad_table_argument_is_one_line(tmp_path: Path) -> None:
    result = run_study("platform_study", "--table=tpu=/nowhere", f"--out={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "expected BACKEND=FOLDER" in result.stderr.strip().splitlines()[-1]
