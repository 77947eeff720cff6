"""Data-parallel training: two CPU processes on the gloo backend, launched with torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_image_folder


def _folder(root: Path) -> Path:
    return write_image_folder(root, {"train": 16, "val": 4})


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port (no fixed master port to collide on).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


RANK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from nas.training.data_config import DataConfig
    from nas.training.distributed import init_from_env, shutdown
    from nas.arch.codecs import load_spec
    from nas.training.train import train
    from nas.training.train_config import TrainConfig
    parallel = init_from_env("cpu")
    data = DataConfig(name="cifar10", root=sys.argv[1], resolution=32, batch_size=8,
                      cache_dir=sys.argv[2])
    result = train(load_spec("small_minimal"), data,
                   TrainConfig(epochs=2, device="cpu", progress=False, bn_recalibration_batches=2))
    torch.save({"state": result.model.state_dict(), "top1": result.top1, "world": parallel.world},
               f"{sys.argv[3]}/rank{parallel.rank}.pt")
    shutdown()
""")


def test_two_gloo_processes_train_one_network(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    done = _torchrun([str(script), str(root), str(tmp_path / "cache"), str(tmp_path)], cwd=Path.cwd())
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    # DDP averaged the gradients and the BN statistics were averaged: the ranks hold one network.
    assert ranks[0]["top1"] == ranks[1]["top1"]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key


def test_nas_train_under_torchrun_writes_once(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    out = tmp_path / "run"
    done = _torchrun(["-m", "nas.cli.train", "small_minimal", "--data", "cifar10", "--root", str(root),
                      "--cache-dir", str(tmp_path / "cache"), "--resolution", "32", "--batch-size", "8",
                      "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(out)],
                     cwd=Path.cwd())
    assert done.returncode == 0, done.stderr[-3000:]
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6  # 48 images / global batch 8
    assert done.stdout.count("top-1") == 1  # rank 0 alone reports
