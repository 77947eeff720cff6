"""Latency-table benchmark: accuracy, prediction speed, and why ops are timed in context.

Writes figures to ``experiments/results/latency/`` (or ``--out``):

* ``accuracy_<table>.png`` / ``accuracy_<table>.csv``: predicted vs measured for every
  validated space of the table (from its ``validation_<space>.csv``; ``--validate N``
  measures N new random specs per space first, with the table's own harness);
* ``predict_speed.yaml``: microseconds per ``table.predict`` over random specs (the search
  calls it thousands of times);
* ``context_vs_isolated.csv`` / ``.png`` (``--context-vs-isolated``): for the canonical
  networks, each op timed alone versus inside the network, against the end-to-end time --
  the reason the shipped torch table uses the ``context`` method.

    .venv/bin/python -m experiments.latency_benchmark --table latency_tables/cpu-torch-1t-b1-224
    .venv/bin/python -m experiments.latency_benchmark --table ... --validate 100 --context-vs-isolated
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pandas as pd

from experiments import harness
from nas._io import plain_data
from nas.arch.codecs import load_spec
from nas.arch.space import load_space
from nas.cost.keys import build_op
from nas.cost.lut import LatencyTable
from nas.cost.timing import measure, measure_in_context
from nas.cost.validate import error_metrics, validate

DEFAULT_OUT = harness.RESULTS / "latency"


def predict_speed(table: LatencyTable, spaces: list[str], n: int = 5000) -> dict:
    """Microseconds per predict() on fresh random specs and on a repeated spec."""
    out = {}
    for name in spaces:
        space = load_space(name)
        rng = random.Random(0)
        specs = [space.sample(rng) for _ in range(n)]
        if table.missing_keys(specs):
            continue
        t0 = time.perf_counter()
        for spec in specs:
            table.predict(spec)
        fresh = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for _ in range(n):
            table.predict(specs[0])
        cached = (time.perf_counter() - t0) / n * 1e6
        out[name] = {"us_per_predict_fresh_spec": round(fresh, 2),
                     "us_per_predict_repeated_spec": round(cached, 2), "n": n}
    return out


def accuracy_figure(table_dir: Path, out: Path) -> dict:
    """One panel per validated space, from the table's validation CSVs."""
    files = sorted(table_dir.glob("validation_*.csv"))
    if not files:
        return {}
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, len(files), figsize=(5 * len(files), 4.8), dpi=120, squeeze=False)
    summary = {}
    frames = []
    for ax, path in zip(axes[0], files):
        space = path.stem.removeprefix("validation_")
        df = pd.read_csv(path)
        df.insert(0, "space", space)
        frames.append(df)
        m = error_metrics(df["predicted_ms"], df["measured_ms"])
        summary[space] = m
        lo, hi = df[["measured_ms", "predicted_ms"]].min().min() * 0.9, df[["measured_ms", "predicted_ms"]].max().max() * 1.1
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="+-10%")
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=1)
        ax.scatter(df["measured_ms"], df["predicted_ms"], s=12, alpha=0.8)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured (ms)", ylabel="predicted (ms)",
               title=f"{space}: n={m['n']}, MAPE {m['mape_pct']:.1f}%\n"
                     f"within 10% {m['within_10_pct']:.0f}%, tau {m['kendall_tau']:.3f}")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / f"accuracy_{table_dir.name}.png")
    plt.close(fig)
    pd.concat(frames).to_csv(out / f"accuracy_{table_dir.name}.csv", index=False)
    return summary


