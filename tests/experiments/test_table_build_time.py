"""``python -m experiments.table_build_time`` end to end on a tiny space: a real host-table
build in a child process from empty caches, recorded, summarized, and skipped when rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments import table_build_time

TINY = Path(__file__).resolve().parents[1] / "data" / "spaces" / "space" / "tiny.yaml"


def test_a_build_is_timed_from_empty_caches_recorded_and_not_repeated(tmp_path: Path, capsys) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--backend", "torch", "--space", str(TINY), "--workers", "1", "--out", str(out), "--work", str(work)]
    table_build_time.main(args)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["backend"] == "torch" and rows[0]["workers"] == 1
    assert rows[0]["keys"] > 10 and rows[0]["wall_s"] > 0 and len(rows[0]["load_before"]) == 3
    # The child built into the arm's own cache, not the user's.
    assert len(list((work / "torch-tiny-w1").glob("cache/tables/*/table.csv"))) == 1
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary[f"torch/{TINY}"]["w1"]["speedup_over_1"] == 1.0
    assert "| torch |" in (out / "summary.md").read_text()

    table_build_time.main(args)  # recorded: not built again
    assert "recorded, skipped" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_a_failed_build_stops_with_the_arm_and_the_childs_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="torch-no_such_space-w1: the build failed"):
        table_build_time.main(["--backend", "torch", "--space", "no_such_space", "--workers", "1",
                               "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "out" / "results.jsonl").exists()  # nothing recorded for it
