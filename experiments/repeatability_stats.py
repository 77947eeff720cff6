"""Statistics of the repeatability benchmark: rankings, pooled seed noise, per-image noise.

Kept apart from the benchmark's running and reporting (``repeatability_benchmark.py``).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2, kendalltau

from nas.training.scoring import decode_correct


def tau(a: pd.Series, b: pd.Series) -> float | None:
    """Kendall tau over the networks both rank; None when fewer than 3, or when one side
    gives every network the same figure (tau is undefined, and a NaN would reach the report)."""
    joined = pd.concat([a, b], axis=1).dropna()
    if len(joined) < 3 or joined.nunique().min() < 2:
        return None
    return float(kendalltau(joined.iloc[:, 0], joined.iloc[:, 1]).statistic)


def tau_interval(a: pd.Series, b: pd.Series, resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """90% bootstrap interval of Kendall tau, resampling the networks (seeded).

    With 8 networks one swapped pair moves tau by 0.07, and the interval is wide (0.0-1.0 for
    the shipped proxy): it says whether a tau figure can be told from a target at all.
    """
    joined = pd.concat([a, b], axis=1).dropna().to_numpy()
    if len(joined) < 3:
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = joined[rng.integers(0, len(joined), len(joined))]
        if np.ptp(pick[:, 0]) > 0 and np.ptp(pick[:, 1]) > 0:  # tau needs two distinct values
            draws.append(kendalltau(pick[:, 0], pick[:, 1]).statistic)
    if not draws:  # every resample tied on one side (e.g. all networks at chance accuracy)
        return None
    low, high = np.quantile(draws, [0.05, 0.95])
    return [round(float(low), 3), round(float(high), 3)]


def mean_of(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(statistics.mean(kept), 3) if kept else None


def pooled_std(runs: pd.DataFrame) -> dict[str, Any] | None:
    """Seed std pooled over networks (root of the mean variance), with its 90% interval.

    One network's std from 2-3 seeds is itself uncertain by about half; pooling the variances
    of all networks (degrees of freedom: seeds - 1 each) says what the protocol's noise is.
    """
    groups = [g["top1"] * 100 for _, g in runs.groupby("spec") if len(g) >= 2]
    if not groups:
        return None
    dof = sum(len(g) - 1 for g in groups)
    pooled_var = sum(float(g.var()) * (len(g) - 1) for g in groups) / dof
    low, high = (math.sqrt(pooled_var * dof / chi2.ppf(q, dof)) for q in (0.95, 0.05))
    return {"std": round(math.sqrt(pooled_var), 3), "interval_90": [round(low, 3), round(high, 3)],
            "degrees_of_freedom": dof}


def per_image_entry(runs: pd.DataFrame, reference: pd.Series | None) -> dict[str, Any] | None:
    """Seed noise against the val set's own sampling noise, and test-time flip averaging.

    For networks whose every seed recorded which val images it gets right: if each image were
    an independent coin with its own chance p_i of being right (estimated over the seeds), the
    top-1 of a run would vary with variance sum p_i (1 - p_i) / N^2 (unbiased with the factor
    seeds / (seeds - 1)). When the observed seed std is about that, seed noise is the val set's
    sampling of the few images a network is unsure of, and only fewer such images (a protocol
    that trains to a surer network) or more val images lower it.
    """
    if "val_correct" not in runs.columns:
        return None
    observed, predicted, unstable, names = [], [], [], []
    for spec, group in runs.groupby("spec"):
        if len(group) < 2 or group["val_correct"].isna().any():
            continue
        images = int(group["val_images"].iloc[0])
        right = np.stack([decode_correct(text, images) for text in group["val_correct"]]).astype(float)
        p = right.mean(axis=0)
        seeds = len(group)
        predicted.append(float((p * (1 - p)).sum()) * seeds / (seeds - 1) / images**2 * 1e4)
        observed.append(float((group["top1"] * 100).var()))
        unstable.append(int(((p > 0) & (p < 1)).sum()))
        names.append(spec)
    if not names:
        return None
    part = runs[runs.spec.isin(names)]
    flip = part.pivot_table(index="spec", columns="seed", values="top1_flip")
    entry: dict[str, Any] = {
        "networks": names,
        "seed_std_points_pooled": round(math.sqrt(statistics.mean(observed)), 3),
        "val_noise_std_points_pooled": round(math.sqrt(statistics.mean(predicted)), 3),
        "unstable_val_images_median": int(statistics.median(unstable)),
        "flip_seed_std_points_pooled": pooled_std(part.assign(top1=part["top1_flip"]))["std"],
        "flip_gain_points_mean": round(float((part["top1_flip"] - part["top1"]).mean()) * 100, 2),
        "flip_seconds_median": round(float(part["flip_seconds"].median()), 2),
    }
    if reference is not None and len(names) >= 3:
        plain = part.pivot_table(index="spec", columns="seed", values="top1").mean(axis=1)
        for label, scores in (("plain", plain), ("flip", flip.mean(axis=1))):
            ranked = tau(scores, reference)
            entry[f"tau_seed_mean_vs_reference_mean_{label}"] = round(ranked, 3) if ranked is not None else None
    return entry
