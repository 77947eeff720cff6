"""The paper's ablation latencies in two runtimes: PyTorch eager and LiteRT, beside the Pixel's.

The paper timed its ablations in TFLite on a Pixel phone. This puts, for every variant of every
study of ``nas/conf/ablation/``, three latency ratios to the study's baseline side by side:
the paper's (Pixel-1, where it gives one), PyTorch eager's and LiteRT's (XNNPACK), both
measured end to end in interleaved rounds by ``nas-ablate`` on this host. It reads two sweeps of
run folders, one per runtime::

    nas-ablate -m ablation=<every study> hydra.sweep.dir=experiments/results/ablations \\
        'hydra.sweep.subdir=${ablation.name}'
    nas-ablate -m ablation=<every study> ablation.latency.backend=litert ablation.latency.table=none \\
        'ablation.accuracy.seeds=[]' hydra.sweep.dir=experiments/results/ablations_litert \\
        'hydra.sweep.subdir=${ablation.name}'
    python -m experiments.ablation_runtimes

and writes ``runtimes.csv``, ``runtimes.md`` and ``runtimes.png`` in ``--out``: per variant the
three ratios, and per runtime how far its ratios lie from the paper's (mean absolute
difference) and how often the variant moves latency the paper's way (faster, slower, or
within 2% of the baseline in both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from experiments import harness

TORCH_RUNS = harness.RESULTS / "ablations"
LITERT_RUNS = harness.RESULTS / "ablations_litert"
SAME = 0.02  # ratios within 2% of 1 count as "no change"


def _direction(ratio: float) -> int:
    return 0 if abs(ratio - 1.0) <= SAME else (1 if ratio > 1.0 else -1)


def _e2e_load(results_jsonl: Path) -> float | None:
    """The 1-minute load average when a run's end-to-end rounds ended."""
    for record in harness.read_rows([results_jsonl]):
        if record.get("kind") == "e2e":
            return float(record["loadavg"][0])
    return None


def side_by_side(torch_runs: Path, litert_runs: Path) -> pd.DataFrame:
    """One row per variant of every study measured in both runtimes."""
    frames = []
    for litert_csv in sorted(litert_runs.glob("*/ablation.csv")):
        study = litert_csv.parent.name
        torch_csv = torch_runs / study / "ablation.csv"
        if not torch_csv.is_file():
            harness.log(f"{study}: no PyTorch eager run in {torch_csv.parent}; skipped")
            continue
        load = _e2e_load(litert_csv.parent / "results.jsonl")
        litert = pd.read_csv(litert_csv).set_index("variant")
        eager = pd.read_csv(torch_csv).set_index("variant")
        for variant in litert.index:
            if variant not in eager.index:
                raise SystemExit(f"{study}: variant {variant!r} of {litert_csv} is not in {torch_csv}: "
                                 "the two sweeps ran different study configs")
            frames.append({
                "study": study, "variant": variant,
                "paper_ratio": litert.at[variant, "paper_ratio"],
                "torch_ratio": eager.at[variant, "e2e_ratio"],
                "litert_ratio": litert.at[variant, "e2e_ratio"],
                "torch_ms": eager.at[variant, "e2e_ms"], "litert_ms": litert.at[variant, "e2e_ms"],
                "litert_iqr_ms": litert.at[variant, "e2e_iqr_ms"], "litert_load_1min": load,
            })
    if not frames:
        raise SystemExit(f"no study measured in both {torch_runs} and {litert_runs}")
    return pd.DataFrame(frames)


def agreement(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per runtime, over the variants with a paper ratio (baselines excluded)."""
    rows = frame[frame["paper_ratio"].notna() & (frame["paper_ratio"] != 1.0)]
    out = {}
    for runtime in ("torch", "litert"):
        ours = rows[f"{runtime}_ratio"]
        same_way = [_direction(a) == _direction(b) for a, b in zip(ours, rows["paper_ratio"])]
        out[runtime] = {"variants": len(rows),
                        "mean_abs_diff_to_paper": round(float((ours - rows["paper_ratio"]).abs().mean()), 4),
                        "same_direction_as_paper": int(sum(same_way))}
    return out


def markdown(frame: pd.DataFrame, summary: dict[str, dict[str, float]], load: str) -> list[str]:
    lines = ["# Ablation latency ratios: the paper's Pixel-1, PyTorch eager and LiteRT", "",
             "Ratio = the variant's end-to-end latency over its study's baseline, measured in the same "
             f"interleaved rounds (this host; 1-minute load average at the end of each LiteRT study: {load}).", "",
             "| runtime | variants with a paper ratio | mean abs. difference to the paper | "
             "same direction as the paper (+-2%) |", "|---|---|---|---|"]
    for runtime, s in summary.items():
        lines.append(f"| {runtime} | {s['variants']} | {s['mean_abs_diff_to_paper']:.3f} | "
                     f"{s['same_direction_as_paper']} of {s['variants']} |")
    lines += ["", "| study | variant | paper (Pixel-1) | PyTorch eager | LiteRT | LiteRT ms (IQR) |",
              "|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        paper = "-" if pd.isna(r.paper_ratio) else f"{r.paper_ratio:.3f}"
        lines.append(f"| {r.study} | {r.variant} | {paper} | {r.torch_ratio:.3f} | {r.litert_ratio:.3f} | "
                     f"{r.litert_ms:.2f} ({r.litert_iqr_ms:.2f}) |")
    lines += ["", "Written by `python -m experiments.ablation_runtimes`."]
    return lines


def plot(frame: pd.DataFrame, path: Path) -> None:
    plt = harness.pyplot()
    rows = frame[frame["paper_ratio"].notna() & (frame["paper_ratio"] != 1.0)]
    fig, ax = plt.subplots(figsize=(5.5, 5.2), dpi=120)
    values = pd.concat([rows["paper_ratio"], rows["torch_ratio"], rows["litert_ratio"]])
    lo, hi = float(values.min()) * 0.95, float(values.max()) * 1.05
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1)
    ax.scatter(rows["paper_ratio"], rows["torch_ratio"], marker="x", color="tab:orange", label="PyTorch eager")
    ax.scatter(rows["paper_ratio"], rows["litert_ratio"], color="tab:blue", label="LiteRT (XNNPACK)")
    ax.set_xlabel("paper's ratio (Pixel-1, TFLite)")
    ax.set_ylabel("our ratio (this CPU, 1 thread)")
    ax.set_title("ablation latency ratios to each study's baseline", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-runs", type=Path, default=TORCH_RUNS)
    parser.add_argument("--litert-runs", type=Path, default=LITERT_RUNS)
    parser.add_argument("--out", type=Path, default=LITERT_RUNS)
    args = parser.parse_args(argv)
    frame = side_by_side(args.torch_runs, args.litert_runs)
    summary = agreement(frame)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "runtimes.csv", index=False)
    harness.write_yaml(args.out / "runtimes.yaml", summary)
    loads = frame["litert_load_1min"].dropna()
    load = f"{loads.min():.2f}-{loads.max():.2f}" if len(loads) else "not recorded"
    harness.write_lines(args.out / "runtimes.md", markdown(frame, summary, load))
    plot(frame, args.out / "runtimes.png")
    for runtime, s in summary.items():
        harness.log(f"{runtime}: mean |ratio - paper| {s['mean_abs_diff_to_paper']:.3f}, same direction "
                    f"{s['same_direction_as_paper']} of {s['variants']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
