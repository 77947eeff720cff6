"""One sandwich step of supernet training: the sub-networks it trains and how they learn.

BigNAS (Yu et al., ECCV 2020, Sec. 3.1; the sandwich rule and in-place distillation come from
slimmable / universally slimmable networks, Yu & Huang 2019): on one batch the **largest**
sub-network is trained on the labels, then the **smallest** and ``num_random`` **random**
sub-networks, on the labels or (in-place distillation) on the largest's detached soft
predictions; their gradients accumulate in the shared weights for one optimiser step.
:func:`nas.supernet.train.train_supernet` runs it under the training loop.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch
import torch.nn.functional as F

from nas.arch.spec import NetworkSpec
from nas.supernet.network import Supernet
from nas.training.loop import NonFiniteLossError, StepContext


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on softened outputs, times T^2 (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                    reduction="batchmean") * (t * t)


def sandwich_specs(supernet: Supernet, rng: random.Random, num_random: int,
                   largest_only: bool = False) -> list[tuple[str, NetworkSpec]]:
    """``[("largest", ...), ("smallest", ...), ("random", ...) x num_random]`` for one step."""
    specs = [("largest", supernet.largest_spec())]
    if largest_only:
        return specs
    specs.append(("smallest", supernet.smallest_spec()))
    specs += [("random", supernet.sample_spec(rng)) for _ in range(num_random)]
    return specs


def sandwich_step(supernet: Supernet, images: torch.Tensor, target: torch.Tensor,
                  specs: list[tuple[str, NetworkSpec]], *, label_smoothing: float = 0.0,
                  distill: bool = True, temperature: float = 1.0,
                  ctx: StepContext | None = None, check_finite: bool = True) -> dict[str, float]:
    """Forward and backward every sub-network of ``specs`` on one batch (no optimiser step).

    The first spec must be the largest (the teacher). Gradients accumulate in the shared
    weights; call ``optimizer.zero_grad()`` before and ``optimizer.step()`` after.
    Returns the mean loss per role. Raises :class:`~nas.training.loop.NonFiniteLossError`
    (``check_finite=False``: returns the non-finite loss; data-parallel ranks must all reach
    the step's collectives, and stop together once the losses are averaged). Under
    :func:`nas.training.loop.run_loop`, ``ctx`` supplies autocast and the (scaled) backward pass.
    """
    if not specs or specs[0][0] != "largest":
        raise ValueError("sandwich_step: the first spec must be the largest (the teacher)")
    supernet.train()
    teacher: torch.Tensor | None = None
    sums: dict[str, list[float]] = {}
    for role, spec in specs:
        supernet.set_active(spec)
        with ctx.autocast() if ctx is not None else contextlib.nullcontext():
            logits = supernet(images)
            if teacher is None or not distill:
                loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
            else:
                loss = distillation_loss(logits, teacher, temperature)
        if role == "largest":
            teacher = logits.detach()
        value = float(loss.detach())
        if check_finite and not math.isfinite(value):
            raise NonFiniteLossError(f"non-finite {role} sub-network loss {value}; the supernet "
                                     "diverged: lower the learning rate or add warm-up", loss=value)
        if ctx is not None:
            ctx.backward(loss)
        else:
            loss.backward()
        sums.setdefault(role, []).append(value)
    return {role: sum(v) / len(v) for role, v in sums.items()}


def zero_init_residual(supernet: Supernet) -> None:
    """Zero the projection BN scale of every residual block (BigNAS Sec. 3.1)."""
    with torch.no_grad():
        for positions in supernet.stages:
            for module in positions:
                if module.use_res_connect:
                    module.project_bn.weight.zero_()


__all__ = ["distillation_loss", "sandwich_specs", "sandwich_step", "zero_init_residual"]
