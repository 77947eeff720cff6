"""Do latency tables built through each deployment backend predict that runtime's networks?

For each backend and space this takes the table ``latency.table=auto`` gives a search for that
backend on this host (:func:`nas.cost.host_table.host_table`: each key converted and timed as
its own model, net of the runtime's empty model, then calibrated end to end on 12 networks of
the calibration seed), and measures ``--n`` held-out networks (``--seed``, not the calibration
seed) end to end in the same runtime, whole networks converted and timed in ``--rounds``
interleaved rounds. It reports:

* the share of networks within +-10% of the table's prediction, and the MAPE;
* Kendall's tau of table versus measured, beside the measurement's own split-half tau (even
  against odd rounds: the most any predictor can reach under this machine's noise), and the
  share of networks whose two halves agree within +-10% (the same cap on the +-10% share);
* the same two figures for MAdds as a naive predictor (a line ``ms = a * MAdds + b`` fitted
  on the table's own calibration networks and their measured times, so it gets exactly the
  information the table's calibration got);
* the load average over the measurement and the host.

``onnxruntime`` gets a fresh table on this host (the shipped one is not looked at). Tables go
under ``--work``; results (``<backend>_<space>_<cpu>.csv`` and ``.png``, ``summary.yaml``,
``summary.md``) under ``--out``, one row per CPU model. Resumable per (backend, space, CPU
model): a finished pair is skipped (``--force`` repeats it); an interrupted one resumes its
table build (per unit) and its end-to-end rounds (per network and round); converted files are
cached.

    python -m experiments.backend_validation --backend litert --space mobilenetv3_small
    python -m experiments.backend_validation            # every backend, Small then Large
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

from experiments import harness
from nas._io import plain_data
from nas.arch.codecs import from_string
from nas.arch.space import load_space
from nas.cost.anchored import ANCHORED_STATISTIC_TEXT
from nas.cost.calibrate import fit_linear
from nas.cost.harness import runtime_for_backend
from nas.cost.host_table import host_table, name_part
from nas.cost.lut import LatencyTable
from nas.cost.profile import profile_spec
from nas.cost.sampling import cpu_model
from nas.cost.validate import MEASURED_STATISTIC_TEXT, error_metrics, split_half_within, validate

DEFAULT_OUT = harness.RESULTS / "backend_validation"
DEFAULT_WORK = harness.OUTPUTS / "backend_validation"
STATISTIC_OF_TEXT = {text: name for name, text in MEASURED_STATISTIC_TEXT.items()}  # a report's words -> pass_statistic
BACKENDS = ("litert", "executorch", "openvino", "onnxruntime")
SPACES = ("mobilenetv3_small", "mobilenetv3_large")
TARGET_WITHIN_10 = 95.0


def madds_predictor(calibration: dict[str, Any], specs: list, table: LatencyTable) -> tuple[list[float], dict[str, float]]:
    """MAdds as a latency predictor: ``ms = a * MAdds + b`` fitted on the calibration networks
    and their measured times (``calibration["specs"]``, ``["measured_ms"]``: the table's own,
    or those measured again beside the held-out networks); returns the predictions for
    ``specs`` and the fit."""
    cal_specs = [from_string(s) for s in calibration.get("specs") or []]
    if len(cal_specs) < 2:
        raise SystemExit(f"table {table.path} has no calibration to fit MAdds on")
    fit = fit_linear([profile_spec(s).madds_m for s in cal_specs], calibration["measured_ms"])
    return [fit["a"] * profile_spec(s).madds_m + fit["b"] for s in specs], fit


def recalibrated_figures(report: Any, specs: list, measured: list[float], table: LatencyTable) -> dict[str, Any]:
    """The table and MAdds both refitted on the calibration networks measured in the held-out
    networks' rounds (``--recalibrate``): what is left of each predictor's error once the
    host's drift since the table's calibration is taken out."""
    recal = report.metrics_recalibrated
    madds_ms, fit = madds_predictor(recal, specs, table)
    madds = error_metrics(madds_ms, measured)
    return {"table": {k: recal[k] for k in ("within_10_pct", "within_5_pct", "mape_pct", "bias_pct",
                                             "kendall_tau", "a", "b", "n_calibration")},
            "madds": {k: madds[k] for k in ("within_10_pct", "mape_pct", "kendall_tau")},
            "targets_met": {"within_10_pct": recal["within_10_pct"] >= TARGET_WITHIN_10,
                            "tau_above_madds": recal["kendall_tau"] > madds["kendall_tau"]}}


def host_slug() -> str:
    """This host's CPU model as a file-name part: a table and its validation belong to one
    CPU model, so each host's results are kept beside the others'."""
    return name_part(cpu_model())


def run_pair(backend: str, space_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Table, held-out measurement and figures of one (backend, space)."""
    space = load_space(space_name)
    runtime = runtime_for_backend(backend)
    # This host's table measured as latency.table=auto builds one, even where a table ships for
    # the runtime: what is validated is the build, not a table measured at another time.
    shipped = args.work / "no-shipped-tables" if backend != "torch" else None
    harness.log(f"{backend} / {space_name}: the host table (build and calibrate what is missing)")
    extra = {"shipped_dir": shipped} if shipped is not None else {}
    choice = host_table(space, runtime=runtime, resolution=space.base.resolution,
                        cache_dir=args.work, progress=not args.no_progress, **extra)
    table = LatencyTable.load(choice.path)
    harness.log(f"{backend} / {space_name}: {choice.reason}; {args.n} held-out networks end to end")
    recal = f"_c{args.recalibrate}" if args.recalibrate else ""
    anchored = "_anchored" if args.anchored else ""
    log_path = args.work / f"e2e_{backend}_{space_name}_n{args.n}_s{args.seed}_r{args.rounds}{recal}{anchored}.csv"
    report = validate(table, space, n=args.n, seed=args.seed, rounds=args.rounds,
                      progress=not args.no_progress, log_path=log_path, recalibrate=args.recalibrate,
                      anchor=space.base if args.anchored else None)
    specs = [from_string(r["spec"]) for r in report.rows]
    measured = [r["measured_ms"] for r in report.rows]
    madds_ms, madds_fit = madds_predictor(table.calibration or {}, specs, table)
    madds = error_metrics(madds_ms, measured)
    rows = [{**row, "backend": backend, "madds_m": round(profile_spec(spec).madds_m, 3),
             "madds_predicted_ms": round(m, 4)}
            for row, spec, m in zip(report.rows, specs, madds_ms)]
    stem = f"{backend}_{space.name}_{host_slug()}{anchored}"
    import pandas as pd

    pd.DataFrame(rows).to_csv(args.out / f"{stem}.csv", index=False)
    plot(rows, backend, space_name, report.metrics, madds, args.out / f"{stem}.png")
    provenance = table.provenance
    s = report.settings
    return {
        "backend": backend, "space": space_name, "n": report.metrics["n"],
        "table": {"folder": harness.in_checkout(Path(choice.path)), "keys": len(table),
                  "runtime_version": provenance.get("runtime_version"),
                  "delegate": provenance.get("delegate"), "precision": provenance.get("precision"),
                  "threads": provenance.get("threads"), "batch": provenance.get("batch"),
                  "statistic": provenance.get("statistic"),
                  "delegate_coverage": provenance.get("delegate_coverage"),
                  "calibration": {k: (table.calibration or {}).get(k)
                                  for k in ("a", "b", "n", "label", "fit_mape_pct")},
                  "builds": [{k: b.get(k) for k in ("date", "keys", "wall_s", "loadavg_start",
                                                     "loadavg_end")}
                             for b in provenance.get("builds", [])]},
        "table_prediction": {k: report.metrics[k] for k in ("within_10_pct", "within_5_pct",
                                                            "mape_pct", "bias_pct", "kendall_tau")},
        "measurement_split_half_tau": report.measurement_split_half_tau,
        "measurement_split_half_within_10_pct": report.measurement_split_half_within_10_pct,
        "madds_prediction": {**{k: madds[k] for k in ("within_10_pct", "mape_pct", "kendall_tau")},
                             "fit_a": madds_fit["a"], "fit_b": madds_fit["b"]},
        "targets_met": {"within_10_pct": report.metrics["within_10_pct"] >= TARGET_WITHIN_10,
                        "tau_above_madds": report.metrics["kendall_tau"] > madds["kendall_tau"]},
        **({"recalibrated_now": recalibrated_figures(report, specs, measured, table)}
           if report.metrics_recalibrated else {}),
        "measurement": {"seed": args.seed, "rounds": s["rounds"], "statistic": s["measured_statistic"],
                        "anchor": s["anchor"],
                        "loadavg_start": s["loadavg_start"], "loadavg_end": s["loadavg_end"],
                        "wall_s": s["wall_s"], "date": s["date"]},
        "host": {**harness.host_facts(), "platform": platform.platform()},
    }


