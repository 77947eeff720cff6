"""``torchrun ... nas-search``: the ranks train the search's supernet together, then rank 0
runs the search on it (nas/search/rank_supernet.py). Two CPU processes on gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SPACES = Path(__file__).resolve().parents[1] / "data" / "spaces"
SCRIPT = str(Path(sys.executable).parent / "nas-search")
#: As in the supernet's own two-process tests: the ranks sum gradients and BatchNorm
#: statistics in another order than one process does (float rounding, amplified by lr).
TOLERANCE = 1e-5


def _overrides(table: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"hydra.run.dir={run_dir}", f"hydra.searchpath=[file://{SPACES}]", "space=tiny",
            f"latency.table={table}", "latency.backend=torch", "latency.resolution=64", "data=synthetic",
            "data.train_samples=64", "data.val_samples=32", "data.batch_size=16",
            "evaluator.train.steps=4", "evaluator.train.lr=0.01", "evaluator.train.progress=false",
            "evaluator.bn_batches=1", "evaluator.device=cpu", "trials=3", "profile_costs=false", *extra]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "supernet" / "supernet.pt", weights_only=False)
    assert checkpoint["finished"] and checkpoint["progress"]["step"] == 4
    return checkpoint["model"]


def test_two_ranks_train_the_supernet_and_rank_0_searches_on_it(tmp_path: Path, tiny_table: Path):
    two, one = tmp_path / "two", tmp_path / "one"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", SCRIPT, *_overrides(tiny_table, two)],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "supernet ready: 4 steps on 2 processes" in done.stdout
    assert "rank 1: the supernet is trained; rank 0 runs the search" in done.stdout
    assert done.stdout.count("Pareto front") == 1  # one search, on rank 0
    assert len((two / "trials.csv").read_text().splitlines()) == 1 + 3
    single = subprocess.run([SCRIPT, *_overrides(tiny_table, one, "trials=1")], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _weights(two), _weights(one)
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= TOLERANCE, f"two ranks and one process differ by {worst:.2e}"


def test_ranks_in_different_run_folders_stop_in_one_line(tmp_path: Path, tiny_table: Path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen([SCRIPT, *_overrides(tiny_table, tmp_path / f"run{rank}")],
                              env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                       LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("nas-search: error:")]
        assert len(lines) == 1 and "run folder" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run0" / "supernet" / "supernet.pt").exists()


@pytest.mark.parametrize("extra, message", [
    (["evaluator=proxy"], "evaluator=proxy has no supernet"),
    (["evaluator.checkpoint=/nowhere/supernet.pt"], "evaluator.checkpoint=/nowhere/supernet.pt is given"),
])
def test_under_torchrun_a_search_without_a_supernet_to_train_is_refused(tmp_path: Path, tiny_table: Path,
                                                                        extra: list[str], message: str):
    overrides = _overrides(tiny_table, tmp_path / "run", *extra)
    if extra == ["evaluator=proxy"]:  # the supernet's keys are not the proxy's
        overrides = [o for o in overrides if not o.startswith("evaluator.")]
    done = subprocess.run([SCRIPT, *overrides],
                          env=_env(WORLD_SIZE="2", RANK="0"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "nas-search: error: under torchrun" in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr
