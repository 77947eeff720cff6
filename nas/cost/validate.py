"""Validate a latency table against end-to-end measurements of random networks.

``validate`` samples N specs of a space (seeded), predicts each with the table, measures
each end to end with the same harness in interleaved rounds (:mod:`nas.cost.calibrate`)
and reports the mean absolute percentage error, the share of predictions within +-5% and
+-10%, and Kendall's tau and Spearman's rho between predicted and measured rankings.
It writes ``validation_<space>.csv`` (one row per spec), ``validation_<space>.png``
(predicted versus measured) and merges a summary into ``validation_summary.yaml``.

The calibration stored in the table was fitted on networks of another seed, so these
networks are unseen. Optionally (``recalibrate``) a fresh calibration is fitted on extra
networks of the calibration seed measured in the same interleaved rounds; its figures are
reported beside the stored calibration's, as a measure of how much of the error is drift
of the machine between the table's build and the validation.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nas._io import now_iso, plain_data
from nas.arch.spec import NetworkSpec
from nas.cost import sampling
from nas.cost.anchored import ANCHORED_STATISTIC_TEXT, measure_anchored
from nas.cost.calibrate import CALIBRATION_SEED, fit_linear, measure_end_to_end, sample_specs
from nas.cost.harness import HarnessConfig


def error_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE (%), share within +-5% / +-10% (%), Kendall tau, Spearman rho, bias (%)."""
    import numpy as np
    from scipy import stats

    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    rel = (p - m) / m
    tau = stats.kendalltau(p, m).statistic if len(p) > 1 else float("nan")
    rho = stats.spearmanr(p, m).statistic if len(p) > 1 else float("nan")
    return {
        "n": int(len(p)),
        "mape_pct": float(np.mean(np.abs(rel)) * 100),
        "within_5_pct": float(np.mean(np.abs(rel) <= 0.05) * 100),
        "within_10_pct": float(np.mean(np.abs(rel) <= 0.10) * 100),
        "max_abs_err_pct": float(np.max(np.abs(rel)) * 100),
        "bias_pct": float(np.mean(rel) * 100),
        "kendall_tau": float(tau),
        "spearman_rho": float(rho),
    }


#: How each ``HarnessConfig.pass_statistic`` reduces an end-to-end measurement, as reports name it.
MEASURED_STATISTIC_TEXT = {"min": "min over all samples of all rounds",
                           "q25": "lower quartile of the per-round medians",
                           "median": "median of the per-round medians"}


def split_halves(measured: Sequence[dict[str, Any]], statistic: str) -> tuple[list[float], list[float]] | None:
    """Each spec's figure from its even and from its odd rounds, reduced like the whole
    (``statistic`` of ``HarnessConfig.pass_statistic``); None with fewer than two rounds."""
    import numpy as np

    def figure(rounds_median: Sequence[float], rounds_min: Sequence[float]) -> float:
        if statistic == "min":
            return float(min(rounds_min))
        return float(np.quantile(rounds_median, 0.25 if statistic == "q25" else 0.5))

    halves: tuple[list[float], list[float]] = ([], [])
    for m in measured:
        if len(m["rounds_ms"]) < 2:
            return None
        for h in (0, 1):
            if "rounds_ratio" in m:  # anchored (nas.cost.anchored): each half's median ratio
                halves[h].append(float(np.median(m["rounds_ratio"][h::2])) * m["anchor_ms"])
            else:
                halves[h].append(figure(m["rounds_ms"][h::2], m["rounds_min_ms"][h::2]))
    return halves


def split_half_tau(measured: Sequence[dict[str, Any]], statistic: str) -> float:
    """Kendall tau between the figures of the even and the odd rounds of the same specs.

    How well the end-to-end measurement agrees with itself: a table's rank correlation with
    the measurement cannot be expected to exceed what two halves of the measurement reach
    (on a machine whose speed moves from call to call this, not the table, is the cap).
    NaN with fewer than two rounds or two specs.
    """
    from scipy import stats

    halves = split_halves(measured, statistic)
    if halves is None or len(halves[0]) < 2:
        return float("nan")
    return float(stats.kendalltau(*halves).statistic)


