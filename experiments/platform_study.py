"""Does the platform change the network? One space, one supernet, one budget, searched per runtime.

The paper's search is platform-aware: its latency objective is the target runtime's. This asks
what a user loses by searching on the wrong one. For each backend (``--backend``, default
every one) it runs the same search: ``mobilenetv3_small``, the same trained supernet (the first
backend's search trains it; the others load it), the same sampler, seed and trial budget; only
the latency table differs (this host's table for that backend,
:func:`nas.cost.host_table.host_table`, shared with ``experiments.backend_validation`` through
``--tables``). Then:

* **picks**: from each search, the most accurate network whose table latency is at most
  ``0.8x`` and ``1.0x`` canonical Small's on the same table (the paper's way of reading a
  front at a latency target);
* **the cross matrix**: every pick and canonical Small measured end to end on every backend
  in ``--rounds`` interleaved rounds; each figure is a ratio to canonical Small measured in
  the same rounds of the same runtime (median over rounds, with the 5-95% range of the
  per-round ratios as the noise);
* **the loss**: for each target runtime, how much slower the pick of a search on another
  runtime is than the target's own pick at the same budget, and its supernet accuracy
  against the own pick's;
* **the flips**: per search, the share of k3/k5/k7 depthwise kernels, SE and h-swish, and the
  mean expansion ratio over its Pareto front.

Resumable: a finished search is not run again (an interrupted one resumes in its folder), and
each backend's end-to-end measurement is one JSON line in ``--out``. Results: ``picks.csv``,
``matrix.csv``, ``loss.csv``, ``flips.csv``, ``summary.yaml``, ``summary.md``, ``fronts.png``,
``matrix.png`` in ``--out``::

    nohup nice -n 5 python -m experiments.platform_study > outputs/platform_study.log 2>&1 &
    python -m experiments.platform_study --report
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments import harness

DEFAULT_OUT = harness.RESULTS / "platform"
DEFAULT_WORK = harness.OUTPUTS / "platform_study"
DEFAULT_TABLES = harness.OUTPUTS / "backend_validation"  # experiments.backend_validation's work
BACKENDS = ("torch", "onnxruntime", "openvino", "executorch", "litert")
SPACE = "mobilenetv3_small"
FRACTIONS = (0.8, 1.0)
MEASURED = "measured.jsonl"


# ---------------------------------------------------------------------------- searches
def backend_table(backend: str, tables: Path, progress: bool) -> Path:
    """This host's table for ``backend`` (built and calibrated once, then cached)."""
    from nas.arch.space import load_space
    from nas.cost.harness import runtime_for_backend
    from nas.cost.host_table import host_table

    space = load_space(SPACE)
    # Every deployment runtime's table built here the same way, even where one ships.
    shipped = {"shipped_dir": tables / "no-shipped-tables"} if backend != "torch" else {}
    choice = host_table(space, runtime=runtime_for_backend(backend), resolution=space.base.resolution,
                        cache_dir=tables, progress=progress, **shipped)
    harness.log(f"{backend}: table {choice.path} ({choice.reason})")
    return Path(choice.path)


def search(backend: str, table: Path, supernet: Path | None, args: argparse.Namespace) -> Path:
    """The search on ``backend``'s table in ``<work>/search_<backend>`` (resumed when started)."""
    from nas.api import run_search
    from nas.search.storage import JOURNAL_NAME

    run = args.work / f"search_{backend}"
    trials = run / "trials.csv"
    if trials.is_file():
        frame = pd.read_csv(trials)
        if int(((frame["state"] == "COMPLETE") & frame["duplicate_of"].isna()).sum()) >= args.trials:
            harness.log(f"{backend}: search done ({trials})")
            return run
    overrides = [f"space={SPACE}", f"latency.backend={backend}", f"latency.table={table}",
                 f"trials={args.trials}", f"seed={args.seed}", f"threads={args.threads}"]
    if supernet is not None:
        overrides.append(f"evaluator.checkpoint={supernet}")
    if args.supernet_steps is not None:
        overrides.append(f"evaluator.train.steps={args.supernet_steps}")
    overrides += args.override or []
    resume = (run / JOURNAL_NAME).is_file()
    harness.log(f"{backend}: search ({args.trials} trials{', resumed' if resume else ''}) in {run}")
    run_search(run, overrides=overrides, resume=resume)
    return run


