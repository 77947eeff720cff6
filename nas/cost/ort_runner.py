#!/usr/bin/env python3
"""Time exported ONNX ops on a target device: the off-host half of a latency table.

This file and ``sampling.py`` (the statistics it shares with the host) import only the
standard library, numpy and onnxruntime, so they can be copied to a board without torch.
``nas-lut export-ops`` copies both next to the manifest it writes; on the target run::

    python ort_runner.py MANIFEST_DIR --threads 1 --out table.csv

and bring ``table.csv`` back for ``nas-lut import table.csv --out DIR``. The first line of
the CSV is ``# provenance: {json}`` (device, CPU model, onnxruntime version, threads,
harness settings, load average); the rest is one row per latency key."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

try:  # inside the package
    from nas.cost import sampling
except ImportError:  # copied to a device: sampling.py lies beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sampling  # type: ignore[no-redef]


MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
RUNNER_FORMAT = "nas-ort-runner/1"
RESULT_COLUMNS = ["key", "ms", "median_ms", "q25_ms", "min_ms", "iqr_ms", "mean_ms", "n",
                  "passes", "pass_spread_ms",
                  "loadavg", "measured_at"]
# ---------------------------------------------------------------------------- onnxruntime
def make_session(path: str | Path, threads: int, *, opt_level: str = "all"):
    """An onnxruntime CPU session with fixed intra-op threads (inter-op 1, sequential)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[opt_level]
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_callable(session, shape: Sequence[int], dtype: str = "float32", seed: int = 0):
    """A no-argument function running ``session`` on a fixed random input of ``shape``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    array = rng.standard_normal(tuple(int(s) for s in shape)).astype(dtype)
    name = session.get_inputs()[0].name
    feed = {name: array}
    run = session.run

    def call() -> None:
        run(None, feed)

    return call


def ort_provenance(threads: int, opt_level: str) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "runtime": "onnxruntime",
        "runtime_version": ort.__version__,
        "execution_provider": "CPUExecutionProvider",
        "threads": threads,
        "graph_optimization_level": opt_level,
        "numpy_version": __import__("numpy").__version__,
    }


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest written by ``nas-lut export-ops``, checked for its schema version."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (run nas-lut export-ops first)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("manifest_schema") != MANIFEST_SCHEMA:
        raise ValueError(f"{path}: manifest schema {manifest.get('manifest_schema')!r}, this "
                         f"runner reads schema {MANIFEST_SCHEMA}")
    return manifest


def write_result_csv(path: Path, provenance: dict[str, Any], rows: Iterable[dict[str, Any]]) -> None:
    """The runner's output: a ``# provenance: {json}`` line, then a CSV of figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        fh.write("# provenance: " + json.dumps(provenance, sort_keys=True) + "\n")
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    os.replace(tmp, path)


