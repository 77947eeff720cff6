"""A weight-sharing supernet for a :class:`~nas.arch.space.SearchSpace` (Once-for-All / BigNAS).

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
weights and BatchNorm statistics; in eval mode its logits equal the supernet's."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from nas.arch.spec import DEFAULT_OPTIONS, BlockSpec, NetworkSpec
from nas.models.builder import Bneck, MobileNetV3Net, build_model, init_weights
from nas.arch.space import SearchSpace, SpaceError
from nas.supernet.dynamic_ops import DynamicBneck, PermuteHook, SupernetError


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
        if base.options != DEFAULT_OPTIONS:  # the dynamic ops are the paper's SE and h-swish
            raise SupernetError(f"space {space.name}: the supernet supports the paper's SE "
                                f"(ratio 0.25, hard gate) and fused h-swish only, got {base.options}")
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