def plot(rows: list[dict[str, Any]], backend: str, space: str, table: dict[str, float],
         madds: dict[str, float], path: Path) -> None:
    """Predicted against measured, the table's and MAdds', with the +-10% band."""
    plt = harness.pyplot()
    meas = [r["measured_ms"] for r in rows]
    pred = [r["predicted_ms"] for r in rows]
    naive = [r["madds_predicted_ms"] for r in rows]
    lo, hi = min(meas + pred + naive) * 0.9, max(meas + pred + naive) * 1.1
    fig, ax = plt.subplots(figsize=(5.5, 5.2), dpi=120)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="+-10%")
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1)
    ax.scatter(meas, naive, s=12, marker="x", color="tab:orange", alpha=0.7,
               label=f"MAdds line: {madds['within_10_pct']:.0f}% within, tau {madds['kendall_tau']:.2f}")
    ax.scatter(meas, pred, s=14, color="tab:blue", alpha=0.85,
               label=f"table: {table['within_10_pct']:.0f}% within, tau {table['kendall_tau']:.2f}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured end to end (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(f"{backend}, {space}: {len(rows)} held-out networks", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def split_half_from_csv(out: Path, name: str, statistic: str) -> float:
    """The split-half +-10% share of a pair recorded before the summary kept it, from the
    rounds in its CSV (``name`` is the summary's ``backend/space@cpu`` key); NaN without one."""
    import pandas as pd

    backend, rest = name.split("/", 1)
    space, cpu = rest.split("@", 1)
    path = out / f"{backend}_{space}_{cpu}.csv"
    if not path.is_file():
        return float("nan")
    frame = pd.read_csv(path)
    measured = [{"rounds_ms": [float(v) for v in str(row.rounds_ms).split()],
                 "rounds_min_ms": [float(v) for v in str(row.rounds_min_ms).split()]}
                for row in frame.itertuples()]
    return split_half_within(measured, statistic)


def with_split_half_within(summary: dict[str, dict[str, Any]], out: Path) -> dict[str, dict[str, Any]]:
    """Every entry with ``measurement_split_half_within_10_pct``, computed from its CSV where
    the entry predates the figure."""
    for name, entry in summary.items():
        if "measurement_split_half_within_10_pct" not in entry:
            text = entry["measurement"]["statistic"]
            statistic = STATISTIC_OF_TEXT.get(text)
            if statistic is None:
                raise SystemExit(f"backend_validation: summary entry {name!r}: measurement statistic "
                                 f"{text!r} is none of {sorted(STATISTIC_OF_TEXT)}")
            entry["measurement_split_half_within_10_pct"] = split_half_from_csv(out, name, statistic)
    return summary


def markdown(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["# Latency tables per backend: held-out validation", "",
             "| backend | space | n | rounds | within +-10% (table) | tau (table) | split-half tau | "
             "split-half within +-10% | within +-10% (MAdds) | tau (MAdds) | MAPE (table) | "
             "recalibrated now: within +-10%, tau (MAdds tau) | load avg | CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in summary.values():
        t, m, meas = entry["table_prediction"], entry["madds_prediction"], entry["measurement"]
        now = entry.get("recalibrated_now")
        recal = (f"{now['table']['within_10_pct']:.1f}%, {now['table']['kendall_tau']:.3f} "
                 f"({now['madds']['kendall_tau']:.3f}; {now['table']['n_calibration']} networks)" if now else "-")
        lines.append(
            f"| {entry['backend']} | {entry['space']} | {entry['n']} | {meas['rounds']}"
            f"{' anchored' if meas.get('anchor') else ''} | {t['within_10_pct']:.1f}% | "
            f"{t['kendall_tau']:.3f} | {entry['measurement_split_half_tau']:.3f} | "
            f"{entry.get('measurement_split_half_within_10_pct', float('nan')):.1f}% | "
            f"{m['within_10_pct']:.1f}% | {m['kendall_tau']:.3f} | {t['mape_pct']:.2f}% | {recal} | "
            f"{meas['loadavg_start'][0]} -> {meas['loadavg_end'][0]} | {entry['host']['cpu']} |")
    plain = {e["measurement"]["statistic"] for e in summary.values() if not e["measurement"].get("anchor")}
    anchored = any(e["measurement"].get("anchor") for e in summary.values())
    lines += ["", "; ".join([*(f"Measured figure: {text}" for text in sorted(plain)),
                             *([f"rounds marked anchored: the {ANCHORED_STATISTIC_TEXT} (the space's "
                                "canonical network)"] if anchored else [])]), "Written by `python -m experiments.backend_validation`; "
              "figures per network in `<backend>_<space>_<cpu>.csv`. Split-half: the measurement's "
              "even rounds against its odd rounds, each half reduced like the whole; where the two "
              "halves agree within +-10% for fewer networks than the target asks of the table, "
              "the target cannot be shown on that host at that time."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = harness.study_parser(__doc__)
    harness.add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK, threads=True, seed=0, force=True,
                       help={"seed": "sampling seed of the held-out networks (default %(default)s; "
                                     "the calibration uses 1000)"})
    parser.add_argument("--backend", action="append", choices=BACKENDS, default=None,
                        help="repeatable (default: all, in this order: " + ", ".join(BACKENDS) + ")")
    parser.add_argument("--space", action="append", choices=SPACES, default=None,
                        help="repeatable (default: both, Small first)")
    parser.add_argument("--n", type=int, default=40, help="held-out networks (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="interleaved end-to-end rounds (default %(default)s; even rounds "
                             "against odd give the split-half tau)")
    parser.add_argument("--recalibrate", type=int, default=0, metavar="N",
                        help="also measure N networks of the calibration seed in the same rounds and "
                             "report the table and MAdds refitted on them, beside the stored "
                             "calibration's figures (default: none)")
    parser.add_argument("--anchored", action="store_true",
                        help="time each network between two timings of the space's canonical network "
                             "and measure it by its ratio to them (nas.cost.anchored: for a host whose "
                             "speed moves); recorded as its own row")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    harness.start(args)
    summary_path = args.out / "summary.yaml"
    import yaml

    summary: dict[str, Any] = (yaml.safe_load(summary_path.read_text()) or {}) if summary_path.is_file() else {}
    for space_name in args.space or SPACES:
        for backend in args.backend or BACKENDS:
            name = f"{backend}/{space_name}@{host_slug()}{'+anchored' if args.anchored else ''}"
            if name in summary and not args.force:
                harness.log(f"{name}: recorded, skipped (--force repeats it)")
                continue
            entry = run_pair(backend, space_name, args)
            # Read again: another process may have recorded other pairs meanwhile.
            summary = (yaml.safe_load(summary_path.read_text()) or {}) if summary_path.is_file() else {}
            summary[name] = plain_data(entry)
            summary = with_split_half_within(summary, args.out)
            harness.write_yaml(summary_path, summary)
            harness.write_lines(args.out / "summary.md", markdown(summary))
            t = entry["table_prediction"]
            harness.log(f"{name}: within +-10% {t['within_10_pct']:.1f}%, tau {t['kendall_tau']:.3f} "
                        f"(split-half {entry['measurement_split_half_tau']:.3f}, MAdds "
                        f"{entry['madds_prediction']['kendall_tau']:.3f})")
    if summary:  # also when every pair was recorded: the page follows the report's layout
        summary = with_split_half_within(summary, args.out)
        harness.write_yaml(summary_path, summary)
        harness.write_lines(args.out / "summary.md", markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
