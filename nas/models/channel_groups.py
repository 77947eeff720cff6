"""Which channels of a MobileNetV3 network must keep one width, and which specs can be
reached from a network by removing channels.

In a MobileNetV3 network residual connections force a run of positions to one width (paper
Sec. 5.3: a block is residual iff its stride is 1 and ``in == out``): the output of a
stage's first block (or of the stem) and every following residual block. A pruning step
(NetAdapt, Yang et al., 2018; MobileNetV3 Sec. 4.2) shrinks such a *residual group* as one
decision, and a target spec is reachable only if it keeps the source's structure with fewer
channels (:func:`check_prunable`). :mod:`nas.models.prune` chooses and slices the channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.arch.spec import NetworkSpec
from nas.errors import NASError

STEM = -1  # the position of the stem's output among block outputs 0..n-1

Indices = tuple[int, ...]


class PruneError(NASError, ValueError):
    """A target spec cannot be reached from the source network by removing channels."""


@dataclass(frozen=True)
class ResidualGroup:
    """Positions forced to one width by residual connections.

    Attributes:
        positions: ``STEM`` (-1) for the stem output, ``i`` for block ``i``'s output; the
            first is a stem or a block without a residual, the rest are residual blocks.
        channels: the shared width.
        consumer: the block that reads the group's last position, or ``None`` for the
            network's tail (last conv / original last stage).
    """

    positions: tuple[int, ...]
    channels: int
    consumer: int | None

    @property
    def blocks(self) -> tuple[int, ...]:
        """Member blocks (positions other than the stem)."""
        return tuple(p for p in self.positions if p != STEM)

    def label(self) -> str:
        names = ["stem" if p == STEM else str(p) for p in self.positions]
        return "stem" if names == ["stem"] else "blocks " + ",".join(names)


def position_channels(spec: NetworkSpec, position: int) -> int:
    """Width at ``position`` (``STEM`` or a block index) of a resolved spec."""
    return spec.stem_channels if position == STEM else spec.blocks[position].out


def residual_groups(spec: NetworkSpec) -> tuple[ResidualGroup, ...]:
    """The residual groups of ``spec`` (resolved first), in network order."""
    spec = spec.resolved()
    groups: list[ResidualGroup] = []
    current = [STEM]
    for ctx in spec.contexts():
        if ctx.has_residual:
            current.append(ctx.index)
            continue
        groups.append(ResidualGroup(tuple(current), position_channels(spec, current[0]), ctx.index))
        current = [ctx.index]
    groups.append(ResidualGroup(tuple(current), position_channels(spec, current[0]), None))
    return tuple(groups)


def in_channels(spec: NetworkSpec) -> list[int]:
    """Input channels of every block of a resolved spec."""
    return [ctx.in_channels for ctx in spec.contexts()]


def has_expand_conv(spec: NetworkSpec) -> list[bool]:
    """Whether each block has a 1x1 expand conv (it is omitted when ``expansion == in``)."""
    return [ctx.block.expansion != ctx.in_channels for ctx in spec.contexts()]


def residual_pattern(spec: NetworkSpec) -> list[bool]:
    """Whether each block has a residual connection."""
    return [ctx.has_residual for ctx in spec.contexts()]


def check_prunable(source: NetworkSpec, target: NetworkSpec) -> None:
    """Raise :class:`PruneError` unless ``target`` is ``source`` with fewer channels.

    Everything but channel counts must agree (depth, kernels, strides, SE, activations,
    last stage); the residual pattern and which blocks have an expand conv must not change
    (a new residual or a vanished expand conv has no inherited weights to map). The class
    count, resolution, dropout and name are ignored (the model's own head is kept).
    """
    source, target = source.resolved(), target.resolved()
    if len(source.blocks) != len(target.blocks):
        raise PruneError(f"depth differs: {len(source.blocks)} blocks vs {len(target.blocks)}")
    for i, (a, b) in enumerate(zip(source.blocks, target.blocks)):
        for name in ("kernel", "se", "activation", "stride", "dilation"):
            if getattr(a, name) != getattr(b, name):
                raise PruneError(f"bneck row {i + 1}: field '{name}' differs "
                                 f"({getattr(a, name)!r} vs {getattr(b, name)!r})")
        for name in ("expansion", "out"):
            if getattr(b, name) > getattr(a, name):
                raise PruneError(f"bneck row {i + 1}: field '{name}' grows "
                                 f"({getattr(a, name)} -> {getattr(b, name)}); pruning only removes")
    for name in ("stem_channels", "last_conv", "head_features"):
        if getattr(target, name) > getattr(source, name):
            raise PruneError(f"field '{name}' grows ({getattr(source, name)} -> {getattr(target, name)})")
    for name in ("stem_activation", "head_activation", "last_stage", "se_ratio", "se_gate",
                 "hswish"):
        if getattr(source, name) != getattr(target, name):
            raise PruneError(f"field '{name}' differs")
    if source.last_stage == "mobilenetv2":
        raise PruneError("last_stage 'mobilenetv2': pruning MobileNetV2's head is not implemented")
    if source.last_stage != "efficient" and (
            target.last_conv != source.last_conv or target.head_features != source.head_features
            or target.blocks[-1].out != source.blocks[-1].out):
        # The original stage's projection is 2 x the last block's output (paper Fig. 5);
        # slicing it is not implemented.
        raise PruneError("last_stage 'original': the last block's output, last_conv and "
                         "head_features cannot be pruned")
    if residual_pattern(source) != residual_pattern(target):
        raise PruneError("the residual pattern changes (a residual appears or vanishes)")
    if has_expand_conv(source) != has_expand_conv(target):
        rows = [i + 1 for i, (a, b) in enumerate(zip(has_expand_conv(source), has_expand_conv(target)))
                if a != b]
        raise PruneError(f"bneck row(s) {rows}: the expand conv appears or vanishes "
                         "(expansion == in channels drops it)")


__all__ = [
    "STEM", "PruneError", "ResidualGroup", "check_prunable", "has_expand_conv", "in_channels",
    "position_channels", "residual_groups", "residual_pattern",
]
