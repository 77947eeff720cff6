"""An ablation study's report: ``ablation.csv``, ``ablation.md`` (our figures and the paper's
side by side) and ``ablation.png`` (top-1 against latency, one point per variant).

An accuracy difference to the baseline comes with its 90% interval and verdict
(:mod:`nas.seed_stats`: Welch's t over both networks' seeds; a win or a loss only when the
interval excludes zero, otherwise a tie; no verdict with one seed on either side).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from nas.ablate.results import e2e_key, trained_arch
from nas.arch.codecs import to_string
from nas.arch.spec import NetworkSpec
from nas.seed_stats import CONFIDENCE, difference_interval, verdict
from nas.training.protocols import load_protocol



def _e2e_record(study: Any, specs: dict[str, NetworkSpec], results: Any) -> dict[str, Any] | None:
    """The end-to-end measurement of exactly this study's networks and rounds."""
    return results.get("e2e", e2e_key(specs, study.latency.rounds))


def _ratio(rounds: list[float], base_rounds: list[float]) -> float | None:
    """Median of the per-round ratios (each round timed both networks back to back)."""
    pairs = [a / b for a, b in zip(rounds, base_rounds) if b > 0]
    return statistics.median(pairs) if pairs else None


def study_frame(study: Any, specs: dict[str, NetworkSpec], results: Any,
                protocol_key: str = "") -> pd.DataFrame:
    """One row per variant with every figure (NaN where not measured)."""
    record = _e2e_record(study, specs, results)
    e2e = record["figures"] if record else {}
    base_spec = specs[study.baseline]
    base_e2e = e2e.get(to_string(base_spec))
    base_tops = _tops(study, base_spec, results, protocol_key)
    rows = []
    for variant in study.variants:
        spec = specs[variant.name]
        arch = to_string(spec)
        costs = results.get("costs", arch) or {}
        table = results.get("table", arch) or {}
        fig = e2e.get(arch)
        tops = _tops(study, spec, results, protocol_key)
        interval = None if variant.name == study.baseline else difference_interval(tops, base_tops)
        low, high = interval or (None, None)
        row: dict[str, Any] = {
            "variant": variant.name,
            "spec": arch,
            "params_m": costs.get("params", float("nan")) / 1e6,
            "madds_m": costs.get("madds", float("nan")) / 1e6,
            "table_ms": table.get("ms"),
            "e2e_ms": fig["ms"] if fig else None,
            "e2e_iqr_ms": fig.get("iqr_ms") if fig else None,
            "e2e_ratio": (_ratio(fig["rounds_ms"], base_e2e["rounds_ms"])
                          if fig and base_e2e else None),
            "top1_mean": statistics.mean(tops) if tops else None,
            "top1_std": statistics.stdev(tops) if len(tops) > 1 else None,
            "seeds": len(tops),
            "top1_delta_low": low,
            "top1_delta_high": high,
        }
        row.update({f"paper_{k}": v for k, v in variant.paper.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    base = frame[frame["variant"] == study.baseline].iloc[0]
    frame["madds_delta_m"] = frame["madds_m"] - base["madds_m"]
    frame["paper_ratio"] = [_paper_ratio(row, base) for _, row in frame.iterrows()]
    frame["top1_delta"] = frame["top1_mean"] - base["top1_mean"]
    frame["accuracy_verdict"] = [_verdict(row, base, study.baseline) for _, row in frame.iterrows()]
    return frame


def _tops(study: Any, spec: NetworkSpec, results: Any, protocol_key: str) -> list[float]:
    """The top-1 (%) of every seed of ``spec`` that has been trained."""
    runs = (results.get("top1", trained_arch(spec, protocol_key), seed) for seed in study.accuracy.seeds)
    return [run["top1"] * 100 for run in runs if run is not None]


def _paper_ratio(row: pd.Series, base: pd.Series) -> float | None:
    """The paper's latency of the variant over its baseline's (from ms, or ms_delta)."""
    base_ms = _paper(base, "ms")
    if base_ms is None:
        return None
    ms, delta = _paper(row, "ms"), _paper(row, "ms_delta")
    if ms is None and delta is not None:
        ms = base_ms + delta
    return None if ms is None else ms / base_ms


def _verdict(row: pd.Series, base: pd.Series, baseline: str) -> str:
    if row["variant"] == baseline:
        return "baseline"
    if pd.isna(row["top1_mean"]) or pd.isna(base["top1_mean"]):
        return "not measured"
    interval = None if pd.isna(row["top1_delta_low"]) else (row["top1_delta_low"], row["top1_delta_high"])
    return verdict(interval, int(row["seeds"]), int(base["seeds"]))


def _fmt(value: Any, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _delta(row: pd.Series) -> str:
    """The mean top-1 difference to the baseline, with its interval where there is one."""
    delta = _fmt(row["top1_delta"], 2, sign=True)
    if pd.isna(row["top1_delta_low"]):
        return delta
    return f"{delta} [{row['top1_delta_low']:+.2f}, {row['top1_delta_high']:+.2f}]"


def _paper(row: pd.Series, key: str) -> float | None:
    value = row.get(f"paper_{key}")
    return None if value is None or pd.isna(value) else float(value)


def _paper_costs(row: pd.Series) -> str:
    """The paper's params / MAdds with our relative difference, e.g. ``7.5 (+10.1%)``."""
    cells = []
    for key, ours in (("params_m", row["params_m"]), ("madds_m", row["madds_m"])):
        paper = _paper(row, key)
        cells.append("-" if paper is None else f"{paper:g} ({100 * (ours / paper - 1):+.1f}%)")
    return " / ".join(cells)


def _paper_ms(row: pd.Series) -> str:
    ms, unfused, delta = _paper(row, "ms"), _paper(row, "ms_unfused"), _paper(row, "ms_delta")
    if delta is not None:
        return f"{delta:+g} vs baseline"
    if unfused is not None and unfused != ms:
        return f"{_fmt(ms, 1)} ({_fmt(unfused, 1)} unfused)"
    return _fmt(ms, 1)


def markdown(study: Any, frame: pd.DataFrame, loadavg: list[float] | None) -> str:
    lines = [f"# Ablation: {study.name}", ""]
    if study.notes:
        lines += [study.notes.strip(), ""]
    lines += [
        "| variant | params (M) | MAdds (M) | paper params / MAdds (M) | dMAdds (M) | paper dMAdds "
        "| table ms | measured ms (IQR) | ratio | paper ms | paper ratio | top-1 % (seeds) | d top-1 "
        f"[{100 * CONFIDENCE:.0f}%] | verdict | paper top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in frame.iterrows():
        top1 = ("-" if pd.isna(r["top1_mean"]) else
                f"{r['top1_mean']:.2f} +- {_fmt(r['top1_std'])} ({int(r['seeds'])})")
        lines.append(
            f"| {r['variant']} | {_fmt(r['params_m'])} | {_fmt(r['madds_m'], 1)} | {_paper_costs(r)} | "
            f"{_fmt(r['madds_delta_m'], 1, sign=True)} | {_fmt(r.get('paper_madds_delta_m'), 0, sign=True)} | "
            f"{_fmt(r['table_ms'])} | {_fmt(r['e2e_ms'])} ({_fmt(r['e2e_iqr_ms'])}) | "
            f"{_fmt(r['e2e_ratio'], 3)} | {_paper_ms(r)} | {_fmt(r['paper_ratio'], 3)} | {top1} | {_delta(r)} | "
            f"{r['accuracy_verdict']} | {_fmt(r.get('paper_top1'), 1)} |")
    lines += ["", f"Baseline: {study.baseline}. Measured latency: the harness's figure over "
              f"{study.latency.rounds} interleaved rounds, all variants in the same rounds; "
              "ratio = median per-round ratio to the baseline."
              + (f" Load average at the end: {', '.join(f'{x:.2f}' for x in loadavg)}." if loadavg else ""),
              _accuracy_line(study)]
    return "\n".join(lines) + "\n"


def _accuracy_line(study: Any) -> str:
    """How the top-1 column was obtained: the protocol, its data set's val split and the seeds."""
    if not study.accuracy.seeds:
        return ("Accuracy: not trained (accuracy.seeds is empty). Paper figures: ImageNet top-1 and "
                "Pixel-1 ms (REFERENCE.md); ours are this CPU's, so compare ratios, not values.")
    data = load_protocol(study.accuracy.protocol).data.name
    return (f"Accuracy: protocol `{study.accuracy.protocol}` on `{data}` val, seeds "
            f"{list(study.accuracy.seeds)}; d top-1 is the mean difference to the baseline with its "
            f"{100 * CONFIDENCE:.0f}% interval (Welch's t over the seeds of both); a difference "
            "whose interval spans 0 is a tie. Paper figures: ImageNet top-1 and Pixel-1 ms "
            f"(REFERENCE.md); ours: `{data}` and this CPU, so compare deltas and ratios, not values.")


def plot(study: Any, frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_col = "e2e_ms" if frame["e2e_ms"].notna().any() else "table_ms"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in frame.iterrows():
        x = r[x_col]
        if x is None or pd.isna(x):
            continue
        y = r["top1_mean"] if not pd.isna(r["top1_mean"]) else None
        if y is None:
            ax.axvline(x, color="0.85", lw=1)
            ax.annotate(r["variant"], (x, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                        rotation=90)
            continue
        ax.errorbar(x, y, yerr=0 if pd.isna(r["top1_std"]) else r["top1_std"], fmt="o", capsize=3,
                    color="C1" if r["variant"] == study.baseline else "C0")
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("measured latency (ms)" if x_col == "e2e_ms" else "table latency (ms)")
    ax.set_ylabel(f"top-1 % (CIFAR-10 val, {study.accuracy.protocol}; mean +- std)")
    ax.set_title(f"ablation: {study.name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(study: Any, specs: dict[str, NetworkSpec], results: Any, run_dir: Path,
                 protocol_key: str = "") -> Path:
    from nas._io import write_text_atomic

    frame = study_frame(study, specs, results, protocol_key)
    csv = run_dir / "ablation.csv"
    write_text_atomic(csv, frame.to_csv(index=False))
    record = _e2e_record(study, specs, results)
    write_text_atomic(run_dir / "ablation.md", markdown(study, frame, record["loadavg"] if record else None))
    plot(study, frame, run_dir / "ablation.png")
    return csv


__all__ = ["markdown", "study_frame", "write_report"]
