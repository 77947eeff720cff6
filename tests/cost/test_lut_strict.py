"""Strict latency-table loading and the host check.

Every defect of a table folder must surface as one :class:`LatencyTableError` line naming
the file, the line (header = line 1) and the column or provenance field -- never as a
silently wrong prediction or a pandas/AttributeError traceback. A table measured on
another CPU or runtime version must say so when it is used for prediction here.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable

import pytest

from nas.arch.codecs import save_spec
from nas.cli.lut import main
from nas.cost import sampling
from nas.cost.host_check import host_mismatch
from nas.cost.keys import keys_for_space
from nas.cost.lut import LatencyTable
from nas.cost.table_files import (
    HostMismatchError,
    HostMismatchWarning,
    LatencyTableError,
    resolve_table_dir,
)
from test_lut import FAST, known_table, tiny_space

FOREIGN_CPU = "Imaginary CPU 9000 @ 1.00GHz"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def valid_table(tmp_path_factory) -> Path:
    """A small valid table folder (every key of the tiny space), measured 'here'."""
    table, _ = known_table(tiny_space(se=(False,)))
    return table.save(tmp_path_factory.mktemp("valid"))


def copy_table(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("table.csv", "provenance.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ---------------------------------------------------------------------------- corruptions
def _rows(folder: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO((folder / "table.csv").read_text(encoding="utf-8"))))


def _write_rows(folder: Path, rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    (folder / "table.csv").write_text(out.getvalue(), encoding="utf-8")


def set_cell(line: int, column: str, value: str) -> Callable[[Path], None]:
    """Put ``value`` into ``column`` on file line ``line`` (header = 1) of table.csv."""
    def corrupt(folder: Path) -> None:
        rows = _rows(folder)
        rows[line - 1][rows[0].index(column)] = value
        _write_rows(folder, rows)
    return corrupt


def duplicate_line_2(folder: Path) -> None:
    rows = _rows(folder)
    _write_rows(folder, rows + [list(rows[1])])


def truncate_line_3(folder: Path) -> None:
    lines = (folder / "table.csv").read_text().splitlines()
    lines[2] = lines[2][: lines[2].index(",", lines[2].index(",") + 1)]  # cut after 2 fields
    (folder / "table.csv").write_text("\n".join(lines) + "\n")


def drop_ms_column(folder: Path) -> None:
    rows = _rows(folder)
    i = rows[0].index("ms")
    _write_rows(folder, [r[:i] + r[i + 1:] for r in rows])


def write_table(text: bytes) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        (folder / "table.csv").write_bytes(text)
    return corrupt


def header_only(folder: Path) -> None:
    _write_rows(folder, _rows(folder)[:1])


def edit_provenance(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Replace the provenance by ``change(provenance)`` (or the dict it edited in place)."""
    def corrupt(folder: Path) -> None:
        prov = json.loads((folder / "provenance.json").read_text())
        result = change(prov)
        (folder / "provenance.json").write_text(json.dumps(prov if result is None else result))
    return corrupt


def _drop(field: str) -> Callable[[dict], None]:
    def change(prov: dict) -> None:
        del prov[field]
    return change


def _set(field: str, value: object) -> Callable[[dict], None]:
    return lambda prov: prov.__setitem__(field, value)