def split_half_within(measured: Sequence[dict[str, Any]], statistic: str, bound: float = 0.10) -> float:
    """Share (%) of specs whose even-round and odd-round figures lie within ``bound`` of each
    other (relative to their mean): the +-10% counterpart of :func:`split_half_tau`. Where the
    measurement does not repeat within +-10%, no table can be shown to predict within it. NaN
    with fewer than two rounds."""
    halves = split_halves(measured, statistic)
    if halves is None or not halves[0]:
        return float("nan")
    close = [abs(a - b) <= bound * (a + b) / 2 for a, b in zip(*halves)]
    return 100.0 * sum(close) / len(close)


@dataclass
class ValidationReport:
    """What :func:`validate` found: per-spec rows and summary figures."""

    space: str
    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    metrics_uncalibrated: dict[str, float] = field(default_factory=dict)
    metrics_recalibrated: dict[str, float] | None = None
    measurement_split_half_tau: float = float("nan")
    measurement_split_half_within_10_pct: float = float("nan")
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {"metrics": self.metrics, "metrics_uncalibrated": self.metrics_uncalibrated,
               "measurement": {"split_half_kendall_tau": self.measurement_split_half_tau,
                               "split_half_within_10_pct": self.measurement_split_half_within_10_pct},
               "settings": self.settings}
        if self.metrics_recalibrated is not None:
            out["metrics_recalibrated"] = self.metrics_recalibrated
        return out

    def format(self) -> str:
        m = self.metrics
        lines = [
            f"space {self.space}: n={m['n']}  MAPE {m['mape_pct']:.2f}%  within +-5% "
            f"{m['within_5_pct']:.1f}%  within +-10% {m['within_10_pct']:.1f}%  "
            f"Kendall tau {m['kendall_tau']:.3f}  Spearman rho {m['spearman_rho']:.3f}  "
            f"bias {m['bias_pct']:+.2f}%",
        ]
        u = self.metrics_uncalibrated
        if u:
            lines.append(f"  uncalibrated sum: MAPE {u['mape_pct']:.2f}%  within +-10% "
                         f"{u['within_10_pct']:.1f}%  tau {u['kendall_tau']:.3f}")
        r = self.metrics_recalibrated
        if r:
            lines.append(f"  recalibrated now: MAPE {r['mape_pct']:.2f}%  within +-10% "
                         f"{r['within_10_pct']:.1f}%  tau {r['kendall_tau']:.3f}")
        lines.append(f"  the measurement against itself (even vs odd rounds): Kendall tau "
                     f"{self.measurement_split_half_tau:.3f}, within +-10% "
                     f"{self.measurement_split_half_within_10_pct:.1f}%")
        s = self.settings
        lines.append(f"  table measured on {s.get('table_device')}, validated on "
                     f"{s.get('host_device')} (this host)")
        if s.get("host_mismatch"):
            lines.append(f"  warning: the table comes from another host: {'; '.join(s['host_mismatch'])}")
        lines.append(f"  runtime {s['runtime']}, {s['threads']} thread(s), batch {s['batch']}, "
                     f"{s['rounds']} interleaved rounds, load average {s['loadavg_start']} -> "
                     f"{s['loadavg_end']}, {s['wall_s']:.0f} s")
        return "\n".join(lines)


