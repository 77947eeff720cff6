"""Channel pruning by filter L2 norm, with every dependent tensor sliced consistently.

NetAdapt (Yang et al., 2018, Sec. 3.2.2) and MobileNetV3 (Sec. 4.2) shrink a layer by
keeping the filters with the largest L2 norm and inheriting the remaining weights. In a
MobileNetV3 network a channel count is shared by several tensors, so "the filters" of one
width decision are:

* **an expansion** (block ``b``'s 1x1 expand conv): its output rows and BatchNorm, the
  depthwise conv and its BatchNorm, SE ``fc1``'s input columns and ``fc2``'s output rows,
  and the projection's input columns. SE's squeeze width is derived from the expansion
  (:func:`nas.arch.spec.squeeze_channels`), so it may shrink too; its channels are chosen by
  the L2 norm of ``fc1``'s rows.
* **a residual group**: a run of positions that residual connections force to one width --
  the output of a stage's first block (or of the stem) plus every following stride-1 block
  with ``in == out`` (paper Sec. 5.3: residual iff stride 1 and in == out). Its filters are
  the *producers'* rows (the stem conv and/or every member's projection, scored by the L2
  norm of the concatenated rows), with their BatchNorm; its consumers are every member's
  and the next block's input (expand conv columns, or -- when a block has no expand conv
  because ``expansion == in`` -- its depthwise channels themselves, which are then *tied* to
  the group), and the last conv. Residual adds stay legal because all members keep the same
  indices.
* the last conv's output and the pooled head features (efficient last stage only), used by
  a uniformly width-scaled baseline.

The residual groups and the check that a target is reachable live in
:mod:`nas.models.channel_groups`. The module is generic: :func:`plan_pruning` takes a model and *any* target spec that has
the same structure with fewer (or equal) channels anywhere, and chooses the surviving
channels; :func:`prune_model` builds the target network with the sliced weights;
:func:`zero_pruned_channels` zeroes the dropped channels' contribution in the original
network instead, which computes exactly what the pruned network computes (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from nas.arch.spec import NetworkSpec, squeeze_channels
from nas.models.builder import Bneck, MobileNetV3Net, build_model
from nas.models.channel_groups import (
    STEM,
    PruneError,
    check_prunable,
    has_expand_conv,
    position_channels,
    residual_groups,
)

Indices = tuple[int, ...]


# ---------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ChannelPlan:
    """Which channels of a source network survive in a target spec (indices ascending).

    Attributes:
        source: the source network's spec (resolved, the model's class count).
        target: the target spec (resolved, the model's class count).
        outputs: kept channels at the stem output (index 0) and block ``i``'s output
            (index ``i + 1``).
        expansions: kept expansion channels per block.
        squeezes: kept SE squeeze channels per block (empty for blocks without SE).
        last_conv: kept last-conv channels.
        head_features: kept pooled-feature channels (efficient last stage).
    """

    source: NetworkSpec
    target: NetworkSpec
    outputs: tuple[Indices, ...]
    expansions: tuple[Indices, ...]
    squeezes: tuple[Indices, ...]
    last_conv: Indices
    head_features: Indices

    def output(self, position: int) -> Indices:
        return self.outputs[position + 1]

    def removed(self) -> int:
        """Channels removed in all (a summary figure)."""
        def full(n: int, kept: Indices) -> int:
            return n - len(kept)
        count = full(self.source.stem_channels, self.output(STEM))
        for i, b in enumerate(self.source.blocks):
            count += full(b.out, self.output(i)) + full(b.expansion, self.expansions[i])
        return count


def _top_k(scores: torch.Tensor, k: int) -> Indices:
    """Indices of the ``k`` largest scores, ties to the lower index, in ascending order."""
    n = scores.numel()
    if k > n:
        raise PruneError(f"cannot keep {k} of {n} channels")
    # Stable sort of -score: equal scores keep index order, so the choice is deterministic.
    order = torch.sort(-scores.double(), stable=True).indices[:k]
    return tuple(sorted(int(i) for i in order))


def _row_sq_norms(weight: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each output filter (row) of a conv or linear weight."""
    return weight.detach().double().flatten(1).pow(2).sum(1)


def _layers(bneck: Bneck) -> dict[str, nn.Module]:
    """The named parts of a :class:`~nas.models.builder.Bneck` (``expand`` absent when exp == in)."""
    parts = {"expand": bneck.expand, "depthwise": bneck.depthwise, "se": bneck.se,
             "project": bneck.project}
    return {name: part for name, part in parts.items() if part is not None}


def _blocks(model: MobileNetV3Net) -> list[Bneck]:
    n = len(model.spec.resolved().blocks)
    return [model.features[i + 1] for i in range(n)]


def _tail_conv(model: MobileNetV3Net) -> nn.Module:
    """The efficient stage's last 1x1 conv (``features[-1]``)."""
    return model.features[-1]


def source_spec(model: MobileNetV3Net) -> NetworkSpec:
    """The resolved spec a model was built from (with the model's class count)."""
    return model.spec.resolved()


def plan_pruning(model: MobileNetV3Net, target: NetworkSpec) -> ChannelPlan:
    """Choose, by filter L2 norm, the channels of ``model`` that ``target`` keeps.

    Args:
        model: the source network (built by :func:`nas.models.builder.build_model`).
        target: a spec with the same structure and at most as many channels anywhere
            (:func:`check_prunable`); its class count is ignored.
    """
    source = source_spec(model)
    target = target.resolved().replace(num_classes=source.num_classes)
    check_prunable(source, target)
    blocks = _blocks(model)
    outputs: list[Indices | None] = [None] * (len(source.blocks) + 1)

    for group in residual_groups(source):
        new = position_channels(target, group.positions[0])
        for p in group.positions[1:]:
            if position_channels(target, p) != new:
                raise PruneError(f"residual group {group.label()}: members must keep one width, "
                                 f"got {[position_channels(target, q) for q in group.positions]}")
        # The group's filters are its producers' rows: the stem conv and every member's
        # projection (NetAdapt's L2-norm rule over the concatenated filters).
        score = torch.zeros(group.channels, dtype=torch.float64)
        for p in group.positions:
            conv = model.features[0][0] if p == STEM else _layers(blocks[p])["project"][0]
            score += _row_sq_norms(conv.weight)
        kept = _top_k(score, new)
        for p in group.positions:
            outputs[p + 1] = kept

    expand_flags = has_expand_conv(source)
    expansions: list[Indices] = []
    squeezes: list[Indices] = []
    for i, (src_b, dst_b) in enumerate(zip(source.blocks, target.blocks)):
        parts = _layers(blocks[i])
        if expand_flags[i]:
            kept_exp = _top_k(_row_sq_norms(parts["expand"][0].weight), dst_b.expansion)
        else:
            # No expand conv: the depthwise channels are the input channels (tied).
            kept_exp = outputs[i]  # outputs[i] is position i-1, the block's input
            assert kept_exp is not None
        expansions.append(kept_exp)
        if src_b.se:
            fc1 = parts["se"].fc1.weight.detach()[:, list(kept_exp)]
            squeezes.append(_top_k(_row_sq_norms(fc1), squeeze_channels(dst_b.expansion, target.se_ratio)))
        else:
            squeezes.append(())

    if source.last_stage == "efficient":
        conv = _tail_conv(model)[0].weight
        kept_last = _top_k(_row_sq_norms(conv), target.last_conv)
        fc = model.classifier[0].weight.detach()[:, list(kept_last)]
        kept_head = _top_k(_row_sq_norms(fc), target.head_features)
    else:
        kept_last = tuple(range(source.last_conv))
        kept_head = tuple(range(source.head_features))
    assert all(o is not None for o in outputs)
    return ChannelPlan(source=source, target=target, outputs=tuple(outputs),  # type: ignore[arg-type]
                       expansions=tuple(expansions), squeezes=tuple(squeezes),
                       last_conv=kept_last, head_features=kept_head)


# ---------------------------------------------------------------------------- slicing
def _take(tensor: torch.Tensor, dim: int, kept: Sequence[int] | None) -> torch.Tensor:
    if kept is None:
        return tensor
    return tensor.index_select(dim, torch.as_tensor(list(kept), dtype=torch.long, device=tensor.device))


def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d, kept: Sequence[int] | None) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(_take(getattr(src, name), 0, kept))
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _copy_conv_bn(src: nn.Module, dst: nn.Module, out: Sequence[int] | None,
                  inp: Sequence[int] | None, *, depthwise: bool = False) -> None:
    """Copy a ``Conv2dNormActivation`` keeping output channels ``out`` and inputs ``inp``."""
    weight = _take(src[0].weight, 0, out)
    if not depthwise:  # a depthwise weight is (C, 1, k, k): no input dimension to slice
        weight = _take(weight, 1, inp)
    dst[0].weight.copy_(weight)
    if src[0].bias is not None:
        dst[0].bias.copy_(_take(src[0].bias, 0, out))
    _copy_bn(src[1], dst[1], out)


