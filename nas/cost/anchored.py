"""End-to-end timing referenced to an anchor network timed beside it (a paired design).

On a shared VM the host's own speed moves between levels tens of per cent apart and stays at
one for longer than a network's measurement: a network's best call then says as much about
the level its rounds met as about the network, and two halves of the same measurement
disagree (see ``split_half_within`` in :mod:`nas.cost.validate`). Here each call of a
network alternates with a call of an anchor network (the space's canonical network, one
session kept for the whole run), so both meet the same levels, and a network is measured by
its ratio to the anchor in each round; its figure is the median ratio over the rounds times
the anchor's own figure over the whole run: the same milliseconds, a steadier estimate.
Calls of 8 sessions of one OpenVINO network interleaved this way show no speed of their own
(their order changes from round to round), so the level is the host's, not the session's.

Each (network, round) unit is one row of an append-only CSV log holding the network's and
the anchor's figures, so an interrupted run resumes at the unit it stopped at.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from nas.arch.spec import NetworkSpec
from nas.cost import sampling
from nas.cost.harness import HarnessConfig

#: How reports name the figure :func:`measure_anchored` returns.
ANCHORED_STATISTIC_TEXT = ("median over rounds of the ratio to the anchor network timed in alternate "
                           "calls, times the anchor's best over all rounds")
ANCHOR_COLUMNS = ("anchor_min_ms", "anchor_median_ms")
LOG_COLUMNS = [*sampling.PASS_COLUMNS, *ANCHOR_COLUMNS]
Sampler = Callable[[int], float]


def read_log(path: Path) -> list[dict[str, Any]]:
    """The finished units of an anchored log (:func:`nas.cost.sampling.read_pass_log`'s rows
    with the anchor's figures); a truncated last line (a killed run) is skipped."""
    good = []
    for row in sampling.read_pass_log(path):
        try:
            for name in ANCHOR_COLUMNS:
                row[name] = float(row[name])
        except (TypeError, ValueError, KeyError):
            continue
        good.append(row)
    return good


def paired_stats(sample: Sampler, anchor: Sampler, settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`nas.cost.sampling.run_samples` of ``sample`` with a call of ``anchor`` before each
    of its samples; the anchor's figures (``anchor_min_ms``, ``anchor_median_ms``) come from
    the calls made while ``sample`` was sampled (its warm-up left out)."""
    anchor_calls: list[float] = []

    def paired(number: int) -> float:
        anchor_calls.append(anchor(number) / number)
        return sample(number)

    stats = sampling.run_samples(paired, after_warmup=anchor_calls.clear, **settings)
    anchor_stats = sampling.summarize(anchor_calls)
    return {**stats, "anchor_min_ms": anchor_stats["min_ms"], "anchor_median_ms": anchor_stats["median_ms"]}


def run_anchored_passes(keys: Sequence[str], anchor: Sampler, sampler_of: Callable[[str], Sampler],
                        settings: dict[str, Any], *, passes: int, log_path: Path | None = None,
                        seed: int = 0, progress: Callable[[int], None] | None = None
                        ) -> dict[str, list[dict[str, Any]]]:
    """Each key once per pass (shuffled per pass), its calls alternating with ``anchor``'s;
    returns the rows by key. Units already in ``log_path`` are not measured again."""
    rows, _ = sampling.run_passes(keys, lambda key: paired_stats(sampler_of(key), anchor, settings),
                                  passes=passes, log_path=log_path, seed=seed, progress=progress,
                                  columns=LOG_COLUMNS, read_log=read_log)
    return rows


def anchored_figures(rows: dict[str, list[dict[str, Any]]], statistic: str) -> dict[str, dict[str, Any]]:
    """Per key: the plain figures (:func:`nas.cost.sampling.aggregate`, ``plain_ms``) and the
    anchored ``ms``. ``statistic`` "min" pairs each round's best calls; the others its medians."""
    kind = "min" if statistic == "min" else "median"
    anchors = [r[f"anchor_{kind}_ms"] for key_rows in rows.values() for r in key_rows]
    # The anchor's level over the whole run, reduced like a plain figure (best of all, or median).
    anchor_ms = min(anchors) if kind == "min" else statistics.median(anchors)
    out = {}
    for key, key_rows in rows.items():
        if not key_rows:
            continue
        ordered = sorted(key_rows, key=lambda r: r["pass"])
        ratios = [r[f"{kind}_ms"] / r[f"anchor_{kind}_ms"] for r in ordered]
        plain = sampling.aggregate(ordered, statistic)
        out[key] = {**plain, "plain_ms": plain["ms"], "ratio": statistics.median(ratios),
                    "ms": statistics.median(ratios) * anchor_ms, "anchor_ms": anchor_ms,
                    "rounds_ms": [round(r["median_ms"], 4) for r in ordered],
                    "rounds_min_ms": [round(r["min_ms"], 4) for r in ordered],
                    "rounds_ratio": [round(x, 5) for x in ratios]}
    return out


def measure_anchored(specs: Sequence[NetworkSpec], anchor: NetworkSpec, harness: HarnessConfig, *,
                     rounds: int | None = None, progress: bool = True, log_path: str | Path | None = None,
                     desc: str = "anchored") -> list[dict[str, Any]]:
    """Each spec's anchored end-to-end figure (and its plain ones), in the order of ``specs``."""
    from nas.arch.codecs import to_string
    from nas.cost.calibrate import build_network
    from nas.cost.harness import harness_context
    from nas.cost.timing import item_measurer

    names = list(dict.fromkeys(to_string(s) for s in specs))
    anchor_name = to_string(anchor)
    passes = rounds or harness.passes
    measure_one = item_measurer(build_network, harness)
    measure_one.prepare([*names, anchor_name], progress=progress)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * passes, desc=desc, unit="op", leave=False)
    try:
        with harness_context(harness):
            anchor_sample = measure_one.sampler(anchor_name)  # one session for the whole run
            rows = run_anchored_passes(names, anchor_sample, measure_one.sampler, harness.sampling(),
                                       passes=passes, log_path=Path(log_path) if log_path is not None else None,
                                       seed=harness.seed, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    figures = anchored_figures(rows, harness.pass_statistic)
    return [figures[to_string(s)] for s in specs]
