"""An ablation study's figures on disk: ``results.jsonl``, one record per figure, appended
the moment it exists, keyed by kind, architecture (under a protocol, for accuracy) and seed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from nas._io import append_line
from nas.arch.codecs import to_string
from nas.arch.spec import NetworkSpec

log = logging.getLogger("nas-ablate")
RESULTS_FILE = "results.jsonl"


class Results:
    """``results.jsonl``: one record per figure, keyed by kind, architecture and seed."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RESULTS_FILE
        self.records: dict[tuple, dict[str, Any]] = {}
        if self.path.is_file() and not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "a", encoding="utf-8") as handle:  # end a line cut by a kill
                handle.write("\n")
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    # A line cut by a kill is the last one; anything else is damage.
                    log.warning("%s:%d: unreadable record skipped (measured again)", self.path, number)
                    continue
                self.records[self._key(record)] = record

    @staticmethod
    def _key(record: dict[str, Any]) -> tuple:
        return record["kind"], record.get("arch", ""), record.get("seed")

    def get(self, kind: str, arch: str = "", seed: int | None = None) -> dict[str, Any] | None:
        return self.records.get((kind, arch, seed))

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        append_line(self.path, json.dumps(record), what="the ablation study's results")
        self.records[self._key(record)] = record
        return record


def trained_arch(spec: NetworkSpec, protocol_key: str) -> str:
    """What an accuracy belongs to: the architecture (fused and decomposed h-swish are one
    function, trained once) under one protocol's settings (a changed protocol trains anew)."""
    return f"{to_string(spec.replace(hswish='fused'))}@{protocol_key}"


def e2e_key(specs: dict[str, NetworkSpec], rounds: int) -> str:
    """The end-to-end measurement of exactly these networks over ``rounds`` rounds."""
    return "|".join(sorted({to_string(s) for s in specs.values()})) + f"#{rounds}"


def protocol_key(protocol: str) -> str:
    """The key of a training protocol's result-changing settings."""
    from nas.training.protocols import load_protocol

    return load_protocol(protocol).key()


__all__ = ["RESULTS_FILE", "Results", "e2e_key", "protocol_key", "trained_arch"]
