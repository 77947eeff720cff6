"""Off-host tables: export-ops, the standalone ORT runner (as a subprocess), import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.arch.spec import BlockSpec, NetworkSpec
from nas.cost import ort_runner, sampling
from nas.cost.keys import keys_for_spec
from nas.cost.lut import LatencyTable
from nas.cost.offhost import export_ops, import_runner_csv
from nas.cost.table_files import LatencyTableError

RUNNER = Path(ort_runner.__file__)
SAMPLING = Path(sampling.__file__)


def tiny_spec() -> NetworkSpec:
    # One block: every op is an ONNX export (the slow part), so keep them few.
    return NetworkSpec(blocks=(BlockSpec(3, 16, 8, True, "RE", 2),),
                       stem_channels=8, last_conv=32, head_features=48, num_classes=10,
                       resolution=32)


@pytest.mark.parametrize("source, extra", [(RUNNER, {"nas", "sampling"}), (SAMPLING, set())])
def test_runner_imports_only_stdlib_numpy_and_onnxruntime(source, extra):
    """What goes to a board imports no torch; the runner's statistics come from sampling.py."""
    tree = ast.parse(source.read_text())
    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "tqdm", "__future__"} | extra
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        assert set(names) <= allowed, f"{source.name} imports {names}"


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_run_import_round_trip(tmp_path, exporter):
    spec = tiny_spec()
    manifest_path = export_ops([spec], tmp_path / "ops", progress=False, exporter=exporter)
    manifest = json.loads(manifest_path.read_text())
    keys = [op["key"] for op in manifest["ops"]]
    assert keys == list(dict.fromkeys(keys_for_spec(spec)))
    assert manifest["resolution"] == 32 and manifest["batch"] == 1
    for op in manifest["ops"]:
        assert (tmp_path / "ops" / op["file"]).is_file()
        assert op["input_shape"][0] == 1
    assert (tmp_path / "ops" / "manifest.csv").is_file()
    runner_copy = tmp_path / "ops" / "ort_runner.py"
    assert runner_copy.read_text() == RUNNER.read_text()
    assert (tmp_path / "ops" / "sampling.py").read_text() == SAMPLING.read_text()

    # Run the copied runner with torch and the project made unimportable, as on a board.
    out = tmp_path / "board" / "table.csv"
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['nas'] = None; "
            f"sys.argv = ['ort_runner.py', {str(tmp_path / 'ops')!r}, '--threads', '1', '--out', "
            f"{str(out)!r}, '--passes', '2', '--repeats', '3', '--min-run-time', '0', "
            "'--max-run-time', '0.05', '--no-progress']; "
            f"runpy.run_path({str(runner_copy)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    provenance, rows = ort_runner.read_result_csv(out)
    assert provenance["runtime"] == "onnxruntime" and provenance["threads"] == 1
    assert {r["key"] for r in rows} == set(keys)

    table = import_runner_csv(out, tmp_path / "table")
    loaded = LatencyTable.load(tmp_path / "table")
    assert set(loaded.keys) == set(keys)
    assert loaded.provenance["runtime"] == "onnxruntime"
    assert loaded.provenance["threads"] == 1 and loaded.provenance["batch"] == 1
    assert loaded.provenance["resolution"] == 32
    assert loaded.provenance["device"] == sampling.cpu_model()
    assert loaded.provenance["runtime_version"] == provenance["runtime_version"]
    # The CSV keeps entries to 1e-7 ms, so a sum of a few entries moves by up to ~1e-6 ms.
    assert loaded.predict(spec) == pytest.approx(table.predict(spec), abs=1e-5)
    assert loaded.predict(spec) > 0
    loaded.check_compatible(runtime="onnxruntime", resolution=32)
    # End-to-end checks of the table export networks the way its ops were exported.
    assert loaded.harness_config().onnx_exporter == exporter
    # An imported table is not extended here without an explicit harness (that would mix devices).
    with pytest.raises(LatencyTableError, match="imported"):
        loaded.build([spec.replace(num_classes=11)], progress=False)


def test_import_rejects_a_csv_without_runner_provenance(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("key,median_ms\npool_r7_i960,0.01\n")
    with pytest.raises(LatencyTableError, match="provenance"):
        import_runner_csv(path, tmp_path / "t")


def test_runner_reports_a_missing_manifest(tmp_path):
    result = subprocess.run([sys.executable, str(RUNNER), str(tmp_path), "--out",
                             str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no manifest" in result.stderr