def _copy_linear(src: nn.Linear, dst: nn.Linear, out: Sequence[int] | None,
                 inp: Sequence[int] | None) -> None:
    dst.weight.copy_(_take(_take(src.weight, 0, out), 1, inp))
    if src.bias is not None:
        dst.bias.copy_(_take(src.bias, 0, out))


@torch.no_grad()
def apply_plan(model: MobileNetV3Net, plan: ChannelPlan) -> MobileNetV3Net:
    """Build ``plan.target`` and fill it with ``model``'s weights sliced by ``plan``."""
    new = build_model(plan.target).to(next(model.parameters()).device)
    src_blocks, dst_blocks = _blocks(model), _blocks(new)
    _copy_conv_bn(model.features[0], new.features[0], plan.output(STEM), None)
    for i in range(len(plan.source.blocks)):
        src, dst = _layers(src_blocks[i]), _layers(dst_blocks[i])
        inp, exp, out = plan.output(i - 1), plan.expansions[i], plan.output(i)
        if set(src) != set(dst):
            raise PruneError(f"bneck row {i + 1}: layer structure differs ({sorted(src)} vs {sorted(dst)})")
        if "expand" in src:
            _copy_conv_bn(src["expand"], dst["expand"], exp, inp)
        _copy_conv_bn(src["depthwise"], dst["depthwise"], exp, None, depthwise=True)
        if "se" in src:
            sq = plan.squeezes[i]
            s_se, d_se = src["se"], dst["se"]
            d_se.fc1.weight.copy_(_take(_take(s_se.fc1.weight, 0, sq), 1, exp))
            d_se.fc1.bias.copy_(_take(s_se.fc1.bias, 0, sq))
            d_se.fc2.weight.copy_(_take(_take(s_se.fc2.weight, 0, exp), 1, sq))
            d_se.fc2.bias.copy_(_take(s_se.fc2.bias, 0, exp))
        _copy_conv_bn(src["project"], dst["project"], out, exp)
    last_in = plan.output(len(plan.source.blocks) - 1)
    if plan.source.last_stage == "efficient":
        _copy_conv_bn(_tail_conv(model), _tail_conv(new), plan.last_conv, last_in)
        _copy_linear(model.classifier[0], new.classifier[0], plan.head_features, plan.last_conv)
        _copy_linear(model.classifier[3], new.classifier[3], None, plan.head_features)
    else:
        # Original last stage: only its input can change (check_prunable keeps the rest).
        n = len(plan.source.blocks)
        tail_src, tail_dst = model.features[n + 1:], new.features[n + 1:]
        tail_dst.load_state_dict(tail_src.state_dict())
        new.classifier.load_state_dict(model.classifier.state_dict())
    new.train(model.training)
    return new


