"""How every latency figure is sampled, on the host and on a board alike: warm-up, adaptive
repeats, median and interquartile range, and the interleaved-pass schedule.

Standard library only, so ``nas-lut export-ops`` can copy it to a device beside
``ort_runner.py``; :mod:`nas.cost.timing` and the table code import it here, so the host and
the board compute every figure with the same code. The interleaved schedule measures every op
once per pass, in a shuffled order, for several passes; an op's figure is the median of its
per-pass medians, so a slow drift of the machine's speed (other load, frequency changes)
spreads over all ops instead of biasing the ones measured during the slow minutes. Every
(op, pass) result is appended to ``<out>.passes.csv`` as it is measured, and a rerun resumes
from it."""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
import random
import socket
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence


PASS_COLUMNS = ["key", "pass", "median_ms", "min_ms", "iqr_ms", "mean_ms", "n", "loadavg", "time"]
PASS_STATISTICS = ("median", "q25", "min")
STATISTIC_TEXT = {"median": "median of per-pass medians",
                  "q25": "lower quartile of per-pass medians",
                  "min": "minimum over all samples of all passes (best of N)"}

# Defaults shared with nas.cost.harness.HarnessConfig (kept here so the runner stands alone).
DEFAULT_WARMUP = 5
DEFAULT_WARMUP_TIME = 0.02
DEFAULT_REPEATS = 20
DEFAULT_MIN_RUN_TIME = 0.1
DEFAULT_MAX_RUN_TIME = 2.0
DEFAULT_MIN_SAMPLE_TIME = 5e-5


# ---------------------------------------------------------------------------- statistics
def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(per_call_s: Sequence[float]) -> dict[str, float]:
    """Median, IQR, mean and min in milliseconds of per-call times given in seconds."""
    values = sorted(v * 1e3 for v in per_call_s)
    return {
        "median_ms": quantile(values, 0.5),
        "iqr_ms": quantile(values, 0.75) - quantile(values, 0.25),
        "mean_ms": statistics.fmean(values),
        "min_ms": values[0],
        "n": len(values),
    }


def run_samples(
    sample: Callable[[int], float],
    *,
    warmup: int = DEFAULT_WARMUP,
    warmup_time: float = DEFAULT_WARMUP_TIME,
    repeats: int = DEFAULT_REPEATS,
    min_run_time: float = DEFAULT_MIN_RUN_TIME,
    max_run_time: float = DEFAULT_MAX_RUN_TIME,
    min_sample_time: float = DEFAULT_MIN_SAMPLE_TIME,
    after_warmup: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Warm up, then collect timed samples until enough repeats *and* enough time.

    ``sample(number)`` runs the op ``number`` times and returns the elapsed seconds.
    Warm-up runs at least ``warmup`` calls and at least ``warmup_time`` seconds. One
    sample groups ``number`` calls, chosen so a sample lasts ``min_sample_time`` at least
    (clock resolution; 1 for anything slower than 50 us). Sampling stops when there are
    ``repeats`` samples and ``min_run_time`` has passed, or at ``max_run_time`` with at
    least three samples. Returns :func:`summarize` of the per-call times plus ``number``.
    ``after_warmup()`` runs between warm-up and sampling (to reset side-channel logs).
    """
    start = time.perf_counter()
    done = 0
    last = 0.0
    while done < max(1, warmup) or time.perf_counter() - start < warmup_time:
        last = sample(1)
        done += 1
        if time.perf_counter() - start > max_run_time:
            break
    number = 1 if last >= min_sample_time else max(1, math.ceil(min_sample_time / max(last, 1e-9)))
    if after_warmup is not None:
        after_warmup()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.append(sample(number) / number)
        elapsed = time.perf_counter() - start
        if len(samples) >= repeats and elapsed >= min_run_time:
            break
        if elapsed >= max_run_time and len(samples) >= 3:
            break
    result = summarize(samples)
    result["number"] = number
    return result


def perf_counter_sample(fn: Callable[[], Any]) -> Callable[[int], float]:
    """A ``sample(number)`` for :func:`run_samples` timing ``fn`` with the wall clock."""

    def sample(number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - t0

    return sample


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------- device
def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() in ("model name", "Hardware", "Model", "cpu model"):
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_info() -> dict[str, Any]:
    """Where this process runs: host, CPU model and count, OS, Python."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


class pinned_cpu:  # noqa: N801 - used like a function in a with-statement
    """Context manager: restrict the calling thread to one CPU, restoring the old mask."""

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self.saved: set[int] | None = None

    def __enter__(self) -> pinned_cpu:
        if self.cpu is not None and hasattr(os, "sched_setaffinity"):
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu})
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)


class realtime_priority:  # noqa: N801 - used like a function in a with-statement
    """Context manager: run the calling thread under SCHED_FIFO, restoring its policy.

    On a shared machine the timing thread is otherwise time-sliced with other processes
    and a 15 ms forward pass is preempted several times; a real-time policy keeps one core
    for the measurement (the kernel's RT throttling still leaves others 5%). Needs root or
    CAP_SYS_NICE; where it is refused the measurement runs normally and ``active`` says so.
    """

    def __init__(self, enabled: bool, priority: int = 10) -> None:
        self.enabled = enabled
        self.priority = priority
        self.active = False
        self.saved: tuple[int, Any] | None = None

    def __enter__(self) -> realtime_priority:
        if self.enabled and hasattr(os, "sched_setscheduler"):
            try:
                self.saved = (os.sched_getscheduler(0), os.sched_getparam(0))
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.priority))
                self.active = True
            except (PermissionError, OSError):
                self.saved = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            policy, param = self.saved
            os.sched_setscheduler(0, policy, param)


