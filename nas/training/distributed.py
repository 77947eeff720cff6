"""Data-parallel training over ``torch.distributed`` (DDP), launched with ``torchrun``.

``torchrun --nproc-per-node 2 -m nas.cli.train small --data cifar10 ...`` starts one process
per GPU (or CPU share); each reads ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` from the
environment, :func:`init_from_env` joins the process group (NCCL on CUDA, gloo on CPU), and
:func:`nas.training.train.train` then wraps the model in ``DistributedDataParallel`` and gives every
rank its slice of each global batch (:class:`nas.training.tensor_data.TensorLoader`): the ranks
together train on exactly the batches, augmentation and global batch size of a
single-process run. Gradients are averaged by DDP; after BatchNorm recalibration the running
statistics are averaged over ranks, so every rank evaluates the same network and reports
the same accuracy. Only rank 0 writes checkpoints and outputs; all ranks resume from them
(several machines need a shared folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run (``world == 1``: no parallelism)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> DataParallel:
        """The initialised default process group's rank and size, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(rank=dist.get_rank(), world=dist.get_world_size())
        return cls()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` wrapped in ``DistributedDataParallel`` when there are several ranks."""
        if self.world == 1:
            return model
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks."""
        if self.world == 1:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(self.world)


def init_from_env(device: str = "auto") -> DataParallel:
    """Join the process group ``torchrun`` describes in the environment (no-op without it).

    Picks NCCL when the process trains on CUDA and gloo otherwise; on CUDA each local rank
    takes its own GPU (``LOCAL_RANK``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DataParallel()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DataParallel.current()


def shutdown() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DataParallel", "init_from_env", "shutdown"]
