"""Latency lookup tables: per-op figures, provenance, incremental builds, fast prediction.

A :class:`LatencyTable` maps latency keys (:mod:`nas.cost.keys`) to milliseconds measured
with the one harness (:mod:`nas.cost.timing`) and predicts a network's latency as the sum
of its stem, blocks and head, optionally corrected by a per-table linear calibration
``ms = a * sum + b`` fitted on end-to-end measurements (:mod:`nas.cost.calibrate`).

On disk a table is a folder::

    table.csv          one row per key: the key's fields, median/IQR/mean ms, n, passes,
                       spread of the per-pass medians, load average, method
    provenance.json    schema version, runtime and version, device (CPU model / GPU),
                       threads, batch, dtype, resolution, harness settings, dates, load
                       averages, spaces covered, calibration
    measurements.csv   (only while a build runs) every per-unit result, for resuming

Two measurement methods (recorded in the provenance):

* ``context`` (torch runtimes, the default): each op is timed inside the forward pass of a
  whole network (:func:`nas.cost.timing.measure_in_context`), so its input is hot and its
  weights are cold as in a real run. For a search space the host networks are sampled so
  that every needed key occurs in ``passes`` different hosts (at random depths); the
  figure is the median over those occurrences. Keys not covered by a host are timed in a
  small synthetic host (stem -> the op -> head).
* ``isolated``: each op alone on a fixed input (:func:`nas.cost.timing.measure`), in
  ``passes`` interleaved passes. Used for onnxruntime, off-host tables and the deployment
  backends (``litert``, ``executorch``, ``openvino``), whose tables also time each key's
  empty model (the runtime's per-call cost for the key's shapes) in the same passes and
  store the key's figure net of it (``raw_ms`` and ``baseline_ms`` kept beside ``ms``).

A missing key is never answered with a default: :meth:`LatencyTable.predict` raises
:class:`MissingKeysError` naming the keys, or measures them when the caller allows.

:meth:`LatencyTable.load` is strict: a duplicate key, a key the parser cannot read, a
latency that is empty, not a number, NaN/inf or not positive, a short row, an empty table
or a provenance that is not an object or lacks a field raises :class:`LatencyTableError`
naming the file, the line (as counted in the file, header = line 1) and the column or
field -- a silently wrong table is worse than none, since every prediction inherits it.
:meth:`LatencyTable.check_host` compares the provenance's device and runtime version with
this machine's (a table is only exact where it was measured) and warns
(:class:`HostMismatchWarning`) or, when strict, raises :class:`HostMismatchError`."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

from nas._io import now_iso
from nas._io import write_text_atomic
from nas.arch.spec import NetworkSpec
from nas.cost.harness import (
    BACKEND_RUNTIMES,
    TORCH_RUNTIMES,
    HarnessConfig,
    backend_of,
)
from nas.cost.host_check import host_mismatch
from nas.cost.provenance import harness_provenance
from nas.cost.keys import SpecsOrSpace, keys_for, parse_key, spec_key_tuple
from nas.cost.table_files import (
    CSV_COLUMNS,
    HostMismatchError,
    HostMismatchWarning,
    IncompatibleTableError,
    LatencyTableError,
    METHODS,
    MissingKeysError,
    PROVENANCE_FILE,
    SCHEMA_VERSION,
    TABLE_FILE,
    VALUE_COLUMNS,
    as_list,
    read_provenance,
    read_table_csv,
    resolution_of,
    key_sort_order,
    statistic_text,
)
from nas.cost.table_measure import TableMeasuring


# What the off-host runner writes beside the harness settings it ran with: how it ran, not
# settings to measure with again.
RUNNER_RECORDS = ("min_sample_time", "realtime_active", "statistic")

# ---------------------------------------------------------------------------- the table
class LatencyTable(TableMeasuring):
    """Per-op latencies of one runtime/device/threads/batch/dtype/resolution, with provenance.

    Build one with :meth:`create` and :meth:`build`, or :meth:`load` a folder. The hot
    path, :meth:`predict`, is a sum of dict lookups over the spec's cached key strings.
    """

    def __init__(self, provenance: dict[str, Any], entries: dict[str, dict[str, Any]] | None = None,
                 *, path: str | Path | None = None) -> None:
        self._provenance = dict(provenance)
        self._entries: dict[str, dict[str, Any]] = {}
        self._ms: dict[str, float] = {}
        self.path = Path(path) if path is not None else None
        for key, row in (entries or {}).items():
            self._set(key, row)
        self._refresh_calibration()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, harness: HarnessConfig, *, resolution: int, method: str | None = None,
               note: str = "") -> LatencyTable:
        """An empty table that will be measured here with ``harness``."""
        torch_runtime = harness.runtime in TORCH_RUNTIMES
        method = method or ("context" if torch_runtime else "isolated")
        if method not in METHODS:
            raise LatencyTableError(f"method must be one of {list(METHODS)}, got {method!r}")
        if method == "context" and not torch_runtime:
            raise LatencyTableError(f"method 'context' needs a torch runtime; {harness.runtime} "
                                    "tables are measured 'isolated'")
        provenance = {
            "schema_version": SCHEMA_VERSION,
            **harness_provenance(harness),
            "resolution": int(resolution),
            "method": method,
            "statistic": statistic_text(harness.pass_statistic, method),
            "source": "measured here",
            "created": now_iso(),
            "spaces": [],
            "note": note,
        }
        if harness.runtime in BACKEND_RUNTIMES:
            # Each key is its own model: the runtime's per-call cost (its empty model for the
            # key's shapes) is subtracted, or a network's sum would count it once per op.
            provenance["net_of_empty_model"] = True
        return cls(provenance)

    @classmethod
    def load(cls, directory: str | Path, *, allow_empty: bool = False) -> LatencyTable:
        """Read ``table.csv`` and ``provenance.json`` from ``directory``, strictly.

        Any defect raises :class:`LatencyTableError` naming the file, line and column (or
        the provenance field). ``allow_empty`` accepts a header-only table: what a build
        leaves behind before its first key, which :func:`build_table` resumes.
        """
        directory = Path(directory)
        prov_path = directory / PROVENANCE_FILE
        table_path = directory / TABLE_FILE
        if not directory.is_dir():
            raise LatencyTableError(f"{directory}: no such table folder")
        if not prov_path.is_file() or not table_path.is_file():
            raise LatencyTableError(f"{directory}: not a latency table (needs {TABLE_FILE} and "
                                    f"{PROVENANCE_FILE})")
        provenance = read_provenance(prov_path, directory)
        entries = read_table_csv(table_path, allow_empty=allow_empty)
        return cls(provenance, entries, path=directory)

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the table (atomically, file by file) to ``directory`` (default: where it was loaded)."""
        import pandas as pd

        directory = Path(directory) if directory is not None else self.path
        if directory is None:
            raise LatencyTableError("save() needs a folder: the table was not loaded from one")
        directory.mkdir(parents=True, exist_ok=True)
        rows = []
        for key in sorted(self._entries, key=key_sort_order):
            rows.append({"key": key, **parse_key(key).as_row(),
                         **{c: self._entries[key].get(c) for c in VALUE_COLUMNS}})
        frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
        self._provenance["n_keys"] = len(rows)
        self._provenance["updated"] = now_iso()
        write_text_atomic(directory / TABLE_FILE, frame.to_csv(index=False, float_format="%.6g"))
        write_text_atomic(directory / PROVENANCE_FILE,
                      json.dumps(self._provenance, indent=2, sort_keys=True, default=str) + "\n")
        self.path = directory
        return directory

    # ------------------------------------------------------------------ access
    @property
    def provenance(self) -> dict[str, Any]:
        """The provenance record (a dict; at least runtime, resolution, threads, batch)."""
        return self._provenance

    @property
    def runtime(self) -> str:
        return str(self._provenance["runtime"])

    @property
    def resolution(self) -> int:
        return int(self._provenance["resolution"])

    @property
    def keys(self) -> list[str]:
        return list(self._ms)

    def __len__(self) -> int:
        return len(self._ms)

    def __contains__(self, key: object) -> bool:
        return key in self._ms

    def ms(self, key: str) -> float:
        """The stored milliseconds of one key; :class:`MissingKeysError` if absent."""
        try:
            return self._ms[key]
        except KeyError:
            raise MissingKeysError([key]) from None

    def entry(self, key: str) -> dict[str, Any]:
        """All stored figures of one key (median, IQR, n, passes, ...)."""
        if key not in self._entries:
            raise MissingKeysError([key])
        return dict(self._entries[key])

    def set_entry(self, key: str, ms: float, **figures: Any) -> None:
        """Store the figure ``ms`` for ``key`` (checked to be a key); used by builds and imports."""
        parse_key(key)
        self._set(key, {**figures, "ms": ms})

    def _set(self, key: str, row: dict[str, Any]) -> None:
        value = float(row["ms"])
        if not math.isfinite(value) or value < 0:
            raise LatencyTableError(f"key {key}: ms must be a finite non-negative number, got {value}")
        self._entries[key] = {c: row.get(c) for c in VALUE_COLUMNS}
        self._entries[key]["ms"] = value
        self._ms[key] = value

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, *, runtime: str | None = None, resolution: int | None = None,
                         threads: int | None = None, batch: int | None = None,
                         dtype: str | None = None) -> None:
        """Raise :class:`IncompatibleTableError` if the table was measured for other settings."""
        asked = {"runtime": runtime, "resolution": resolution, "threads": threads,
                 "batch": batch, "dtype": dtype}
        for field, value in asked.items():
            if value is None:
                continue
            have = self._provenance.get(field)
            if have is not None and str(have) != str(value):
                where = f" ({self.path})" if self.path else ""
                if field == "runtime" and backend_of(str(have)) != backend_of(str(value)):
                    raise IncompatibleTableError(
                        f"latency table{where} was measured with backend {backend_of(str(have))!r} "
                        f"(runtime {have!r}), asked for backend {backend_of(str(value))!r} "
                        f"(runtime {value!r}); build a table with 'nas-lut build --backend "
                        f"{backend_of(str(value))}' or choose latency.table=auto")
                raise IncompatibleTableError(
                    f"latency table{where} was measured for {field}={have!r}, asked for "
                    f"{field}={value!r}; build a table for {field}={value!r}")

    def check_host(self, strict: bool = False) -> list[str]:
        """Compare the provenance's device and runtime version with this host's.

        Returns what differs (empty if nothing). On a difference, warns with
        :class:`HostMismatchWarning`, or raises :class:`HostMismatchError` when ``strict``:
        callers about to predict for this machine call it once, not per prediction.
        """
        differences = host_mismatch(self._provenance)
        if differences:
            where = f" {self.path}" if self.path else ""
            message = (f"latency table{where} was measured on another host: "
                       f"{'; '.join(differences)}; its predictions may not hold on this machine "
                       f"(rebuild the table here with 'nas-lut build')")
            if strict:
                raise HostMismatchError(message)
            warnings.warn(message, HostMismatchWarning, stacklevel=2)
        return differences

    def harness_config(self) -> HarnessConfig:
        """The harness the table was measured with (for measuring missing keys alike)."""
        data = self._provenance.get("harness")
        if not isinstance(data, dict):
            raise LatencyTableError("the table's provenance records no harness settings")
        # The off-host runner records facts of its run beside its settings (nas.cost.ort_runner).
        settings = {k: v for k, v in data.items() if k not in RUNNER_RECORDS}
        return HarnessConfig.from_dict(settings)

    # ------------------------------------------------------------------ keys
    def missing_keys(self, specs_or_space: SpecsOrSpace) -> list[str]:
        """Keys that a space, a spec, or specs (or keys) need and the table lacks."""
        return [k for k in keys_for(specs_or_space) if k not in self._ms]

    # ------------------------------------------------------------------ calibration
    @property
    def calibration(self) -> dict[str, Any] | None:
        return self._provenance.get("calibration")

    def set_calibration(self, a: float, b: float, **info: Any) -> None:
        """Store ``ms = a * sum + b`` in the provenance (used by :meth:`predict`)."""
        self._provenance["calibration"] = {"a": float(a), "b": float(b), **info}
        self._refresh_calibration()

    def _refresh_calibration(self) -> None:
        cal = self._provenance.get("calibration")
        self._cal = (float(cal["a"]), float(cal["b"])) if cal else None

    # ------------------------------------------------------------------ prediction
    def predict(self, spec: NetworkSpec, *, calibrated: bool = True) -> float:
        """Predicted milliseconds of ``spec``: the sum of its stem, blocks and head entries.

        With a calibration in the provenance (and ``calibrated``), ``a * sum + b``. Missing
        keys raise :class:`MissingKeysError` naming them: a prediction never measures (the
        table's builder half does: :meth:`build`, :meth:`measure`).
        """
        if spec.resolution != self._provenance["resolution"]:
            self.check_compatible(resolution=spec.resolution)
        keys = spec_key_tuple(spec)
        ms = self._ms
        total = 0.0
        try:
            for key in keys:
                total += ms[key]
        except KeyError:
            missing = [k for k in dict.fromkeys(keys) if k not in ms]
            raise MissingKeysError(missing, "measure them with the table's build() or "
                                   "'nas-lut build', or latency.measure_missing=true") from None
        if calibrated and self._cal is not None:
            a, b = self._cal
            return a * total + b
        return total

    def breakdown(self, spec: NetworkSpec) -> list[tuple[str, float]]:
        """``(key, ms)`` per op of ``spec`` in network order (raises on missing keys)."""
        keys = spec_key_tuple(spec)
        missing = [k for k in dict.fromkeys(keys) if k not in self._ms]
        if missing:
            raise MissingKeysError(missing)
        return [(k, self._ms[k]) for k in keys]

# ---------------------------------------------------------------------------- helpers
def build_table(specs_or_space: SpecsOrSpace, out: str | Path, harness: HarnessConfig, *,
                resolution: int | None = None, method: str | None = None, progress: bool = True,
                callback: Callable[[int, int, str], None] | None = None, note: str = "") -> LatencyTable:
    """Create (or resume / extend) the table in ``out`` and measure what it lacks."""
    out = Path(out)
    items = as_list(specs_or_space)
    if resolution is None:
        resolution = resolution_of(items)
    if (out / PROVENANCE_FILE).is_file():
        table = LatencyTable.load(out, allow_empty=True)  # a build stopped before its first key
        table.check_compatible(runtime=harness.runtime, resolution=resolution,
                               threads=harness.threads, batch=harness.batch, dtype=harness.dtype)
    else:
        table = LatencyTable.create(harness, resolution=resolution, method=method, note=note)
        table.save(out)
    table.build(items, harness, progress=progress, save_to=out, callback=callback)
    return table