def read_result_csv(path: str | Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Inverse of :func:`write_result_csv`: (provenance, rows)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        first = fh.readline()
        prefix = "# provenance: "
        if not first.startswith(prefix):
            raise ValueError(f"{path}: first line must be '{prefix}{{...}}' (an ort_runner.py CSV)")
        provenance = json.loads(first[len(prefix):])
        rows = list(csv.DictReader(fh))
    return provenance, rows


def measure_manifest(
    directory: str | Path,
    out: str | Path,
    *,
    threads: int = 1,
    passes: int = 5,
    warmup: int = sampling.DEFAULT_WARMUP,
    repeats: int = sampling.DEFAULT_REPEATS,
    min_run_time: float = sampling.DEFAULT_MIN_RUN_TIME,
    max_run_time: float = sampling.DEFAULT_MAX_RUN_TIME,
    opt_level: str = "all",
    pin_cpu: int | None = None,
    realtime: bool = False,
    statistic: str = "median",
    seed: int = 0,
    keys: Sequence[str] | None = None,
    show_progress: bool = True,
    callback: Callable[[int, int, str], None] | None = None,
    manifest: dict[str, Any] | None = None,
    open_op: Callable[[dict[str, Any]], Callable[[], None]] | None = None,
    runtime_record: dict[str, Any] | None = None,
    runner_format: str = RUNNER_FORMAT,
) -> Path:
    """Time every op of a manifest and write the result CSV to ``out``.

    By default with onnxruntime; ``kit_runner.py`` passes the kit's ``manifest``, an
    ``open_op(op) -> call`` of its runtime, that runtime's ``runtime_record`` and its
    ``runner_format``, so every runtime shares this schedule, log and CSV."""
    directory = Path(directory)
    out = Path(out)
    manifest = manifest if manifest is not None else load_manifest(directory)
    ops = {op["key"]: op for op in manifest["ops"]}
    wanted = list(keys) if keys is not None else list(ops)
    unknown = [k for k in wanted if k not in ops]
    if unknown:
        raise KeyError(f"keys not in the manifest: {unknown[:5]}")
    settings = {"warmup": warmup, "warmup_time": sampling.DEFAULT_WARMUP_TIME, "repeats": repeats,
                "min_run_time": min_run_time, "max_run_time": max_run_time,
                "min_sample_time": sampling.DEFAULT_MIN_SAMPLE_TIME, "passes": passes, "seed": seed,
                "pin_cpu": pin_cpu, "realtime": realtime, "pass_statistic": statistic,
                "statistic": sampling.STATISTIC_TEXT[statistic]}
    load_start = sampling.loadavg()
    started = time.perf_counter()

    def open_ort(op: dict[str, Any]) -> Callable[[], None]:
        session = make_session(directory / op["file"], threads, opt_level=opt_level)
        return session_callable(session, op["input_shape"], manifest.get("dtype", "float32"))

    opener = open_op or open_ort

    def measure_one(key: str) -> dict[str, float]:
        call = opener(ops[key])
        return sampling.run_samples(sampling.perf_counter_sample(call), warmup=warmup,
                                    repeats=repeats, min_run_time=min_run_time,
                                    max_run_time=max_run_time)

    bar = None
    if show_progress:
        try:
            from tqdm import tqdm  # optional on the board

            bar = tqdm(total=len(wanted) * passes, desc=f"{manifest.get('runtime', 'ort')} ops",
                       unit="op")
        except ImportError:
            bar = None
    log_path = out.with_name(out.name + ".passes.csv")

    with sampling.pinned_cpu(pin_cpu), sampling.realtime_priority(realtime) as rt:
        settings["realtime_active"] = rt.active
        results, _ = sampling.run_passes(
            wanted, measure_one, passes=passes, log_path=log_path, seed=seed, callback=callback,
            progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    rows = []
    for key in wanted:
        row = {"key": key, **sampling.aggregate(results[key], statistic)}
        rows.append(row)
    provenance = {
        "format": runner_format,
        "device": sampling.device_info(),
        **(runtime_record if runtime_record is not None else ort_provenance(threads, opt_level)),
        "batch": manifest.get("batch"),
        "dtype": manifest.get("dtype", "float32"),
        "resolution": manifest.get("resolution"),
        "spaces": manifest.get("spaces", []),
        "manifest_created": manifest.get("created"),
        "onnx_exporter": manifest.get("onnx_exporter"),
        "harness": settings,
        "loadavg_start": load_start,
        "loadavg_end": sampling.loadavg(),
        "wall_s": round(time.perf_counter() - started, 1),
        "date": sampling.now_iso(),
    }
    write_result_csv(out, provenance, rows)
    log_path.unlink(missing_ok=True)  # complete: a rerun measures afresh
    return out


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    """The options every runner shares (kit folder, threads, output, sampling protocol)."""
    parser.add_argument("manifest_dir", type=Path, help="folder holding manifest.json and the ops")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="output CSV")
    parser.add_argument("--passes", type=int, default=5,
                        help="interleaved passes over all ops; figure = median of pass medians")
    parser.add_argument("--warmup", type=int, default=sampling.DEFAULT_WARMUP)
    parser.add_argument("--repeats", type=int, default=sampling.DEFAULT_REPEATS,
                        help="minimum samples per op and pass")
    parser.add_argument("--min-run-time", type=float, default=sampling.DEFAULT_MIN_RUN_TIME,
                        help="minimum seconds of samples per op and pass")
    parser.add_argument("--max-run-time", type=float, default=sampling.DEFAULT_MAX_RUN_TIME)
    parser.add_argument("--pin-cpu", type=int, default=None,
                        help="pin the timing thread to this CPU (Linux only)")
    parser.add_argument("--statistic", choices=list(sampling.PASS_STATISTICS), default="median",
                        help="how the per-pass medians combine into an op's figure")
    parser.add_argument("--realtime", action="store_true",
                        help="time under SCHED_FIFO (needs root/CAP_SYS_NICE; a shared machine)")
    parser.add_argument("--no-progress", action="store_true")


def timing_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure_manifest` keyword arguments of :func:`add_timing_options`' options."""
    return {"threads": args.threads, "passes": args.passes, "warmup": args.warmup,
            "repeats": args.repeats, "min_run_time": args.min_run_time,
            "max_run_time": args.max_run_time, "pin_cpu": args.pin_cpu,
            "realtime": args.realtime, "statistic": args.statistic,
            "show_progress": not args.no_progress}


def run_cli(prog: str, measure: Callable[[], Path]) -> int:
    """Run ``measure``; a bad kit or manifest is one line on stderr and exit status 2."""
    try:
        out = measure()
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ort_runner.py",
        description="Time the ONNX ops of a nas-lut export-ops manifest with onnxruntime "
                    "(CPU execution provider) and write a CSV for 'nas-lut import'.")
    add_timing_options(parser)
    parser.add_argument("--opt-level", choices=["disable", "basic", "extended", "all"],
                        default="all", help="onnxruntime graph optimisation level")
    args = parser.parse_args(argv)
    return run_cli(parser.prog, lambda: measure_manifest(
        args.manifest_dir, args.out, opt_level=args.opt_level, **timing_options(args)))

if __name__ == "__main__":
    sys.exit(main())