def prune_model(model: MobileNetV3Net, target: NetworkSpec) -> MobileNetV3Net:
    """``target`` built with ``model``'s weights, keeping the largest-L2-norm filters."""
    return apply_plan(model, plan_pruning(model, target))


# ---------------------------------------------------------------------------- zeroing
def _dropped(n: int, kept: Indices) -> list[int]:
    keep = set(kept)
    return [c for c in range(n) if c not in keep]


def _zero_bn(bn: nn.BatchNorm2d, channels: list[int]) -> None:
    # gamma = beta = 0: the BN outputs 0 whatever its input, and ReLU(0) = HardSwish(0) = 0.
    if channels:
        bn.weight[channels] = 0.0
        bn.bias[channels] = 0.0


@torch.no_grad()
def zero_pruned_channels(model: MobileNetV3Net, plan: ChannelPlan) -> None:
    """Zero, in place, the contribution of every channel ``plan`` drops.

    Afterwards ``model`` (in eval mode) computes what ``apply_plan(model, plan)`` computes:
    a dropped channel's activations are 0 everywhere they are produced, so nothing that
    reads them contributes. Used to test the slicing; handy to preview a proposal's damage.
    """
    source = plan.source
    blocks = _blocks(model)
    _zero_bn(model.features[0][1], _dropped(source.stem_channels, plan.output(STEM)))
    for i, b in enumerate(source.blocks):
        parts = _layers(blocks[i])
        _zero_bn(parts["project"][1], _dropped(b.out, plan.output(i)))
        dropped_exp = _dropped(b.expansion, plan.expansions[i])
        if "expand" in parts:
            _zero_bn(parts["expand"][1], dropped_exp)
        # The depthwise BN must be zeroed too: BN adds its shift to a zero input.
        _zero_bn(parts["depthwise"][1], dropped_exp)
        if "se" in parts:
            fc1 = parts["se"].fc1
            dropped_sq = _dropped(fc1.out_channels, plan.squeezes[i])
            if dropped_sq:
                fc1.weight[dropped_sq] = 0.0  # ReLU(0) = 0: fc2 sees nothing from them
                fc1.bias[dropped_sq] = 0.0
    if source.last_stage == "efficient":
        _zero_bn(_tail_conv(model)[1], _dropped(source.last_conv, plan.last_conv))
        fc = model.classifier[0]
        dropped_head = _dropped(source.head_features, plan.head_features)
        if dropped_head:
            fc.weight[dropped_head] = 0.0  # HardSwish(0) = 0
            fc.bias[dropped_head] = 0.0


__all__ = [
    "ChannelPlan", "apply_plan", "plan_pruning", "prune_model", "source_spec", "zero_pruned_channels",
]
