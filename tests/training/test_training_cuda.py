"""The training package's CUDA paths, run for real on a GPU (skipped without one).

Covered: ``device: auto`` resolution, fp16 AMP with the gradient scaler and bf16 autocast in
the training loop, ``cudnn.benchmark``, pinned and on-GPU batches (DataLoader sources and the
tensor cache), CUDA RNG streams in checkpoints, and NCCL process groups (one process on one
GPU; two processes where there are two GPUs).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import TINY, requires_cuda, requires_two_gpus, write_image_folder
from nas.models.builder import build_model
from nas.training.checkpoint import rng_state, set_rng_state
from nas.training.data import make_loaders
from nas.training.data_config import DataConfig
from nas.training.loop import CheckpointSpec, LoopOptions, StepContext, run_loop
from nas.training.train import checkpoint_path, train
from nas.training.train_config import TrainConfig, resolve_device

REPO = Path(__file__).resolve().parents[2]
DATA = DataConfig(resolution=32, train_samples=64, val_samples=32, batch_size=16, num_classes=10)

pytestmark = requires_cuda


def _cfg(**changes: Any) -> TrainConfig:
    base = dict(steps=3, lr=0.05, progress=False, bn_recalibration_batches=2, device="cuda")
    return TrainConfig(**{**base, **changes})


def _loop_on_one_batch(precision: str, tmp_path: Path, steps: int = 30) -> tuple[list[float], dict]:
    """``steps`` loop steps on one fixed batch (memorised: the loss must fall); the checkpoint."""
    torch.manual_seed(0)
    model = build_model(TINY, num_classes=10).cuda()
    images, target = next(iter(make_loaders(DATA, seed=0).train))
    loader = [(images, target)]  # one batch per epoch, the same every epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    criterion = nn.CrossEntropyLoss()
    losses: list[float] = []

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        with ctx.autocast():
            logits = model(x)
            loss = criterion(logits, y)
        assert x.is_cuda and y.is_cuda  # the loop moved the batch to the training device
        if precision != "fp32":
            assert logits.dtype == (torch.float16 if precision == "fp16" else torch.bfloat16)
        ctx.backward(loss)
        losses.append(loss.item())
        return {"loss": loss.item()}

    path = tmp_path / f"{precision}.pt"
    spec = CheckpointSpec(path=path, format=1, arch="tiny", settings={}, error=RuntimeError)
    options = LoopOptions(total_steps=steps, device=torch.device("cuda"), precision=precision,
                          progress=False)
    run_loop(model, optimizer, scheduler, loader, step, options, checkpoint=spec)
    return losses, torch.load(path, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------------------- device
def test_auto_resolves_to_the_gpu() -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(TrainConfig(device="cuda:0").device) == torch.device("cuda", 0)


# ---------------------------------------------------------------------------- mixed precision
def test_fp16_amp_trains_with_a_gradient_scaler(tmp_path: Path) -> None:
    losses, ckpt = _loop_on_one_batch("fp16", tmp_path)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]
    # The scaler is enabled and checkpointed; its scale stays a finite positive power of two.
    scale = float(ckpt["scaler"]["scale"])
    assert 0 < scale <= 65536.0 and scale == 2.0 ** round(torch.tensor(scale).log2().item())


def test_bf16_autocast_trains_and_keeps_the_scaler_off(tmp_path: Path) -> None:
    losses, ckpt = _loop_on_one_batch("bf16", tmp_path)
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]
    assert ckpt["scaler"] == {}  # a disabled GradScaler's state is empty


def test_mixed_precision_first_loss_is_close_to_fp32(tmp_path: Path) -> None:
    # Same weights, same batch: the first forward differs only by the autocast rounding.
    fp32, _ = _loop_on_one_batch("fp32", tmp_path, steps=1)
    fp16, _ = _loop_on_one_batch("fp16", tmp_path, steps=1)
    bf16, _ = _loop_on_one_batch("bf16", tmp_path, steps=1)
    assert fp16[0] == pytest.approx(fp32[0], rel=1e-2)
    assert bf16[0] == pytest.approx(fp32[0], rel=5e-2)


def test_train_fp16_on_cuda_sets_cudnn_benchmark(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    seen: list[float] = []
    cfg = _cfg(precision="fp16", checkpoint_dir=str(tmp_path))
    result = train(TINY, DATA, cfg, on_step=lambda _, m: seen.append(m["train_loss"]))
    assert torch.backends.cudnn.benchmark is True
    assert all(p.is_cuda for p in result.model.parameters())
    assert result.steps == 3 and len(seen) == 3 and all(map(math.isfinite, seen))
    assert 0.0 <= result.top1 <= 1.0 and result.images_per_second > 0
    ckpt = torch.load(checkpoint_path(cfg), map_location="cpu", weights_only=False)
    assert float(ckpt["scaler"]["scale"]) > 0 and "cuda" in ckpt["rng"]


# ---------------------------------------------------------------------------- data
def test_dataloader_sources_pin_their_batches() -> None:
    loaders = make_loaders(DATA, seed=0, pin_memory=True)
    images, target = next(iter(loaders.train))
    assert images.is_pinned() and target.is_pinned()


def test_tensor_cache_builds_batches_on_the_gpu(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", {"train": 8, "val": 4}, size=8)
    cfg = DataConfig(name="cifar10", root=str(root), resolution=16, batch_size=6,
                     cache_dir=str(tmp_path / "cache"))
    gpu = make_loaders(cfg, seed=0, device="cuda", pin_memory=True)
    images, labels = next(iter(gpu.train))
    assert images.is_cuda and labels.is_cuda and images.shape == (6, 3, 16, 16)
    assert gpu.train.images.is_cuda  # the whole uint8 split lives on the GPU
    assert gpu.train.pin_memory is False  # pinning is for host memory only
    # Validation batches are not augmented: the GPU builds what the CPU builds.
    cpu = make_loaders(cfg, seed=0, device="cpu", pin_memory=True)
    cpu_images, cpu_labels = next(iter(cpu.val))
    assert cpu_images.is_pinned()
    gpu_images, gpu_labels = next(iter(gpu.val))
    assert torch.equal(gpu_labels.cpu(), cpu_labels)
    assert torch.allclose(gpu_images.cpu(), cpu_images, atol=1e-4)


def test_checkpoint_rng_state_restores_the_cuda_stream() -> None:
    state = rng_state()
    assert "cuda" in state and len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(4, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), first)


# ---------------------------------------------------------------------------- NCCL
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ONE_RANK_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from nas.training.data_config import DataConfig
    from nas.training.distributed import DataParallel, _collective_device, collective
    from nas.training.train import train
    from nas.training.train_config import TrainConfig
    from conftest import TINY

    torch.cuda.set_device(0)
    dist.init_process_group(backend="nccl", rank=0, world_size=1)  # env:// from the test
    assert dist.get_backend() == "nccl"
    assert DataParallel.current() == DataParallel(rank=0, world=1)
    assert _collective_device().type == "cuda"
    x = torch.arange(4.0, device=_collective_device())
    with collective("a one-rank NCCL all-reduce"):
        dist.all_reduce(x)
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0], x
    data = DataConfig(resolution=32, train_samples=32, val_samples=16, batch_size=16, num_classes=10)
    result = train(TINY, data, TrainConfig(steps=2, device="cuda", progress=False,
                                           bn_recalibration_batches=1))
    assert result.steps == 2 and next(result.model.parameters()).is_cuda
    dist.destroy_process_group()
    print("one-rank nccl ok")
""")


