"""The pick among evaluated proposals (paper's dAcc/|dLatency| or NetAdapt's accuracy),
and the uniform width-scaling baseline NetAdapt is compared with."""

from __future__ import annotations

import math
from typing import Sequence

from nas.arch.spec import NetworkSpec
from nas.models.channel_groups import STEM, check_prunable, has_expand_conv, residual_groups
from nas.netadapt.config import NetAdaptError, RULES
from nas.netadapt.latency import Latency


# ---------------------------------------------------------------------------- the pick
def pick_score(top1: float, latency_ms: float, *, current_top1: float, current_ms: float,
               rule: str) -> float:
    """The figure a proposal is picked by (larger is better).

    ``paper``: ``(top1 - current_top1) / |current_ms - latency_ms|`` (MobileNetV3 Sec. 4.2);
    ``netadapt``: ``top1`` (the original NetAdapt: the smallest accuracy loss).
    """
    if rule == "netadapt":
        return top1
    if rule != "paper":
        raise NetAdaptError(f"rule must be one of {list(RULES)}, got {rule!r}")
    saved = abs(current_ms - latency_ms)
    return (top1 - current_top1) / saved if saved > 0 else -math.inf


def pick(results: Sequence[tuple[float, float]], *, current_top1: float, current_ms: float,
         rule: str = "paper") -> int:
    """Index of the proposal to keep among ``(top1, latency_ms)`` results.

    Ties go to the larger latency saving, then to the earlier proposal.
    """
    if not results:
        raise NetAdaptError("no proposal to pick from")
    keyed = [(pick_score(t, ms, current_top1=current_top1, current_ms=current_ms, rule=rule), -ms, -i)
             for i, (t, ms) in enumerate(results)]
    return -max(keyed)[2]


# ---------------------------------------------------------------------------- baseline
def scale_width(spec: NetworkSpec, multiplier: float, divisor: int = 8) -> NetworkSpec:
    """Uniform width scaling of the channels NetAdapt may change: the stem and every block's
    expansion and output, each ``make_divisible(c x multiplier, divisor)`` (never above c).

    The baseline NetAdapt is compared with (NetAdapt, Sec. 4: width multipliers). Unlike
    :meth:`NetworkSpec.resolved` it leaves the last conv and the head alone (NetAdapt never
    touches them) and keeps the topology: a residual group keeps one width, a block
    without expand conv keeps ``expansion == in``, and a count that would drop an expand
    conv or create a residual moves by one ``divisor`` (up if it can, else down).
    """
    from nas.arch.spec import make_divisible

    spec = spec.resolved()
    expands = has_expand_conv(spec)

    def scaled(c: int, avoid: int | None) -> int:
        new = min(make_divisible(c * multiplier, divisor), c)
        if new == avoid:
            new = new + divisor if new + divisor <= c else new - divisor
        return new

    width: dict[int, int] = {}
    for group in residual_groups(spec):
        first = group.positions[0]
        # A stride-1 first member whose in equalled its new out would gain a residual.
        avoid = width[first - 1] if first != STEM and spec.blocks[first].stride == 1 else None
        c = scaled(group.channels, avoid)
        for p in group.positions:
            width[p] = c
    blocks = []
    for i, block in enumerate(spec.blocks):
        new_in = width[i - 1]
        expansion = scaled(block.expansion, new_in) if expands[i] else new_in
        blocks.append(block.replace(expansion=expansion, out=width[i]))
    result = spec.replace(blocks=tuple(blocks), stem_channels=width[STEM])
    check_prunable(spec, result)
    return result


def width_for_latency(spec: NetworkSpec, latency: Latency, target_ms: float, *, divisor: int = 8,
                      low: float = 0.1, iterations: int = 20) -> tuple[float, NetworkSpec, float]:
    """The largest multiplier whose :func:`scale_width` network is at most ``target_ms``,
    by bisection on the table latency; returns ``(multiplier, spec, ms)``."""
    lo, hi = low, 1.0
    best = (low, scale_width(spec, low, divisor))
    if latency(best[1]) > target_ms:
        raise NetAdaptError(f"even multiplier {low} is slower than {target_ms:.4g} ms")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        candidate = scale_width(spec, mid, divisor)
        if latency(candidate) <= target_ms:
            lo, best = mid, (mid, candidate)
        else:
            hi = mid
    return best[0], best[1], latency(best[1])
