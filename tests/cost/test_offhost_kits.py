"""Off-host kits per backend: export here, run kit_runner.py on a stand-in board (a
subprocess where torch and nas cannot be imported), import the CSV, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.arch.spec import BlockSpec, NetworkSpec
from nas.cost import kit_runner, ort_runner, sampling
from nas.cost.backend_items import EMPTY_PREFIX
from nas.cost.backends import available_backends
from nas.cost.keys import keys_for_spec
from nas.cost.lut import LatencyTable
from nas.cost.offhost import import_runner_csv
from nas.cost.offhost_kits import export_kit
from nas.cost.table_files import LatencyTableError

# The stand-in board: a meta-path finder refuses the modules named in argv[1] (checked right
# away: the script stops unless each import fails), then runs the runner copied into the kit.
BOARD = r"""
import importlib.abc, runpy, sys
blocked = set(filter(None, sys.argv[1].split(",")))
class Board(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} on this board")
        return None
sys.meta_path.insert(0, Board())
for name in sorted(blocked):
    try:
        __import__(name)
    except ImportError:
        print("blocked", name)
    else:
        raise SystemExit(f"{name} is importable: not a stand-in board")
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
FAST = ["--passes", "2", "--repeats", "3", "--warmup", "1", "--min-run-time", "0",
        "--max-run-time", "0.02", "--no-progress"]
# ExecuTorch's runtime imports torch (executorch.runtime and its pybindings): its board keeps torch.
BOARD_BLOCKS = {"litert": "torch,nas", "openvino": "torch,nas", "executorch": "nas",
                "onnxruntime": "torch,nas"}


def tiny_spec() -> NetworkSpec:
    # One block at 32x32: five keys and their empty models, each converted once.
    return NetworkSpec(blocks=(BlockSpec(3, 16, 8, True, "RE", 2),),
                       stem_channels=8, last_conv=32, head_features=48, num_classes=10,
                       resolution=32)


def on_board(kit: Path, blocked: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", BOARD, blocked, str(kit / "kit_runner.py"),
                           str(kit), *args], capture_output=True, text=True, timeout=180,
                          cwd=kit.parent, check=False)


@pytest.fixture(scope="module", params=list(BOARD_BLOCKS))
def kit(request, tmp_path_factory):
    if request.param not in available_backends():
        pytest.skip(f"{request.param} is not installed")
    out = tmp_path_factory.mktemp(request.param) / "kit"
    export_kit([tiny_spec()], out, request.param, progress=False)
    return request.param, out


def test_kit_runs_on_a_board_without_torch_and_imports_as_a_backend_table(kit):
    backend, out = kit
    manifest = json.loads((out / "manifest.json").read_text())
    keys = list(dict.fromkeys(keys_for_spec(tiny_spec())))
    units = {op["key"]: op for op in manifest["ops"]}
    assert [k for k in units if not k.startswith(EMPTY_PREFIX)] == keys
    assert {units[k]["baseline"] for k in keys} <= set(units)  # every key's empty model is in
    assert manifest["runtime"] == backend and manifest["kit"] == kit_runner.KIT_FORMAT
    assert manifest["precision"] == "fp32" and manifest["delegate"] and manifest["io_layout"]
    for op in units.values():
        assert (out / op["file"]).is_file()
    for source in (kit_runner, ort_runner, sampling):
        assert (out / Path(source.__file__).name).read_text() == Path(source.__file__).read_text()

    csv = out.parent / "board" / "table.csv"
    result = on_board(out, BOARD_BLOCKS[backend], "--threads", "1", "--out", str(csv), *FAST)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in BOARD_BLOCKS[backend].split(","):
        assert f"blocked {name}" in result.stdout
    runner, rows = ort_runner.read_result_csv(csv)
    assert runner["runtime"] == backend and runner["threads"] == 1
    assert {r["key"] for r in rows} == set(units)

    table = import_runner_csv(csv, out.parent / "table", kit_dir=out)
    loaded = LatencyTable.load(out.parent / "table")
    prov = loaded.provenance
    assert prov["runtime"] == prov["backend"] == backend
    assert prov["runtime_version"] == runner["runtime_version"]
    assert prov["delegate"] == manifest["delegate"] and prov["precision"] == "fp32"
    assert prov["threads"] == 1 and prov["net_of_empty_model"] and prov["resolution"] == 32
    assert prov["source"] == "imported from kit_runner.py"
    by_key = {r["key"]: r for r in rows}
    for key in keys:
        entry = loaded.entry(key)
        raw, base = float(by_key[key]["ms"]), float(by_key[units[key]["baseline"]]["ms"])
        # The table file keeps 1e-7 ms.
        assert entry["raw_ms"] == pytest.approx(raw, abs=1e-6)
        assert entry["baseline_ms"] == pytest.approx(base, abs=1e-6)
        assert entry["ms"] == pytest.approx(max(raw - base, 0.001), abs=1e-6)
    assert loaded.predict(tiny_spec()) == pytest.approx(table.predict(tiny_spec()), abs=1e-5)
    assert loaded.predict(tiny_spec()) > 0
    assert loaded.harness_config().runtime == backend


def test_kit_refuses_a_board_without_its_runtime(kit, tmp_path):
    backend, out = kit
    module = kit_runner.RUNTIME_MODULES[backend][0].partition(".")[0]
    result = on_board(out, f"nas,{module}", "--out", str(tmp_path / "x.csv"), *FAST)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert str(out / "manifest.json") in line and f"a {backend} kit" in line


def test_executorch_runtime_needs_torch(kit, tmp_path):
    backend, out = kit
    if backend != "executorch":
        pytest.skip("only ExecuTorch's runtime imports torch")
    result = on_board(out, "nas,torch", "--out", str(tmp_path / "x.csv"), *FAST)
    assert result.returncode == 2 and "executorch.runtime cannot be imported" in result.stderr


def test_runner_names_a_folder_without_manifest(tmp_path):
    runner = Path(kit_runner.__file__)
    result = subprocess.run([sys.executable, str(runner), str(tmp_path), "--out",
                             str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"kit_runner.py: error: {tmp_path / 'manifest.json'}: "
                                     "no manifest (run nas-lut export-ops first)")


def test_import_refuses_a_csv_from_another_kit(tmp_path):
    kits = {}
    for name in ("a", "b"):
        kits[name] = tmp_path / name
        kits[name].mkdir()
        ops = [{"key": f"pool_r{1 if name == 'a' else 2}_i8", "file": "x", "input_shape": [1]}]
        (kits[name] / "manifest.json").write_text(json.dumps(
            {"manifest_schema": 1, "kit": kit_runner.KIT_FORMAT, "runtime": "openvino",
             "kit_id": name * 4, "ops": ops}))
    csv = tmp_path / "t.csv"
    ort_runner.write_result_csv(csv, {"format": kit_runner.RUNNER_FORMAT, "resolution": 32,
                                      "kit": {"kit_id": "aaaa", "runtime": "openvino"}}, [])
    with pytest.raises(LatencyTableError) as err:
        import_runner_csv(csv, tmp_path / "t", kit_dir=kits["b"])
    assert str(err.value) == (f"{csv}: measured with kit 'aaaa' (openvino), not "
                              f"{kits['b'] / 'manifest.json'}'s kit 'bbbb' (openvino)")
