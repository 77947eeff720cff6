"""Proxy training: train any spec on a data config, score top-1/top-5.

``train(spec, data_cfg, train_cfg)`` builds the spec with the dataset's class count and
trains it at ``data_cfg.resolution`` (the spec's own ``resolution`` is the deployment size
and is ignored here; see :mod:`nas.training.data` for how 32x32 images meet a 32x-downsampling
network). Optimiser (SGD, AdamW, RMSprop), schedule (cosine, step, constant, each with
linear warm-up) and label smoothing come from :class:`TrainConfig`.

Repeatable on CPU: the same seeds give bit-identical weights and accuracy. Initialisation
is seeded by ``TrainConfig.seed``, shuffling and augmentation are pure functions of
(seed, epoch, index) (:class:`nas.training.data.EpochSampler`), and dropout draws from the global
torch RNG, whose state is checkpointed. A checkpoint (model, optimiser, scheduler, epoch,
step, partial-epoch sums, history, RNG states) is written at every epoch end and every
``checkpoint_every`` steps; ``resume=True`` continues from it and ends exactly where an
uninterrupted run ends. On CUDA, cuDNN kernels may make runs differ in the last bits.

A non-finite loss (or non-finite logits in evaluation) raises
:class:`NonFiniteLossError` naming the step: a diverged proxy run must never be recorded
as an accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nas.arch.spec import NetworkSpec
from nas.config import ConfigError
from nas.errors import NASError
from nas.models.bn import recalibrate_bn
from nas.models.builder import build_model
from nas.training.checkpoint import CheckpointError, read_checkpoint, steps_done
from nas.training.data import Loaders, make_loaders
from nas.training.data_config import DataConfig
from nas.training.distributed import DataParallel
from nas.training.loop import (
    CheckpointSpec,
    LoopOptions,
    NonFiniteLossError,
    StepContext,
    epoch_batches,
    run_loop,
)
from nas.training.scoring import evaluate_model
from nas.training.train_config import TrainConfig, resolve_device


CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 2  # 2: nas.training.loop's LoopState progress


class WeightsError(NASError, ValueError):
    """A weights file does not fit the model (names the keys and shapes)."""

# ---------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        top1, top5: final validation accuracy as fractions (``top5`` None below 5 classes).
        loss: final validation cross-entropy (no smoothing).
        history: one dict per epoch: epoch, step, lr, train_loss, train_top1, seconds, and
            val_top1 / val_top5 / val_loss where that epoch was evaluated.
        model: the trained module (on the training device, in eval mode).
        seconds: wall time of the whole run (resumed runs add up their parts).
        images_per_second: training throughput (forward, backward, step, data loading;
            evaluation excluded).
        steps: optimiser steps taken in all.
        settings: data and training settings that determine the result.
    """

    top1: float
    top5: float | None
    loss: float
    history: list[dict[str, Any]]
    model: nn.Module
    seconds: float
    images_per_second: float
    steps: int
    settings: dict[str, Any] = field(default_factory=dict)


