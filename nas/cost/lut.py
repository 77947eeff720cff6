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
  ``passes`` interleaved passes. Used for onnxruntime and off-host tables.

A missing key is never answered with a default: :meth:`LatencyTable.predict` raises
:class:`MissingKeysError` naming the keys, or measures them when the caller allows.

:meth:`LatencyTable.load` is strict: a duplicate key, a key the parser cannot read, a
latency that is empty, not a number, NaN/inf or not positive, a short row, an empty table
or a provenance that is not an object or lacks a field raises :class:`LatencyTableError`
naming the file, the line (as counted in the file, header = line 1) and the column or
field -- a silently wrong table is worse than none, since every prediction inherits it.
:meth:`LatencyTable.check_host` compares the provenance's device and runtime version with
this machine's (a table is only exact where it was measured) and warns
(:class:`HostMismatchWarning`) or, when strict, raises :class:`HostMismatchError`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import platform
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from nas._io import write_text_atomic
from nas.arch.spec import BlockSpec, NetworkSpec, conv_output_size
from nas.cost import ort_runner
from nas.cost.keys import (
    KEY_COLUMNS,
    BadKeyError,
    SpecsOrSpace,
    bneck_key,
    keys_for,
    keys_for_space,
    parse_key,
    spec_key_tuple,
)
from nas.cost.timing import HarnessConfig, harness_provenance, runtime_version
from nas.errors import NASError
from nas.shipped import shipped_dir

SCHEMA_VERSION = 1
TABLE_FILE = "table.csv"
PROVENANCE_FILE = "provenance.json"
LOG_FILE = "measurements.csv"
METHODS = ("context", "isolated")
VALUE_COLUMNS = ["ms", "median_ms", "q25_ms", "min_ms", "iqr_ms", "mean_ms", "n", "passes",
                 "pass_spread_ms", "loadavg", "measured_at", "method"]
CSV_COLUMNS = ["key", *KEY_COLUMNS, *VALUE_COLUMNS]
LOG_COLUMNS = ["unit", "key", "median_ms", "min_ms", "iqr_ms", "mean_ms", "n", "loadavg", "time"]


class LatencyTableError(NASError, ValueError):
    """A table folder is missing, malformed, or used where it does not apply."""


SHIPPED_TABLES_DIR = shipped_dir("latency_tables")


