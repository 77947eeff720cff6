"""The transfer study's summary figures (:mod:`experiments.transfer_study` writes them): a
protocol as a ranking (seed-to-seed Kendall tau, and each seed against a reference protocol's
seed mean), each found network against canonical Small with its seeds, and the Markdown page."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Any

import pandas as pd

from experiments.repeatability_stats import tau, tau_interval
from nas.seed_stats import difference_interval, verdict

FOUND = ("found_80", "found_90", "found_100")
LIBRARY = {"large": "large", "mobilenet_v2": "v2"}  # spec-library networks, 1 seed each


def mean_std(values: list[float]) -> dict[str, Any]:
    return {"seeds": len(values), "top1_mean": round(100 * statistics.mean(values), 2),
            "top1_std": round(100 * statistics.stdev(values), 2) if len(values) > 1 else None}


HELDOUT_PREFIX = "heldout_"  # networks no setting was chosen on (transfer_study --heldout)


def repeatability(runs: pd.DataFrame, reference: pd.Series | None, score: str = "top1") -> dict[str, Any]:
    """The protocol as a ranking by its ``score`` column (``top1``, or ``top1_flip``: the mean
    log-probability of each image and its mirror): Kendall tau between every two seeds over the
    Small-space networks both trained, the seconds a run takes, and (a cheaper protocol) tau of
    each seed and of the seed mean against ``reference``."""
    small = runs[~runs.spec.isin(list(LIBRARY))]
    by_seed = {seed: part.set_index("spec")[score] for seed, part in small.groupby("seed")}
    seed_pairs: dict[str, dict[str, Any]] = {}
    for a, b in itertools.combinations(sorted(by_seed), 2):
        t = tau(by_seed[a], by_seed[b])
        both = len(by_seed[a].index.intersection(by_seed[b].index))
        seed_pairs[f"{a}-{b}"] = {"tau": None if t is None else round(t, 3), "networks": both}
    out: dict[str, Any] = {
        "score": score,
        "networks": int(small["spec"].nunique()),
        "seed_pairs": seed_pairs,
        "seconds_per_run_median": round(float(small["seconds"].median()), 1),
        "seconds_per_run_max": round(float(small["seconds"].max()), 1),
    }
    if reference is not None and not reference.empty:
        mean = small.groupby("spec")[score].mean()
        ranked = {**{f"seed {seed}": top1 for seed, top1 in by_seed.items()}, "seed mean": mean}
        out["vs_reference_mean"] = {label: None if (t := tau(top1, reference)) is None else round(t, 3)
                                    for label, top1 in ranked.items()}
        # Seeds cover different networks (a third seed only for some): each tau names its own count.
        out["vs_reference_networks"] = {label: len(top1.index.intersection(reference.index))
                                        for label, top1 in ranked.items()}
        # A screen costs one run a candidate: each seed alone is what it offers, so each gets its interval.
        out["vs_reference_interval_90"] = {label: tau_interval(top1, reference) for label, top1 in ranked.items()}
    return out


def rankings(runs: pd.DataFrame, reference: pd.Series | None, reference_name: str) -> dict[str, dict[str, Any]]:
    """:func:`repeatability` by top-1 over all Small-space networks; for a screen judged against
    ``reference`` (named ``reference_name``), also by each further score the runs carry
    (``top1_flip`` where every run has it) and over the held-out networks alone: a screen chosen
    on the study's networks is judged on those it was not chosen on."""
    if reference is None:  # the reference protocol itself: its held-out networks have one seed
        return {"all/top1": repeatability(runs, None)}
    scores = ["top1"] + (["top1_flip"] if "top1_flip" in runs and runs["top1_flip"].notna().all() else [])
    heldout = runs[runs.spec.str.startswith(HELDOUT_PREFIX)]
    subsets = {"all": runs, **({"heldout": heldout} if not heldout.empty else {})}
    return {f"{subset}/{score}": {**repeatability(part, reference, score), "reference": reference_name}
            for subset, part in subsets.items() for score in scores}