def validate(
    table,
    space,
    *,
    n: int = 100,
    seed: int = 0,
    harness: HarnessConfig | None = None,
    rounds: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    recalibrate: int = 0,
    calibration_seed: int = CALIBRATION_SEED,
    measure_missing: bool = False,
    log_path: str | Path | None = None,
    anchor: NetworkSpec | None = None,
) -> ValidationReport:
    """Predict and measure ``n`` random specs of ``space``; write the report to ``out_dir``.

    ``log_path`` keeps every end-to-end measurement as it is taken, so an interrupted
    validation repeated with the same arguments measures only what is left. With ``anchor``
    each network is timed between two timings of that network and measured by its ratio to
    it (:mod:`nas.cost.anchored`); the plain figure is kept beside it (``measured_plain_ms``)."""
    started = time.perf_counter()
    harness = harness or table.harness_config()
    table.check_compatible(runtime=harness.runtime, resolution=space.base.resolution,
                           threads=harness.threads, batch=harness.batch)
    specs = sample_specs(space, n, seed)
    cal_specs = sample_specs(space, recalibrate, calibration_seed) if recalibrate else []
    overlap = set(specs) & set(cal_specs)
    if overlap:
        cal_specs = [s for s in cal_specs if s not in overlap]
    from nas.arch.codecs import to_string
    from nas.cost.host_check import host_device, host_mismatch

    stored = set((table.calibration or {}).get("specs") or [])
    calibration_overlap = sum(1 for s in specs if to_string(s) in stored)
    missing = table.missing_keys(specs + cal_specs)
    if missing:
        if not measure_missing:
            from nas.cost.table_files import MissingKeysError

            raise MissingKeysError(missing, f"the table does not cover space {space.name}")
        table.measure(missing, harness, progress=progress, hosts=[space])
    predicted = [table.predict(s) for s in specs]
    raw = [table.predict(s, calibrated=False) for s in specs]
    load_start = sampling.loadavg()
    if anchor is None:
        measured_all = measure_end_to_end(specs + cal_specs, harness, rounds=rounds, progress=progress,
                                          desc=f"validate {space.name}", log_path=log_path)
    else:
        measured_all = measure_anchored(specs + cal_specs, anchor, harness, rounds=rounds, progress=progress,
                                        desc=f"validate {space.name} (anchored)", log_path=log_path)
    load_end = sampling.loadavg()
    measured = measured_all[:len(specs)]
    meas_ms = [m["ms"] for m in measured]
    metrics = error_metrics(predicted, meas_ms)
    metrics_raw = error_metrics(raw, meas_ms)
    recal = None
    recal_pred = None
    if cal_specs:
        cal_raw = [table.predict(s, calibrated=False) for s in cal_specs]
        fit = fit_linear(cal_raw, [m["ms"] for m in measured_all[len(specs):]])
        recal_pred = [fit["a"] * r + fit["b"] for r in raw]
        recal = {**error_metrics(recal_pred, meas_ms), "a": fit["a"], "b": fit["b"],
                 "n_calibration": len(cal_specs), "calibration_seed": calibration_seed,
                 "specs": [to_string(s) for s in cal_specs],
                 "measured_ms": [round(m["ms"], 4) for m in measured_all[len(specs):]]}
    rows = []
    for i, (spec, p, r, m) in enumerate(zip(specs, predicted, raw, measured)):
        row = {
            "index": i, "spec": to_string(spec), "blocks": len(spec.blocks),
            "predicted_ms": round(p, 4), "predicted_raw_ms": round(r, 4),
            "measured_ms": round(m["ms"], 4), "measured_median_ms": round(m["median_ms"], 4),
            "measured_q25_ms": round(m["q25_ms"], 4), "measured_min_ms": round(m["min_ms"], 4),
            "measured_iqr_ms": round(m["iqr_ms"], 4),
            "round_spread_ms": round(m["pass_spread_ms"], 4),
            "error_pct": round((p - m["ms"]) / m["ms"] * 100, 3),
            "rounds_ms": " ".join(f"{v:.3f}" for v in m["rounds_ms"]),
            "rounds_min_ms": " ".join(f"{v:.3f}" for v in m["rounds_min_ms"]),
            "loadavg": m["loadavg"],
        }
        if recal_pred is not None:
            row["predicted_recalibrated_ms"] = round(recal_pred[i], 4)
        if anchor is not None:
            row.update(measured_plain_ms=round(m["plain_ms"], 4), anchored_ratio=round(m["ratio"], 5),
                       anchor_ms=round(m["anchor_ms"], 4),
                       rounds_ratio=" ".join(f"{v:.5f}" for v in m["rounds_ratio"]))
        rows.append(row)
    settings = {
        "space": space.name, "n": n, "seed": seed, "rounds": rounds or harness.passes,
        "measured_statistic": (MEASURED_STATISTIC_TEXT[harness.pass_statistic] if anchor is None
                               else ANCHORED_STATISTIC_TEXT),
        "anchor": None if anchor is None else to_string(anchor),
        "runtime": harness.runtime, "runtime_version": table.provenance.get("runtime_version"),
        "threads": harness.threads, "batch": harness.batch, "dtype": harness.dtype,
        "resolution": space.base.resolution, "harness": harness.to_dict(),
        # Both devices: a table measured elsewhere is validated here, and a summary naming
        # only the table's device hid that the figures compare two machines.
        "table_device": table.provenance.get("device"), "host_device": host_device(harness.runtime),
        "host_mismatch": host_mismatch(table.provenance), "host": platform.node(),
        "table": str(table.path) if table.path else None,
        "table_method": table.provenance.get("method"),
        "calibration": ({k: v for k, v in table.calibration.items()
                         if k in ("a", "b", "n", "label", "date", "fit_mape_pct")}
                        if table.calibration else None),
        "calibration_specs_in_validation": calibration_overlap,
        "loadavg_start": load_start, "loadavg_end": load_end,
        "date": now_iso(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    report = ValidationReport(space=space.name, metrics=metrics, rows=rows, settings=settings,
                              metrics_uncalibrated=metrics_raw, metrics_recalibrated=recal,
                              measurement_split_half_tau=split_half_tau(measured, harness.pass_statistic),
                              measurement_split_half_within_10_pct=split_half_within(
                                  measured, harness.pass_statistic))
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: ValidationReport, out_dir: str | Path) -> list[Path]:
    """CSV, PNG and a merged ``validation_summary.yaml`` in ``out_dir``."""
    import pandas as pd
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"validation_{report.space}.csv"
    pd.DataFrame(report.rows).to_csv(csv_path, index=False)
    png_path = out_dir / f"validation_{report.space}.png"
    plot_scatter(report, png_path)
    summary_path = out_dir / "validation_summary.yaml"
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        summary = yaml.safe_load(summary_path.read_text()) or {}
    summary[report.space] = plain_data(report.summary())
    summary_path.write_text(yaml.safe_dump(summary, sort_keys=False, width=100))
    report.files = [str(csv_path), str(png_path), str(summary_path)]
    return [csv_path, png_path, summary_path]


def plot_scatter(report: ValidationReport, path: str | Path) -> Path:
    """Predicted versus measured, with the identity and the +-10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meas = [r["measured_ms"] for r in report.rows]
    pred = [r["predicted_ms"] for r in report.rows]
    lo, hi = min(meas + pred) * 0.9, max(meas + pred) * 1.1
    fig, ax = plt.subplots(figsize=(5.5, 5.2), dpi=120)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9",
                    label="+-10%")
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, label="predicted = measured")
    ax.scatter(meas, pred, s=14, alpha=0.8, label=f"{len(meas)} random specs")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    statistic = report.settings.get("measured_statistic", "median of the per-round medians")
    ax.set_xlabel(f"measured end to end (ms; {statistic}, {report.settings.get('rounds')} "
                  "interleaved rounds)", fontsize=8)
    ax.set_ylabel("predicted by the table (ms)")
    m, s = report.metrics, report.settings
    ax.set_title(f"{report.space}: {s['runtime']}, {s['threads']} thread(s), batch {s['batch']}\n"
                 f"MAPE {m['mape_pct']:.1f}%, within +-10% {m['within_10_pct']:.0f}%, "
                 f"tau {m['kendall_tau']:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


__all__ = ["ValidationReport", "error_metrics", "plot_scatter", "validate", "write_report"]
