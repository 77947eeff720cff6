"""The repeatability benchmark's report: ``summary.md`` and the cost-against-ranking plot.

Kept apart from running the benchmark (``repeatability_benchmark.py``) and its statistics
(``repeatability_stats.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from experiments import harness


def write_markdown(summary: dict[str, Any], networks: pd.DataFrame, path: Path) -> None:
    """``summary.md``: the protocols table, the per-image noise table, the per-network table."""
    lines = ["# Protocol repeatability on CIFAR-10 val", "",
             "| protocol | seeds | s/candidate | seed-to-seed tau | tau vs reference mean: one seed "
             "(mean over seeds) | of the seed mean | median seed std (pts) | canonical top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in summary["protocols"].items():
        vs = f"{e.get('tau_vs_reference_mean_per_seed_mean', '-')} | {e.get('tau_seed_mean_vs_reference_mean', '-')}"
        canon = (f"{e['canonical_top1_mean']:.2f} +- {e['canonical_top1_std']}"
                 if e["canonical_top1_mean"] is not None else "-")
        lines.append(f"| {name} | {len(e['seeds'])} | {e['seconds_per_candidate_median']} | "
                     f"{e['seed_to_seed_tau_mean']} | {vs} | {e['seed_std_points_median']} | {canon} |")
    lines += ["", "Seed noise against the val set's own sampling noise (networks whose every seed "
              "recorded which val images it gets right; `repeatability_stats.per_image_entry`), and "
              "test-time flip averaging on the same runs:", "",
              "| protocol | networks | pooled seed std (pts) | val-noise std (pts) | unstable val images "
              "(median) | flip: pooled seed std | flip gain (pts) | tau vs reference mean, plain / flip |",
              "|---|---|---|---|---|---|---|---|"]
    for name, e in summary["protocols"].items():
        if (p := e.get("per_image")) is not None:
            taus = (f"{p.get('tau_seed_mean_vs_reference_mean_plain', '-')} / "
                    f"{p.get('tau_seed_mean_vs_reference_mean_flip', '-')}")
            lines.append(f"| {name} | {len(p['networks'])} | {p['seed_std_points_pooled']} | "
                         f"{p['val_noise_std_points_pooled']} | {p['unstable_val_images_median']} | "
                         f"{p['flip_seed_std_points_pooled']} | {p['flip_gain_points_mean']} | {taus} |")
    lines += ["", "Per network (top-1 mean and std over seeds, percent):", "",
              networks.assign(top1_mean=networks.top1_mean * 100, top1_std=networks.top1_std * 100)
              .round(2).to_markdown(index=False)]
    harness.write_lines(path, lines)


def plot_tradeoff(summary: dict[str, Any], networks: pd.DataFrame, path: Path) -> None:
    """Ranking quality against seconds per candidate (left); each network's top-1 (right)."""
    plt = harness.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, e in summary["protocols"].items():
        x = e["seconds_per_candidate_median"]
        y_self = e["seed_to_seed_tau_mean"]
        y_ref = e.get("tau_seed_mean_vs_reference_mean")
        if y_self is not None:
            left.scatter(x, y_self, marker="o", color="tab:blue")
            left.annotate(name, (x, y_self), fontsize=8, xytext=(4, 4), textcoords="offset points")
        if y_ref is not None:
            left.scatter(x, y_ref, marker="s", color="tab:orange")
    left.scatter([], [], marker="o", color="tab:blue", label="seed-to-seed tau")
    left.scatter([], [], marker="s", color="tab:orange", label="tau vs reference mean")
    left.set_xscale("log")
    left.set_xlabel("seconds per candidate (median, 1 thread)")
    left.set_ylabel("Kendall tau")
    left.set_title("Ranking quality against cost")
    left.legend(fontsize=8)
    for name, part in networks.groupby("protocol"):
        right.errorbar(part["params"] / 1e6, part["top1_mean"] * 100, yerr=part["top1_std"].fillna(0) * 100,
                       fmt="o", capsize=3, label=name, alpha=0.8)
    right.set_xlabel("parameters (M)")
    right.set_ylabel("val top-1 (%) mean +- std over seeds")
    right.set_title("Networks under each protocol")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
