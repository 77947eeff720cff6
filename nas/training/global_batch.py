"""BatchNorm and dropout of the global batch, when data-parallel ranks each hold a slice of it.

Two layers compute something that depends on the whole batch in training mode: BatchNorm
normalises with the batch's statistics, and dropout draws one mask for the batch from the
torch RNG. With ``world`` ranks each holding ``1/world`` of a global batch, the plain layers
would normalise with each slice's statistics, and every rank would draw the first rows'
mask for its own rows (their RNGs are seeded alike), so N processes would train another
function than one process on the global batch does. Inside :func:`global_batch_layers`:

* every ``nn.BatchNorm2d`` (also the supernet's elastic ``DynamicBatchNorm2d``, which
  normalises the first ``C`` channels of its input) gathers each rank's per-channel count,
  mean and sum of squared deviations in one all-reduce, combines them (the parallel form of
  the variance, Chan et al. 1979: no ``E[x^2] - E[x]^2`` cancellation), normalises its slice
  with the global statistics and updates the running statistics with them, so every rank
  keeps the running statistics one process would keep. The all-reduce is differentiable
  (its backward all-reduces the gradients, :class:`_AllReduce`), so the backward pass is
  that of BatchNorm over the global batch too;
  ``torch.nn.SyncBatchNorm`` does the same but refuses CPU tensors (gloo) and knows nothing
  of elastic channels.
* every ``nn.Dropout`` draws the mask of the whole global batch, the very call one process
  makes (same shape, same RNG stream, which all ranks hold alike), and applies this rank's
  rows.

The cost is one small collective per BatchNorm layer in each forward and each backward pass.
In evaluation mode both layers are the plain ones. With one process nothing changes.

**BatchNorm over fixed slices** (``batchnorm_slices=S``): BatchNorm normalises each of ``S``
equal, consecutive slices of the global batch with that slice's own statistics ("ghost"
batch normalization, Hoffer et al. 2017), and the running statistics move by the mean of the
slices' updates. The function trained then depends on ``S``, not on the number of processes:
``S`` ranks each normalise their own slice with no collective (what
``DistributedDataParallel`` does without ``SyncBatchNorm``; the running statistics are
averaged with the gradients once a step, see :func:`nas.supernet.parallel.average_step`), and
one process normalising the same ``S`` slices trains the same weights to float rounding.
Goyal et al. 2017 (Sec. 2.3) make the same point: with per-worker BatchNorm the per-worker
batch is part of the loss being minimised.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nas.config import ConfigError
from nas.training.distributed import DataParallel, collective

# Batch-dependent layers this module does not compute over the global batch.
_UNSUPPORTED = (nn.BatchNorm1d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.Dropout1d, nn.Dropout2d,
                nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class _AllReduce(torch.autograd.Function):
    """A sum over the ranks whose gradient is the sum of the ranks' gradients (each rank's
    input reaches every rank's output)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        with collective("BatchNorm statistics of the global batch"):
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        with collective("BatchNorm gradients of the global batch"):
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _running_factor(bn: nn.BatchNorm2d) -> float:
    """Count this training pass and return the running statistics' update factor: the
    bookkeeping of ``nn.modules.batchnorm._BatchNorm.forward``."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


def _batch_norm(bn: nn.BatchNorm2d, parallel: DataParallel, x: torch.Tensor) -> torch.Tensor:
    if not bn.training:
        return type(bn).forward(bn, x)
    c = x.shape[1]
    factor = _running_factor(bn)
    count = x.numel() // c
    if count * parallel.world < 2:  # as nn.BatchNorm2d refuses (the slices are equal)
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{list(x.shape)} on each of {parallel.world} ranks")
    xs = x.float()  # statistics in fp32 also under autocast
    mean = xs.mean((0, 2, 3))
    m2 = (xs - mean[None, :, None, None]).square().sum((0, 2, 3))
    local = torch.stack([torch.full_like(mean, float(count)), mean, m2])
    # Every rank's row in one (world, 3, C) table: an all-reduce of zeros elsewhere is an
    # all-gather whose backward (an all-reduce) gloo supports.
    table = torch.cat([local.new_zeros(parallel.rank, 3, c), local[None],
                       local.new_zeros(parallel.world - parallel.rank - 1, 3, c)])
    table = _AllReduce.apply(table)
    counts, means, m2s = table[:, 0], table[:, 1], table[:, 2]
    total = counts.sum(0)
    global_mean = (counts * means).sum(0) / total
    global_m2 = m2s.sum(0) + (counts * (means - global_mean).square()).sum(0)
    var = global_m2 / total
    weight = bn.weight[:c] if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias[:c] if bn.bias is not None else torch.zeros_like(var)
    scale = weight * torch.rsqrt(var + bn.eps)
    # Centred before scaling (not x * scale + (bias - mean * scale)): the gradient of the
    # scale is then a sum of dy * (x - mean), not the difference of two large sums, which
    # loses digits wherever a channel's mean is large against its spread.
    out = (xs - global_mean[None, :, None, None]) * scale[None, :, None, None] + bias[None, :, None, None]
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            bn.running_mean[:c].mul_(1 - factor).add_(global_mean * factor)
            bn.running_var[:c].mul_(1 - factor).add_(global_m2 / (total - 1) * factor)
    return out.to(x.dtype)


def _sliced_batch_norm(bn: nn.BatchNorm2d, slices: int, x: torch.Tensor) -> torch.Tensor:
    """``bn`` over each of ``slices`` consecutive slices of ``x`` with the slice's statistics,
    the running statistics moved by the mean of what each slice alone would move them by."""
    if not bn.training or slices == 1:
        return type(bn).forward(bn, x)
    c, rows = x.shape[1], x.shape[0]
    if rows % slices:
        raise ValueError(f"a batch of {rows} rows does not split into {slices} equal BatchNorm slices")
    factor = _running_factor(bn)
    weight = bn.weight[:c] if bn.weight is not None else None
    bias = bn.bias[:c] if bn.bias is not None else None
    tracked = bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None
    outs, means, variances = [], [], []
    for part in x.chunk(slices):
        # Each slice as one process's BatchNorm sees it, moving its own copy of the running
        # statistics; the layer's then move by the copies' mean, as the ranks' average would.
        mean = bn.running_mean[:c].clone() if tracked else None
        var = bn.running_var[:c].clone() if tracked else None
        outs.append(F.batch_norm(part, mean, var, weight, bias, True, factor, bn.eps))
        means.append(mean)
        variances.append(var)
    if tracked:
        with torch.no_grad():
            bn.running_mean[:c] = torch.stack(means).mean(0)
            bn.running_var[:c] = torch.stack(variances).mean(0)
    return torch.cat(outs)


def _dropout(module: nn.Dropout, parallel: DataParallel, x: torch.Tensor) -> torch.Tensor:
    p = module.p
    if not module.training or p == 0 or p == 1:
        return type(module).forward(module, x)
    rows = x.shape[0]
    layout = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
              and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    # What F.dropout does on a CPU for the whole batch: a Bernoulli(1 - p) mask scaled by
    # 1 / (1 - p), drawn for every row of the global batch.
    noise = torch.empty((rows * parallel.world, *x.shape[1:]), dtype=x.dtype, device=x.device,
                        memory_format=layout).bernoulli_(1 - p).div_(1 - p)
    mine = noise[parallel.rank * rows:(parallel.rank + 1) * rows]
    return x.mul_(mine) if module.inplace else x * mine


def check_slices(slices: int, world: int) -> None:
    """Refuse a BatchNorm slice count the ranks cannot share out (one line, both numbers)."""
    if slices < 1 or (slices > 1 and slices % world):
        raise ConfigError(f"train.batchnorm_slices={slices} with {world} processes: use 1 (BatchNorm "
                          f"over the global batch) or a multiple of {world} (each process's slice "
                          "split alike)")


@contextlib.contextmanager
def global_batch_layers(model: nn.Module, parallel: DataParallel, *,
                        batchnorm_slices: int = 1) -> Iterator[None]:
    """Within the block, ``model``'s dropout layers compute over the global batch and its
    BatchNorm layers over the global batch (``batchnorm_slices=1``) or over each of
    ``batchnorm_slices`` consecutive slices of it (see the module docstring). A no-op for one
    process with one slice.

    Raises :class:`~nas.config.ConfigError` for batch-dependent layers it does not compute
    over the global batch (BatchNorm1d/3d, SyncBatchNorm, channel and alpha dropout) and for
    a slice count that is neither 1 nor a multiple of the number of processes.
    """
    check_slices(batchnorm_slices, parallel.world)
    if parallel.world == 1 and batchnorm_slices == 1:
        yield
        return
    unsupported = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _UNSUPPORTED)})
    if unsupported:
        raise ConfigError(f"data-parallel training computes BatchNorm2d and Dropout over the global "
                          f"batch; the model also has {', '.join(unsupported)}")
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.Dropout)) and "forward" in vars(module):
                raise ConfigError(f"{type(module).__name__} has its own forward already; "
                                  "data-parallel training cannot compute it over the global batch")
            if isinstance(module, nn.BatchNorm2d) and batchnorm_slices == 1:
                forward = functools.partial(_batch_norm, module, parallel)
            elif isinstance(module, nn.BatchNorm2d):  # this rank's share of the slices
                forward = functools.partial(_sliced_batch_norm, module, batchnorm_slices // parallel.world)
            elif isinstance(module, nn.Dropout) and parallel.world > 1:
                forward = functools.partial(_dropout, module, parallel)
            else:
                continue
            # An instance attribute: nn.Module.__call__ finds it before the class's forward.
            module.forward = forward  # type: ignore[method-assign]
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


__all__ = ["check_slices", "global_batch_layers"]