def test_one_process_nccl_group_trains() -> None:
    # In a child process: a process group joined here would outlive the test.
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-c", ONE_RANK_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "one-rank nccl ok" in done.stdout


TWO_RANK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from nas.arch.codecs import load_spec
    from nas.training.data_config import DataConfig
    from nas.training.distributed import init_from_env, shutdown
    from nas.training.train import train
    from nas.training.train_config import TrainConfig

    parallel = init_from_env("cuda")
    assert torch.distributed.get_backend() == "nccl"
    data = DataConfig(resolution=32, train_samples=64, val_samples=32, batch_size=16,
                      num_classes=10)
    result = train(load_spec("small_minimal"), data,
                   TrainConfig(steps=4, device="cuda", progress=False, bn_recalibration_batches=2))
    torch.save({"state": {k: v.cpu() for k, v in result.model.state_dict().items()},
                "top1": result.top1, "world": parallel.world,
                "device": torch.cuda.current_device()}, f"{sys.argv[1]}/rank{parallel.rank}.pt")
    shutdown()
""")


@requires_two_gpus
def test_two_nccl_processes_train_one_network(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(TWO_RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["device"] for r in ranks] == [0, 1]
    # DDP averaged the gradients on NCCL and the BN statistics were averaged: one network.
    # Both ranks score the whole val split with the same weights (cuDNN may round apart).
    assert ranks[0]["top1"] == pytest.approx(ranks[1]["top1"], abs=1 / 32)
    for key, value in ranks[0]["state"].items():
        assert torch.allclose(value.float(), ranks[1]["state"][key].float(), atol=1e-6), key
