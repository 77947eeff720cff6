"""Verdicts on accuracy differences over seeds (nas/seed_stats.py): a 90% Welch interval on
the difference, a win only when it excludes 0."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from scipy.stats import t as student_t

from nas.ablate.report import _verdict
from nas.seed_stats import CONFIDENCE, difference_interval, verdict


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's interval written out: the difference of means, its standard error and the
    Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = student_t.ppf(0.5 + CONFIDENCE / 2, df) * math.sqrt(va + vb)
    diff = statistics.mean(a) - statistics.mean(b)
    return diff - half, diff + half


CANONICAL = [75.04, 75.98, 77.12, 77.94]  # spread like canonical Small's reference seeds


@pytest.mark.parametrize("tops, expected", [
    ([79.52, 79.86, 79.7, 79.6], "better"),      # every seed above canonical's best
    ([76.1, 77.3, 75.6, 76.9], "tie"),            # inside canonical's seed spread
    ([72.0, 72.4, 71.8, 72.9], "worse"),
])
def test_the_verdict_follows_the_interval_on_the_difference(tops: list[float], expected: str):
    interval = difference_interval(tops, CANONICAL)
    assert interval == pytest.approx(_welch_by_hand(tops, CANONICAL))
    assert verdict(interval, len(tops), len(CANONICAL)).startswith(expected)


def test_a_large_mean_difference_from_two_noisy_seeds_is_still_a_tie():
    """Two seeds a side leave two degrees of freedom: +2.5 points with a seed std of 1 is not
    a win, although it exceeds two seed std."""
    base, tops = [75.0, 75.0 + math.sqrt(2)], [77.5, 77.5 + math.sqrt(2)]
    difference = statistics.mean(tops) - statistics.mean(base)
    assert difference == pytest.approx(2.5) and difference > 2 * statistics.stdev(tops)
    assert verdict(difference_interval(tops, base), 2, 2).startswith("tie")


def test_one_seed_on_either_side_gets_no_interval_and_no_ranking():
    assert difference_interval([80.0], CANONICAL) is None
    assert difference_interval(CANONICAL, [75.0]) is None
    assert verdict(None, 1, 4) == "one seed: no spread, no ranking"
    assert verdict(None, 2, 2) == "tie (identical runs)"


def test_an_ablation_report_row_gets_the_interval_verdict():
    tops = [79.52, 79.86, 79.7, 79.6]
    low, high = difference_interval(tops, CANONICAL)
    row = pd.Series({"variant": "found", "top1_mean": statistics.mean(tops), "seeds": 4,
                     "top1_delta_low": low, "top1_delta_high": high})
    base = pd.Series({"variant": "canonical", "top1_mean": statistics.mean(CANONICAL), "seeds": 4})
    assert _verdict(row, base, "canonical") == "better"
    assert _verdict(base, base, "canonical") == "baseline"
