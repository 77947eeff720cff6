"""Data-parallel supernet training: what :func:`nas.supernet.train.train_supernet` adds under ``torchrun``.

Each of ``world`` ranks (processes joined by :func:`nas.training.distributed.init_from_env`:
gloo on a CPU, NCCL on CUDA) trains on its slice of every global batch
(``DataConfig.batch_size`` is the global batch), and the ranks together compute the step one
process computes on the global batch:

* **The same sub-networks on every rank.** Step ``s`` draws its random sub-networks from a
  generator seeded by ``(seed, s)`` (:func:`step_sampler`), never from state a rank keeps, so
  the ranks agree by construction and a resumed run draws what an uninterrupted one drew.
* **BatchNorm and dropout of the global batch** (:func:`nas.training.global_batch.global_batch_layers`):
  batch statistics are gathered over the ranks, dropout masks drawn for the whole batch; every
  rank ends with the same weights and running statistics.
* **Gradients averaged once per step** (:func:`average_step`), after the ``2 + num_random``
  backward passes, in one flat all-reduce together with the step's losses.
  Not ``DistributedDataParallel``: DDP all-reduces during every backward pass and expects each
  pass to use the parameters the previous one used; a sandwich step runs several passes per
  optimiser step, each through another sub-network that leaves other parameters (and
  channel slices) unused. Under ``no_sync`` plus ``find_unused_parameters=True`` DDP would
  still walk the autograd graph after every forward and decide "unused" from the last pass
  alone, and it would add one reduction per bucket; one explicit all-reduce of the summed
  gradients is both simpler and exact (an unused slice has a zero gradient on every rank).
* **One start for all.** Before training the ranks compare a hash of their settings, data and
  checkpoint (:func:`agree_to_start`, an all_gather) and refuse, in one line naming each
  difference, when they differ.

Only rank 0 writes checkpoints; every rank resumes from the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.config import Config, ConfigError
from nas.training.data import Loaders, loader_share
from nas.training.data_config import DataConfig
from nas.training.distributed import DataParallel

_SAMPLER_TAG = 0x5A4D  # separates the sub-network stream from other streams of the same seed


def step_sampler(seed: int, step: int) -> random.Random:
    """The generator that draws step ``step``'s random sub-networks (0-based optimiser step)."""
    state = np.random.SeedSequence([int(seed), _SAMPLER_TAG, int(step)]).generate_state(2, np.uint64)
    return random.Random(int(state[0]) << 64 | int(state[1]))


def check_share(loaders: Loaders, parallel: DataParallel) -> None:
    """Refuse training loaders built for another rank or number of ranks than ``parallel``."""
    rank, world = loader_share(loaders.train)
    if (rank, world) != (parallel.rank, parallel.world):
        raise ConfigError(f"the training loader yields rank {rank} of {world}'s share of each batch "
                          f"but this process is rank {parallel.rank} of {parallel.world}: build "
                          "it with make_loaders(..., rank=..., world=...)")


def _sha(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()[:16]


def _source_files(dataset: Any) -> list[tuple[str, int, int]] | None:
    """The ``(file name, size, label)`` list behind wrapped ImageFolder datasets, when there is one."""
    while dataset is not None:
        samples = getattr(dataset, "samples", None)
        if isinstance(samples, list):
            root = str(getattr(dataset, "root", ""))
            return [(str(path).removeprefix(root), os.path.getsize(path), int(label))
                    for path, label in samples]
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
    return None


def data_facts(loaders: Loaders) -> dict[str, Any]:
    """What identifies the data each rank loaded: sizes, classes and a content digest.

    Tensor sources hash their labels and every k-th decoded uint8 image (at most 512 images);
    image folders hash their file names, sizes and labels; shard streams list their shard sizes; synthetic data
    is a function of its settings, which are compared beside these.
    """
    facts: dict[str, Any] = {"num_classes": loaders.num_classes, "classes": list(loaders.classes),
                             "train_batches": len(loaders.train)}
    for name, loader in (("train", loaders.train), ("val", loaders.val)):
        images, labels = getattr(loader, "images", None), getattr(loader, "labels", None)
        dataset = getattr(loader, "dataset", None)
        if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
            every = max(1, len(labels) // 512)
            facts[name] = _sha(labels.cpu().numpy().tobytes(),
                               images[::every].cpu().contiguous().numpy().tobytes())
        elif (files := _source_files(dataset)) is not None:
            facts[name] = _sha(repr(files).encode())
        elif hasattr(loader, "sizes"):
            facts[name] = list(loader.sizes)
        if dataset is not None and hasattr(dataset, "__len__"):
            facts[f"{name}_images"] = len(dataset)
    return facts


def checkpoint_digest(path: Path | None) -> str | None:
    """A hash of the checkpoint a rank resumes from (None: it starts afresh)."""
    if path is None or not path.is_file():
        return None
    return _sha(path.read_bytes())


def rank_settings(cfg: Config) -> dict[str, Any]:
    """The fields of a training config every rank must share: its settings, the device and
    the memory format (a progress bar or checkpoint interval may differ)."""
    return {**cfg.settings(), "device": getattr(cfg, "device", None),
            "channels_last": getattr(cfg, "channels_last", None)}


def agree_to_start(parallel: DataParallel, *, space: dict[str, Any], data_cfg: DataConfig,
                   train: dict[str, Any], loaders: Loaders, resume_from: Path | None) -> None:
    """Refuse (:class:`~nas.training.distributed.RanksDisagreeError`, the same line on every
    rank) unless all ranks hold the same space, data settings and data, training settings and
    checkpoint. ``train``: the training config's fields that change what a rank computes;
    ``resume_from``: the checkpoint this rank would resume from (None: none)."""
    if parallel.world == 1:
        return
    parallel.agree({
        "space": {"name": space.get("name"), "digest": _sha(json.dumps(space, sort_keys=True).encode())},
        "data": data_cfg.settings(), "train": train, "data content": data_facts(loaders),
        "checkpoint": checkpoint_digest(resume_from),
    })


def average_step(parallel: DataParallel, model: nn.Module, losses: dict[str, float], *,
                 buffers: bool = False) -> dict[str, float]:
    """Average the accumulated gradients of ``model`` and the step's ``losses`` over the ranks
    (one flat all-reduce); returns the averaged losses, those of the global batch. With
    ``buffers``, the floating-point buffers (BatchNorm running statistics, which differ between
    ranks whose BatchNorm saw only their slice) travel in the same all-reduce.

    A non-finite loss on any rank comes back non-finite on all of them, so every rank stops
    at the same step (:func:`nas.training.loop.run_loop` checks the metrics).
    """
    if parallel.world == 1:
        return losses
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    values = torch.tensor(list(losses.values()), dtype=grads[0].dtype if grads else torch.float32,
                          device=device)
    extra = parallel.floating_buffers(model) if buffers else []
    parallel.average_([*grads, values, *extra])
    return dict(zip(losses, values.tolist()))


__all__ = ["agree_to_start", "average_step", "check_share", "checkpoint_digest", "data_facts",
           "rank_settings", "step_sampler"]