BAD_TABLES = [
    # (id, corruption, file named, substrings the message must contain)
    ("duplicate-key", duplicate_line_2, "table.csv", ["duplicate key", "first at line 2", "column 'key'"]),
    ("malformed-key", set_cell(3, "key", "bneck_r16_i8_k3_eX_c8_s2_re"), "table.csv",
     ["line 3", "column 'key'", "not a latency key"]),
    ("unknown-op-key", set_cell(4, "key", "conv_r7_i3"), "table.csv", ["line 4", "column 'key'"]),
    ("empty-key", set_cell(2, "key", ""), "table.csv", ["line 2", "column 'key'"]),
    ("truncated-number", set_cell(3, "ms", "1.2."), "table.csv", ["line 3", "column 'ms'", "'1.2.'"]),
    ("text", set_cell(3, "ms", "abc"), "table.csv", ["line 3", "column 'ms'", "not a number"]),
    ("empty-value", set_cell(3, "ms", ""), "table.csv", ["line 3", "column 'ms'", "empty"]),
    ("nan", set_cell(3, "ms", "nan"), "table.csv", ["line 3", "column 'ms'", "finite"]),
    ("inf", set_cell(5, "ms", "inf"), "table.csv", ["line 5", "column 'ms'", "finite"]),
    ("overflow", set_cell(5, "ms", "1e999"), "table.csv", ["line 5", "column 'ms'", "finite"]),
    ("underscore", set_cell(3, "ms", "1_0"), "table.csv", ["line 3", "column 'ms'", "not a number"]),
    ("negative", set_cell(3, "ms", "-3"), "table.csv", ["line 3", "column 'ms'", "> 0"]),
    ("zero", set_cell(3, "ms", "0"), "table.csv", ["line 3", "column 'ms'", "> 0"]),
    ("bad-other-figure", set_cell(4, "iqr_ms", "x"), "table.csv", ["line 4", "column 'iqr_ms'"]),
    ("truncated-row", truncate_line_3, "table.csv", ["line 3", "field(s)"]),
    ("missing-ms-column", drop_ms_column, "table.csv", ["line 1", "missing column", "'ms'"]),
    ("empty-csv", write_table(b""), "table.csv", ["empty file"]),
    ("header-only", header_only, "table.csv", ["no rows"]),
    ("not-utf8", write_table(b"key,ms\nstem_r32_i3_k3_c8_s2_hs,\xff\xfe\n"), "table.csv",
     ["line 2", "not UTF-8"]),
    ("provenance-list", edit_provenance(lambda prov: [prov]), "provenance.json", ["JSON object", "list"]),
    ("provenance-string", edit_provenance(lambda prov: "table"), "provenance.json", ["JSON object"]),
    ("provenance-no-runtime", edit_provenance(_drop("runtime")), "provenance.json", ["field 'runtime'"]),
    ("provenance-no-threads", edit_provenance(_drop("threads")), "provenance.json", ["field 'threads'"]),
    ("provenance-bad-resolution", edit_provenance(_set("resolution", "32")), "provenance.json",
     ["field 'resolution'", "positive integer"]),
    ("provenance-bad-calibration", edit_provenance(_set("calibration", {"a": "x", "b": 0})),
     "provenance.json", ["field 'calibration.a'"]),
    ("provenance-calibration-list", edit_provenance(_set("calibration", [1, 2])), "provenance.json",
     ["field 'calibration'"]),
    ("provenance-invalid-json", lambda folder: (folder / "provenance.json").write_text("{\"runtime\": "),
     "provenance.json", ["not valid JSON"]),
]


@pytest.mark.parametrize("corrupt, file_name, expected",
                         [pytest.param(c, f, e, id=i) for i, c, f, e in BAD_TABLES])
def test_bad_tables_raise_one_line_naming_file_row_and_column(valid_table, tmp_path, corrupt,
                                                              file_name, expected):
    folder = copy_table(valid_table, tmp_path / "bad")
    corrupt(folder)
    # Only LatencyTableError may come out: anything else fails the test as an error.
    with pytest.raises(LatencyTableError) as info:
        LatencyTable.load(folder)
    message = str(info.value)
    assert "\n" not in message
    assert str(folder / file_name) in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


def test_duplicate_key_names_both_lines(valid_table, tmp_path):
    folder = copy_table(valid_table, tmp_path / "dup")
    duplicate_line_2(folder)
    last = len(_rows(folder))
    with pytest.raises(LatencyTableError, match=rf"line {last}, column 'key': duplicate key .* "
                                                r"\(first at line 2\)"):
        LatencyTable.load(folder)


def test_valid_and_shipped_tables_still_load(valid_table, tmp_path):
    loaded = LatencyTable.load(valid_table)
    assert len(loaded) == len(keys_for_space(tiny_space(se=(False,))))
    assert loaded.entry(loaded.keys[0])["n"] == 5
    # A saved-then-loaded table saves to the same CSV (no NaN/None drift).
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "table.csv").read_text() == (valid_table / "table.csv").read_text()
    for folder in ("cpu-torch-1t-b1-224", "cpu-ort-1t-b1-224"):
        assert len(LatencyTable.load(resolve_table_dir(folder))) > 800
    empty = LatencyTable.create(FAST, resolution=32).save(tmp_path / "empty")
    assert len(LatencyTable.load(empty, allow_empty=True)) == 0  # what a stopped build resumes


