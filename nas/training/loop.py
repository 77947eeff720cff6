"""The one training loop: optimiser steps over epochs, checkpointed, resumable, bit-repeatable.

Every training in the project runs here: stand-alone and proxy training
(:func:`nas.training.train.train`), supernet sandwich training
(:func:`nas.supernet.train.train_supernet`) and NetAdapt's fine-tuning (through
:func:`nas.training.train.train`). What differs between them is one *step function*: given a batch it
runs the forward and backward passes (one for a stand-alone network, ``2 + n`` for a
sandwich step) and returns the batch's metrics. The loop owns everything else: the batch
order of every epoch (resumed mid-epoch without replaying batches), mixed precision
(bf16 autocast; fp16 with a gradient scaler on CUDA), channels-last inputs, gradient
clipping, the optimiser and scheduler steps, the non-finite-loss stop, per-epoch records,
the progress bar, and checkpoints (weights, optimiser, scheduler, scaler, progress and
every RNG stream) written atomically every ``checkpoint_every`` steps and at every epoch
end. A run resumed from any checkpoint ends bit-identical to the uninterrupted run on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from nas.config import ConfigError
from nas.errors import NASError
from nas.interrupts import raise_if_interrupted
from nas.training.checkpoint import check_matches, read_checkpoint, rng_state, save_atomic, set_rng_state


class NonFiniteLossError(NASError, RuntimeError):
    """Training diverged: the loss (or evaluation logits) became NaN or infinite."""

    def __init__(self, message: str, *, step: int | None = None, loss: float | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.loss = loss


@dataclass
class LoopState:
    """Everything besides weights, optimiser and scheduler that a resume needs.

    ``sums``/``counts`` accumulate the current epoch's step metrics (weighted by batch
    size); ``flags`` hold a step function's own resumable state (e.g. the supernet's
    "channels sorted").
    """

    epoch: int = 0
    step: int = 0
    epoch_batches: int = 0
    train_seconds: float = 0.0
    seconds: float = 0.0
    images: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """What a step function may use: autocast, the (scaled) backward pass, the state."""

    autocast: Callable[[], ContextManager[Any]]
    backward: Callable[[torch.Tensor], None]
    state: LoopState


class StepFunction(Protocol):
    def __call__(self, images: torch.Tensor, target: torch.Tensor,
                 ctx: StepContext) -> dict[str, float]:
        """Forward and backward on one batch (no optimiser step); the batch's mean metrics."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Where and as what a loop checkpoints: the file, its format, and what it must match."""

    path: Path
    format: str | int
    arch: Any
    settings: dict[str, Any]
    error: type[Exception]
    what: str = "checkpoint"
    hint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # stored as is (e.g. "finished")
    # The settings' defaults, for a checkpoint older than a setting (checkpoint.settings_diff).
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopOptions:
    """How the loop runs (none of these change what a CPU run computes, but ``precision``)."""

    total_steps: int
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    grad_clip_norm: float | None = None
    checkpoint_every: int | None = None
    progress: bool = True
    desc: str = "train"


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager[Any]]:
    """A context factory: bf16/fp16 autocast on ``device``, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision fp16 (AMP with a gradient scaler) needs a CUDA device, "
                          f"training runs on {device}; use precision bf16 on a CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def epoch_batches(loader: Any, epoch: int, skip: int) -> Iterator[Any]:
    """The loader's batches for ``epoch``, skipping the first ``skip`` (a resumed epoch).

    Loaders whose sampler has ``set_epoch(epoch, start)`` (:class:`nas.training.data.EpochSampler`,
    :class:`nas.training.tensor_data.BatchOrder`) start at the right image; others are replayed.
    """
    sampler = getattr(loader, "sampler", None)
    try:
        sampler.set_epoch(epoch, start=skip * (loader.batch_size or 1))  # type: ignore[union-attr]
        return iter(loader)
    except (AttributeError, TypeError):
        pass
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    iterator = iter(loader)
    for _ in range(skip):
        next(iterator)
    return iterator


def run_loop(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loader: Any,
             step: StepFunction, options: LoopOptions, *,
             checkpoint: CheckpointSpec | None = None, resume: bool = False,
             sampler: random.Random | None = None,
             on_resume: Callable[[dict[str, Any]], None] | None = None,
             on_epoch_end: Callable[[int, LoopState], dict[str, Any]] | None = None,
             on_step: Callable[[int, dict[str, float]], None] | None = None,
             stop_after: int | None = None, write_checkpoints: bool = True) -> LoopState:
    """Train ``model`` for ``options.total_steps`` optimiser steps; return the final state.

    Args:
        model: the module whose weights are checkpointed (not a DDP or compiled wrapper).
        optimizer, scheduler: stepped once per batch (the scheduler per step).
        loader: yields ``(images, target)``; its sampler's ``set_epoch`` fixes each epoch.
        step: the step function (see :class:`StepFunction`).
        options: steps, device, precision and the rest (:class:`LoopOptions`).
        checkpoint: where to checkpoint (None: no checkpoints).
        resume: continue from ``checkpoint.path`` when it exists (checked against
            ``checkpoint.arch`` and ``checkpoint.settings``).
        sampler: an extra ``random.Random`` the step draws from (checkpointed with the rest).
        on_resume: called with the checkpoint dict after a resume (e.g. to reapply a
            structural change the checkpoint's weights assume).
        on_epoch_end: ``(epoch index, state) -> extra fields`` of the epoch's record (e.g.
            validation accuracy); runs before the epoch's checkpoint.
        on_step: called after every optimiser step with ``(step, metrics)``; an exception
            it raises ends the run (the last checkpoint stays resumable).
        stop_after: return (checkpointed, unfinished) after this many steps in this call.
        write_checkpoints: false on data-parallel ranks other than 0 (they read, not write).
    """
    started = time.perf_counter()
    device = options.device
    autocast = autocast_for(device, options.precision)  # refuses fp16 off CUDA first
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError("the training loader yields no batches (dataset smaller than one batch?)")
    total = options.total_steps
    num_epochs = math.ceil(total / steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=options.precision == "fp16")
    state = LoopState()
    if resume and checkpoint is not None and checkpoint.path.is_file():
        ckpt = read_checkpoint(checkpoint.path, checkpoint.format, what=checkpoint.what,
                               hint=checkpoint.hint, error=checkpoint.error)
        check_matches(ckpt, checkpoint.path, arch=checkpoint.arch, settings=checkpoint.settings,
                      error=checkpoint.error, defaults=checkpoint.defaults)
        if on_resume is not None:
            on_resume(ckpt)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], sampler=sampler)
        state = LoopState(**ckpt["progress"])
    previous_seconds = state.seconds

    def save() -> None:
        state.seconds = previous_seconds + time.perf_counter() - started
        if checkpoint is None or not write_checkpoints:
            return
        save_atomic({
            "format": checkpoint.format, "arch": checkpoint.arch, "settings": checkpoint.settings,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "progress": dataclasses.asdict(state), "rng": rng_state(sampler=sampler),
            "finished": state.step >= total, **checkpoint.extra,
        }, checkpoint.path)

    def backward(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()

    ctx = StepContext(autocast=autocast, backward=backward, state=state)
    steps_this_call = 0
    bar = tqdm(total=total, initial=state.step, desc=f"{options.desc} epoch {state.epoch + 1}/{num_epochs}",
               disable=not options.progress, dynamic_ncols=True, leave=False)
    try:
        while state.step < total and not (stop_after is not None and steps_this_call >= stop_after):
            epoch = state.epoch
            model.train()
            tick = time.perf_counter()
            for images, target in epoch_batches(loader, epoch, state.epoch_batches):
                images = images.to(device, non_blocking=True)
                if options.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                target = target.to(device, non_blocking=True)
                raise_if_interrupted()  # a Ctrl-C swallowed by a finalizer still stops here
                optimizer.zero_grad(set_to_none=True)
                metrics = step(images, target, ctx)
                bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                if bad:
                    name, value = next(iter(bad.items()))
                    raise NonFiniteLossError(
                        f"non-finite {name} {value} at step {state.step + 1} (epoch {epoch + 1}, "
                        f"lr {scheduler.get_last_lr()[0]:.3g}); the run diverged: lower the "
                        "learning rate or add warm-up", step=state.step + 1, loss=value)
                if options.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                n = len(target)
                state.step += 1
                state.epoch_batches += 1
                state.images += n
                steps_this_call += 1
                for key, value in metrics.items():
                    state.sums[key] = state.sums.get(key, 0.0) + value * n
                    state.counts[key] = state.counts.get(key, 0) + n
                bar.update(1)
                if state.step % 10 == 0 or state.step == total:
                    bar.set_postfix({k: f"{state.sums[k] / state.counts[k]:.3f}" for k in state.sums},
                                    refresh=False)
                epoch_done = state.epoch_batches >= steps_per_epoch or state.step >= total
                stopping = stop_after is not None and steps_this_call >= stop_after
                if (not epoch_done and not stopping and options.checkpoint_every
                        and state.step % options.checkpoint_every == 0):
                    state.train_seconds += time.perf_counter() - tick
                    save()
                    tick = time.perf_counter()
                if on_step is not None:
                    on_step(state.step, metrics)
                if epoch_done or stopping:
                    break
            state.train_seconds += time.perf_counter() - tick
            if state.epoch_batches >= steps_per_epoch or state.step >= total:
                record: dict[str, Any] = {
                    "epoch": epoch + 1, "step": state.step, "lr": scheduler.get_last_lr()[0],
                    **{k: state.sums[k] / state.counts[k] for k in state.sums},
                }
                if on_epoch_end is not None:
                    record.update(on_epoch_end(epoch, state))
                record["seconds"] = previous_seconds + time.perf_counter() - started
                state.history.append(record)
                if options.progress:
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                      if isinstance(v, float) and k not in ("lr", "seconds"))
                    tqdm.write(f"{options.desc} epoch {epoch + 1}/{num_epochs}: {shown} "
                               f"({record['seconds']:.1f} s)")
                state.epoch, state.epoch_batches = epoch + 1, 0
                state.sums, state.counts = {}, {}
                bar.set_description(f"{options.desc} epoch {min(epoch + 2, num_epochs)}/{num_epochs}")
            save()
    finally:
        bar.close()
    state.seconds = previous_seconds + time.perf_counter() - started
    return state


__all__ = [
    "CheckpointSpec", "LoopOptions", "LoopState", "NonFiniteLossError", "StepContext",
    "StepFunction", "autocast_for", "epoch_batches", "run_loop",
]