def resolve_table_dir(name_or_path: str | Path) -> Path:
    """A table folder: a path, or the name of a table shipped under ``latency_tables/``."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = SHIPPED_TABLES_DIR / str(name_or_path)
    if shipped.is_dir():
        return shipped
    names = (sorted(p.name for p in SHIPPED_TABLES_DIR.iterdir() if p.is_dir())
             if SHIPPED_TABLES_DIR.is_dir() else [])
    raise LatencyTableError(f"latency table {str(name_or_path)!r} is neither a folder nor a "
                            f"shipped table (shipped: {names})")


class SchemaVersionError(LatencyTableError):
    """The table was written with another schema version."""


class IncompatibleTableError(LatencyTableError):
    """The table was measured for another runtime, resolution, thread count or batch."""


class HostMismatchError(IncompatibleTableError):
    """``check_host(strict=True)``: the table was measured on another device or runtime version."""


class HostMismatchWarning(UserWarning):
    """The table was measured on another device or runtime version than this host's.

    A warning, not an error, by default: using a table off its host is sometimes intended
    (an imported table predicts for its board), but per-op figures do not carry across
    CPUs (a table built on an AMD EPYC over-predicts an Intel Xeon by up to 29%).
    """


class MissingKeysError(NASError, KeyError):
    """Keys a prediction needs are not in the table (and measuring them was not allowed)."""

    def __init__(self, keys: Sequence[str], hint: str = "") -> None:
        self.keys = list(keys)
        shown = ", ".join(self.keys[:8]) + (f", ... ({len(self.keys)} in all)" if len(self.keys) > 8 else "")
        message = f"latency table has no entry for {len(self.keys)} key(s): {shown}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- host networks
def synthetic_host(key: str) -> NetworkSpec:
    """A small network in which ``key`` occurs (stem -> op -> head), for keys no space covers."""
    f = parse_key(key)
    if f.op == "stem":
        return NetworkSpec(blocks=(BlockSpec(3, f.out, f.out, False, "RE", 1),),
                           stem_channels=f.out, stem_activation=f.act, resolution=f.in_res)
    if f.op == "bneck":
        block = BlockSpec(kernel=f.kernel, expansion=f.exp, out=f.out, se=f.se, activation=f.act,
                          stride=f.stride, dilation=f.dilation)
        return NetworkSpec(blocks=(block,), stem_channels=f.in_ch, resolution=2 * f.in_res)
    filler = BlockSpec(3, f.in_ch, f.in_ch, False, "RE", 1)
    if f.op == "lastconv":
        return NetworkSpec(blocks=(filler,), stem_channels=f.in_ch, resolution=2 * f.in_res,
                           last_conv=f.out, head_activation=f.act)
    if f.op == "pool":
        filler = BlockSpec(3, 16, 16, False, "RE", 1)
        return NetworkSpec(blocks=(filler,), stem_channels=16, resolution=2 * f.in_res,
                           last_conv=f.in_ch)
    # head: the pooled features come from a 7x7 map as in the canonical networks.
    filler = BlockSpec(3, 16, 16, False, "RE", 1)
    if f.exp:
        return NetworkSpec(blocks=(filler,), stem_channels=16, resolution=14, last_conv=f.in_ch,
                           head_features=f.exp, num_classes=f.out, head_activation=f.act)
    return NetworkSpec(blocks=(filler,), stem_channels=16, resolution=14, last_stage="original",
                       last_conv=96, head_features=f.in_ch, num_classes=f.out)


def cover_hosts(space, wanted: Iterable[str], per_key: int, seed: int = 0) -> list[NetworkSpec]:
    """Networks of ``space`` in which every wanted key occurs ``per_key`` times at least.

    Each host draws its stage depths at random and gives every block the candidate whose
    key has been seen least so far (ties broken at random), so the hosts are ordinary
    members of the space and each key meets many different neighbours.
    """
    rng = random.Random(seed)
    base = space.base.resolved()
    wanted = set(wanted) & set(keys_for_space(space))
    counts = {k: 0 for k in wanted}
    hosts: list[NetworkSpec] = []
    guard = 0
    while any(c < per_key for c in counts.values()):
        guard += 1
        if guard > 100000:  # pragma: no cover - every key of the space is reachable
            raise RuntimeError("cover_hosts did not converge")
        blocks: list[BlockSpec] = []
        channels = base.stem_channels
        size = conv_output_size(base.resolution, 2)
        useful = False
        for stage in space.stages:
            depth = rng.choice(stage.depths)
            for b in range(depth):
                stride = stage.stride if b == 0 else 1
                candidates = [
                    BlockSpec(kernel=k, expansion=e, out=stage.out, se=se, activation=a, stride=stride)
                    for k in space.kernels for e in stage.expansions
                    for se in space.se for a in space.activations
                ]
                keyed = [(counts.get(bneck_key(size, channels, c), per_key), rng.random(), i)
                         for i, c in enumerate(candidates)]
                _, _, best = min(keyed)
                block = candidates[best]
                key = bneck_key(size, channels, block)
                if key in counts:
                    useful = useful or counts[key] < per_key
                    counts[key] += 1
                blocks.append(block)
                channels, size = block.out, conv_output_size(size, stride)
        host = base.with_blocks(blocks)
        for key in spec_key_tuple(host):
            if key in counts and not key.startswith("bneck"):
                useful = useful or counts[key] < per_key
                counts[key] += 1
        if useful:
            hosts.append(host)
    return hosts


# ---------------------------------------------------------------------------- the table
class LatencyTable:
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
        method = method or ("isolated" if harness.runtime == "onnxruntime" else "context")
        if method not in METHODS:
            raise LatencyTableError(f"method must be one of {list(METHODS)}, got {method!r}")
        if method == "context" and harness.runtime == "onnxruntime":
            raise LatencyTableError("method 'context' needs a torch runtime; onnxruntime "
                                    "tables are measured 'isolated'")
        provenance = {
            "schema_version": SCHEMA_VERSION,
            **harness_provenance(harness),
            "resolution": int(resolution),
            "method": method,
            "statistic": _statistic_text(harness.pass_statistic, method),
            "source": "measured here",
            "created": _now(),
            "spaces": [],
            "note": note,
        }
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
        provenance = _read_provenance(prov_path, directory)
        entries = _read_table_csv(table_path, allow_empty=allow_empty)
        return cls(provenance, entries, path=directory)

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the table (atomically, file by file) to ``directory`` (default: where it was loaded)."""
        import pandas as pd

        directory = Path(directory) if directory is not None else self.path
        if directory is None:
            raise LatencyTableError("save() needs a folder: the table was not loaded from one")
        directory.mkdir(parents=True, exist_ok=True)
        rows = []
        for key in sorted(self._entries, key=_sort_key):
            rows.append({"key": key, **parse_key(key).as_row(),
                         **{c: self._entries[key].get(c) for c in VALUE_COLUMNS}})
        frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
        self._provenance["n_keys"] = len(rows)
        self._provenance["updated"] = _now()
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
        return HarnessConfig.from_dict(data)

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
    def predict(self, spec: NetworkSpec, *, calibrated: bool = True, measure_missing: bool = False,
                harness: HarnessConfig | None = None, save_to: str | Path | None = None) -> float:
        """Predicted milliseconds of ``spec``: the sum of its stem, blocks and head entries.

        With a calibration in the provenance (and ``calibrated``), ``a * sum + b``.
        Missing keys raise :class:`MissingKeysError` naming them, unless
        ``measure_missing`` is set: then they are measured now (with ``harness``, or the
        harness recorded in the table), added, and saved to ``save_to`` if given.
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
            if not measure_missing:
                raise MissingKeysError(missing, "pass measure_missing=True to measure them, or "
                                       "extend the table with 'nas-lut build'") from None
            self.measure(missing, harness, progress=False, save_to=save_to, hosts=[spec])
            total = sum(ms[key] for key in keys)
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

    # ------------------------------------------------------------------ measuring
    def build(self, specs_or_space: SpecsOrSpace, harness: HarnessConfig | None = None, *,
              progress: bool = True, save_to: str | Path | None = None,
              callback: Callable[[int, int, str], None] | None = None) -> list[str]:
        """Measure the keys ``specs_or_space`` needs that the table lacks (resumable)."""
        items = _as_list(specs_or_space)
        from nas.search.space import SearchSpace

        for item in items:
            if isinstance(item, SearchSpace):
                self.check_compatible(resolution=item.base.resolution)
                if item.name not in self._provenance.setdefault("spaces", []):
                    self._provenance["spaces"].append(item.name)
        return self.measure(self.missing_keys(items), harness, progress=progress,
                            save_to=save_to, hosts=items, callback=callback)

    def measure(self, keys: Iterable[str], harness_cfg: HarnessConfig | None = None, *,
                progress: bool = True, save_to: str | Path | None = None,
                hosts: Iterable[Any] | None = None, passes: int | None = None,
                callback: Callable[[int, int, str], None] | None = None) -> list[str]:
        """Measure ``keys`` with ``harness_cfg`` (default: the table's own harness) and add them.

        ``hosts`` (spaces or specs) are the networks to time the keys in under the
        ``context`` method; keys no host covers get a synthetic host. Every unit of work
        is appended to ``save_to/measurements.csv`` as soon as it is done and the table is
        saved to ``save_to`` at the end, so an interrupted call repeated with the same
        arguments measures only what is left. ``callback(done, total, unit)`` runs after
        each unit. Returns the keys added.
        """
        keys = list(dict.fromkeys(keys))
        for key in keys:
            parse_key(key)
        if not keys:
            if save_to is not None:
                self.save(save_to)
            return []
        cfg = harness_cfg or self.harness_config()
        if self._provenance.get("source") != "measured here" and harness_cfg is None:
            raise LatencyTableError(
                "this table was imported from another device; measuring missing keys here "
                "would mix devices -- pass a harness explicitly if that is intended")
        self.check_compatible(runtime=cfg.runtime, threads=cfg.threads, batch=cfg.batch,
                              dtype=cfg.dtype)
        method = self._provenance.get("method", "context")
        passes = passes or cfg.passes
        save_dir = Path(save_to) if save_to is not None else None
        log_path = save_dir / LOG_FILE if save_dir is not None else None
        units = self._units(keys, hosts or [], method, passes, cfg.seed)
        started = time.perf_counter()
        load_start = ort_runner.loadavg()
        rows = self._run_units(units, set(keys), cfg, method, log_path, progress, callback, save_dir)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_key.setdefault(row["key"], []).append(row)
        added = []
        for key in keys:
            if key not in by_key:  # pragma: no cover - every key has a unit
                raise RuntimeError(f"no measurement for {key}")
            figures = ort_runner.aggregate([{**r, "pass": i} for i, r in enumerate(by_key[key])],
                                           cfg.pass_statistic)
            figures["method"] = method
            self._set(key, figures)
            added.append(key)
        self._provenance.setdefault("builds", []).append({
            "date": _now(), "keys": len(added), "units": len(units),
            "wall_s": round(time.perf_counter() - started, 1),
            "loadavg_start": load_start, "loadavg_end": ort_runner.loadavg(),
            "harness": cfg.to_dict(),
        })
        if save_dir is not None:
            self.save(save_dir)
            if log_path is not None and log_path.is_file():
                log_path.unlink()
        return added

    def _units(self, keys: list[str], hosts: Iterable[Any], method: str, passes: int,
               seed: int) -> list[tuple[str, Any]]:
        """The work list: ``(unit id, payload)``; ids are stable so a rerun can skip them."""
        from nas.search.space import SearchSpace

        if method == "isolated":
            rng = random.Random(seed)
            units = []
            for p in range(passes):
                order = list(keys)
                rng.shuffle(order)
                units.extend((f"iso:{k}:p{p}", k) for k in order)
            return units
        wanted = set(keys)
        covered: set[str] = set()
        units = []
        specs: list[NetworkSpec] = []
        for item in _as_list(hosts):
            if isinstance(item, SearchSpace):
                for i, host in enumerate(cover_hosts(item, wanted, passes, seed=seed)):
                    units.append((f"ctx:{item.name}:{i}:{_spec_id(host)}", host))
                    covered.update(spec_key_tuple(host))
            elif isinstance(item, NetworkSpec):
                specs.append(item.resolved())
        specs = [s for s in dict.fromkeys(specs) if wanted & set(spec_key_tuple(s))]
        rng = random.Random(seed)
        for p in range(passes):
            order = list(specs)
            rng.shuffle(order)
            units.extend((f"ctx:spec:{_spec_id(s)}:p{p}", s) for s in order)
        for s in specs:
            covered.update(spec_key_tuple(s))
        rest = [k for k in keys if k not in covered]
        for p in range(passes):
            units.extend((f"ctx:synthetic:{k}:p{p}", synthetic_host(k)) for k in rest)
        return units

    def _run_units(self, units, wanted: set[str], cfg: HarnessConfig, method: str,
                   log_path: Path | None, progress: bool, callback, save_dir: Path | None):
        from nas.cost.keys import build_op
        from nas.cost.timing import harness_context, item_measurer, measure_in_context

        done_rows = _read_log(log_path) if log_path is not None else []
        done_units = {r["unit"] for r in done_rows}
        rows = [r for r in done_rows if r["key"] in wanted]
        todo = [(uid, payload) for uid, payload in units if uid not in done_units]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="unit",
                       desc=f"latency table ({method}, {cfg.runtime})")
        handle = writer = None
        if log_path is not None and todo:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            new = not log_path.is_file() or log_path.stat().st_size == 0
            handle = open(log_path, "a", newline="", encoding="utf-8")
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
        measure_one = None
        if method == "isolated":
            measure_one = item_measurer(build_op, cfg)
            measure_one.prepare([payload for _, payload in todo], progress=progress)
        try:
            with harness_context(cfg):
                for i, (uid, payload) in enumerate(todo, start=1):
                    stamp = {"loadavg": (ort_runner.loadavg() or [""])[0], "time": _now()}
                    if method == "isolated":
                        results = [(payload, measure_one(payload))]
                    else:
                        _, per_op = measure_in_context(payload, cfg)
                        results = [(k, t.to_dict()) for k, t in per_op]
                    new_rows = [{"unit": uid, "key": k, "median_ms": s["median_ms"],
                                 "min_ms": s["min_ms"],
                                 "iqr_ms": s["iqr_ms"], "mean_ms": s["mean_ms"], "n": s["n"], **stamp}
                                for k, s in results if k in wanted]
                    rows.extend(new_rows)
                    if writer is not None:
                        if not new_rows:  # record the unit as done even if it added nothing
                            new_rows = [{"unit": uid, "key": "", "median_ms": 0, "min_ms": 0, "iqr_ms": 0,
                                         "mean_ms": 0, "n": 0, **stamp}]
                        writer.writerows(new_rows)
                        handle.flush()
                    if bar is not None:
                        bar.update(1)
                    if callback is not None:
                        callback(i, len(todo), uid)
        finally:
            if handle is not None:
                handle.close()
            if bar is not None:
                bar.close()
        return rows


# ---------------------------------------------------------------------------- helpers
def build_table(specs_or_space: SpecsOrSpace, out: str | Path, harness: HarnessConfig, *,
                resolution: int | None = None, method: str | None = None, progress: bool = True,
                callback: Callable[[int, int, str], None] | None = None, note: str = "") -> LatencyTable:
    """Create (or resume / extend) the table in ``out`` and measure what it lacks."""
    out = Path(out)
    items = _as_list(specs_or_space)
    if resolution is None:
        resolution = _resolution_of(items)
    if (out / PROVENANCE_FILE).is_file():
        table = LatencyTable.load(out, allow_empty=True)  # a build stopped before its first key
        table.check_compatible(runtime=harness.runtime, resolution=resolution,
                               threads=harness.threads, batch=harness.batch, dtype=harness.dtype)
    else:
        table = LatencyTable.create(harness, resolution=resolution, method=method, note=note)
        table.save(out)
    table.build(items, harness, progress=progress, save_to=out, callback=callback)
    return table


# ---------------------------------------------------------------------------- host check
def host_device(runtime: str) -> str:
    """This machine's device for ``runtime``: the GPU name for torch-cuda, else the CPU model."""
    if runtime == "torch-cuda":
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except ImportError:
            pass
        return "no CUDA device"
    return ort_runner.cpu_model()


def _host_runtime_version(runtime: str) -> str:
    try:
        return str(runtime_version(runtime))
    except ImportError:
        return "not installed"


def host_mismatch(provenance: dict[str, Any]) -> list[str]:
    """What differs between the host recorded in a table's provenance and this machine.

    Compares the device (CPU model, or GPU for torch-cuda), the runtime's version and the
    machine architecture; each difference reads ``"<what>: table '<x>', this host '<y>'"``.
    A field the provenance does not record is reported too: the table cannot vouch for it.
    """
    runtime = str(provenance.get("runtime", ""))
    recorded_host = provenance.get("host") if isinstance(provenance.get("host"), dict) else {}
    differences = []
    table_device = provenance.get("device") or recorded_host.get("cpu_model")
    here = host_device(runtime)
    if table_device is None:
        differences.append(f"device: table records none, this host {here!r}")
    elif str(table_device) != here:
        kind = "GPU" if runtime == "torch-cuda" else "CPU"
        differences.append(f"{kind}: table {str(table_device)!r}, this host {here!r}")
    table_version = provenance.get("runtime_version")
    here_version = _host_runtime_version(runtime)
    if table_version is None:
        differences.append(f"{runtime} version: table records none, this host {here_version!r}")
    elif str(table_version) != here_version:
        differences.append(f"{runtime} version: table {str(table_version)!r}, "
                           f"this host {here_version!r}")
    machine = recorded_host.get("machine")
    if machine and str(machine) != platform.machine():
        differences.append(f"architecture: table {str(machine)!r}, this host {platform.machine()!r}")
    return differences


# ---------------------------------------------------------------------------- strict reading
_REQUIRED_PROVENANCE = ("runtime", "resolution", "threads", "batch")
_INT_COLUMNS = ("n", "passes")
_TEXT_COLUMNS = ("measured_at", "method")
# A plain decimal number; float() alone would also take "1_0", "inf" and "nan".
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _read_provenance(path: Path, directory: Path) -> dict[str, Any]:
    """The provenance object, checked for its schema version and required fields."""
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise LatencyTableError(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise LatencyTableError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(provenance, dict):
        raise LatencyTableError(f"{path}: provenance must be a JSON object, got a "
                                f"{type(provenance).__name__}")
    version = provenance.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(f"{directory}: table schema version {version!r}, this code "
                                 f"reads version {SCHEMA_VERSION}; rebuild the table")
    for name in _REQUIRED_PROVENANCE:
        if name not in provenance:
            raise LatencyTableError(f"{path}: provenance lacks field '{name}'")
    if not isinstance(provenance["runtime"], str) or not provenance["runtime"]:
        raise LatencyTableError(f"{path}: field 'runtime' must be a non-empty string, got "
                                f"{provenance['runtime']!r}")
    for name in ("resolution", "threads", "batch"):
        value = provenance[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LatencyTableError(f"{path}: field '{name}' must be a positive integer, got "
                                    f"{value!r}")
    for name in ("host", "harness", "calibration"):
        if provenance.get(name) is not None and not isinstance(provenance[name], dict):
            raise LatencyTableError(f"{path}: field '{name}' must be a JSON object, got "
                                    f"{provenance[name]!r:.60}")
    calibration = provenance.get("calibration")
    for name in ("a", "b") if calibration else ():
        value = calibration.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LatencyTableError(f"{path}: field 'calibration.{name}' must be a finite number, "
                                    f"got {value!r}")
    return provenance


def _read_table_csv(path: Path, *, allow_empty: bool) -> dict[str, dict[str, Any]]:
    """The entries of ``table.csv`` by key; every defect names the file, line and column."""
    entries: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LatencyTableError(f"{path}: cannot read: {err}") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM (spreadsheet export) is not a defect
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise LatencyTableError(f"{path}: line {line}: not UTF-8 text ({err.reason} at byte "
                                f"{err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise LatencyTableError(f"{path}: empty file (expected the header line "
                                    f"{','.join(CSV_COLUMNS[:2])},...,ms,...)")
        missing = [c for c in ("key", "ms") if c not in header]
        if missing:
            raise LatencyTableError(f"{path}: line 1 (header): missing column(s) {missing}")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise LatencyTableError(f"{path}: line 1 (header): column(s) {repeated} appear twice")
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # a blank line carries nothing
            if len(cells) != len(header):
                raise LatencyTableError(f"{path}: line {line}: {len(cells)} field(s), the "
                                        f"header has {len(header)} (a truncated row?)")
            row = dict(zip(header, cells))
            key = row["key"]
            try:
                parse_key(key)
            except BadKeyError as err:
                raise LatencyTableError(f"{path}: line {line}, column 'key': {err}") from None
            if key in first_line:
                raise LatencyTableError(f"{path}: line {line}, column 'key': duplicate key "
                                        f"{key!r} (first at line {first_line[key]})")
            first_line[key] = line
            entries[key] = _row_figures(row, path, line)
    except csv.Error as err:
        raise LatencyTableError(f"{path}: line {reader.line_num}: unreadable CSV ({err})") from None
    if not entries and not allow_empty:
        raise LatencyTableError(f"{path}: no rows after the header (line 1); a table holds at "
                                "least one key")
    return entries


def _row_figures(row: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    """The value columns of one CSV row: ``ms`` must be a positive number, others may be empty."""
    figures: dict[str, Any] = {"ms": _cell_number(row["ms"], path, line, "ms", required=True)}
    for column in VALUE_COLUMNS:
        if column == "ms" or column not in row:
            continue
        if column in _TEXT_COLUMNS:
            figures[column] = row[column] or None
            continue
        value = _cell_number(row[column], path, line, column, required=False)
        if column in _INT_COLUMNS and value is not None and value.is_integer():
            value = int(value)
        figures[column] = value
    return figures


def _cell_number(cell: str, path: Path, line: int, column: str, *, required: bool) -> float | None:
    """One numeric cell: ``ms`` (``required``) must be > 0, the other figures >= 0 or empty."""
    where = f"{path}: line {line}, column '{column}'"
    text = cell.strip()
    if not text:
        if required:
            raise LatencyTableError(f"{where}: empty value, expected milliseconds > 0")
        return None
    if not _NUMBER.fullmatch(text):
        kind = "not a finite number" if text.lower().lstrip("+-") in ("nan", "inf", "infinity") \
            else "not a number"
        raise LatencyTableError(f"{where}: {cell[:40]!r} is {kind}")
    value = float(text)
    if not math.isfinite(value):  # e.g. "1e999"
        raise LatencyTableError(f"{where}: {cell[:40]!r} is not a finite number")
    if required and value <= 0:
        raise LatencyTableError(f"{where}: latency must be > 0 ms, got {cell[:40]!r}")
    if value < 0:
        raise LatencyTableError(f"{where}: must be >= 0, got {cell[:40]!r}")
    return value


def _statistic_text(statistic: str, method: str) -> str:
    """What an entry's ``ms`` is, in words, for the provenance."""
    where = "host networks (context)" if method == "context" else "interleaved passes"
    if statistic == "min":
        return f"minimum over all samples of all {where} (best of N)"
    if statistic == "q25":
        return f"lower quartile of the per-pass medians over {where}"
    return f"median of the per-pass medians over {where}"


def _resolution_of(items: list[Any]) -> int:
    from nas.search.space import SearchSpace

    found = set()
    for item in items:
        if isinstance(item, SearchSpace):
            found.add(item.base.resolution)
        elif isinstance(item, NetworkSpec):
            found.add(item.resolution)
    if len(found) != 1:
        raise LatencyTableError(f"a table holds one input resolution; the items have {sorted(found)}")
    return found.pop()


def _as_list(items: Any) -> list[Any]:
    from nas.search.space import SearchSpace

    if isinstance(items, (NetworkSpec, SearchSpace, str)):
        return [items]
    return list(items)


def _spec_id(spec: NetworkSpec) -> str:
    from nas.arch.codecs import to_string

    return hashlib.sha1(to_string(spec).encode()).hexdigest()[:12]


def _sort_key(key: str) -> tuple:
    f = parse_key(key)
    order = {"stem": 0, "bneck": 1, "lastconv": 2, "pool": 3, "head": 4}[f.op]
    return (order, -f.in_res, f.in_ch, f.out, f.exp, f.kernel, f.stride, f.se, f.act, f.dilation, key)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                row["median_ms"] = float(row["median_ms"])
                row["min_ms"] = float(row.get("min_ms") or row["median_ms"])
                row["iqr_ms"] = float(row["iqr_ms"])
                row["mean_ms"] = float(row["mean_ms"])
                row["n"] = int(row["n"])
            except (TypeError, ValueError, KeyError):
                continue  # a line cut short by an interruption
            rows.append(row)
    return rows


__all__ = [
    "CSV_COLUMNS", "HostMismatchError", "HostMismatchWarning", "IncompatibleTableError",
    "LatencyTable", "LatencyTableError", "METHODS", "MissingKeysError", "SCHEMA_VERSION",
    "SchemaVersionError", "build_table", "cover_hosts", "host_device", "host_mismatch",
    "synthetic_host",
]