# ---------------------------------------------------------------------------- host check
def foreign(folder: Path, **fields: object) -> Path:
    """Make the table's provenance say it was measured on another CPU (and ``fields``)."""
    prov = json.loads((folder / "provenance.json").read_text())
    prov["device"] = FOREIGN_CPU
    prov["host"]["cpu_model"] = FOREIGN_CPU
    prov.update(fields)
    (folder / "provenance.json").write_text(json.dumps(prov))
    return folder


def test_table_from_this_host_does_not_warn(valid_table):
    table = LatencyTable.load(valid_table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert table.check_host() == []
        assert table.check_host(strict=True) == []


def test_another_cpu_warns_naming_both_and_strict_raises(valid_table, tmp_path):
    table = LatencyTable.load(foreign(copy_table(valid_table, tmp_path / "t")))
    here = sampling.cpu_model()
    with pytest.warns(HostMismatchWarning) as record:
        differences = table.check_host()
    message = str(record[0].message)
    assert FOREIGN_CPU in message and here in message and "CPU" in message
    assert differences == [f"CPU: table {FOREIGN_CPU!r}, this host {here!r}"]
    with pytest.raises(HostMismatchError) as info:
        table.check_host(strict=True)
    assert isinstance(info.value, LatencyTableError)
    assert FOREIGN_CPU in str(info.value) and here in str(info.value)


def test_another_runtime_version_is_a_mismatch(valid_table):
    prov = dict(LatencyTable.load(valid_table).provenance, runtime_version="0.0.1-elsewhere")
    (difference,) = host_mismatch(prov)
    assert difference.startswith("torch-cpu version: table '0.0.1-elsewhere', this host '")


def test_validation_reports_table_and_host_device(valid_table, tmp_path, monkeypatch):
    from nas.cost import validate as val

    table = LatencyTable.load(foreign(copy_table(valid_table, tmp_path / "t")))
    measured = lambda specs, *a, **k: [  # noqa: E731 - a stand-in for timing end to end
        {"ms": 1.0 + i, "median_ms": 1.0 + i, "q25_ms": 1.0 + i, "min_ms": 1.0 + i,
         "iqr_ms": 0.0, "pass_spread_ms": 0.0, "rounds_ms": [1.0 + i, 1.0 + i],
         "rounds_min_ms": [1.0 + i, 1.0 + i], "loadavg": ""} for i in range(len(specs))]
    monkeypatch.setattr(val, "measure_end_to_end", measured)
    report = val.validate(table, tiny_space(se=(False,)), n=4, progress=False)
    here = sampling.cpu_model()
    assert report.settings["table_device"] == FOREIGN_CPU
    assert report.settings["host_device"] == here
    assert any(FOREIGN_CPU in d for d in report.settings["host_mismatch"])
    text = report.format()
    assert f"table measured on {FOREIGN_CPU}, validated on {here}" in text
    assert "another host" in text


# ---------------------------------------------------------------------------- nas-lut predict
@pytest.fixture()
def foreign_table_and_spec(valid_table, tmp_path) -> tuple[Path, Path]:
    folder = foreign(copy_table(valid_table, tmp_path / "foreign"))
    return folder, save_spec(tiny_space(se=(False,)).base, tmp_path / "base.yaml")


def test_predict_prints_the_mismatch_as_one_stderr_line(foreign_table_and_spec, capsys):
    folder, spec = foreign_table_and_spec
    assert main(["predict", "--table", str(folder), str(spec)]) == 0
    captured = capsys.readouterr()
    assert "ms predicted" in captured.out
    (line,) = [ln for ln in captured.err.splitlines() if "another host" in ln]
    assert line.startswith("nas-lut: warning: latency table") and FOREIGN_CPU in line


def test_predict_strict_exits_2_with_one_line(foreign_table_and_spec):
    folder, spec = foreign_table_and_spec
    result = subprocess.run([sys.executable, "-m", "nas.cli.lut", "predict", "--table", str(folder),
                             "--strict", str(spec)], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas-lut: error: latency table")
    assert FOREIGN_CPU in lines[0] and "ms predicted" not in result.stdout


def test_predict_on_a_corrupt_table_exits_2_without_traceback(valid_table, tmp_path, capsys):
    folder = copy_table(valid_table, tmp_path / "dup")
    duplicate_line_2(folder)
    with pytest.raises(SystemExit) as info:
        main(["predict", "--table", str(folder), "large"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-lut: error:") and "duplicate key" in err and err.count("\n") == 1
