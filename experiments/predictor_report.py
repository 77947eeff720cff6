"""The predictor benchmark's report: ``summary.md``, the quality and the search plots.

Kept apart from running the benchmark (``predictor_benchmark.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from experiments import harness


def plot_quality(frame: pd.DataFrame, truth: Sequence[float], path: Path) -> None:
    """Predicted against supernet top-1 on the held-out networks, each model at its largest N."""
    plt = harness.pyplot()
    largest = frame[frame["train"] == frame["train"].max()]
    fig, axes = plt.subplots(1, len(largest), figsize=(5 * len(largest), 4.5), squeeze=False)
    low, high = 100 * min(truth), 100 * max(truth)
    for ax, (_, row) in zip(axes[0], largest.iterrows()):
        ax.scatter([100 * t for t in truth], [100 * p for p in row["predicted"]], s=10)
        ax.plot([low, high], [low, high], color="0.5", linewidth=1)
        ax.set_title(f"{row['model']}, fitted on {row['train']}: tau {row['kendall_tau']}, "
                     f"RMSE {100 * row['rmse']:.2f} pts", fontsize=9)
        ax.set_xlabel("supernet top-1 (%), held out")
        ax.set_ylabel("predicted top-1 (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_search(curves: pd.DataFrame, target: float, path: Path) -> None:
    """Hypervolume against seconds spent: every run, one colour per method; TPE's final mean."""
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for (method, samples), group in curves.groupby(["method", curves["samples"].fillna(0)], sort=False):
        colour = next(colours)
        label = method if method == "tpe" else f"predictor, {int(samples)} scores"
        for i, (_, run) in enumerate(group.groupby("seed")):
            ax.step(run["seconds"], run["hypervolume"], where="post", color=colour, linewidth=1,
                    label=label if i == 0 else None)
    ax.axhline(target, color="0.3", linestyle="--", linewidth=1, label="TPE's final mean")
    ax.set_xlabel("seconds (supernet scores, fit and predictor search; not the supernet's training)")
    ax.set_ylabel("hypervolume (supernet top-1 x ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_line(summary: dict[str, Any], part: str) -> str:
    run = summary.get(f"run_{part}") or {}
    return (f"Load average {run.get('loadavg', 'not recorded')} at the end, finished "
            f"{run.get('finished_at', '(not recorded)')}.\n")


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    """``summary.md``: a table per part that ran."""
    lines = [f"# Accuracy predictor on {summary['space']}", "",
             f"Supernet: {summary['supernet'].get('supernet_checkpoint')} "
             f"({summary['supernet'].get('supernet_steps')} steps), ranked on the {summary['selection']} "
             f"split. Host {summary['host']} ({summary['cpu']}).", ""]
    if "quality" in summary:
        lines += ["## Held-out networks against the supernet", "",
                  _run_line(summary, "quality"),
                  "| model | fitted on | held out | RMSE (pts) | Kendall tau | Spearman rho | fit s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['train']} | {r['test']} | {100 * r['rmse']:.2f} | {r['kendall_tau']} | "
                  f"{r['spearman_rho']} | {r['fit_seconds']} |" for r in summary["quality"]]
        lines.append("")
    if "trained" in summary:
        t = summary["trained"]
        lines += ["## Trained networks (reference protocol)", "", _run_line(summary, "trained"),
                  f"{t['networks']} networks; the MLP fitted on {t['predictor_fitted_on']} supernet scores.", "",
                  "| ranking | Kendall tau | Spearman rho |", "|---|---|---|"]
        for name in ("predictor_vs_trained", "supernet_vs_trained", "predictor_vs_supernet"):
            lines.append(f"| {name.replace('_', ' ')} | {t[name]['kendall_tau']} | {t[name]['spearman_rho']} |")
        lines.append("")
    if "search" in summary:
        s = summary["search"]
        lines += ["## Search: hypervolume against seconds", "", _run_line(summary, "search"),
                  f"TPE: {s['tpe_trials']} trials, final hypervolume {s['tpe']['final_hypervolume_mean']} "
                  f"(mean over seeds {s['seeds']}) in {s['tpe']['seconds_mean']} s on average. "
                  f"Predictor: NSGA-II over {s['candidates']} networks (population {s['population_size']}), "
                  f"at most {s['rescore']} re-scored.", "",
                  "| run | final hypervolume | seconds | seconds to TPE's final | share of TPE's seconds | "
                  "target (<= 0.2, every seed) |", "|---|---|---|---|---|---|"]
        for name, e in s.items():
            if name.startswith("predictor_"):
                lines.append(f"| {name} | {e['final_hypervolume_mean']} | {e['seconds_mean']} | "
                             f"{e['seconds_to_reach_tpe_final_mean']} | {e['share_of_tpe_seconds']} | "
                             f"{'met' if e['target_met_every_seed'] else 'not met'} |")
        lines.append("")
    harness.write_lines(path, lines)


__all__ = ["plot_quality", "plot_search", "write_markdown"]
