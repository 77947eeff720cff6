"""BatchNorm recalibration ("precise BN"): recompute running statistics from data.

A network whose weights changed without its BatchNorm statistics following (a subnet cut
from a supernet, a NetAdapt proposal with pruned filters, a short proxy run whose running
averages still remember the random initialisation; MobileNetV3's momentum of 0.01 forgets
over hundreds of steps) is evaluated with stale means and variances and scores far below
what its weights can do. Recalibration resets the statistics and re-estimates them on a few
training batches as an exact cumulative average (``momentum=None``), with no gradients.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable[Any], num_batches: int,
                   device: torch.device | str | None = None) -> int:
    """Reset and re-estimate every BatchNorm's running mean and variance on ``loader``.

    Only the BatchNorm layers run in train mode (dropout and the rest stay in eval mode, so
    they do not disturb the statistics). Each layer's momentum, every module's train/eval
    flag and the model's weights are as before afterwards; only the running statistics
    (and ``num_batches_tracked``) change.

    Args:
        model: the network (modified in place).
        loader: yields ``(images, ...)`` tuples or image tensors.
        num_batches: how many batches to average over (fewer if the loader ends first).
        device: where to run; default: the device of the model's first parameter.

    Returns:
        The number of batches used.

    Raises:
        ValueError: ``num_batches < 1``, or the loader yielded nothing (the statistics would
            be left reset, which is worse than stale).
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in layers}
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in layers}
    used = 0
    try:
        model.eval()
        for bn in layers:
            bn.reset_running_stats()
            # momentum=None: running stats become the plain average over the batches seen.
            bn.momentum = None
            bn.train()
        for batch in loader:
            if used >= num_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device, non_blocking=True))
            used += 1
        if used == 0:
            raise ValueError("recalibrate_bn: the loader yielded no batches")
    except BaseException:
        # Leave the model as it was rather than with half-reset statistics.
        for bn, (mean, var, count) in saved.items():
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
        raise
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    return used


__all__ = ["batchnorm_layers", "recalibrate_bn"]