def complete_trials(run: Path) -> pd.DataFrame:
    frame = pd.read_csv(run / "trials.csv")
    return frame[(frame["state"] == "COMPLETE") & frame["duplicate_of"].isna()].copy()


def picks_of(backend: str, run: Path) -> list[dict[str, Any]]:
    """The most accurate network at each fraction of canonical Small's table latency."""
    trials = complete_trials(run)
    canonical = trials[trials["canonical"].fillna(False).astype(bool)]
    if canonical.empty:
        raise SystemExit(f"{run}/trials.csv has no canonical trial to read the budgets from")
    canonical_ms = float(canonical["latency_ms"].iloc[0])
    rows = []
    for fraction in FRACTIONS:
        within = trials[trials["latency_ms"] <= fraction * canonical_ms + 1e-9]
        if within.empty:
            harness.log(f"{backend}: no trial within {fraction}x canonical's table latency; no pick")
            continue
        best = within.sort_values(["accuracy", "latency_ms"], ascending=[False, True]).iloc[0]
        rows.append({"searched_on": backend, "fraction": fraction, "number": int(best["number"]),
                     "spec": best["spec"], "supernet_accuracy": float(best["accuracy"]),
                     "table_ms": float(best["latency_ms"]), "canonical_table_ms": canonical_ms,
                     "canonical_accuracy": float(canonical["accuracy"].iloc[0]),
                     "is_canonical": bool(best["spec"] == canonical["spec"].iloc[0])})
    return rows