def context_vs_isolated(table: LatencyTable, out: Path, archs=("large", "small")) -> dict:
    """Each op of the canonical networks alone vs inside the network vs end to end."""
    cfg = table.harness_config()
    rows = []
    summary = {}
    for arch in archs:
        spec = load_spec(arch)
        e2e_runs, ctx_runs, iso = [], [], {}
        for _ in range(max(3, cfg.passes)):  # interleave: network, then each op alone
            e2e, per_op = measure_in_context(spec, cfg)
            e2e_runs.append(e2e.median_ms)
            ctx_runs.append([t.median_ms for _, t in per_op])
            for key, _ in per_op:
                module, shape = build_op(key)
                iso.setdefault(key, []).append(measure(module, shape, cfg).median_ms)
        keys = [k for k, _ in per_op]
        ctx = [sorted(col)[len(col) // 2] for col in zip(*ctx_runs)]
        for i, key in enumerate(keys):
            rows.append({"arch": arch, "position": i, "key": key, "in_context_ms": ctx[i],
                         "isolated_ms": sorted(iso[key])[len(iso[key]) // 2],
                         "table_ms": table.ms(key) if key in table else None})
        e2e_ms = sorted(e2e_runs)[len(e2e_runs) // 2]
        summary[arch] = {"end_to_end_ms": round(e2e_ms, 3),
                         "sum_in_context_ms": round(sum(ctx), 3),
                         "sum_isolated_ms": round(sum(r["isolated_ms"] for r in rows if r["arch"] == arch), 3)}
    df = pd.DataFrame(rows)
    df.to_csv(out / "context_vs_isolated.csv", index=False)
    plt = harness.pyplot()
    fig, axes = plt.subplots(len(archs), 1, figsize=(10, 3.5 * len(archs)), dpi=120, squeeze=False)
    for ax, arch in zip(axes[:, 0], archs):
        d = df[df.arch == arch]
        x = range(len(d))
        ax.bar([i - 0.2 for i in x], d["isolated_ms"], width=0.4, label="op alone")
        ax.bar([i + 0.2 for i in x], d["in_context_ms"], width=0.4, label="op inside the network")
        s = summary[arch]
        ax.set_title(f"{arch}: end to end {s['end_to_end_ms']:.2f} ms, sum in context "
                     f"{s['sum_in_context_ms']:.2f}, sum alone {s['sum_isolated_ms']:.2f}", fontsize=9)
        ax.set_xticks(list(x))
        ax.set_xticklabels([k.split("_")[0] + f"{i}" for i, k in enumerate(d["key"])], rotation=90, fontsize=7)
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "context_vs_isolated.png")
    plt.close(fig)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--table", type=Path, default=harness.REPO / "latency_tables" / "cpu-torch-1t-b1-224")
    harness.add_common(parser, out=DEFAULT_OUT)
    parser.add_argument("--space", action="append", default=None,
                        help="spaces (default: those the table was built for)")
    parser.add_argument("--validate", type=int, default=0, metavar="N",
                        help="measure N random specs per space now (report into --out)")
    harness.add_common(parser, seed=0)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--context-vs-isolated", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    table = LatencyTable.load(args.table)
    spaces = args.space or table.provenance.get("spaces") or ["mobilenetv3_large", "mobilenetv3_small"]
    result = {"table": str(args.table), "provenance": {k: table.provenance.get(k) for k in (
        "runtime", "runtime_version", "device", "threads", "batch", "dtype", "resolution", "method",
        "statistic")}, "loadavg_start": harness.load_average()}
    report_dir = args.table
    if args.validate:
        report_dir = args.out / args.table.name
        for name in spaces:
            report = validate(table, load_space(name), n=args.validate, seed=args.seed,
                              rounds=args.rounds, out_dir=report_dir)
            print(report.format())
    result["accuracy"] = accuracy_figure(report_dir, args.out)
    result["predict_speed"] = predict_speed(table, spaces)
    if args.context_vs_isolated:
        result["context_vs_isolated"] = context_vs_isolated(table, args.out)
    result["loadavg_end"] = harness.load_average()
    print(harness.write_yaml(args.out / f"benchmark_{args.table.name}.yaml", plain_data(result, digits=4)))


if __name__ == "__main__":
    main()
