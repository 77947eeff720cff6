"""The supernet's CUDA paths, run for real on a GPU (skipped without one).

Covered: sandwich training on CUDA with fp16 AMP, ``nas-supernet train`` on CUDA, the
supernet evaluator scoring on CUDA as it scores on the CPU, and data-parallel supernet
training on NCCL (two GPUs: both ranks end with the same weights).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import requires_cuda, requires_two_gpus
from nas.cli.supernet import main
from nas.supernet.evaluator import SupernetEvaluator
from nas.supernet.network import Supernet
from nas.supernet.train import SupernetTrainConfig, train_supernet
from nas.training.data_config import DataConfig
from test_supernet import tiny_space  # the same two-stage space as the CPU tests

REPO = Path(__file__).resolve().parents[2]
DATA = DataConfig(name="synthetic", resolution=32, num_classes=4, train_samples=64,
                  val_samples=32, batch_size=16)

pytestmark = requires_cuda


def config(**changes: Any) -> SupernetTrainConfig:
    base = SupernetTrainConfig(steps=4, lr=0.05, num_random=1, device="cuda", progress=False,
                               checkpoint_every=1)
    return dataclasses.replace(base, **changes)


def test_evaluator_on_cuda_scores_as_on_the_cpu() -> None:
    torch.manual_seed(0)
    net = Supernet(tiny_space(), num_classes=4)
    cpu = SupernetEvaluator(copy.deepcopy(net), DATA, bn_batches=2, device="cpu")
    gpu = SupernetEvaluator(copy.deepcopy(net), DATA, bn_batches=2, device="cuda")
    assert next(gpu.supernet.parameters()).is_cuda
    for seed in (1, 2):
        spec = tiny_space().sample(random.Random(seed))
        on_cpu, on_gpu = cpu.evaluate(spec), gpu.evaluate(spec)
        # Same images, same BN recalibration: only float rounding differs (one image at most
        # may change its arg-max among 32).
        assert on_gpu.top1 == pytest.approx(on_cpu.top1, abs=1 / 32)
        assert on_gpu.details["val_loss"] == pytest.approx(on_cpu.details["val_loss"], rel=1e-3)


def test_sandwich_training_with_fp16_amp_on_cuda(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Supernet(tiny_space(), num_classes=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = train_supernet(net, DATA, config(precision="fp16", largest_warmup_steps=1),
                            checkpoint_dir=tmp_path)
    assert result.finished and result.steps == 4
    assert all(p.is_cuda for p in result.supernet.parameters())
    losses = [v for record in result.history for k, v in record.items() if k.startswith("loss_")]
    assert losses and all(map(math.isfinite, losses))
    after = result.supernet.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before if before[k].is_floating_point())
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    assert float(ckpt["scaler"]["scale"]) > 0  # the fp16 gradient scaler ran and was saved
    # The trained supernet scores on the GPU it was trained on.
    score = SupernetEvaluator(result.supernet, DATA, bn_batches=2, device="cuda").evaluate(
        result.supernet.largest_spec())
    assert 0.0 <= score.top1 <= 1.0 and math.isfinite(score.details["val_loss"])


CLI_TINY = ["--set", "data.resolution=32", "--set", "data.train_samples=32",
            "--set", "data.val_samples=16", "--set", "data.batch_size=16", "--set", "data.num_classes=4",
            "--set", "train.steps=2", "--set", "train.num_random=1", "--set", "train.progress=false",
            "--set", "train.device=cuda"]


def test_nas_supernet_train_on_cuda(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--space", "mobilenetv3_small", "--data", "synthetic", "--out", str(tmp_path),
                 "--bn-batches", "1", "--set", "train.precision=bf16", *CLI_TINY]) == 0
    printed = capsys.readouterr().out
    assert "2 steps" in printed and "largest" in printed and "smallest" in printed
    ckpt = torch.load(tmp_path / "supernet.pt", map_location="cpu", weights_only=False)
    assert ckpt["finished"] and ckpt["progress"]["step"] == 2


# ---------------------------------------------------------------------------- NCCL
RANK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from nas.arch.space import load_space
    from nas.supernet.train import SupernetTrainConfig, new_supernet, train_supernet
    from nas.training.data import make_loaders
    from nas.training.data_config import DataConfig
    from nas.training.distributed import init_from_env, shutdown

    parallel = init_from_env("cuda")
    assert torch.distributed.get_backend() == "nccl"
    data = DataConfig(name="synthetic", resolution=32, num_classes=4, train_samples=64,
                      val_samples=32, batch_size=16)
    cfg = SupernetTrainConfig(steps=4, lr=0.01, num_random=1, largest_warmup_steps=2,
                              device="cuda", progress=False, checkpoint_every=1)
    loaders = make_loaders(data, seed=cfg.seed, rank=parallel.rank, world=parallel.world)
    result = train_supernet(new_supernet(load_space("mobilenetv3_small"), loaders.num_classes, cfg),
                            data, cfg, loaders=loaders, parallel=parallel)
    torch.save({"state": {k: v.cpu() for k, v in result.supernet.state_dict().items()},
                "processes": result.processes}, f"{sys.argv[1]}/rank{parallel.rank}.pt")
    shutdown()
""")


def _torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@requires_two_gpus
def test_two_nccl_ranks_train_the_same_supernet(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    done = _torchrun([str(script), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    # One all-reduce of the summed gradients per step and global-batch BatchNorm: one network.
    for key, value in ranks[0]["state"].items():
        assert torch.allclose(value.float(), ranks[1]["state"][key].float(), atol=1e-6), key


@requires_two_gpus
def test_nas_supernet_train_on_two_gpus(tmp_path: Path) -> None:
    done = _torchrun(["-m", "nas.cli.supernet", "train", "--space", "mobilenetv3_small",
                      "--data", "synthetic", "--out", str(tmp_path), "--no-eval", *CLI_TINY])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("on 2 processes") == 1  # rank 0 alone reports
    assert (tmp_path / "supernet.pt").is_file()
