"""The supernet's elastic layers: BatchNorm, depthwise conv and bneck block whose kernel,
expansion, SE and activation are chosen per forward pass (Once-for-All's elastic ops)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch.spec import BlockSpec, squeeze_channels
from nas.errors import NASError
from nas.models.builder import Bneck, mobilenet_batch_norm
from nas.models.depthwise import trimmed_depthwise_conv2d


class SupernetError(NASError, ValueError):
    """A spec or setting the supernet cannot serve; the message names the field."""


IMPORTANCE_NORMS = ("l1", "l2")

# Called after a parameter or buffer was permuted along ``dim`` (e.g. to permute the
# optimiser's momentum buffers the same way).
PermuteHook = Callable[[torch.Tensor, int, torch.Tensor], None]


# ---------------------------------------------------------------------------- dynamic ops
class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``C`` channels of its input (OFA's ``DynamicBatchNorm2d``).

    A subclass of ``nn.BatchNorm2d``, so anything that resets or recalibrates BatchNorm
    (``nas.models.bn.recalibrate_bn``, ``momentum=None`` cumulative averages) treats it as one.
    The running statistics are updated through views of the first ``C`` entries.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        # Same bookkeeping as nn.modules.batchnorm._BatchNorm.forward.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean[:c] if track and self.running_mean is not None else None,
            self.running_var[:c] if track and self.running_var is not None else None,
            self.weight[:c], self.bias[:c], use_batch_stats, factor, self.eps,
        )

    def copy_to(self, target: nn.BatchNorm2d, channels: int) -> None:
        """Copy the first ``channels`` of parameters and statistics into a static BN."""
        with torch.no_grad():
            target.weight.copy_(self.weight[:channels])
            target.bias.copy_(self.bias[:channels])
            target.running_mean.copy_(self.running_mean[:channels])
            target.running_var.copy_(self.running_var[:channels])
            target.num_batches_tracked.copy_(self.num_batches_tracked)


def _norm_layer(channels: int) -> DynamicBatchNorm2d:
    # The builder's BatchNorm (MobileNetV3's settings), elastic: one definition for both.
    return mobilenet_batch_norm(channels, cls=DynamicBatchNorm2d)  # type: ignore[return-value]


class DynamicDepthwise(nn.Module):
    """A depthwise conv holding the largest kernel; smaller kernels are centre crops.

    With ``kernel_transform`` the crop of each smaller size is passed through a learned
    ``k^2 x k^2`` matrix (OFA Sec. 3.2: "we introduce kernel transformation matrices ...
    shared among channels"), chained from the largest size down (7 -> 5 -> 3), as OFA's
    ``DynamicSeparableConv2d`` does.
    """

    def __init__(self, channels: int, kernels: tuple[int, ...], *, kernel_transform: bool) -> None:
        super().__init__()
        self.kernels = tuple(sorted(set(kernels), reverse=True))
        self.max_kernel = self.kernels[0]
        self.weight = nn.Parameter(torch.empty(channels, 1, self.max_kernel, self.max_kernel))
        # torchvision's init for a depthwise nn.Conv2d (nas.models.builder.init_weights).
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.kernel_transform = kernel_transform
        self.transforms = nn.ParameterDict()
        if kernel_transform:
            for big, small in zip(self.kernels, self.kernels[1:]):
                self.transforms[f"{big}to{small}"] = nn.Parameter(torch.eye(small * small))

    def weight_for(self, channels: int, kernel: int) -> torch.Tensor:
        """The ``(channels, 1, kernel, kernel)`` filter of that choice."""
        if kernel not in self.kernels:
            raise SupernetError(f"field 'kernel' must be one of {sorted(self.kernels)}, got {kernel}")
        weight = self.weight[:channels]
        size = self.max_kernel
        for small in self.kernels[1:]:
            if small < kernel:
                break
            start = (size - small) // 2
            weight = weight[:, :, start:start + small, start:start + small]
            if self.kernel_transform:
                matrix = self.transforms[f"{size}to{small}"]
                weight = F.linear(weight.reshape(channels, small * small), matrix)
                weight = weight.reshape(channels, 1, small, small)
            size = small
        return weight

    def forward(self, x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
        channels = x.shape[1]
        # Only the taps that reach small maps (nas.models.depthwise): the extracted network's
        # depthwise conv computes the same way.
        return trimmed_depthwise_conv2d(x, self.weight_for(channels, kernel), None, (stride, stride),
                                        (kernel // 2, kernel // 2), channels)


# The functional forms of nas.models.builder's activation modules (they have no weights).
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "RE": F.relu, "HS": F.hardswish, "R6": F.relu6, "SW": F.silu}


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return _ACTIVATIONS[name]


# ---------------------------------------------------------------------------- dynamic block
class DynamicBneck(nn.Module):
    """Every bneck variant of one block position, with shared weights.

    Args:
        in_channels: the position's input channels (fixed by the skeleton).
        out: the stage's output channels.
        stride: 2 for a stage's first block when the stage downsamples, else 1.
        expansions: the stage's expansion choices (absolute channels).
        kernels: depthwise kernel choices.
        se_choices: SE choices (an SE module exists iff ``True`` is among them).
        kernel_transform: OFA kernel transformation matrices (see :class:`DynamicDepthwise`).
    """

    def __init__(self, in_channels: int, out: int, stride: int, expansions: tuple[int, ...],
                 kernels: tuple[int, ...], se_choices: tuple[bool, ...], *,
                 kernel_transform: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out = out
        self.stride = stride
        self.expansions = tuple(sorted(set(expansions)))
        self.kernels = tuple(sorted(set(kernels)))
        self.se_choices = tuple(se_choices)
        self.max_expansion = self.expansions[-1]
        # The choice "expansion == in_channels" has no expansion conv; its depthwise channels
        # are the block input's, in order. Channel sorting must leave those first channels
        # where they are (see sort_channels).
        self.pinned = in_channels if in_channels in self.expansions else 0
        e = self.max_expansion
        self.expand_conv: nn.Conv2d | None = None
        self.expand_bn: DynamicBatchNorm2d | None = None
        if any(x != in_channels for x in self.expansions):
            self.expand_conv = nn.Conv2d(in_channels, e, 1, bias=False)
            self.expand_bn = _norm_layer(e)
        self.depthwise = DynamicDepthwise(e, self.kernels, kernel_transform=kernel_transform)
        self.depthwise_bn = _norm_layer(e)
        self.se_fc1: nn.Conv2d | None = None
        self.se_fc2: nn.Conv2d | None = None
        if True in self.se_choices:
            squeeze = squeeze_channels(e)
            # torchvision's SqueezeExcitation: fc1/fc2 are 1x1 convs with bias.
            self.se_fc1 = nn.Conv2d(e, squeeze, 1)
            self.se_fc2 = nn.Conv2d(squeeze, e, 1)
        self.project = nn.Conv2d(e, out, 1, bias=False)
        self.project_bn = _norm_layer(out)
        self.use_res_connect = stride == 1 and in_channels == out
        self.active: BlockSpec | None = None

    # ------------------------------------------------------------------ choices
    def check(self, block: BlockSpec, where: str = "") -> None:
        """Raise :class:`SupernetError` unless this position can run ``block``."""
        def bad(field: str, value: object, allowed: object) -> SupernetError:
            return SupernetError(f"{where}field '{field}' must be {allowed}, got {value!r}")

        if block.kernel not in self.kernels:
            raise bad("kernel", block.kernel, f"one of {list(self.kernels)}")
        if block.expansion not in self.expansions:
            raise bad("expansion", block.expansion, f"one of {list(self.expansions)}")
        if block.se not in self.se_choices:
            raise bad("se", block.se, f"one of {list(self.se_choices)}")
        if block.out != self.out:
            raise bad("out", block.out, str(self.out))
        if block.stride != self.stride or block.dilation != 1:
            raise bad("stride/dilation", (block.stride, block.dilation), f"({self.stride}, 1)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.active
        if block is None:
            raise SupernetError("no active choice: call Supernet.set_active(spec) first")
        act = _activation(block.activation)
        e = block.expansion
        h = x
        if e != self.in_channels:
            assert self.expand_conv is not None and self.expand_bn is not None
            h = act(self.expand_bn(F.conv2d(h, self.expand_conv.weight[:e])))
        h = act(self.depthwise_bn(self.depthwise(h, block.kernel, self.stride)))
        if block.se:
            assert self.se_fc1 is not None and self.se_fc2 is not None
            squeeze = squeeze_channels(e)
            # torchvision.ops.SqueezeExcitation: pool, fc1, ReLU, fc2, hard-sigmoid, scale.
            scale = F.adaptive_avg_pool2d(h, 1)
            scale = F.relu(F.conv2d(scale, self.se_fc1.weight[:squeeze, :e], self.se_fc1.bias[:squeeze]))
            scale = F.hardsigmoid(F.conv2d(scale, self.se_fc2.weight[:e, :squeeze], self.se_fc2.bias[:e]))
            h = scale * h
        h = self.project_bn(F.conv2d(h, self.project.weight[:, :e]))
        return h + x if self.use_res_connect else h

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def copy_to(self, target: Bneck, block: BlockSpec) -> None:
        """Copy the weights of choice ``block`` into ``target``, a :class:`nas.models.builder.Bneck`.

        ``target`` must have been built for ``block`` with this position's input channels;
        its parts are reached by name (``expand``, ``depthwise``, ``se``, ``project``).
        """
        self.check(block)
        e = block.expansion
        if target.expand is not None:
            assert self.expand_conv is not None and self.expand_bn is not None
            conv, bn = target.expand[0], target.expand[1]
            conv.weight.copy_(self.expand_conv.weight[:e])
            self.expand_bn.copy_to(bn, e)
        conv, bn = target.depthwise[0], target.depthwise[1]
        conv.weight.copy_(self.depthwise.weight_for(e, block.kernel))
        self.depthwise_bn.copy_to(bn, e)
        if target.se is not None:
            assert self.se_fc1 is not None and self.se_fc2 is not None
            se, squeeze = target.se, squeeze_channels(e)
            se.fc1.weight.copy_(self.se_fc1.weight[:squeeze, :e])
            se.fc1.bias.copy_(self.se_fc1.bias[:squeeze])
            se.fc2.weight.copy_(self.se_fc2.weight[:e, :squeeze])
            se.fc2.bias.copy_(self.se_fc2.bias[:e])
        conv, bn = target.project[0], target.project[1]
        conv.weight.copy_(self.project.weight[:, :e])
        self.project_bn.copy_to(bn, self.out)

    # ------------------------------------------------------------------ importance order
    @torch.no_grad()
    def sort_channels(self, norm: str = "l1", hook: PermuteHook | None = None) -> torch.Tensor:
        """Re-order the expansion channels by importance, most important first.

        Importance is the L1 (or L2) norm of each expansion-conv filter. Every tensor that
        indexes the expansion channels is permuted the same way (expand conv and BN,
        depthwise conv and BN, SE fc1 inputs and fc2 outputs, projection inputs), so the
        largest network computes the same function (OFA's ``re_organize_middle_weights``,
        which ranks by the projection's weights instead; NetAdapt ranks filters by L2
        norm). The SE bottleneck channels are sorted too, by the L1 norm of their fc2
        weights, because SE slicing keeps the first ``make_divisible(e // 4, 8)``.

        The first ``in_channels`` channels (and the first ``make_divisible(in_channels // 4,
        8)`` SE units) stay in place when ``expansion == in_channels`` is a choice: without
        an expansion conv, depthwise channel ``i`` reads input channel ``i``, and that
        choice keeps computing the same function. Returns the expansion permutation.
        """
        if norm not in IMPORTANCE_NORMS:
            raise SupernetError(f"field 'norm' must be one of {list(IMPORTANCE_NORMS)}, got {norm!r}")
        e = self.max_expansion
        device = self.project.weight.device
        if self.expand_conv is None:
            return torch.arange(e, device=device)
        weight = self.expand_conv.weight.flatten(1)
        importance = weight.abs().sum(1) if norm == "l1" else weight.pow(2).sum(1).sqrt()
        rest = torch.argsort(importance[self.pinned:], descending=True, stable=True) + self.pinned
        order = torch.cat([torch.arange(self.pinned, device=device), rest])

        def permute(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> None:
            tensor.copy_(tensor.index_select(dim, index))
            if hook is not None:
                hook(tensor, dim, index)

        permute(self.expand_conv.weight, 0, order)
        for bn in (self.expand_bn, self.depthwise_bn):
            assert bn is not None
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                permute(t, 0, order)
        permute(self.depthwise.weight, 0, order)
        if self.se_fc1 is not None and self.se_fc2 is not None:
            permute(self.se_fc1.weight, 1, order)
            permute(self.se_fc2.weight, 0, order)
            permute(self.se_fc2.bias, 0, order)
            # The no-expansion choice's SE uses the first squeeze_channels(in) units: pinned too.
            keep = squeeze_channels(self.pinned) if self.pinned else 0
            squeeze_importance = self.se_fc2.weight.abs().sum((0, 2, 3))
            squeeze_rest = torch.argsort(squeeze_importance[keep:], descending=True, stable=True) + keep
            squeeze_order = torch.cat([torch.arange(keep, device=device), squeeze_rest])
            permute(self.se_fc1.weight, 0, squeeze_order)
            permute(self.se_fc1.bias, 0, squeeze_order)
            permute(self.se_fc2.weight, 1, squeeze_order)
        permute(self.project.weight, 1, order)
        return order
