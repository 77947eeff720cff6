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

Supernet training (:mod:`nas.supernet.parallel`) uses the same process group and loaders but
its own gradient average (:meth:`DataParallel.average_`), BatchNorm and dropout of the global
batch (:mod:`nas.training.global_batch`), and a check that the ranks start alike
(:meth:`DataParallel.agree`). A collective that fails because a peer died raises
:class:`CollectiveError`, one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from nas.errors import NASError


class RanksDisagreeError(NASError, ValueError):
    """Data-parallel ranks were started with different settings or data (the fields named)."""


class CollectiveError(NASError, RuntimeError):
    """A collective failed: another rank died or the connection between them broke."""


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn the failure of the collectives in the block into one :class:`CollectiveError` line.

    gloo and NCCL raise a plain ``RuntimeError`` (its first line says what the transport saw)
    when a peer dies mid-collective, also from inside a backward pass.
    """
    try:
        yield
    except RuntimeError as err:
        if isinstance(err, CollectiveError):
            raise
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # the C++ source location
        text = text.split(". ")[0].rstrip(".")  # gloo adds advice on debugging it
        rank = dist.get_rank() if dist.is_initialized() else 0
        raise CollectiveError(f"{what} failed on rank {rank}: {text}") from None


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

    @staticmethod
    def floating_buffers(model: nn.Module) -> list[torch.Tensor]:
        """``model``'s floating-point buffers (BatchNorm running statistics), the ones averaged."""
        return [buffer for buffer in model.buffers() if buffer.is_floating_point()]

    def average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks."""
        self.average_(self.floating_buffers(model))

    def average_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Average ``tensors`` over the ranks in place: one all-reduce per dtype and device.

        Flattened into one buffer because a collective costs about the same for 4 bytes as
        for megabytes on a CPU: one call for all gradients, not one per tensor.
        """
        if self.world == 1:
            return
        for group in _groups(tensors):
            flat = torch.cat([t.reshape(-1) for t in group])
            with collective("averaging over the data-parallel processes"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world)
            _scatter_back(flat, group)

    def broadcast_state(self, model: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (as DDP does when it wraps a model)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for group in _groups([*model.parameters(), *model.buffers()]):
                flat = torch.cat([t.detach().reshape(-1) for t in group])
                with collective("broadcasting rank 0's weights"):
                    dist.broadcast(flat, src=0)
                _scatter_back(flat, group)

    def agree(self, facts: Mapping[str, Any]) -> None:
        """Raise :class:`RanksDisagreeError` unless every rank holds the same ``facts``.

        ``facts``: what must be equal on all ranks (settings, data digests), JSON-able. One
        all_gather of a hash per rank; only when the hashes differ are the facts themselves
        gathered, to name every field that differs from rank 0's. All ranks raise the same
        message, so a caller may print it on rank 0 alone.
        """
        if self.world == 1:
            return
        device = _collective_device()
        digest = hashlib.sha256(_canonical(facts).encode()).digest()
        mine = torch.tensor(list(digest), dtype=torch.uint8, device=device)
        hashes = [torch.empty_like(mine) for _ in range(self.world)]
        with collective("comparing the settings of the data-parallel processes"):
            dist.all_gather(hashes, mine)
            if all(torch.equal(h, hashes[0]) for h in hashes):
                return
            everyone: list[Any] = [None] * self.world
            dist.all_gather_object(everyone, json.loads(_canonical(facts)))
        raise RanksDisagreeError(describe_disagreement(everyone))


def _groups(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` grouped by dtype and device (each group is one flat collective)."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return list(groups.values())


def _scatter_back(flat: torch.Tensor, group: list[torch.Tensor]) -> None:
    offset = 0
    for tensor in group:
        n = tensor.numel()
        tensor.copy_(flat[offset:offset + n].view_as(tensor))
        offset += n


def _collective_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _canonical(facts: Mapping[str, Any]) -> str:
    return json.dumps(facts, sort_keys=True, default=str)


def _flat(facts: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in facts.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_disagreement(everyone: list[Mapping[str, Any]]) -> str:
    """One line naming, for every rank that differs from rank 0, each differing field."""
    first = _flat(everyone[0])
    parts = []
    for rank, facts in enumerate(everyone[1:], start=1):
        flat = _flat(facts)
        keys = [k for k in sorted(set(first) | set(flat)) if first.get(k) != flat.get(k)]
        parts += [f"rank {rank} has {k}={flat.get(k)!r} where rank 0 has {first.get(k)!r}"
                  for k in keys]
    return (f"the {len(everyone)} data-parallel processes were started differently: "
            f"{'; '.join(parts)}; start every rank with the same command, config and data")


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


__all__ = ["CollectiveError", "DataParallel", "RanksDisagreeError", "collective", "describe_disagreement", "init_from_env",
           "shutdown"]
