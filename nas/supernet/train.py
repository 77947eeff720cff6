"""Train a :class:`~nas.supernet.network.Supernet` with the sandwich rule and in-place distillation.

Every optimiser step follows BigNAS (Yu et al., ECCV 2020, Sec. 3.1; the sandwich rule and
in-place distillation come from slimmable / universally slimmable networks, Yu & Huang
2019): on one batch the **largest** sub-network is trained on the labels, then the
**smallest** and ``num_random`` **random** sub-networks are trained to match the largest's
soft predictions (KL divergence to its detached softmax), their gradients are accumulated,
and one optimiser step updates the shared weights. Training the two extremes every step
bounds the whole space; distilling from the largest gives the small ones a smoother target.
The step itself is :mod:`nas.supernet.sandwich`.

Optionally the largest network alone is trained for ``largest_warmup_steps`` first and
its expansion channels are then sorted by importance (Once-for-All trains the full network
before progressive shrinking, and re-organises channels before elastic width; Cai et al.
2020, Sec. 3.2), so that the narrow sub-networks start from the most important channels.

The run is resumable and repeatable: a checkpoint (weights, optimiser, scheduler, progress,
torch's RNG states) is written every ``checkpoint_every`` steps and at the end of every
epoch; data order and augmentation are pure functions of (seed, epoch, index)
(:class:`nas.training.data.EpochSampler`) and step ``s``'s random sub-networks of (seed, s)
(:func:`nas.supernet.parallel.step_sampler`), so a resumed run ends where an uninterrupted
one ends. Under ``torchrun`` the processes train one supernet data-parallel
(:mod:`nas.supernet.parallel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from nas.arch.codecs import spec_from_dict, spec_to_dict
from nas.config import Config, ConfigError, check_choice, check_int, check_number
from nas.errors import NASError
from nas.arch.space import SearchSpace, StageSpace
from nas.supernet.dynamic_ops import IMPORTANCE_NORMS
from nas.supernet.network import Supernet
from nas.supernet.sandwich import distillation_loss, sandwich_specs, sandwich_step, zero_init_residual
from nas.supernet.parallel import (
    agree_to_start,
    average_step,
    check_share,
    rank_settings,
    step_sampler,
)
from nas.training.checkpoint import read_checkpoint as _read_checkpoint
from nas.training.data import Loaders, make_loaders
from nas.training.data_config import DataConfig
from nas.training.distributed import DataParallel
from nas.training.global_batch import global_batch_layers
from nas.training.loop import CheckpointSpec, LoopOptions, StepContext, run_loop
from nas.training.train import make_optimizer, make_scheduler
from nas.training.train_config import TrainConfig, resolve_device

CHECKPOINT_NAME = "supernet.pt"
CHECKPOINT_FORMAT = "nas.supernet.network/2"  # 2: nas.training.loop's LoopState progress


class SupernetCheckpointError(NASError, RuntimeError):
    """A supernet checkpoint cannot be read or does not fit (the message says which field)."""


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SupernetTrainConfig(Config):
    """How to train a supernet.

    The optimiser fields mean what they mean in :class:`nas.training.train_config.TrainConfig` (the same
    optimiser and schedule code is used); ``epochs``/``steps`` count sandwich steps, each of
    which runs ``2 + num_random`` forward/backward passes.

    Attributes:
        epochs: passes over the training set (ignored when ``steps`` is set).
        steps: optimiser steps in all (overrides ``epochs``).
        lr, optimizer, momentum, weight_decay, schedule, warmup_epochs, label_smoothing,
            grad_clip_norm: as in :class:`nas.training.train_config.TrainConfig`.
        num_random: random sub-networks per step besides the largest and the smallest
            (BigNAS uses 2).
        distill: in-place distillation: the smallest and random sub-networks learn the
            largest's soft targets (KL); when false they learn the labels.
        kd_temperature: softmax temperature of the distillation (loss scaled by T^2).
        largest_warmup_steps: train the largest network alone for this many steps first
            (counted in ``steps``/``epochs``).
        sort_channels: sort the expansion channels by importance when the largest-only
            phase ends (only when ``largest_warmup_steps > 0``).
        importance: ``l1`` or ``l2`` norm of the expansion filters (channel sorting).
        zero_init_residual: zero the last BatchNorm scale of every residual block at the
            start (BigNAS Sec. 3.1: stabilises training the big and small nets together).
        kernel_transform: the supernet uses OFA's kernel transformation matrices.
        seed: seeds initialisation, data order, augmentation and the sub-network sampler.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        checkpoint_every: also checkpoint every this many steps (None: epoch ends only).
        progress: show a tqdm progress bar.
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (CUDA AMP with a gradient scaler).
        channels_last: feed images in channels-last memory format; oneDNN's convolutions
            run a sandwich step faster on a CPU that way. A speed knob: results agree up
            to float rounding.
        batchnorm_slices: BatchNorm normalises each of this many equal, consecutive slices
            of the global batch with the slice's own statistics (ghost batch normalization),
            the same function with any number of processes. 1: the whole global batch (under
            ``torchrun``, a collective per BatchNorm layer in every pass). A multiple of the
            process count: each process normalises its own slices, no collective, and the
            running statistics travel with the gradients once a step; so ``S`` processes with
            ``S`` slices train what one process with ``S`` slices trains, to float rounding.
    """

    # Not results (see Config.settings):
    NOT_SETTINGS = ("device", "checkpoint_every", "progress", "channels_last")

    epochs: int = 10
    steps: int | None = None
    lr: float = 0.1
    optimizer: Literal["sgd", "adamw", "rmsprop"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 4e-5
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    grad_clip_norm: float | None = None
    num_random: int = 2
    distill: bool = True
    kd_temperature: float = 1.0
    largest_warmup_steps: int = 0
    sort_channels: bool = True
    importance: Literal["l1", "l2"] = "l1"
    zero_init_residual: bool = True
    kernel_transform: bool = False
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int | None = 50
    progress: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = True
    batchnorm_slices: int = 1

    def __post_init__(self) -> None:
        owner = "SupernetTrainConfig"
        check_int(owner, "num_random", self.num_random, minimum=0)
        check_number(owner, "kd_temperature", self.kd_temperature, low=0.0, low_open=True)
        check_int(owner, "largest_warmup_steps", self.largest_warmup_steps, minimum=0)
        check_int(owner, "batchnorm_slices", self.batchnorm_slices, minimum=1)
        check_choice(owner, "importance", self.importance, IMPORTANCE_NORMS)
        for flag in ("distill", "sort_channels", "zero_init_residual", "kernel_transform",
                     "channels_last"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{owner}.{flag} must be true or false, got {getattr(self, flag)!r}")
        # The shared fields are validated (with their own messages) by TrainConfig.
        try:
            self.optim_config()
        except ConfigError as err:
            raise ConfigError(str(err).replace("TrainConfig.", f"{owner}.")) from None

    def optim_config(self) -> TrainConfig:
        """The :class:`~nas.training.train_config.TrainConfig` that drives the optimiser and schedule."""
        return TrainConfig(
            epochs=self.epochs, steps=self.steps, lr=self.lr, optimizer=self.optimizer,
            momentum=self.momentum, weight_decay=self.weight_decay, schedule=self.schedule,
            warmup_epochs=self.warmup_epochs, label_smoothing=self.label_smoothing,
            grad_clip_norm=self.grad_clip_norm, seed=self.seed, device=self.device,
            progress=self.progress, precision=self.precision,
        )


# ---------------------------------------------------------------------------- space <-> data
def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """A plain (checkpoint-safe) description of ``space``; :func:`space_from_plain` inverts it."""
    return {
        "name": space.name,
        "base": spec_to_dict(space.base),
        "kernels": list(space.kernels),
        "se": list(space.se),
        "activations": list(space.activations),
        "stages": [{"out": s.out, "stride": s.stride, "blocks": s.blocks,
                    "expansions": list(s.expansions), "depth_offsets": list(s.depth_offsets)}
                   for s in space.stages],
    }


def space_from_plain(data: dict[str, Any]) -> SearchSpace:
    """Inverse of :func:`space_to_dict`."""
    return SearchSpace(
        name=data["name"], base=spec_from_dict(data["base"], "checkpoint space base: "),
        stages=tuple(StageSpace(out=s["out"], stride=s["stride"], blocks=s["blocks"],
                                expansions=tuple(s["expansions"]),
                                depth_offsets=tuple(s["depth_offsets"])) for s in data["stages"]),
        kernels=tuple(data["kernels"]), se=tuple(data["se"]), activations=tuple(data["activations"]),
    )


def supernet_arch(supernet: Supernet) -> dict[str, Any]:
    """What rebuilds ``supernet``'s module structure (stored in its checkpoints)."""
    return {"space": space_to_dict(supernet.space), "num_classes": supernet.num_classes,
            "kernel_transform": supernet.kernel_transform}


