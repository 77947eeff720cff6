"""End-to-end measurements and the per-table linear calibration ``ms = a * sum + b``.

Summing per-op figures misses what lies between the ops (module dispatch, the flatten,
allocator and cache effects not captured by the op figures), so a table may carry a
calibration fitted by least squares on a few networks measured end to end with the same
harness. The calibration networks must be disjoint from the ones a validation reports on
(another seed), or the validation figure would flatter the table.

End-to-end figures are taken in interleaved rounds: every network once per round, in a
shuffled order, for several rounds; a network's figure is the median of its per-round
medians, so a drift of the machine's speed during the run hits all networks alike.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Sequence

from nas._io import now_iso
from nas.arch.spec import NetworkSpec
from nas.cost import sampling
from nas.cost.harness import HarnessConfig
from nas.cost.timing import measure_interleaved

CALIBRATION_SEED = 1000


def sample_specs(space, n: int, seed: int, *, allow_fewer: bool = False) -> list[NetworkSpec]:
    """``n`` distinct random specs of ``space`` drawn with ``random.Random(seed)`` (fewer
    when the space has fewer and ``allow_fewer``; otherwise that is an error)."""
    rng = random.Random(seed)
    specs: list[NetworkSpec] = []
    seen = set()
    attempts = 0
    while len(specs) < n:
        spec = space.sample(rng)
        attempts += 1
        if spec not in seen:
            seen.add(spec)
            specs.append(spec)
        if attempts > 100 * n + 100:
            if allow_fewer:
                return specs
            raise ValueError(f"space {space.name} has fewer than {n} distinct specs")
    return specs


def build_network(name: str) -> tuple[Any, tuple[int, int, int]]:
    """The network a spec string names, and its input shape (module level: conversion
    workers receive it by pickling)."""
    from nas.arch.codecs import from_string
    from nas.models.builder import build_model

    spec = from_string(name)
    return build_model(spec), (3, spec.resolution, spec.resolution)


def measure_end_to_end(
    specs: Sequence[NetworkSpec],
    harness: HarnessConfig,
    *,
    rounds: int | None = None,
    progress: bool = True,
    log_path: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    desc: str = "end to end",
) -> list[dict[str, Any]]:
    """Each spec's end-to-end figure (median of per-round medians) in interleaved rounds.

    Returns one dict per spec (same order): ``ms`` (the harness's ``pass_statistic`` of
    the per-round medians), ``median_ms``, ``q25_ms``, ``min_ms``, ``iqr_ms``,
    ``pass_spread_ms``, ``passes``, ``loadavg``, ``rounds_ms`` / ``rounds_min_ms`` (the
    per-round medians and minima).
    """
    from nas.arch.codecs import to_string

    names = [to_string(s) for s in specs]
    figures, per_pass = measure_interleaved(names, build_network, harness, passes=rounds or harness.passes,
                                            log_path=log_path, onnx_dir=onnx_dir,
                                            progress=progress, desc=desc)
    out = []
    for name in names:
        fig = dict(figures[name])
        ordered = sorted(per_pass[name], key=lambda r: int(r["pass"]))
        fig["rounds_ms"] = [round(float(r["median_ms"]), 4) for r in ordered]
        fig["rounds_min_ms"] = [round(float(r["min_ms"]), 4) for r in ordered]
        out.append(fig)
    return out


def fit_linear(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = a * x + b`` with its residual figures (needs two distinct x)."""
    import numpy as np

    x_arr = np.asarray(x, dtype=float)
    y_arr = np.asarray(y, dtype=float)
    if len(x_arr) < 2 or np.ptp(x_arr) == 0:
        raise ValueError("a linear calibration needs at least two networks of different size")
    design = np.vstack([x_arr, np.ones_like(x_arr)]).T
    (a, b), *_ = np.linalg.lstsq(design, y_arr, rcond=None)
    fitted = a * x_arr + b
    rel = (fitted - y_arr) / y_arr
    return {"a": float(a), "b": float(b), "n": int(len(x_arr)),
            "fit_mape_pct": float(np.mean(np.abs(rel)) * 100),
            "fit_max_abs_err_pct": float(np.max(np.abs(rel)) * 100)}


def calibrate(
    table,
    specs: Sequence[NetworkSpec],
    harness: HarnessConfig | None = None,
    *,
    rounds: int | None = None,
    progress: bool = True,
    measure_missing: bool = True,
    label: str = "",
    callback: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Measure ``specs`` end to end, fit ``ms = a * sum + b``, store it in the table.

    Keys the specs need and the table lacks are measured first (``measure_missing``).
    Returns the calibration record (also in ``table.provenance['calibration']``); save the
    table to keep it.
    """
    harness = harness or table.harness_config()
    table.check_compatible(runtime=harness.runtime, threads=harness.threads, batch=harness.batch)
    missing = table.missing_keys(list(specs))
    if missing:
        if not measure_missing:
            from nas.cost.table_files import MissingKeysError

            raise MissingKeysError(missing)
        table.measure(missing, harness, progress=progress, hosts=list(specs))
    raw = [table.predict(s, calibrated=False) for s in specs]
    load_start = sampling.loadavg()
    measured = measure_end_to_end(specs, harness, rounds=rounds, progress=progress,
                                  desc="calibration")
    if callback is not None:
        callback(measured)
    fit = fit_linear(raw, [m["ms"] for m in measured])
    from nas.arch.codecs import to_string

    record = {
        **fit,
        "label": label,
        "date": now_iso(),
        "rounds": rounds or harness.passes,
        "loadavg_start": load_start,
        "loadavg_end": sampling.loadavg(),
        "specs": [to_string(s) for s in specs],
        "raw_sum_ms": [round(v, 4) for v in raw],
        "measured_ms": [round(m["ms"], 4) for m in measured],
        "pass_statistic": harness.pass_statistic,
    }
    table.set_calibration(**record)
    return record


__all__ = ["CALIBRATION_SEED", "calibrate", "fit_linear", "measure_end_to_end", "sample_specs"]
