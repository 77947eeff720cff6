"""The studies' shared plumbing: common options, the run's set-up, resumable rows, stages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from experiments import harness


def test_common_options_only_when_asked_with_their_defaults_and_help(tmp_path: Path) -> None:
    parser = harness.study_parser("doc")
    harness.add_common(parser, out=tmp_path / "out", threads=True, help={"threads": "my threads"})
    args = parser.parse_args([])
    assert vars(args) == {"out": tmp_path / "out", "threads": 1}
    assert "my threads" in parser.format_help() and "--work" not in parser.format_help()
    parser = harness.study_parser(None)
    harness.add_common(parser, work=tmp_path / "w", seed=3, force=True)
    assert vars(parser.parse_args(["--seed", "5", "--force"])) == {"work": tmp_path / "w", "seed": 5, "force": True}


def test_start_sets_threads_and_makes_the_folders(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        harness.start(argparse.Namespace(out=tmp_path / "a" / "out", work=tmp_path / "work", threads=1))
        assert torch.get_num_threads() == 1
        assert (tmp_path / "a" / "out").is_dir() and (tmp_path / "work").is_dir()
        harness.start(argparse.Namespace(out=None))  # a study without --work, --out unset
    finally:
        torch.set_num_threads(threads)


def test_rows_resume_across_files_and_skip_a_torn_line(tmp_path: Path) -> None:
    first, second = tmp_path / "runs-a.jsonl", tmp_path / "runs-b.jsonl"
    harness.append_row(first, {"seed": 0, "top1": 0.5})
    first.write_text(first.read_text() + '{"seed": 1, "to')  # killed mid-write
    harness.append_row(first, {"seed": 2, "top1": 0.75})
    harness.append_row(second, {"seed": 3})
    assert harness.read_rows([first, second, tmp_path / "none.jsonl"]) == [
        {"seed": 0, "top1": 0.5}, {"seed": 2, "top1": 0.75}, {"seed": 3}]


def test_stages_add_up_over_resumed_invocations(tmp_path: Path, capsys) -> None:
    path = tmp_path / "stages.json"
    assert harness.Stages(path).run("train", lambda: 7) == 7
    again = harness.Stages(path)
    again.run("train", lambda: None)
    record = json.loads(path.read_text())["train"]
    assert record["invocations"] == 2 and record["seconds"] >= 0
    assert len(record["loadavg_start"]) == len(record["loadavg_end"]) == 3
    assert "== train done" in capsys.readouterr().out


def test_summaries_keep_their_key_order_and_end_in_a_newline(tmp_path: Path) -> None:
    text = harness.write_yaml(tmp_path / "s.yaml", {"z": 1, "a": [0.5]})
    assert (tmp_path / "s.yaml").read_text() == text == "z: 1\na:\n- 0.5\n"
    harness.write_lines(tmp_path / "s.md", ["# t", "", "body"])
    assert (tmp_path / "s.md").read_text() == "# t\n\nbody\n"


def test_paths_in_the_checkout_are_named_relative_to_it(tmp_path: Path) -> None:
    assert harness.in_checkout(harness.RESULTS / "x" / "runs.csv") == "experiments/results/x/runs.csv"
    assert harness.in_checkout(tmp_path / "runs.csv") == str(tmp_path / "runs.csv")


def test_machine_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (1.234, 0.5, 0.0))
    assert harness.load_average() == [1.23, 0.5, 0.0] and harness.load_1min() == 1.23
    assert set(harness.host_facts()) == {"host", "cpu"} and harness.host_facts()["cpu"]
    assert set(harness.machine()) == {"cpus", "platform", "torch"}
    assert harness.pyplot().get_backend().lower() == "agg"
