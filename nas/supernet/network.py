"""A weight-sharing supernet for a :class:`~nas.search.space.SearchSpace` (Once-for-All / BigNAS).

One network holds the weights of every spec the space can produce; :meth:`Supernet.set_active`
picks a spec and the forward pass runs exactly that sub-network:

* **kernel**: every depthwise conv stores the largest kernel; a smaller one is its centre
  crop (OFA, Cai et al. 2020, Sec. 3.2 "elastic kernel size"), optionally passed through
  OFA's learned kernel transformation matrices (one ``k^2 x k^2`` matrix per kernel pair,
  shared by the channels of a layer, initialised to the identity);
* **expansion**: the 1x1 expansion, the depthwise conv, the SE and the projection are sized
  for the stage's largest expansion and sliced to the first ``e`` channels. After
  :meth:`Supernet.sort_channels` the channels are kept in importance order (OFA's
  "channel re-organisation", Sec. 3.2 "elastic width"), so the first ``e`` are the most
  important ones;
* **expansion == input channels**: the builder omits the 1x1 expansion conv then
  (:class:`nas.models.builder.Bneck`, paper Table 1 row 1), so the supernet skips it for that choice
  and runs the depthwise conv on the block input directly. The first ``in_channels``
  expansion channels serve that choice too, which is why channel sorting pins them;
* **SE**: the SE's two 1x1 convs are sized for the largest expansion and sliced to ``e`` and
  ``make_divisible(e // 4, 8)``; SE off skips them (the weights stay shared);
* **activation**: ReLU or h-swish per block, no weights;
* **depth**: each stage holds its deepest variant; a shallower one runs the first ``d``
  blocks (OFA's elastic depth keeps the first blocks of a unit). The skipped blocks have a
  residual (stride 1, in == out), so leaving them out is well defined.

Stem and head are not searched and are plain modules, built exactly as :mod:`nas.models.builder`
builds them. :meth:`Supernet.extract` turns any spec into a standalone
:class:`~nas.models.builder.MobileNetV3Net` from :func:`~nas.models.builder.build_model` with the inherited
weights and BatchNorm statistics; in eval mode its logits equal the supernet's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch.spec import BlockSpec, NetworkSpec, squeeze_channels
from nas.errors import NASError
from nas.models.builder import BN_EPS, BN_MOMENTUM, Bneck, MobileNetV3Net, build_model, init_weights
from nas.search.space import SearchSpace, SpaceError

IMPORTANCE_NORMS = ("l1", "l2")

# Called after a parameter or buffer was permuted along ``dim`` (e.g. to permute the
# optimiser's momentum buffers the same way).
PermuteHook = Callable[[torch.Tensor, int, torch.Tensor], None]


class SupernetError(NASError, ValueError):
    """A spec or setting the supernet cannot serve; the message names the field."""


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
    # torchvision's MobileNetV3 BatchNorm settings, as nas.models.builder uses them.
    return DynamicBatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


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
        return F.conv2d(x, self.weight_for(channels, kernel), stride=stride,
                        padding=kernel // 2, groups=channels)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    # nn.ReLU / nn.Hardswish as nas.models.builder.activation_layer uses them, without weights.
    return F.relu if name == "RE" else F.hardswish


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
        the layer order is the builder's: [expand], depthwise, [SE], project.
        """
        self.check(block)
        e, layers = block.expansion, list(target.block)
        if e != self.in_channels:
            assert self.expand_conv is not None and self.expand_bn is not None
            layer = layers.pop(0)
            conv, bn = layer[0], layer[1]
            conv.weight.copy_(self.expand_conv.weight[:e])
            self.expand_bn.copy_to(bn, e)
        layer = layers.pop(0)
        conv, bn = layer[0], layer[1]
        conv.weight.copy_(self.depthwise.weight_for(e, block.kernel))
        self.depthwise_bn.copy_to(bn, e)
        if block.se:
            assert self.se_fc1 is not None and self.se_fc2 is not None
            se, squeeze = layers.pop(0), squeeze_channels(e)
            se.fc1.weight.copy_(self.se_fc1.weight[:squeeze, :e])
            se.fc1.bias.copy_(self.se_fc1.bias[:squeeze])
            se.fc2.weight.copy_(self.se_fc2.weight[:e, :squeeze])
            se.fc2.bias.copy_(self.se_fc2.bias[:e])
        layer = layers.pop(0)
        conv, bn = layer[0], layer[1]
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


