"""The supernet benchmark's report: Kendall tau between supernet scores and stand-alone
top-1, the stand-alone reference's own seed-to-seed ceiling, the timings, and the scatter
plot (``experiments.supernet_benchmark``; ``--resummarise`` rewrites them from a finished run).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from experiments import harness
from nas.supernet.train import SupernetTrainConfig
from nas.training.data import make_loaders
from nas.training.data_config import DataConfig
from nas.training.train_config import TrainConfig


def summarise(frame: pd.DataFrame, args: argparse.Namespace, data_cfg: DataConfig,
              proxy_cfg: TrainConfig, train_cfg: SupernetTrainConfig, trained: Any,
              timing: dict[str, Any]) -> dict[str, Any]:
    """Write summary.yaml, summary.md and scatter.png."""
    from scipy.stats import kendalltau, spearmanr

    tau, p_tau = kendalltau(frame["supernet_top1"], frame["standalone_top1"])
    rho, _ = spearmanr(frame["supernet_top1"], frame["standalone_top1"])
    tau_params, _ = kendalltau(frame["params"], frame["standalone_top1"])
    tau_supernet_params, _ = kendalltau(frame["supernet_top1"], frame["params"])
    rest = frame[frame["spec"] != "largest"]
    tau_rest, p_rest = kendalltau(rest["supernet_top1"], rest["standalone_top1"])
    # The loss is a finer-grained score than top-1 on 932 images (one image = 0.11 points).
    tau_loss, p_loss = kendalltau(-frame["supernet_val_loss"], frame["standalone_top1"])
    seed_columns = reference_seed_columns(frame)
    reference_repeatability: dict[str, Any] = {}
    if len(seed_columns) >= 2:
        # The ceiling: how well the stand-alone ranking agrees with itself across seeds, and
        # how well one more stand-alone run ranks like the mean of the other runs (what a
        # perfect stand-in for stand-alone training would reach).
        pairs = {f"{a.removeprefix('standalone_top1_')}_{b.removeprefix('standalone_top1_')}":
                 float(kendalltau(frame[a], frame[b])[0])
                 for i, a in enumerate(seed_columns) for b in seed_columns[i + 1:]}
        one_vs_rest = [float(kendalltau(frame[c], frame[[o for o in seed_columns if o != c]]
                                        .mean(axis=1))[0]) for c in seed_columns]
        reference_repeatability = {
            "reference_seed_to_seed_kendall_tau": round(statistics.fmean(pairs.values()), 4),
            "reference_seed_pairs_kendall_tau": {k: round(v, 4) for k, v in pairs.items()},
            "reference_one_seed_vs_rest_kendall_tau": round(statistics.fmean(one_vs_rest), 4),
            **{f"kendall_tau_supernet_vs_{c.removeprefix('standalone_top1_')}":
               round(float(kendalltau(frame["supernet_top1"], frame[c])[0]), 4)
               for c in seed_columns},
        }
    score_seconds = frame["score_seconds_median"]
    summary: dict[str, Any] = {
        "ranking": {
            "specs": int(len(frame)), "kendall_tau": round(float(tau), 4),
            "kendall_p": round(float(p_tau), 5), "spearman_rho": round(float(rho), 4),
            "kendall_tau_supernet_loss": round(float(tau_loss), 4),
            "kendall_p_supernet_loss": round(float(p_loss), 5),
            **reference_repeatability,
            "baseline_kendall_tau_params_vs_standalone": round(float(tau_params), 4),
            "kendall_tau_without_largest": round(float(tau_rest), 4),
            "kendall_p_without_largest": round(float(p_rest), 5),
            "kendall_tau_supernet_vs_params": round(float(tau_supernet_params), 4),
            "standalone_top1_std": round(float(frame["standalone_top1"].std()), 4),
            "supernet_top1_std": round(float(frame["supernet_top1"].std()), 4),
            "standalone_top1_range": [round(float(frame["standalone_top1"].min()), 4),
                                      round(float(frame["standalone_top1"].max()), 4)],
            "supernet_top1_range": [round(float(frame["supernet_top1"].min()), 4),
                                    round(float(frame["supernet_top1"].max()), 4)],
        },
        "timing": {
            "supernet_training_seconds": round(trained.seconds, 1),
            "supernet_steps": trained.steps,
            "supernet_images_per_second": round(trained.images_per_second, 1),
            "score_seconds_median": round(float(score_seconds.median()), 3),
            "score_seconds_max": round(float(score_seconds.max()), 3),
            "standalone_training_seconds_all_specs": round(float(frame["standalone_seconds"].sum()), 1),
            "standalone_training_seconds_median": round(float(frame["standalone_seconds"].median()), 1),
            **timing,
        },
        "settings": {
            "space": args.space, "data": data_cfg.settings(), "proxy_train": proxy_cfg.settings(),
            "supernet_train": train_cfg.settings(), "bn_batches": args.bn_batches,
            "val_images": len(make_loaders(data_cfg).val.dataset), "threads": args.threads,
            "spec_pool": args.pool, "spec_seed": args.seed,
        },
        "machine": harness.machine(),
        "supernet_history": trained.history,
    }
    harness.write_yaml(args.out / "summary.yaml", summary)

    r, t = summary["ranking"], summary["timing"]
    lines = [
        "# Supernet benchmark (CIFAR-10 subset)", "",
        f"Space `{args.space}`, {r['specs']} specs (smallest, largest, canonical, and random specs at "
        f"evenly spaced parameter-count quantiles of {args.pool} samples). Resolution "
        f"{data_cfg.resolution} (32x32 images resized), batch {data_cfg.batch_size}, "
        f"{args.threads} torch thread(s), CPU ({summary['machine']['cpus']} cores, shared).", "",
        f"* Stand-alone reference: mean top-1 over seeds {seed_columns_text(frame)}, each "
        f"{proxy_cfg.epochs} epochs, {proxy_cfg.optimizer} lr {proxy_cfg.lr}, {proxy_cfg.schedule} "
        f"(warm-up {proxy_cfg.warmup_epochs} epochs), label smoothing {proxy_cfg.label_smoothing}, "
        f"BN recalibration {proxy_cfg.bn_recalibration_batches} batches.",
        f"* Supernet: {train_cfg.epochs} epochs of sandwich steps (largest + smallest + "
        f"{train_cfg.num_random} random), "
        f"{'in-place distillation' if train_cfg.distill else 'labels only (no distillation)'}, "
        f"{train_cfg.optimizer} lr "
        f"{train_cfg.lr} {train_cfg.schedule}; scoring: BN recalibration on {args.bn_batches} "
        f"training batches, top-1 on {summary['settings']['val_images']} validation images.", "",
        f"**Kendall tau (supernet score vs stand-alone top-1): {r['kendall_tau']:.3f}** "
        f"(p = {r['kendall_p']:.4f}); Spearman rho {r['spearman_rho']:.3f}. "
        f"With the supernet's validation loss as the score: tau {r['kendall_tau_supernet_loss']:.3f} "
        f"(p = {r['kendall_p_supernet_loss']:.4f}). "
        + (f"The reference's own repeatability: seed-to-seed tau "
           f"{r['reference_seed_to_seed_kendall_tau']:.3f} (mean over seed pairs); one seed "
           f"against the mean of the others {r['reference_one_seed_vs_rest_kendall_tau']:.3f}. "
           if "reference_seed_to_seed_kendall_tau" in r else "") +
        f"Baseline, parameter count vs stand-alone top-1: tau {r['baseline_kendall_tau_params_vs_standalone']:.3f}. "
        f"Without the largest spec: tau {r['kendall_tau_without_largest']:.3f} "
        f"(p = {r['kendall_p_without_largest']:.3f}); supernet score vs parameter count: tau "
        f"{r['kendall_tau_supernet_vs_params']:.3f}. Spread (std) of top-1 over the specs: "
        f"stand-alone {r['standalone_top1_std']:.4f}, supernet {r['supernet_top1_std']:.4f}.",
        "",
        f"Supernet training: {t['supernet_training_seconds']:.0f} s ({t['supernet_steps']} steps, "
        f"{t['supernet_images_per_second']:.1f} images/s). Scoring one candidate: median "
        f"{t['score_seconds_median']:.2f} s, max {t['score_seconds_max']:.2f} s (after a one-off "
        f"{t['score_cache_fill_seconds']:.1f} s to decode and cache the batches). Stand-alone proxy "
        f"training: median {t['standalone_training_seconds_median']:.0f} s per spec, "
        f"{t['standalone_training_seconds_all_specs']:.0f} s for all.", "",
        f"Load average at start {t['load_average_at_start']}, at end {t['load_average_at_end']}; "
        f"this invocation's wall time {t['wall_seconds_this_invocation']:.0f} s.", "",
        "| spec | params | stand-alone top-1 | supernet top-1 | score s |", "|---|---|---|---|---|",
    ]
    for row in frame.sort_values("standalone_top1", ascending=False).itertuples():
        lines.append(f"| {row.spec} | {row.params / 1e6:.2f}M | {row.standalone_top1:.4f} | "
                     f"{row.supernet_top1:.4f} | {row.score_seconds_median:.2f} |")
    harness.write_lines(args.out / "summary.md", lines)
    _plot(frame, float(tau), args.out / "scatter.png")
    return summary


class _Recorded:
    """The training facts ``summarise`` needs, read back from a previous summary.yaml."""

    def __init__(self, summary: dict[str, Any]) -> None:
        timing = summary["timing"]
        self.seconds = timing["supernet_training_seconds"]
        self.steps = timing["supernet_steps"]
        self.images_per_second = timing["supernet_images_per_second"]
        self.history = summary["supernet_history"]


def resummarise(args: argparse.Namespace) -> int:
    """Recompute the statistics and figures of a finished run, keeping its measured timings."""
    previous = yaml.safe_load((args.out / "summary.yaml").read_text())
    settings = previous["settings"]
    frame = pd.read_csv(args.out / "results.csv")
    data_cfg = DataConfig.from_dict(settings["data"])
    proxy_cfg = TrainConfig.from_dict(settings["proxy_train"])
    train_cfg = SupernetTrainConfig.from_dict(settings["supernet_train"])
    args.space, args.bn_batches, args.pool = settings["space"], settings["bn_batches"], settings["spec_pool"]
    args.threads, args.seed = settings["threads"], settings["spec_seed"]
    keep = ("load_average_at_start", "load_average_at_end", "wall_seconds_this_invocation",
            "standalone_wall_seconds_this_invocation", "supernet_wall_seconds_this_invocation",
            "score_cache_fill_seconds")
    summarise(frame, args, data_cfg, proxy_cfg, train_cfg, _Recorded(previous),
              {k: previous["timing"][k] for k in keep})
    return 0


def reference_seed_columns(frame: pd.DataFrame) -> list[str]:
    """The per-seed stand-alone columns of results.csv (``standalone_top1_seed<N>``)."""
    return sorted(c for c in frame.columns if c.startswith("standalone_top1_seed"))


def seed_columns_text(frame: pd.DataFrame) -> str:
    seeds = [c.removeprefix("standalone_top1_seed") for c in reference_seed_columns(frame)]
    return ", ".join(seeds) if seeds else "(one run)"


def _plot(frame: pd.DataFrame, tau: float, path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    points = ax.scatter(frame["supernet_top1"], frame["standalone_top1"], c=frame["params"] / 1e6,
                        cmap="viridis")
    fig.colorbar(points, ax=ax, label="parameters (M)")
    for row in frame.itertuples():
        ax.annotate(row.spec, (row.supernet_top1, row.standalone_top1), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    ax.set_xlabel("supernet score (top-1 after BN recalibration)")
    ax.set_ylabel("stand-alone proxy-trained top-1 (mean over seeds)")
    ax.set_title(f"Supernet vs stand-alone ranking (Kendall tau {tau:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
