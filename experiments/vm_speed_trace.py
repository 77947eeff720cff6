"""How steady is this machine? Per-call latency of one fixed network, traced over time.

The latency tables' validation compares a table's prediction with an end-to-end measurement;
when the machine's own speed moves from call to call, that measurement, not the table, caps
the rank correlation. This traces torch eager CPU (1 thread, batch 1, SCHED_FIFO when
allowed) on three separately allocated copies of one network, called in turn, and writes

* ``calls.csv``: time since start, copy, milliseconds per call;
* ``per_second.csv``: min / 10th percentile / median / max per one-second window;
* ``summary.yaml``: the same per copy and overall, plus the load average;
* ``trace.png``: the calls over time.

Separate copies tell allocation effects (one copy steadily slower) from the machine's
(all copies move together).

    python -m experiments.vm_speed_trace --seconds 30 --out experiments/results/latency/vm_speed_trace
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch

from experiments import harness
from nas.arch.codecs import load_spec
from nas.models.builder import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--arch", default="large", help="canonical name or bneck YAML")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=224)
    harness.add_common(parser, out=harness.RESULTS / "latency" / "vm_speed_trace")
    return parser.parse_args(argv)


def trace(models: list[torch.nn.Module], x: torch.Tensor, seconds: float) -> pd.DataFrame:
    rows = []
    with torch.inference_mode():
        for model in models:
            for _ in range(5):
                model(x)
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds:
            copy = i % len(models)
            t0 = time.perf_counter()
            models[copy](x)
            t1 = time.perf_counter()
            rows.append({"t_s": t0 - start, "copy": copy, "ms": (t1 - t0) * 1e3})
            i += 1
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.start(args)
    spec = load_spec(args.arch).replace(resolution=args.resolution)
    models = []
    for _ in range(args.copies):
        torch.manual_seed(0)
        models.append(build_model(spec).eval())
    x = torch.randn(1, 3, args.resolution, args.resolution)
    load_start = harness.load_average()
    realtime = True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (PermissionError, AttributeError):
        realtime = False
    try:
        calls = trace(models, x, args.seconds)
    finally:
        if realtime:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    calls.round(4).to_csv(args.out / "calls.csv", index=False)
    calls["second"] = calls["t_s"].astype(int)
    per_second = calls.groupby("second")["ms"].agg(
        n="count", min="min", p10=lambda v: v.quantile(0.1), median="median", max="max")
    per_second.round(3).to_csv(args.out / "per_second.csv")

    def figures(v: pd.Series) -> dict[str, float]:
        return {"calls": int(len(v)), "min_ms": round(float(v.min()), 3),
                "p10_ms": round(float(v.quantile(0.1)), 3),
                "median_ms": round(float(v.median()), 3), "max_ms": round(float(v.max()), 3)}

    summary = {
        "arch": args.arch, "resolution": args.resolution, "threads": 1, "batch": 1,
        "realtime": realtime, "seconds": args.seconds, "torch": str(torch.__version__),
        "overall": figures(calls["ms"]),
        "per_copy": {int(c): figures(g["ms"]) for c, g in calls.groupby("copy")},
        "per_second_min_ms_range": [round(float(per_second["min"].min()), 3),
                                    round(float(per_second["min"].max()), 3)],
        "load_average_at_start": load_start,
        "load_average_at_end": harness.load_average(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = harness.write_yaml(args.out / "summary.yaml", summary)
    _plot(calls, per_second, args.out / "trace.png", args.arch)
    print(text)
    return 0


def _plot(calls: pd.DataFrame, per_second: pd.DataFrame, path: Path, arch: str) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for copy, group in calls.groupby("copy"):
        ax.scatter(group["t_s"], group["ms"], s=3, alpha=0.5, label=f"copy {copy}")
    ax.plot(per_second.index + 0.5, per_second["min"], color="black", label="min per second")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("ms per forward pass")
    ax.set_title(f"{arch}: per-call latency over time (torch eager CPU, 1 thread, batch 1)")
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
