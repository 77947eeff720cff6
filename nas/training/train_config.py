"""How a network is trained (:class:`TrainConfig`: optimiser, schedule, precision, device),
checked field by field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nas.config import Config, ConfigError, check_choice, check_int, check_number


OPTIMIZERS = ("sgd", "adamw", "rmsprop")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "step", "constant")


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train.

    Attributes:
        epochs: passes over the training set (ignored when ``steps`` is set).
        steps: optimiser steps in all; overrides ``epochs`` (the last epoch may be partial).
        lr: peak learning rate.
        optimizer: ``sgd`` (momentum), ``adamw`` or ``rmsprop`` (torchvision's MobileNetV3
            recipe settings: alpha 0.9, eps 0.0316, momentum).
        momentum: SGD/RMSprop momentum.
        weight_decay: L2 decay of conv and linear weights; BatchNorm parameters and biases
            are not decayed (torchvision's ``norm_weight_decay=0`` practice).
        schedule: ``cosine`` (to zero), ``step`` (times ``lr_gamma`` every
            ``lr_step_epochs``) or ``constant``; all after the warm-up.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        lr_step_epochs: period of the ``step`` schedule, in epochs.
        lr_gamma: factor of the ``step`` schedule.
        label_smoothing: cross-entropy label smoothing.
        grad_clip_norm: clip the gradient norm to this value (None: no clipping).
        bn_recalibration_batches: before each evaluation, re-estimate the BatchNorm
            statistics on this many training batches (:func:`nas.models.bn.recalibrate_bn`; 0:
            off). MobileNetV3's BN momentum of 0.01 needs hundreds of steps to forget the
            initialisation, longer than a proxy run: without this, a short run evaluates
            with stale statistics and scores near chance.
        seed: seeds initialisation, shuffling, augmentation and dropout.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        checkpoint_dir: where ``last.pt`` is written (None: no checkpoints).
        checkpoint_every: also checkpoint every this many steps (None: epoch ends only).
        eval_every: evaluate every this many epochs (0: only after the last one).
        progress: show tqdm progress bars.
        precision: ``fp32``; ``bf16`` (autocast on CPU or CUDA) or ``fp16`` (CUDA only:
            autocast with a gradient scaler, i.e. AMP).
        compile: run the model through ``torch.compile`` (a speed knob; the docs' training
            page says where it helps).
        channels_last: train in channels-last memory format (oneDNN's convolutions run a
            MobileNetV3 step faster on a CPU that way). A speed knob: results agree up to
            float rounding.
    """

    NOT_SETTINGS = (
        "device",
        "checkpoint_dir",
        "checkpoint_every",
        "eval_every",
        "progress",
        "compile",
        "channels_last",
    )  # not results (Config.settings)

    epochs: int = 1
    steps: int | None = None
    lr: float = 0.05
    optimizer: Literal["sgd", "adamw", "rmsprop"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 4e-5
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    lr_step_epochs: float = 1.0
    lr_gamma: float = 0.5
    label_smoothing: float = 0.1
    grad_clip_norm: float | None = None
    bn_recalibration_batches: int = 16
    seed: int = 0
    device: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    eval_every: int = 1
    progress: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    channels_last: bool = True

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        check_int(owner, "epochs", self.epochs, minimum=1)
        check_int(owner, "steps", self.steps, minimum=1, optional=True)
        check_number(owner, "lr", self.lr, low=0.0, low_open=True)
        check_choice(owner, "optimizer", self.optimizer, OPTIMIZERS)
        check_number(owner, "momentum", self.momentum, low=0.0, high=1.0)
        check_number(owner, "weight_decay", self.weight_decay, low=0.0)
        check_choice(owner, "schedule", self.schedule, SCHEDULES)
        check_number(owner, "warmup_epochs", self.warmup_epochs, low=0.0)
        check_number(owner, "lr_step_epochs", self.lr_step_epochs, low=0.0, low_open=True)
        check_number(owner, "lr_gamma", self.lr_gamma, low=0.0, high=1.0, low_open=True)
        check_number(owner, "label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        check_number(owner, "grad_clip_norm", self.grad_clip_norm, low=0.0, low_open=True,
                     optional=True)
        check_int(owner, "bn_recalibration_batches", self.bn_recalibration_batches, minimum=0)
        check_int(owner, "seed", self.seed, minimum=0)
        if not isinstance(self.device, str) or not _valid_device(self.device):
            raise ConfigError(
                f"{owner}.device must be one of ['auto', 'cpu', 'cuda', 'cuda:N', 'mps'], "
                f"got {self.device!r}"
            )
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, Path)):
                raise ConfigError(f"{owner}.checkpoint_dir must be a path or null, "
                                  f"got {self.checkpoint_dir!r}")
            object.__setattr__(self, "checkpoint_dir", str(self.checkpoint_dir))
        check_int(owner, "checkpoint_every", self.checkpoint_every, minimum=1, optional=True)
        check_int(owner, "eval_every", self.eval_every, minimum=0)
        check_choice(owner, "precision", self.precision, PRECISIONS)
        for flag in ("progress", "compile", "channels_last"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{owner}.{flag} must be true or false, got {getattr(self, flag)!r}")


def _valid_device(name: str) -> bool:
    if name in ("auto", "cpu", "cuda", "mps"):
        return True
    return name.startswith("cuda:") and name[5:].isdigit()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; other names as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
