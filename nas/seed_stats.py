"""Is one network more accurate than another, given a few training seeds of each?

A claim that A beats B rests on the difference of their mean top-1 and an interval on it:
Welch's t interval (the two networks need not share a seed count or a seed variance), at
:data:`CONFIDENCE`. The difference is a win or a loss only when its interval excludes 0;
otherwise it is a tie, however large the mean difference. With one seed on either side
there is no spread to scale by, and no verdict.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

CONFIDENCE = 0.90


def difference_interval(tops: Sequence[float], base_tops: Sequence[float],
                        confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``confidence`` interval of ``mean(tops) - mean(base_tops)`` (Welch's t); ``None``
    without two seeds a side, or for identical runs (no spread)."""
    tops, base_tops = [float(t) for t in tops], [float(t) for t in base_tops]
    if len(tops) < 2 or len(base_tops) < 2 or statistics.pstdev(tops + base_tops) == 0:
        return None
    from scipy.stats import ttest_ind

    interval = ttest_ind(tops, base_tops, equal_var=False).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def verdict(interval: tuple[float, float] | None, seeds: int, base_seeds: int,
            confidence: float = CONFIDENCE) -> str:
    """``better``, ``worse`` or ``tie (...)`` from :func:`difference_interval`'s result."""
    if seeds < 2 or base_seeds < 2:
        return "one seed: no spread, no ranking"
    if interval is None:
        return "tie (identical runs)"
    low, high = interval
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return f"tie ({100 * confidence:.0f}% interval spans 0)"


__all__ = ["CONFIDENCE", "difference_interval", "verdict"]