def new_supernet(space: SearchSpace, num_classes: int, cfg: SupernetTrainConfig) -> Supernet:
    """A freshly initialised supernet for ``cfg`` (initialisation seeded by ``cfg.seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Supernet(space, num_classes=num_classes, kernel_transform=cfg.kernel_transform)


def build_supernet(arch: dict[str, Any]) -> Supernet:
    """A fresh supernet from :func:`supernet_arch`'s description."""
    return Supernet(space_from_plain(arch["space"]), num_classes=arch["num_classes"],
                    kernel_transform=arch["kernel_transform"])


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_file(checkpoint_dir: str | Path) -> Path:
    """Where :func:`train_supernet` keeps its checkpoint in ``checkpoint_dir``."""
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a supernet checkpoint (on the CPU)."""
    return _read_checkpoint(path, CHECKPOINT_FORMAT, what="supernet checkpoint",
                            hint="; write one with `nas-supernet train`",
                            error=SupernetCheckpointError)


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """The trained supernet of a checkpoint (CPU, eval mode) and the checkpoint's record.

    The record holds ``arch``, ``settings`` (``data`` and ``train``), ``progress`` and
    ``finished``.
    """
    ckpt = read_checkpoint(path)
    supernet = build_supernet(ckpt["arch"])
    supernet.load_state_dict(ckpt["model"])
    supernet.eval()
    record = {k: ckpt[k] for k in ("arch", "settings", "progress", "finished")}
    return supernet, record


# ---------------------------------------------------------------------------- the loop
@dataclass
class SupernetTrainResult:
    """What a supernet training run produced.

    Attributes:
        supernet: the trained network (on the training device, eval mode).
        steps: optimiser steps taken in all (resumed runs included).
        finished: whether the configured budget is done (false after ``stop_after``).
        seconds: wall time of training in all (resumed runs add up their parts).
        images_per_second: training images per second (each image passes through
            ``2 + num_random`` sub-networks).
        history: one dict per epoch: epoch, step, lr, mean loss per role, seconds.
        checkpoint: the checkpoint file (None when checkpoints are off).
        settings: the data and training settings.
        processes: data-parallel processes that trained it (``images_per_second`` counts
            the images of all of them).
    """

    supernet: Supernet
    steps: int
    finished: bool
    seconds: float
    images_per_second: float
    history: list[dict[str, Any]]
    checkpoint: Path | None
    settings: dict[str, Any]
    processes: int = 1


def train_supernet(
    supernet: Supernet,
    data_cfg: DataConfig,
    cfg: SupernetTrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    loaders: Loaders | None = None,
    stop_after: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    parallel: DataParallel | None = None,
) -> SupernetTrainResult:
    """Train ``supernet`` on ``data_cfg`` with the sandwich rule (see the module docstring).

    Args:
        supernet: a fresh supernet, or the one a checkpoint belongs to (its weights are
            replaced by the checkpoint's on resume).
        data_cfg: the data; ``data_cfg.resolution`` is the training resolution.
        cfg: the training settings.
        checkpoint_dir: where ``supernet.pt`` is kept (None: no checkpoints).
        resume: continue from ``checkpoint_dir``'s checkpoint when there is one; a finished
            checkpoint returns at once.
        loaders: prebuilt :func:`~nas.training.data.make_loaders` output for ``data_cfg``.
        stop_after: return (checkpointed, unfinished) after this many steps in this call.
        on_step: called after every optimiser step with ``(step, losses by role)``.
        parallel: data-parallel training over ``torch.distributed`` processes (default: the
            process group when one is initialised, e.g. under ``torchrun``); ``loaders`` must
            then be this rank's (``make_loaders(..., rank=, world=)``). Only rank 0 writes.
    """
    if cfg.kernel_transform != supernet.kernel_transform:
        raise ConfigError(f"SupernetTrainConfig.kernel_transform is {cfg.kernel_transform} but the "
                          f"supernet was built with kernel_transform={supernet.kernel_transform}")
    device = resolve_device(cfg.device)
    parallel = parallel or DataParallel.current()
    if loaders is None:
        loaders = make_loaders(data_cfg, seed=cfg.seed, pin_memory=device.type == "cuda", device=device,
                               rank=parallel.rank, world=parallel.world)
    check_share(loaders, parallel)
    if data_cfg.batch_size % cfg.batchnorm_slices:
        raise ConfigError(f"data.batch_size={data_cfg.batch_size} does not split into "
                          f"train.batchnorm_slices={cfg.batchnorm_slices} equal BatchNorm slices")
    if loaders.num_classes != supernet.num_classes:
        raise ConfigError(f"the supernet has {supernet.num_classes} classes but the data has "
                          f"{loaders.num_classes} (DataConfig.num_classes / the dataset's folders)")
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise ConfigError("the training loader yields no batches (dataset smaller than one batch?)")
    optim_cfg = cfg.optim_config()
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch

    supernet.to(device)
    if cfg.channels_last:
        supernet.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(supernet, optim_cfg)
    scheduler = make_scheduler(optimizer, optim_cfg, steps_per_epoch, total_steps)
    settings = {"data": data_cfg.settings(), "train": cfg.settings()}
    ckpt_path = checkpoint_file(checkpoint_dir) if checkpoint_dir is not None else None
    resuming = resume and ckpt_path is not None and ckpt_path.is_file()
    if parallel.world > 1:
        agree_to_start(parallel, space=space_to_dict(supernet.space), data_cfg=data_cfg,
                       train=rank_settings(cfg), loaders=loaders,
                       resume_from=ckpt_path if resuming else None)
    if not resuming:
        torch.manual_seed(cfg.seed)
        if cfg.zero_init_residual:
            zero_init_residual(supernet)
    parallel.broadcast_state(supernet)  # as DDP starts: rank 0's weights (a resume reloads them)

    def step(images: torch.Tensor, target: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        state = ctx.state
        largest_only = state.step < cfg.largest_warmup_steps
        if (not largest_only and cfg.largest_warmup_steps and cfg.sort_channels
                and not state.flags.get("sorted")):
            # OFA: channels are re-organised once the full network is trained.
            supernet.sort_channels(cfg.importance, optimizer=optimizer)
            state.flags["sorted"] = True
        specs = sandwich_specs(supernet, step_sampler(cfg.seed, state.step), cfg.num_random,
                               largest_only)
        losses = sandwich_step(supernet, images, target, specs, label_smoothing=cfg.label_smoothing,
                               distill=cfg.distill, temperature=cfg.kd_temperature, ctx=ctx,
                               check_finite=parallel.world == 1)
        losses = average_step(parallel, supernet, losses, buffers=cfg.batchnorm_slices > 1)
        return {f"loss_{role}": value for role, value in losses.items()}

    def on_step_roles(number: int, metrics: dict[str, float]) -> None:
        if on_step is not None:
            on_step(number, {k.removeprefix("loss_"): v for k, v in metrics.items()})

    checkpoint = None if ckpt_path is None else CheckpointSpec(
        path=ckpt_path, format=CHECKPOINT_FORMAT, arch=supernet_arch(supernet), settings=settings,
        error=SupernetCheckpointError, what="supernet checkpoint",
        hint="; write one with `nas-supernet train`",
        defaults={"train": SupernetTrainConfig().settings()})
    options = LoopOptions(total_steps=total_steps, device=device, precision=cfg.precision,
                          channels_last=cfg.channels_last, grad_clip_norm=cfg.grad_clip_norm,
                          checkpoint_every=cfg.checkpoint_every,
                          progress=cfg.progress and parallel.rank == 0, desc="supernet")
    with global_batch_layers(supernet, parallel, batchnorm_slices=cfg.batchnorm_slices):
        state = run_loop(supernet, optimizer, scheduler, loaders.train, step, options,
                         checkpoint=checkpoint, resume=resume, on_step=on_step_roles,
                         stop_after=stop_after, write_checkpoints=parallel.rank == 0)
    supernet.eval()
    supernet.set_active(supernet.largest_spec())
    return SupernetTrainResult(
        supernet=supernet, steps=state.step, finished=state.step >= total_steps,
        seconds=state.seconds,
        # state.images counts this rank's share of every batch.
        images_per_second=(state.images * parallel.world / state.train_seconds
                           if state.train_seconds else 0.0),
        history=state.history, checkpoint=ckpt_path, settings=settings, processes=parallel.world,
    )


__all__ = [
    "CHECKPOINT_NAME", "SupernetCheckpointError", "SupernetTrainConfig", "SupernetTrainResult",
    "build_supernet", "checkpoint_file", "distillation_loss", "load_supernet", "new_supernet",
    "read_checkpoint",
    "sandwich_specs", "sandwich_step", "space_from_plain", "space_to_dict", "supernet_arch",
    "train_supernet", "zero_init_residual",
]
