"""Anchored end-to-end timing (nas.cost.anchored) on a simulated host whose speed moves."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from nas.cost.anchored import anchored_figures, read_log, run_anchored_passes
from nas.cost.validate import split_half_within

TRUE_MS = {"anchor": 2.0, "a": 1.0, "b": 3.0, "c": 4.0}
SETTINGS = {"warmup": 1, "warmup_time": 0.0, "repeats": 5, "min_run_time": 0.0, "max_run_time": 10.0,
            "min_sample_time": 0.0}


class MovingHost:
    """A host whose speed holds one level while a network is measured (its calls and the
    anchor's alike) and moves to another for the next network; ``sampler_of`` gives
    ``sample(number)`` functions that return the simulated seconds."""

    def __init__(self, levels: list[float], fail_after: int | None = None) -> None:
        self.levels = itertools.cycle(levels)
        self.level = 1.0
        self.units = 0
        self.fail_after = fail_after

    def sampler(self, key: str):
        def sample(number: int) -> float:
            return TRUE_MS[key] * self.level * number / 1e3
        return sample

    def sampler_of(self, key: str):
        if self.fail_after is not None and self.units >= self.fail_after:
            raise KeyboardInterrupt
        self.units += 1
        self.level = next(self.levels)  # a new network meets whatever level the host is at
        return self.sampler(key)


def test_the_ratio_to_the_anchor_cancels_the_level_each_round_met():
    host = MovingHost([1.0, 1.5, 1.3, 1.0, 1.5])
    rows = run_anchored_passes(["a", "b", "c"], host.sampler("anchor"), host.sampler_of, SETTINGS, passes=4)
    assert host.units == 3 * 4
    figures = anchored_figures(rows, "min")
    for key in ("a", "b", "c"):
        assert figures[key]["rounds_ratio"] == [pytest.approx(TRUE_MS[key] / 2.0)] * 4
        assert figures[key]["ms"] == pytest.approx(TRUE_MS[key])  # the anchor's best: level 1.0
        assert figures[key]["plain_ms"] >= TRUE_MS[key]
    # Plain halves disagree where the level moved; anchored halves agree exactly.
    plain = [{"rounds_ms": figures[k]["rounds_ms"], "rounds_min_ms": figures[k]["rounds_min_ms"]} for k in "abc"]
    assert split_half_within([figures[k] for k in "abc"], "min") == 100.0
    assert split_half_within(plain, "min") < 100.0
    # The median statistic pairs the medians: the same cancellation.
    by_median = anchored_figures(rows, "median")["b"]
    assert by_median["ratio"] == pytest.approx(TRUE_MS["b"] / TRUE_MS["anchor"])
    assert by_median["ms"] == pytest.approx(by_median["ratio"] * by_median["anchor_ms"])


def test_an_interrupted_run_resumes_at_the_unit_it_stopped_at(tmp_path: Path):
    log = tmp_path / "anchored.csv"
    host = MovingHost([1.0], fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_anchored_passes(["a", "b", "c"], host.sampler("anchor"), host.sampler_of, SETTINGS, passes=3,
                            log_path=log)
    assert len(read_log(log)) == 5
    with log.open("a") as handle:  # a killed writer's half line, without its newline
        handle.write("b,2,1.0")
    host = MovingHost([1.0])
    rows = run_anchored_passes(["a", "b", "c"], host.sampler("anchor"), host.sampler_of, SETTINGS, passes=3,
                               log_path=log)
    assert host.units == 9 - 5  # only the units left
    assert sorted((k, r["pass"]) for k, v in rows.items() for r in v) == [
        (k, p) for k in "abc" for p in range(3)]
    assert len(read_log(log)) == 9