# ---------------------------------------------------------------------------- measurement
def measure_on(backend: str, table: Path, specs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every spec end to end on ``backend`` in the same interleaved rounds (cached per backend
    and spec set in ``measured.jsonl``)."""
    from nas.arch.codecs import from_string
    from nas.cost.calibrate import measure_end_to_end
    from nas.cost.lut import LatencyTable

    path = args.out / MEASURED
    wanted = sorted(specs)
    for row in harness.read_rows([path]) if path.is_file() else []:
        if row["backend"] == backend and sorted(row["figures"]) == wanted and row["rounds"] == args.rounds:
            return row
    cfg = LatencyTable.load(table).harness_config()
    harness.log(f"{backend}: {len(wanted)} networks end to end, {args.rounds} interleaved rounds")
    figures = measure_end_to_end([from_string(s) for s in wanted], cfg, rounds=args.rounds,
                                 progress=not args.no_progress, desc=f"{backend} end to end",
                                 onnx_dir=args.work / "converted" / backend)
    row = {"backend": backend, "rounds": args.rounds, "date": harness.now(), "loadavg": os.getloadavg(),
           "statistic": cfg.pass_statistic,
           "figures": {s: {"ms": f["ms"], "iqr_ms": f["iqr_ms"], "rounds_ms": f["rounds_ms"],
                           "rounds_min_ms": f["rounds_min_ms"]} for s, f in zip(wanted, figures)}}
    harness.append_row(path, row)
    return row


def ratio_to_canonical(row: dict[str, Any], spec: str, canonical: str) -> tuple[float, float, float]:
    """Median and 5-95% range over rounds of ``spec``'s per-round figure over canonical's."""
    key = "rounds_min_ms" if row["statistic"] == "min" else "rounds_ms"
    ours = np.asarray(row["figures"][spec][key], dtype=float)
    base = np.asarray(row["figures"][canonical][key], dtype=float)
    ratios = ours / base
    return float(np.median(ratios)), float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))


# ---------------------------------------------------------------------------- analysis
def matrix(picks: pd.DataFrame, measured: dict[str, dict[str, Any]], canonical: str) -> pd.DataFrame:
    rows = []
    for pick in picks.itertuples():
        for target, row in measured.items():
            ratio, lo, hi = ratio_to_canonical(row, pick.spec, canonical)
            rows.append({"searched_on": pick.searched_on, "fraction": pick.fraction,
                         "measured_on": target, "ms": row["figures"][pick.spec]["ms"],
                         "ratio_to_canonical": round(ratio, 4), "ratio_p05": round(lo, 4),
                         "ratio_p95": round(hi, 4), "meets_budget": ratio <= pick.fraction,
                         # over even at the fast end of the rounds: not the noise
                         "over_beyond_noise": lo > pick.fraction,
                         "supernet_accuracy": pick.supernet_accuracy})
    return pd.DataFrame(rows)


def loss(cross: pd.DataFrame) -> pd.DataFrame:
    """Per target runtime and budget: each other search's pick against the target's own."""
    rows = []
    for (target, fraction), group in cross.groupby(["measured_on", "fraction"]):
        own = group[group["searched_on"] == target]
        if own.empty:
            continue
        own = own.iloc[0]
        for other in group[group["searched_on"] != target].itertuples():
            rows.append({
                "target": target, "fraction": fraction, "searched_on": other.searched_on,
                "latency_vs_own_pick": round(other.ratio_to_canonical / own["ratio_to_canonical"], 4),
                "noise_p05_p95": f"{own['ratio_p05']:.3f}-{own['ratio_p95']:.3f}",
                "accuracy_vs_own_pick_pts": round(100 * (other.supernet_accuracy - own["supernet_accuracy"]), 2),
                "meets_budget_on_target": bool(other.meets_budget),
                "over_budget_beyond_noise": bool(other.over_beyond_noise)})
    return pd.DataFrame(rows)


def flips(runs: dict[str, Path]) -> pd.DataFrame:
    """Per-block choices over each search's Pareto front."""
    from nas.arch.codecs import from_string

    rows = []
    for backend, run in runs.items():
        front = pd.read_csv(run / "pareto.csv")
        blocks, ratios = [], []
        for text in front["spec"]:
            spec = from_string(text)
            channels = spec.stem_channels
            for block in spec.blocks:  # expansion over the block's input channels
                blocks.append(block)
                ratios.append(block.expansion / channels)
                channels = block.out
        total = len(blocks)
        rows.append({"searched_on": backend, "front_size": len(front), "blocks": total,
                     **{f"k{k}_share": round(sum(b.kernel == k for b in blocks) / total, 3) for k in (3, 5, 7)},
                     "se_share": round(sum(b.se for b in blocks) / total, 3),
                     "hswish_share": round(sum(b.activation == "HS" for b in blocks) / total, 3),
                     "mean_expansion_ratio": round(float(np.mean(ratios)), 3)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- outputs
def plot_fronts(runs: dict[str, Path], path: Path) -> None:
    """Each search's front, latency as a fraction of canonical Small's on its own table."""
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for backend, run in runs.items():
        trials = complete_trials(run)
        canonical_ms = float(trials[trials["canonical"].fillna(False).astype(bool)]["latency_ms"].iloc[0])
        front = pd.read_csv(run / "pareto.csv").sort_values("latency_ms")
        ax.step(front["latency_ms"] / canonical_ms, 100 * front["accuracy"], where="post", marker="o",
                ms=3, label=backend)
    ax.axvline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("table latency / canonical Small's (each runtime's own table)")
    ax.set_ylabel("supernet top-1 (%)")
    ax.set_title(f"{SPACE}: one supernet, searched per runtime", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_matrix(cross: pd.DataFrame, path: Path) -> None:
    """Rows: a search's pick at a budget; columns: the runtime it is measured on."""
    plt = harness.pyplot()
    table = cross.pivot_table(index=["fraction", "searched_on"], columns="measured_on",
                              values="ratio_to_canonical")
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * table.shape[1], 1.0 + 0.42 * table.shape[0]), dpi=120)
    image = ax.imshow(table.values, cmap="RdYlGn_r", vmin=0.5, vmax=1.5, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]), [f"{s} @ {f:.1f}x" for f, s in table.index], fontsize=8)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            ax.text(j, i, f"{table.values[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("measured end to end on")
    ax.set_ylabel("searched on @ budget")
    fig.colorbar(image, ax=ax, label="latency / canonical Small's")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(picks: pd.DataFrame, cross: pd.DataFrame, lost: pd.DataFrame, flipped: pd.DataFrame,
             measured: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["# The platform study: one supernet, one budget, searched per runtime", "",
             f"Space `{SPACE}`; each runtime's table built on this host; every pick measured end "
             "to end on every runtime, as a ratio to canonical Small in the same interleaved rounds.", "",
             "## Picks (table latency at most 0.8x / 1.0x canonical Small's, most accurate)", "",
             "| searched on | budget | supernet top-1 | canonical top-1 | table ms | canonical table ms |",
             "|---|---|---|---|---|---|"]
    for p in picks.itertuples():
        lines.append(f"| {p.searched_on} | {p.fraction:.1f}x | {100 * p.supernet_accuracy:.2f} | "
                     f"{100 * p.canonical_accuracy:.2f} | {p.table_ms:.3f} | {p.canonical_table_ms:.3f} |")
    lines += ["", "## The cross matrix (latency / canonical Small's on the runtime measured on; "
              "5-95% over rounds; \"over\": over its budget even at the 5% end)", "",
              "| searched on | budget | " + " | ".join(measured) + " |",
              "|---|---|" + "---|" * len(measured)]
    for (fraction, searched), group in cross.groupby(["fraction", "searched_on"], sort=False):
        cells = []
        for target in measured:
            r = group[group["measured_on"] == target].iloc[0]
            mark = " (over)" if r["over_beyond_noise"] else ""
            cells.append(f"{r['ratio_to_canonical']:.3f} [{r['ratio_p05']:.2f}-{r['ratio_p95']:.2f}]{mark}")
        lines.append(f"| {searched} | {fraction:.1f}x | " + " | ".join(cells) + " |")
    lines += ["", "## What searching on the wrong runtime costs", "",
              "| target | budget | searched on | latency vs the target's own pick | own pick's noise "
              "(5-95%) | supernet top-1 vs own pick (points) | over the budget on the target |",
              "|---|---|---|---|---|---|---|"]
    for r in lost.itertuples():
        lines.append(f"| {r.target} | {r.fraction:.1f}x | {r.searched_on} | {r.latency_vs_own_pick:.3f} | "
                     f"{r.noise_p05_p95} | {r.accuracy_vs_own_pick_pts:+.2f} | "
                     f"{_over(r.meets_budget_on_target, r.over_budget_beyond_noise)} |")
    lines += ["", "## Per-block choices over each front", "",
              "| searched on | front | k3 | k5 | k7 | SE | h-swish | mean expansion ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for f in flipped.itertuples():
        lines.append(f"| {f.searched_on} | {f.front_size} | {f.k3_share:.2f} | {f.k5_share:.2f} | "
                     f"{f.k7_share:.2f} | {f.se_share:.2f} | {f.hswish_share:.2f} | {f.mean_expansion_ratio:.2f} |")
    loads = ", ".join(f"{b} {r['loadavg'][0]:.2f}" for b, r in measured.items())
    lines += ["", f"Load average (1 min) at the end of each runtime's measurement: {loads}.",
              "Written by `python -m experiments.platform_study`."]
    return lines


def _over(meets: bool, beyond_noise: bool) -> str:
    return "no" if meets else ("yes, beyond the noise" if beyond_noise else "within the noise")


def report(args: argparse.Namespace, backends: list[str], runs: dict[str, Path],
           tables: dict[str, Path]) -> None:
    picks = pd.DataFrame([row for b in backends for row in picks_of(b, runs[b])])
    from nas.arch.codecs import to_string
    from nas.arch.space import load_space

    canonical = to_string(load_space(SPACE).canonical())
    specs = sorted(set(picks["spec"]) | {canonical})
    measured = {b: measure_on(b, tables[b], specs, args) for b in backends}
    cross = matrix(picks, measured, canonical)
    lost = loss(cross)
    flipped = flips(runs)
    picks.to_csv(args.out / "picks.csv", index=False)
    cross.to_csv(args.out / "matrix.csv", index=False)
    lost.to_csv(args.out / "loss.csv", index=False)
    flipped.to_csv(args.out / "flips.csv", index=False)
    summary = {
        "space": SPACE, "backends": backends, "trials": args.trials, "seed": args.seed,
        "rounds": args.rounds, "host": harness.host_facts(),
        "tables": {b: harness.in_checkout(t) for b, t in tables.items()},
        "worst_latency_vs_own_pick": {b: float(g["latency_vs_own_pick"].max())
                                      for b, g in lost.groupby("target")} if len(lost) else {},
        "picks_over_budget_elsewhere_beyond_noise": int(lost["over_budget_beyond_noise"].sum()) if len(lost) else 0,
        "loadavg": {b: r["loadavg"] for b, r in measured.items()},
    }
    harness.write_yaml(args.out / "summary.yaml", summary)
    harness.write_lines(args.out / "summary.md", markdown(picks, cross, lost, flipped, measured))
    plot_fronts(runs, args.out / "fronts.png")
    plot_matrix(cross, args.out / "matrix.png")
    harness.log(f"wrote {args.out}/summary.md")


def _pinned(text: str, parser: argparse.ArgumentParser) -> tuple[str, Path]:
    backend, sep, folder = text.partition("=")
    if not sep or backend not in BACKENDS or not Path(folder).is_dir():
        parser.error(f"--table {text!r}: expected BACKEND=FOLDER with BACKEND one of "
                     f"{', '.join(BACKENDS)} and an existing table folder")
    return backend, Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = harness.study_parser(__doc__)
    harness.add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK, threads=True, seed=0)
    parser.add_argument("--backend", action="append", choices=BACKENDS, default=None,
                        help="repeatable (default: every one, in this order: " + ", ".join(BACKENDS) + ")")
    parser.add_argument("--tables", type=Path, default=DEFAULT_TABLES,
                        help="cache of this host's tables, shared with experiments.backend_validation "
                             "(default %(default)s)")
    parser.add_argument("--table", action="append", default=None, metavar="BACKEND=FOLDER",
                        help="use this table for that backend instead of this host's (repeatable), "
                             "e.g. one imported from a device's kit")
    parser.add_argument("--trials", type=int, default=60, help="trials per search (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="interleaved end-to-end rounds per runtime (default %(default)s)")
    parser.add_argument("--supernet-steps", type=int, default=None,
                        help="the shared supernet's training steps (default: the main job's)")
    parser.add_argument("--override", action="append", default=None,
                        help="a further nas-search override for every search (repeatable)")
    parser.add_argument("--report", action="store_true",
                        help="only pick, measure what is missing and write the report")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    harness.start(args)
    backends = list(args.backend or BACKENDS)
    pinned = dict(_pinned(text, parser) for text in args.table or [])
    tables = {b: pinned.get(b) or backend_table(b, args.tables, not args.no_progress) for b in backends}
    runs: dict[str, Path] = {}
    shared = args.work / "supernet.pt"  # the one supernet every search scores with
    for backend in backends:
        if args.report:
            runs[backend] = args.work / f"search_{backend}"
            continue
        runs[backend] = search(backend, tables[backend], shared if shared.is_file() else None, args)
        if not shared.is_file():  # the first search trained it; every later one loads it
            shutil.copy2(runs[backend] / "supernet" / "supernet.pt", shared)
    report(args, backends, runs, tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
