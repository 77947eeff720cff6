"""Result records as JSON lines: append one whole record, read them back after a kill.

A long benchmark or study writes each finished unit (a training run, a score) as one JSON
line the moment it exists, so a killed process resumes by reading what is there. These two
functions are that contract: :func:`append_record` never leaves half a record (a full disk
cuts the partial line off again; a line a kill cut short is ended first, so the next record
is not glued to it), and :func:`read_records` skips a line that does not parse, saying where.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from nas._io import append_line

log = logging.getLogger(__name__)


def append_record(path: str | Path, record: Mapping[str, Any], *, what: str) -> None:
    """Append ``record`` to ``path`` as one JSON line (the folder is created).

    ``what`` names the file's content in the one-line error a full disk raises (an
    :class:`OSError` that is also a :class:`nas.NASError`, naming the file). One process
    appends to a given file at a time.
    """
    path = Path(path)
    line = json.dumps(dict(record), default=str)
    # A kill mid-write can leave a last line without its newline: end it first, so the torn
    # line stays one unreadable line and this record stays readable.
    if path.is_file() and path.stat().st_size and not _ends_with_newline(path):
        line = "\n" + line
    append_line(path, line, what=what)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``path`` in file order ([] when it does not exist).

    A line that is not a JSON object (one a kill cut off mid-write) is skipped with a
    warning naming file and line: the unit it held counts as not done and is run again.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            log.warning("%s:%d: skipped a line that is not a whole record (a run killed while "
                        "writing it)", path, number)
            continue
        records.append(record)
    return records


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


__all__ = ["append_record", "read_records"]