def run_settings(data_cfg: DataConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """The settings recorded with (and keying) a result: ``{"data": ..., "train": ...}``."""
    return {"data": data_cfg.settings(), "train": train_cfg.settings()}


# ---------------------------------------------------------------------------- pieces
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser; biases and norm parameters get no weight decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    # torchvision's MobileNetV3 recipe (TF-style RMSprop: alpha 0.9, eps 0.0316).
    return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=0.0316, momentum=cfg.momentum)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based)."""
    warmup = min(total_steps, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        period = max(1, int(round(cfg.lr_step_epochs * steps_per_epoch)))
        return cfg.lr_gamma ** ((step - warmup) // period)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total_steps)
    )


def _output_features(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _last_linear_name(model: nn.Module) -> str | None:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def load_weights(model: nn.Module, source: str | Path | dict[str, torch.Tensor]) -> list[str]:
    """Load a state_dict (e.g. torchvision's) into ``model``; returns re-initialised keys.

    When only the classifier's last layer differs in shape (another class count), it keeps
    the model's fresh initialisation. Any other missing or unexpected key, or shape
    mismatch, raises :class:`WeightsError` naming the keys.
    """
    if isinstance(source, dict):
        state, where = source, "state_dict"
    else:
        path = Path(source)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad file
            raise WeightsError(f"{path}: cannot read as a torch state_dict ({err})") from None
        where = str(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where}: not a state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{where}: keys do not match the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    head = _last_linear_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head else set()
    mismatched = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                  if state[k].shape != v.shape}
    bad = {k: s for k, s in mismatched.items() if k not in head_keys}
    if bad:
        listed = ", ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in list(bad.items())[:5])
        raise WeightsError(f"{where}: shapes differ from the model ({len(bad)} tensors): {listed}")
    reinitialised = sorted(mismatched)
    kept = {k: v for k, v in state.items() if k not in mismatched}
    model.load_state_dict({**own, **kept})
    return reinitialised


def _arch_of(model: nn.Module) -> str:
    from nas.arch.codecs import to_string

    spec = getattr(model, "spec", None)
    return to_string(spec) if isinstance(spec, NetworkSpec) else type(model).__name__


def checkpoint_path(train_cfg: TrainConfig) -> Path | None:
    """Where :func:`train` keeps its checkpoint (None when checkpoints are off)."""
    return Path(train_cfg.checkpoint_dir) / CHECKPOINT_NAME if train_cfg.checkpoint_dir else None


def checkpoint_steps(checkpoint_dir: str | Path) -> int | None:
    """The optimiser steps of the checkpoint :func:`train` keeps in ``checkpoint_dir``, or None
    when there is none yet.

    For state a caller keeps beside a run (averaged weights, say): it may resume with the run
    only when both were saved at the same step. A file of another format raises
    :class:`CheckpointError`.
    """
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    return steps_done(read_checkpoint(path, CHECKPOINT_FORMAT))


def check_resolution(model: nn.Module, resolution: int) -> None:
    """Refuse a training resolution below the network's total stride (nothing left to see)."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, NetworkSpec):
        return
    stride = 2 * math.prod(block.stride for block in spec.blocks)  # the stem's stride 2
    if resolution < stride:
        raise ConfigError(f"DataConfig.resolution={resolution} is below the network's total "
                          f"stride {stride}: its last stages would see less than one pixel; "
                          f"use resolution >= {stride}")


# ---------------------------------------------------------------------------- training
def train(
    spec_or_model: NetworkSpec | nn.Module,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    *,
    loaders: Loaders | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train a spec (built with the dataset's class count) or a module; evaluate it.

    One step function for :func:`nas.training.loop.run_loop`: forward, label-smoothed cross-entropy,
    backward. At the end of every ``eval_every``-th epoch (and the last) BatchNorm is
    recalibrated and the validation split scored.

    Args:
        spec_or_model: a :class:`~nas.arch.spec.NetworkSpec`, or a module to train as is (its
            last linear layer must have the dataset's class count).
        data_cfg: the data; ``data_cfg.resolution`` is the training resolution.
        train_cfg: the training settings.
        loaders: prebuilt :func:`~nas.training.data.make_loaders` output for ``data_cfg`` (saves
            re-reading a dataset when many specs are trained); built when None.
        resume: continue from ``train_cfg.checkpoint_dir``'s checkpoint when there is one.
        on_step: called after every optimiser step with ``(step, metrics)``; an exception it
            raises ends the run (the last checkpoint stays resumable).
        parallel: data-parallel training over ``torch.distributed`` processes
            (:class:`nas.training.distributed.DataParallel`; default: the process group when one is
            initialised, e.g. under ``torchrun``).
    """
    if resume and not train_cfg.checkpoint_dir:
        raise ConfigError("resume=True needs TrainConfig.checkpoint_dir")
    device = resolve_device(train_cfg.device)
    parallel = parallel or DataParallel.current()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its kernels
    if loaders is None:
        loaders = make_loaders(data_cfg, seed=train_cfg.seed, pin_memory=device.type == "cuda",
                               device=device, rank=parallel.rank, world=parallel.world)
    num_classes = loaders.num_classes

    torch.manual_seed(train_cfg.seed)
    if isinstance(spec_or_model, NetworkSpec):
        model: nn.Module = build_model(spec_or_model, num_classes=num_classes)
    else:
        model = spec_or_model
        out = _output_features(model)
        if out is not None and out != num_classes:
            raise ConfigError(f"the model has {out} outputs but the dataset has {num_classes} classes")
    check_resolution(model, data_cfg.resolution)
    model.to(device)
    if train_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = parallel.wrap(model, device)
    if train_cfg.compile:
        forward = torch.compile(forward)

    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise ConfigError("the training loader yields no batches (dataset smaller than one batch?)")
    total_steps = train_cfg.steps or train_cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg, steps_per_epoch, total_steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)
    settings = run_settings(data_cfg, train_cfg)
    ckpt = checkpoint_path(train_cfg)

    def step(images: torch.Tensor, target: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        with ctx.autocast():
            logits = forward(images)
            loss = criterion(logits, target)
        loss_value = loss.detach().item()
        if math.isfinite(loss_value):
            ctx.backward(loss)
        correct = int((logits.detach().argmax(1) == target).sum())
        return {"train_loss": loss_value, "train_top1": correct / len(target)}

    def on_epoch_end(epoch: int, state: Any) -> dict[str, Any]:
        last = state.step >= total_steps
        if not (last or (train_cfg.eval_every and (epoch + 1) % train_cfg.eval_every == 0)):
            return {}
        if train_cfg.bn_recalibration_batches:
            recalibrate_bn(model, epoch_batches(loaders.train, epoch, 0),
                           train_cfg.bn_recalibration_batches, device)
            parallel.average_buffers(model)
        top1, top5, val_loss = evaluate_model(model, loaders.val, device)
        return {"val_top1": top1, "val_top5": top5, "val_loss": val_loss}

    options = LoopOptions(total_steps=total_steps, device=device, precision=train_cfg.precision,
                          channels_last=train_cfg.channels_last, grad_clip_norm=train_cfg.grad_clip_norm,
                          checkpoint_every=train_cfg.checkpoint_every, progress=train_cfg.progress,
                          desc="train")
    spec = None if ckpt is None else CheckpointSpec(
        path=ckpt, format=CHECKPOINT_FORMAT, arch=_arch_of(model), settings=settings,
        error=CheckpointError, what="nas.training.train checkpoint")
    state = run_loop(model, optimizer, scheduler, loaders.train, step, options, checkpoint=spec,
                     resume=resume, on_epoch_end=on_epoch_end, on_step=on_step,
                     write_checkpoints=parallel.rank == 0)

    final = state.history[-1] if state.history else {}
    if "val_top1" in final:
        top1, top5, val_loss = final["val_top1"], final["val_top5"], final["val_loss"]
    else:
        top1, top5, val_loss = evaluate_model(model, loaders.val, device)
    model.eval()
    return TrainResult(
        top1=top1, top5=top5, loss=val_loss, history=state.history, model=model,
        seconds=state.seconds,
        images_per_second=state.images / state.train_seconds if state.train_seconds else 0.0,
        steps=state.step, settings=settings,
    )