# ---------------------------------------------------------------------------- choice helpers
class _PickTrial:
    """A trial-like object that answers each ``suggest_categorical`` with ``pick(name, choices)``."""

    def __init__(self, pick: Callable[[str, list[Any]], Any]) -> None:
        self.pick = pick

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.pick(name, list(choices))


def _extreme(largest: bool) -> Callable[[str, list[Any]], Any]:
    def pick(name: str, choices: list[Any]) -> Any:
        if name.endswith("_activation"):
            # No weights: h-swish for the teacher (the more expressive non-linearity),
            # ReLU for the smallest (the cheaper one), when both are allowed.
            preferred = "HS" if largest else "RE"
            return preferred if preferred in choices else choices[0]
        if name.endswith("_se"):
            return largest if largest in choices else choices[0]
        return max(choices) if largest else min(choices)
    return pick


@dataclass(frozen=True)
class ActiveConfig:
    """A spec resolved against the supernet: how many blocks of each stage, and which."""

    spec: NetworkSpec
    depths: tuple[int, ...]
    blocks: tuple[tuple[BlockSpec, ...], ...]


# ---------------------------------------------------------------------------- the supernet
class Supernet(nn.Module):
    """All specs of ``space`` in one network (see the module docstring).

    Args:
        space: the search space; its base supplies stem and head (width multiplier 1).
        num_classes: classifier outputs (default: the space base's).
        kernel_transform: use OFA's kernel transformation matrices for smaller kernels.
    """

    def __init__(self, space: SearchSpace, *, num_classes: int | None = None,
                 kernel_transform: bool = False) -> None:
        super().__init__()
        base = space.base
        if base.width_mult != 1.0:
            raise SupernetError(f"space {space.name}: field 'width_mult' of the base must be 1.0 "
                                f"for a supernet (channels are the space's), got {base.width_mult}")
        self.space = space
        self.num_classes = int(num_classes or base.num_classes)
        self.kernel_transform = kernel_transform
        # Stem and head are fixed: take them from a network the builder made, so they are
        # the very same layers extraction will fill.
        template = build_model(base, num_classes=self.num_classes)
        n_base = len(base.blocks)
        self.stem = template.features[0]
        self.head = nn.Sequential(*list(template.features)[1 + n_base:])
        self.avgpool = template.avgpool
        self.classifier = template.classifier
        self.stages = nn.ModuleList()
        channels = base.stem_channels
        for stage in space.stages:
            positions = nn.ModuleList()
            for b in range(max(stage.depths)):
                positions.append(DynamicBneck(
                    channels if b == 0 else stage.out, stage.out, stage.stride if b == 0 else 1,
                    stage.expansions, space.kernels, space.se, kernel_transform=kernel_transform))
            self.stages.append(positions)
            channels = stage.out
        init_weights(self.stages)
        self._active: ActiveConfig | None = None
        self.set_active(self.largest_spec())

    # ------------------------------------------------------------------ specs
    def largest_spec(self) -> NetworkSpec:
        """Deepest stages, widest expansions, largest kernel, SE on, h-swish (the teacher)."""
        return self.space.suggest(_PickTrial(_extreme(True))).replace(name="supernet_largest")

    def smallest_spec(self) -> NetworkSpec:
        """Shallowest stages, narrowest expansions, smallest kernel, SE off, ReLU."""
        return self.space.suggest(_PickTrial(_extreme(False))).replace(name="supernet_smallest")

    def sample_spec(self, rng: random.Random) -> NetworkSpec:
        """A uniformly random spec of the space."""
        return self.space.sample(rng)

    def resolve(self, spec: NetworkSpec) -> ActiveConfig:
        """Check ``spec`` against the space and split its blocks by stage.

        The class count and resolution of ``spec`` may differ from the space's base (the
        supernet has its own classifier and runs at any resolution).
        """
        base = self.space.base
        probe = spec.replace(num_classes=base.num_classes, resolution=base.resolution)
        try:
            params = self.space.params_of(probe)
        except SpaceError as err:
            raise SupernetError(f"spec is not a point of the supernet's space: {err}") from None
        depths, per_stage, position = [], [], 0
        for s, stage in enumerate(self.space.stages, start=1):
            depth = stage.blocks + int(params.get(f"s{s}_depth", 0))
            depths.append(depth)
            per_stage.append(tuple(spec.blocks[position:position + depth]))
            position += depth
        return ActiveConfig(spec=spec, depths=tuple(depths), blocks=tuple(per_stage))

    def set_active(self, spec: NetworkSpec) -> ActiveConfig:
        """Make the forward pass run ``spec``'s sub-network; returns its resolved config."""
        active = self.resolve(spec)
        for s, (positions, blocks) in enumerate(zip(self.stages, active.blocks), start=1):
            for b, module in enumerate(positions):
                if b < len(blocks):
                    module.check(blocks[b], where=f"s{s}_b{b + 1}: ")
                    module.active = blocks[b]
                else:
                    module.active = None
        self._active = active
        return active

    @property
    def active(self) -> ActiveConfig:
        """The active sub-network."""
        assert self._active is not None
        return self._active

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for positions, depth in zip(self.stages, self.active.depths):
            for module in positions[:depth]:
                x = module(x)
        x = self.head(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def extract(self, spec: NetworkSpec | None = None) -> MobileNetV3Net:
        """A standalone :class:`~nas.models.builder.MobileNetV3Net` of ``spec`` (default: the active one).

        Built by :func:`nas.models.builder.build_model` with this supernet's class count and filled
        with the inherited weights and BatchNorm statistics (recalibrate BN for ``spec``
        first, e.g. with ``nas.models.bn.recalibrate_bn``, for statistics that fit it). Returned on
        the CPU in training mode, like a freshly built model.
        """
        active = self.resolve(spec) if spec is not None else self.active
        model = build_model(active.spec.replace(num_classes=self.num_classes))
        model.features[0].load_state_dict(_cpu(self.stem.state_dict()))
        index = 1
        for positions, blocks in zip(self.stages, active.blocks):
            for module, block in zip(positions, blocks):
                target = model.features[index]
                assert isinstance(target, Bneck)
                module.copy_to(target, block)
                index += 1
        for layer in self.head:
            model.features[index].load_state_dict(_cpu(layer.state_dict()))
            index += 1
        model.classifier.load_state_dict(_cpu(self.classifier.state_dict()))
        return model

    # ------------------------------------------------------------------ importance order
    @torch.no_grad()
    def sort_channels(self, norm: str = "l1", optimizer: torch.optim.Optimizer | None = None) -> None:
        """Sort every block's expansion channels by importance (OFA's re-organisation).

        The largest network's function is unchanged. When an ``optimizer`` is given, its
        per-parameter state (momentum buffers) is permuted alongside, so training goes on
        as if the channels had always been in this order.
        """
        hook = _optimizer_hook(optimizer) if optimizer is not None else None
        for positions in self.stages:
            for module in positions:
                module.sort_channels(norm, hook)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _optimizer_hook(optimizer: torch.optim.Optimizer) -> PermuteHook:
    """Permute the optimiser state that belongs to a permuted parameter."""
    params = {id(p): p for group in optimizer.param_groups for p in group["params"]}

    def hook(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> None:
        param = params.get(id(tensor))
        if param is None:
            return  # a buffer (BN statistics): no optimiser state
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.copy_(value.index_select(dim, index))

    return hook


__all__ = [
    "ActiveConfig", "DynamicBatchNorm2d", "DynamicBneck", "DynamicDepthwise",
    "IMPORTANCE_NORMS", "Supernet", "SupernetError",
]
