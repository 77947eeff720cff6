"""NetAdapt's proposals: the largest channel cut of one block or residual group that
meets a step's latency cut (NetAdapt Sec. 3.2.1; MobileNetV3 Sec. 4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from nas.arch.spec import NetworkSpec
from nas.models.channel_groups import (
    PruneError,
    ResidualGroup,
    STEM,
    check_prunable,
    has_expand_conv,
    in_channels,
    residual_groups,
)
from nas.netadapt.config import NetAdaptConfig
from nas.netadapt.latency import Latency


# ---------------------------------------------------------------------------- proposals
@dataclass(frozen=True)
class Proposal:
    """One candidate network of a step.

    Attributes:
        kind: ``"expansion"`` or ``"bottleneck"``.
        positions: the block (expansion) or the residual group's positions (bottleneck;
            ``-1`` is the stem).
        before, after: the channel count changed.
        spec: the whole proposed network.
        latency_ms: its lookup-table latency.
    """

    kind: str
    positions: tuple[int, ...]
    before: int
    after: int
    spec: NetworkSpec
    latency_ms: float

    @property
    def where(self) -> str:
        names = ["stem" if p == STEM else str(p) for p in self.positions]
        return ("block " if self.kind == "expansion" else "blocks ") + ",".join(names) \
            if names != ["stem"] else "stem"

    @property
    def name(self) -> str:
        return f"{self.kind} {self.where}: {self.before}->{self.after}"


def channel_candidates(current: int, divisor: int, minimum: int) -> Iterator[int]:
    """Counts below ``current``, multiples of ``divisor``, largest first, down to ``minimum``."""
    c = (current - 1) // divisor * divisor
    floor = max(minimum, divisor)
    while c >= floor:
        yield c
        c -= divisor


def shrink_expansion(spec: NetworkSpec, block: int, channels: int) -> NetworkSpec | None:
    """``spec`` with block ``block``'s expansion set to ``channels``, or None if illegal.

    Illegal: the block has no expand conv (its depthwise channels are its input), or the
    new count equals the block's input width (the builder would drop the expand conv).
    """
    spec = spec.resolved()
    ins = in_channels(spec)
    if not has_expand_conv(spec)[block] or channels == ins[block]:
        return None
    blocks = list(spec.blocks)
    blocks[block] = blocks[block].replace(expansion=channels)
    return spec.with_blocks(blocks)


def shrink_group(spec: NetworkSpec, group: ResidualGroup, channels: int) -> NetworkSpec | None:
    """``spec`` with residual group ``group`` shrunk to ``channels``, or None if illegal.

    The group's members' outputs (and the stem's, when it is in the group) change, so do
    the inputs of the members after the first and of the consumer; blocks without an
    expand conv among them follow with their expansion. Illegal: a count that makes an
    expand conv vanish (expansion == new input), or that creates a residual (a stride-1
    first member or consumer whose other side equals the count), or the last group under
    the original last stage (its projection is tied to the last block's output).
    """
    spec = spec.resolved()
    if group.consumer is None and spec.last_stage != "efficient":
        return None
    expands = has_expand_conv(spec)
    blocks = list(spec.blocks)
    stem = spec.stem_channels
    for p in group.positions:
        if p == STEM:
            stem = channels
        else:
            blocks[p] = blocks[p].replace(out=channels)
    readers = [p for p in group.positions[1:]]  # members after the first read the group
    if group.consumer is not None:
        readers.append(group.consumer)
    for r in readers:
        if not expands[r]:
            blocks[r] = blocks[r].replace(expansion=channels)
        elif blocks[r].expansion == channels:
            return None
    try:
        new = spec.replace(blocks=tuple(blocks), stem_channels=stem)
        check_prunable(spec, new)  # catches a residual appearing (first member or consumer)
    except (PruneError, ValueError):
        return None
    return new


def make_proposals(spec: NetworkSpec, latency: Latency, cut_ms: float,
                   cfg: NetAdaptConfig, *, current_ms: float | None = None) -> list[Proposal]:
    """Every proposal of one step: per block and per residual group, the largest legal
    count whose network is at least ``cut_ms`` faster than ``spec`` (NetAdapt Sec. 3.2.1).

    Targets with no such count (already at ``min_channels``, or every smaller count
    illegal or not fast enough) give no proposal.
    """
    spec = spec.resolved()
    current_ms = latency(spec) if current_ms is None else current_ms
    budget = current_ms - cut_ms
    proposals: list[Proposal] = []

    def first_meeting(kind: str, positions: tuple[int, ...], before: int,
                      make: Callable[[int], NetworkSpec | None]) -> None:
        for c in channel_candidates(before, cfg.divisor, cfg.min_channels):
            candidate = make(c)
            if candidate is None:
                continue
            ms = latency(candidate)
            if ms <= budget:
                proposals.append(Proposal(kind, positions, before, c, candidate, ms))
                return

    if "expansion" in cfg.kinds:
        expands = has_expand_conv(spec)
        for i, block in enumerate(spec.blocks):
            if expands[i]:
                first_meeting("expansion", (i,), block.expansion,
                              lambda c, i=i: shrink_expansion(spec, i, c))
    if "bottleneck" in cfg.kinds:
        for group in residual_groups(spec):
            first_meeting("bottleneck", group.positions, group.channels,
                          lambda c, g=group: shrink_group(spec, g, c))
    return proposals


def preselect(proposals: Sequence[Proposal], current_ms: float, k: int | None,
              by: str = "saving_per_channel") -> list[Proposal]:
    """At most ``k`` proposals (network order kept), ranked by latency saving.

    ``saving_per_channel``: saving divided by the fraction of the layer's channels
    removed (cheap cuts first); ``saving``: the raw saving. Ties keep network order.
    """
    if k is None or len(proposals) <= k:
        return list(proposals)

    def rank(p: Proposal) -> float:
        saving = current_ms - p.latency_ms
        if by == "saving":
            return saving
        return saving / ((p.before - p.after) / p.before)

    order = sorted(range(len(proposals)), key=lambda i: -rank(proposals[i]))
    keep = sorted(order[:k])
    return [proposals[i] for i in keep]
