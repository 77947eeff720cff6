"""JSON-lines result records: whole records appended, a line cut by a kill skipped on reading
and never glued to the next record."""

from __future__ import annotations

import logging
from pathlib import Path

from nas.records import append_record, read_records


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "runs.jsonl"  # the folder is created
    assert read_records(path) == []
    append_record(path, {"spec": "a", "top1": 0.5}, what="test records")
    append_record(path, {"spec": "b", "top1": 0.25, "path": tmp_path}, what="test records")
    assert read_records(path) == [{"spec": "a", "top1": 0.5},
                                  {"spec": "b", "top1": 0.25, "path": str(tmp_path)}]


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_record_kept(tmp_path: Path, caplog) -> None:
    path = tmp_path / "runs.jsonl"
    append_record(path, {"spec": "a"}, what="test records")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"spec": "b", "to')  # a kill mid-write: no newline
    append_record(path, {"spec": "c"}, what="test records")
    with caplog.at_level(logging.WARNING, logger="nas.records"):
        assert read_records(path) == [{"spec": "a"}, {"spec": "c"}]
    assert f"{path}:2: skipped" in caplog.text