def found_vs_canonical(runs: pd.DataFrame, names: Sequence[str] = FOUND) -> dict[str, Any]:
    """Each found (or ``--network``) network's Tiny-ImageNet top-1 against canonical Small's:
    the difference, its 90% interval and verdict (:mod:`nas.seed_stats`)."""
    if "canonical" not in set(runs["spec"]):
        return {}
    base = (runs[runs.spec == "canonical"]["top1"] * 100).tolist()
    out: dict[str, Any] = {"canonical": mean_std([t / 100 for t in base])}
    for name in names:
        mine = (runs[runs.spec == name]["top1"] * 100).tolist()
        if not mine:
            continue
        interval = difference_interval(mine, base)
        out[name] = {**mean_std([t / 100 for t in mine]),
                     "delta_points": round(statistics.mean(mine) - statistics.mean(base), 2),
                     "interval_90_points": None if interval is None else [round(x, 2) for x in interval],
                     "verdict": verdict(interval, len(mine), len(base))}
    return out


def markdown(summary: dict[str, Any]) -> list[str]:
    lines = [f"# Transfer study: CIFAR-10 reference against Tiny-ImageNet ({summary['protocol']})", "",
             f"{summary['runs_done']} of {summary['runs_planned']} runs finished ({summary['written']}).", ""]
    if not summary["networks"]:
        return lines + ["No finished runs yet."]
    lines += ["| network | params | seeds | Tiny-ImageNet val top-1 | CIFAR-10 reference top-1 | s/run |",
              "|---|---|---|---|---|---|"]
    for name, n in summary["networks"].items():
        std = f" +- {n['top1_std']:.2f}" if n["top1_std"] is not None else ""
        cifar = "-" if n["cifar10_reference_top1"] is None else f"{n['cifar10_reference_top1']:.2f}"
        lines.append(f"| {name} | {n['params'] / 1e6:.2f}M | {n['seeds']} | {n['top1_mean']:.2f}{std} "
                     f"| {cifar} | {n['seconds_median']} |")
    lines += ["", "Kendall tau, Tiny-ImageNet seed mean against the CIFAR-10 reference seed mean "
              "(90% bootstrap interval over networks):", ""]
    for label, t in summary["kendall_tau"].items():
        lines.append(f"- {label}: tau {t['tau']} over {t['networks']} networks, interval {t['interval_90']}"
                     if t["tau"] is not None else
                     f"- {label}: {t['networks']} network(s) with both figures; tau needs 3")
    rep = summary.get("repeatability") or {}
    if rep:
        lines += ranking_lines(rep, f"As a ranking (Small-space networks; run seconds median "
                               f"{rep['seconds_per_run_median']}, max {rep['seconds_per_run_max']})")
    for view, further in (summary.get("further_rankings") or {}).items():
        subset, score = view.split("/")
        networks = "the held-out networks alone" if subset == "heldout" else "all Small-space networks"
        lines += ranking_lines(further, f"Ranked by {score} over {networks} ({further['networks']})")
    found = summary.get("found_vs_canonical") or {}
    compared = [name for name in found if name != "canonical"]
    if compared:
        lines += ["", "Found networks against canonical Small (the difference's 90% interval, "
                  "Welch's t over both networks' seeds; a tie when it spans 0):", ""]
        for name in compared:
            f = found[name]
            span = ("" if f["interval_90_points"] is None else
                    f" [{f['interval_90_points'][0]:+.2f}, {f['interval_90_points'][1]:+.2f}]")
            lines.append(f"- {name}: {f['top1_mean']:.2f} ({f['seeds']} seeds) against "
                         f"{found['canonical']['top1_mean']:.2f} ({found['canonical']['seeds']}): "
                         f"{f['delta_points']:+.2f} points{span}, {f['verdict']}")
    return lines


def ranking_lines(rep: dict[str, Any], heading: str) -> list[str]:
    """One :func:`repeatability` result as Markdown: its seed pairs, then each seed and the seed
    mean against the reference."""
    lines = ["", f"{heading}:", ""]
    for pair, t in rep["seed_pairs"].items():
        lines.append(f"- seeds {pair}: tau {t['tau']} over {t['networks']} networks")
    if not rep["seed_pairs"]:
        lines.append("- no network has two seeds yet: no seed-to-seed tau")
    for label, t in (rep.get("vs_reference_mean") or {}).items():
        interval = rep["vs_reference_interval_90"][label]
        interval = "" if interval is None else f", interval {interval}"
        lines.append(f"- {label} against the {rep['reference']} seed mean: tau {t} "
                     f"({rep['vs_reference_networks'][label]} networks{interval})")
    return lines
