"""A latency table's files: layout, errors, and the strict reading of every row and field."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from nas.arch.spec import NetworkSpec
from nas.cost.keys import BadKeyError, KEY_COLUMNS, parse_key
from nas.errors import NASError
from nas.shipped import shipped_dir


SCHEMA_VERSION = 1
TABLE_FILE = "table.csv"
PROVENANCE_FILE = "provenance.json"
LOG_FILE = "measurements.csv"
METHODS = ("context", "isolated")
# raw_ms / baseline_ms: a table measured through a deployment backend stores in ``ms`` the
# unit's figure less its empty model's (nas.cost.backend_items); both are kept. Empty elsewhere.
VALUE_COLUMNS = ["ms", "median_ms", "q25_ms", "min_ms", "iqr_ms", "mean_ms", "n", "passes",
                 "pass_spread_ms", "loadavg", "measured_at", "method", "raw_ms", "baseline_ms"]
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

# ---------------------------------------------------------------------------- strict reading
_REQUIRED_PROVENANCE = ("runtime", "resolution", "threads", "batch")
_INT_COLUMNS = ("n", "passes")
_TEXT_COLUMNS = ("measured_at", "method")
# A plain decimal number; float() alone would also take "1_0", "inf" and "nan".
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def read_provenance(path: Path, directory: Path) -> dict[str, Any]:
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


def read_table_csv(path: Path, *, allow_empty: bool) -> dict[str, dict[str, Any]]:
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


def statistic_text(statistic: str, method: str) -> str:
    """What an entry's ``ms`` is, in words, for the provenance."""
    where = "host networks (context)" if method == "context" else "interleaved passes"
    if statistic == "min":
        return f"minimum over all samples of all {where} (best of N)"
    if statistic == "q25":
        return f"lower quartile of the per-pass medians over {where}"
    return f"median of the per-pass medians over {where}"


def resolution_of(items: list[Any]) -> int:
    from nas.arch.space import SearchSpace

    found = set()
    for item in items:
        if isinstance(item, SearchSpace):
            found.add(item.base.resolution)
        elif isinstance(item, NetworkSpec):
            found.add(item.resolution)
    if len(found) != 1:
        raise LatencyTableError(f"a table holds one input resolution; the items have {sorted(found)}")
    return found.pop()


def as_list(items: Any) -> list[Any]:
    from nas.arch.space import SearchSpace

    if isinstance(items, (NetworkSpec, SearchSpace, str)):
        return [items]
    return list(items)


def spec_id(spec: NetworkSpec) -> str:
    from nas.arch.codecs import to_string

    return hashlib.sha1(to_string(spec).encode()).hexdigest()[:12]


def key_sort_order(key: str) -> tuple:
    f = parse_key(key)
    order = {"stem": 0, "bneck": 1, "lastconv": 2, "pool": 3, "head": 4}[f.op]
    return (order, -f.in_res, f.in_ch, f.out, f.exp, f.kernel, f.stride, f.se, f.act, f.dilation, key)


def read_log(path: Path) -> list[dict[str, Any]]:
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
