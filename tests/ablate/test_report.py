"""The accuracy verdict of an ablation report: a 90% interval on the difference to the baseline."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from scipy.stats import t as student_t

from nas.ablate.report import INTERVAL, _difference_interval, _verdict


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's interval written out: the difference of means, its standard error and the
    Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = student_t.ppf(0.5 + INTERVAL / 2, df) * math.sqrt(va + vb)
    diff = statistics.mean(a) - statistics.mean(b)
    return diff - half, diff + half


def _row(name: str, tops: list[float], base: list[float]) -> pd.Series:
    low, high = _difference_interval(tops, base)
    return pd.Series({"variant": name, "top1_mean": statistics.mean(tops),
                      "top1_std": statistics.stdev(tops) if len(tops) > 1 else float("nan"),
                      "top1_delta": statistics.mean(tops) - statistics.mean(base),
                      "top1_delta_low": float("nan") if low is None else low,
                      "top1_delta_high": float("nan") if high is None else high})


CANONICAL = [75.04, 75.98, 77.12, 77.94]  # spread like canonical Small's reference seeds


@pytest.mark.parametrize("tops, verdict", [
    ([79.52, 79.86, 79.7, 79.6], "better"),      # every seed above canonical's best
    ([76.1, 77.3, 75.6, 76.9], "tie"),            # inside canonical's seed spread
    ([72.0, 72.4, 71.8, 72.9], "worse"),
])
def test_the_verdict_follows_the_interval_on_the_difference(tops: list[float], verdict: str):
    row = _row("found", tops, CANONICAL)
    base = _row("canonical", CANONICAL, CANONICAL)
    assert (row["top1_delta_low"], row["top1_delta_high"]) == pytest.approx(_welch_by_hand(tops, CANONICAL))
    assert _verdict(row, base, "canonical").startswith(verdict)


def test_a_large_mean_difference_from_two_noisy_seeds_is_still_a_tie():
    """Two seeds a side leave two degrees of freedom: +2.5 points with a seed std of 1 is not
    a win, although it exceeds two seed std."""
    base = [75.0, 75.0 + math.sqrt(2)]
    row = _row("found", [77.5, 77.5 + math.sqrt(2)], base)
    assert row["top1_delta"] == pytest.approx(2.5)
    assert row["top1_delta"] > 2 * row["top1_std"] - 1e-9
    assert _verdict(row, _row("canonical", base, base), "canonical").startswith("tie")


def test_one_seed_on_either_side_gets_no_interval_and_no_ranking():
    assert _difference_interval([80.0], CANONICAL) == (None, None)
    assert _difference_interval(CANONICAL, [75.0]) == (None, None)
    row, base = _row("found", [80.0], CANONICAL), _row("canonical", CANONICAL, CANONICAL)
    assert _verdict(row, base, "canonical") == "one seed: no spread, no ranking"