# ---------------------------------------------------------------------------- interleaved passes
def read_pass_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a pass log (``key, pass, median_ms, ...``); empty if the file is absent."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    good = []
    for row in rows:
        try:  # a run killed mid-write leaves a truncated last line: skip it
            row["pass"] = int(row["pass"])
            for name in ("median_ms", "iqr_ms", "mean_ms"):
                row[name] = float(row[name])
            row["min_ms"] = float(row.get("min_ms") or row["median_ms"])
            row["n"] = int(row["n"])
        except (TypeError, ValueError, KeyError):
            continue
        good.append(row)
    return good


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def open_csv_log(path: Path, columns: Sequence[str]) -> tuple[Any, csv.DictWriter]:
    """Open an append-only CSV log (header written when the file is new or empty).

    Rows are appended as they are measured, so a killed run keeps them and a rerun resumes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    # A run killed mid-write leaves a line without its newline: end it, so the first row
    # appended now starts a line of its own instead of being lost with the broken one.
    torn = not new and _last_byte(path) != b"\n"
    handle = open(path, "a", newline="", encoding="utf-8")
    if torn:
        handle.write("\n")
    writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
    if new:
        writer.writeheader()
    return handle, writer


def run_passes(
    keys: Sequence[str],
    measure_one: Callable[[str], dict[str, float]],
    *,
    passes: int,
    log_path: Path | None = None,
    seed: int = 0,
    callback: Callable[[int, int, str], None] | None = None,
    progress: Callable[[int], None] | None = None,
    columns: Sequence[str] = PASS_COLUMNS,
    read_log: Callable[[Path], list[dict[str, Any]]] = read_pass_log,
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Measure every key once per pass, in a shuffled order per pass; resumable.

    Results already in ``log_path`` (from an interrupted run, read with ``read_log``) count and
    are not measured again, and every pass keeps its shuffled order across a resume; each new
    (key, pass) row (``columns``: the key, the pass, ``measure_one``'s figures of those names,
    the load average and the time) is appended and flushed at once. ``callback(done, total,
    key)`` runs after each new unit (a test may raise from it to simulate an interruption);
    ``progress(1)`` too (a tqdm ``update``). Returns the per-pass rows by key (only for
    ``keys``) and the number of units measured now.
    """
    figures = [c for c in columns if c not in ("key", "pass", "loadavg", "time")]
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    done_units: set[tuple[str, int]] = set()
    for row in read_log(log_path) if log_path is not None else []:
        if row["key"] in results and (row["key"], row["pass"]) not in done_units:
            results[row["key"]].append(row)
            done_units.add((row["key"], row["pass"]))
    total = passes * len(keys) - len(done_units)
    if progress is not None and done_units:
        progress(len(done_units))  # a resumed run starts its bar where the last one stopped
    handle = writer = None
    rng = random.Random(seed)
    measured = 0
    try:
        for p in range(passes):
            order = list(keys)
            rng.shuffle(order)  # shuffled even where resumed, so every pass keeps its order
            for key in order:
                if (key, p) in done_units:
                    continue
                stats = measure_one(key)
                la = loadavg()
                row = {"key": key, "pass": p, **{name: stats[name] for name in figures},
                       "n": int(stats["n"]), "loadavg": la[0] if la else "", "time": now_iso()}
                results[key].append(row)
                if log_path is not None:
                    if writer is None:
                        handle, writer = open_csv_log(log_path, columns)
                    writer.writerow(row)
                    handle.flush()
                measured += 1
                if progress is not None:
                    progress(1)
                if callback is not None:
                    callback(measured, total, key)
    finally:
        if handle is not None:
            handle.close()
    return results, measured


def aggregate(rows: list[dict[str, Any]], statistic: str = "median") -> dict[str, Any]:
    """One item's figures from its per-pass rows (each holds that pass's median and min).

    ``ms`` is the figure a table uses, by ``statistic``:

    * ``median``: the median of the per-pass medians;
    * ``q25``: the lower quartile of the per-pass medians;
    * ``min``: the minimum over all samples of all passes (best of N).

    On a machine shared with other work, interference only ever adds time, in bursts of
    milliseconds to seconds; the minimum is then the steadiest estimate of what the code
    itself costs (Chen & Revels, "Robust benchmarking in noisy environments", 2016; it is
    the default estimator of Julia's BenchmarkTools). All three are returned, with the
    spread of the per-pass medians.
    """
    if statistic not in PASS_STATISTICS:
        raise ValueError(f"statistic must be one of {list(PASS_STATISTICS)}, got {statistic!r}")
    medians = sorted(float(r["median_ms"]) for r in rows)
    loads = [float(r["loadavg"]) for r in rows if str(r.get("loadavg", "")) not in ("", "None")]
    minimum = min(float(r.get("min_ms") or r["median_ms"]) for r in rows)
    figures = {"median": quantile(medians, 0.5), "q25": quantile(medians, 0.25), "min": minimum}
    return {
        "ms": figures[statistic],
        "q25_ms": figures["q25"],
        "min_ms": figures["min"],
        "median_ms": figures["median"],
        "iqr_ms": statistics.median(float(r["iqr_ms"]) for r in rows),
        "mean_ms": statistics.fmean(float(r["mean_ms"]) for r in rows),
        "n": sum(int(r["n"]) for r in rows),
        "passes": len(rows),
        "pass_spread_ms": medians[-1] - medians[0],
        "loadavg": round(statistics.fmean(loads), 2) if loads else "",
        "measured_at": max(str(r.get("time", "")) for r in rows),
    }
