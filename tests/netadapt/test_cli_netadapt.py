"""``nas-netadapt`` end to end on synthetic data, the search-run input, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nas.arch.codecs import from_yaml, load_spec, save_spec, to_string
from nas.netadapt.pipeline import NetAdaptRunError, best_of_search
from test_netadapt import TINY, formula_table


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli.netadapt", *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    return {"arch": save_spec(TINY, tmp_path / "tiny.yaml"),
            "table": formula_table(TINY, tmp_path / "lut")}


FAST = [
    "data=synthetic", "data.resolution=32", "data.train_samples=96", "data.val_samples=64",
    "data.batch_size=32", "pretrain.steps=2", "short_term.steps=2", "long_term.steps=2",
    "pretrain.bn_recalibration_batches=2", "short_term.bn_recalibration_batches=2",
    "long_term.bn_recalibration_batches=2", "netadapt.delta_fraction=0.06",
    "netadapt.max_proposals=2", "threads=1",
]


def test_end_to_end_writes_history_plot_yaml_and_weights(tmp_path, inputs):
    run = tmp_path / "run"
    done = run_cli(f"arch={inputs['arch']}", f"latency.table={inputs['table']}", "target_fraction=0.8",
                   f"hydra.run.dir={run}", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NetAdapt (paper rule)" in done.stdout
    history = pd.read_csv(run / "history.csv")
    assert {"step", "proposal", "latency_ms", "top1", "picked"} <= set(history.columns)
    proposals = history[history["phase"] == "short_term"]
    assert len(proposals) >= 2 and (proposals.groupby("step")["picked"].sum() == 1).all()
    assert (run / "trajectory.png").stat().st_size > 0
    final = from_yaml((run / "netadapt.yaml").read_text())
    assert to_string(final.replace(name="")) == history["spec"].iloc[-1]
    import torch

    from nas.models.builder import build_model

    model = build_model(final, num_classes=10)
    model.load_state_dict(torch.load(run / "netadapt.pth", weights_only=True))
    assert (run / "start.pth").is_file() and (run / "steps" / "step0001" / "state.json").is_file()


@pytest.mark.parametrize("overrides, message", [
    (["arch=missing.yaml", "target_ms=1.0"], "no such file"),
    (["arch=small", "target_ms=1.0", "target_fraction=0.5"], "exactly one of target_ms"),
    (["arch=small"], "exactly one of target_ms"),
    (["target_fraction=0.5"], "exactly one of arch"),
    (["target_ms=1000.0"], "not below the start latency"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, inputs, overrides, message):
    args = [f"latency.table={inputs['table']}", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    if not any(a.startswith("arch=") for a in overrides) and "exactly one of arch" not in message:
        args.append(f"arch={inputs['arch']}")
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas-netadapt: error: ")
    assert message in lines[0]


def test_search_run_gives_its_most_accurate_member(tmp_path):
    run = tmp_path / "search"
    (run / "pareto").mkdir(parents=True)
    small = load_spec("small")
    best = small.with_blocks([*small.blocks[:-1], small.blocks[-1].replace(expansion=512)])
    save_spec(best, run / "pareto" / "trial0007.yaml")
    pd.DataFrame([
        {"number": 3, "accuracy": 0.61, "latency_ms": 5.0, "spec": to_string(small)},
        {"number": 7, "accuracy": 0.64, "latency_ms": 6.0, "spec": to_string(best)},
        {"number": 9, "accuracy": None, "latency_ms": 4.0, "spec": to_string(small)},
    ]).to_csv(run / "pareto.csv", index=False)
    assert best_of_search(run) == best
    with pytest.raises(NetAdaptRunError, match="no such file"):
        best_of_search(tmp_path / "nothing")


def test_search_run_on_other_data_is_named(tmp_path, caplog):
    import logging

    from nas.netadapt.pipeline import warn_on_other_data

    run = tmp_path / "search"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "data: {name: cifar10, root: ../shared/datasets/cifar10, resolution: 32, num_classes: 10}\n")
    with caplog.at_level(logging.WARNING, logger="nas.netadapt.pipeline"):
        warn_on_other_data(run, {"name": "cifar10", "root": "../shared/datasets/cifar10",
                                 "resolution": 32, "num_classes": 10})
        assert not caplog.records
        warn_on_other_data(run, {"name": "synthetic", "root": None, "resolution": 32, "num_classes": 10})
    assert "name 'cifar10' there, 'synthetic' here" in caplog.text
    assert "root '../shared/datasets/cifar10' there, None here" in caplog.text


def test_an_auto_table_is_this_hosts_for_the_named_or_the_searched_space(tmp_path, monkeypatch):
    import nas.cost.host_table as host_tables
    from nas.netadapt.pipeline import make_latency

    asked: dict[str, str] = {}

    class Asked(Exception):
        pass

    def host_table(space, *, runtime, resolution, **_):  # stands in for the hours-long build
        asked.update(space=space.name, runtime=runtime)
        raise Asked

    monkeypatch.setattr(host_tables, "host_table", host_table)
    latency = {"table": "auto", "backend": "onnxruntime", "space": None, "measure": "table",
               "measure_missing": True, "strict": False}
    cfg = {"latency": latency, "search_run": None}
    with pytest.raises(NetAdaptRunError, match="give latency.space=mobilenetv3_small or mobilenetv3_large"):
        make_latency(cfg, load_spec("small"), tmp_path / "run", resume=False)
    with pytest.raises(Asked):
        make_latency({**cfg, "latency": {**latency, "space": "mobilenetv3_large"}}, load_spec("large"),
                     tmp_path / "run", resume=False)
    assert asked == {"space": "mobilenetv3_large", "runtime": "onnxruntime"}
    search = tmp_path / "search"
    (search / ".hydra").mkdir(parents=True)
    (search / ".hydra" / "config.yaml").write_text("space: {name: mobilenetv3_small}\n")
    with pytest.raises(Asked):
        make_latency({**cfg, "search_run": str(search)}, load_spec("small"), tmp_path / "run", resume=False)
    assert asked == {"space": "mobilenetv3_small", "runtime": "onnxruntime"}
