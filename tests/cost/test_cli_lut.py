"""The ``nas-lut`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nas.arch.codecs import save_spec
from nas.arch.spec import BlockSpec, NetworkSpec
from nas.cli.lut import main
from nas.cost.harness import HarnessConfig
from nas.cost.keys import keys_for_space
from nas.cost.lut import LatencyTable
from nas.arch.space import load_space

FAST = HarnessConfig(warmup=1, warmup_time=0.0, repeats=3, min_run_time=0.0, max_run_time=0.05,
                     passes=2)
FAST_ARGS = ["--passes", "1", "--repeats", "3", "--warmup", "1", "--min-run-time", "0",
             "--max-run-time", "0.05", "--no-progress"]


def write_space(folder: Path, *, se=(False, True), acts=("RE", "HS"), exp1=(8, 16), exp2=(32, 48),
                resolution: int = 32) -> Path:
    base = NetworkSpec(
        blocks=(BlockSpec(3, exp1[0], 8, False, "RE", 2), BlockSpec(3, exp2[0], 16, False, "RE", 2),
                BlockSpec(3, exp2[0], 16, False, "RE", 1)),
        stem_channels=8, last_conv=32, head_features=64, num_classes=10, resolution=resolution)
    base_path = save_spec(base, folder / "tiny_base.yaml")
    space = {
        "name": "tiny",
        "base": str(base_path),
        "choices": {"kernel": [3], "se": list(se), "activation": list(acts)},
        "stages": [
            {"out": 8, "stride": 2, "blocks": 1, "expansion": list(exp1)},
            {"out": 16, "stride": 2, "blocks": 2, "expansion": list(exp2), "depth": [-1, 0]},
        ],
    }
    path = folder / "tiny_space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def synthetic_table(space_path: Path, folder: Path) -> Path:
    space = load_space(space_path)
    table = LatencyTable.create(FAST, resolution=32)
    for i, key in enumerate(keys_for_space(space)):
        table.set_entry(key, 0.02 + 0.003 * i)
    table.set_calibration(1.0, 0.1)
    table.save(folder)
    return folder


def test_validate_writes_csv_png_and_prints_figures(tmp_path, capsys, monkeypatch):
    space_path = write_space(tmp_path)
    table_dir = synthetic_table(space_path, tmp_path / "table")
    monkeypatch.chdir(tmp_path)
    args = ["validate", "--table", str(table_dir), "--space", str(space_path), "--n", "6",
            "--seed", "0", "--rounds", "2", "--no-progress"]
    assert main(args) == 0
    # A user's validation goes to a run folder: the table's own report is left alone.
    assert not (table_dir / "validation_tiny.csv").exists()
    (run,) = (tmp_path / "outputs" / "nas-lut").glob("validate-table-*")
    assert (run / "validation_tiny.csv").is_file() and (run / "validation_summary.yaml").is_file()
    capsys.readouterr()
    assert main(args + ["--update-report"]) == 0  # a maintainer updates the shipped report
    out = capsys.readouterr().out
    for word in ("MAPE", "within +-5%", "within +-10%", "Kendall tau", "Spearman rho"):
        assert word in out
    csv_path = table_dir / "validation_tiny.csv"
    assert csv_path.is_file() and (table_dir / "validation_tiny.png").is_file()
    assert len(csv_path.read_text().splitlines()) == 7
    summary = yaml.safe_load((table_dir / "validation_summary.yaml").read_text())
    assert summary["tiny"]["metrics"]["n"] == 6
    assert "against itself" in out
    assert -1.0 <= summary["tiny"]["measurement"]["split_half_kendall_tau"] <= 1.0


def test_build_then_predict(tmp_path, capsys):
    space_path = write_space(tmp_path, se=(False,), acts=("RE",))
    out = tmp_path / "t"
    assert main(["build", "--space", str(space_path), "--out", str(out), *FAST_ARGS]) == 0
    table = LatencyTable.load(out)
    assert table.missing_keys(load_space(space_path)) == []
    assert table.provenance["threads"] == 1 and table.provenance["resolution"] == 32
    assert table.provenance["calibration"]["n"] == 12  # calibrated by default
    assert main(["build", "--space", str(space_path), "--out", str(tmp_path / "raw"), "--no-calibrate",
                 *FAST_ARGS]) == 0
    assert "calibration" not in LatencyTable.load(tmp_path / "raw").provenance
    # A table built without a calibration gets one afterwards, fitted on other networks.
    capsys.readouterr()
    assert main(["calibrate", "--table", str(tmp_path / "raw"), "--space", str(space_path), "--n", "4",
                 "--rounds", "1", *FAST_ARGS]) == 0
    assert LatencyTable.load(tmp_path / "raw").provenance["calibration"]["n"] == 4
    assert "calibration: ms = " in capsys.readouterr().out
    assert main(["predict", "--table", str(out), str(tmp_path / "tiny_base.yaml"), "--breakdown"]) == 0
    assert "ms predicted" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["validate", "--table", "{tmp}/nope", "--space", "mobilenetv3_small"], "no such table"),
    (["validate", "--table", "{tmp}/schema", "--space", "mobilenetv3_small"], "schema version"),
    (["validate", "--table", "{tmp}/schema_ok", "--space", "no_such_space"], "no such space"),
    (["validate", "--table", "{tmp}/schema_ok", "--space", "mobilenetv3_small"], "resolution"),
    (["import", "{tmp}/missing.csv", "--out", "{tmp}/x"], "no such file"),
])
def test_errors_exit_2_with_a_message(tmp_path, capsys, argv, message):
    space_path = write_space(tmp_path)
    synthetic_table(space_path, tmp_path / "schema_ok")
    bad = synthetic_table(space_path, tmp_path / "schema")
    prov = json.loads((bad / "provenance.json").read_text())
    prov["schema_version"] = 0
    (bad / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(SystemExit) as info:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-lut: error:") and message in err
