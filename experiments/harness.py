"""The plumbing every study shares: where things go, the common options, the run's set-up,
what the machine was doing, resumable result rows, summaries and plots.

A study's own module keeps its question (what it trains, measures and reports); this keeps
what each of them used to repeat. Heavy libraries (torch, matplotlib) are imported only by
the functions that need them, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from nas.cost.sampling import cpu_model
from nas.records import append_record, read_records

REPO = Path(__file__).resolve().parents[1]  # the checkout root
RESULTS = REPO / "experiments" / "results"  # committed results, one folder per study
OUTPUTS = REPO / "outputs"  # checkpoints, weights, caches (ignored by git)
DATASETS = REPO.parent / "shared" / "datasets"

THREADS_HELP = ("torch threads (default 1: on a shared 2-core machine, OpenMP threads spin "
                "against other processes and run slower)")


def in_checkout(path: Path) -> str:
    """``path`` relative to the checkout root when it lies inside it, else as given: what a
    committed result names, so that it reads the same in every checkout."""
    path = Path(path)
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


# ---------------------------------------------------------------------------- options
def study_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` prints the study's docstring as written (its usage lines)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common(parser: argparse.ArgumentParser, *, out: Path | None = None, work: Path | None = None,
               threads: bool = False, seed: int | None = None, force: bool = False,
               help: Mapping[str, str] | None = None) -> None:
    """Add the options studies share, each only when asked for: ``--out`` and ``--work``
    (with these defaults), ``--threads``, ``--seed`` (with this default) and ``--force``.
    ``help`` replaces an option's generic help text (keyed by its name without dashes)."""
    texts = {"out": "results folder (default %(default)s)",
             "work": "resumable state: checkpoints, caches (default %(default)s)",
             "threads": THREADS_HELP, "seed": "random seed (default %(default)s)",
             "force": "run again what is already recorded", **(help or {})}
    if out is not None:
        parser.add_argument("--out", type=Path, default=out, help=texts["out"])
    if work is not None:
        parser.add_argument("--work", type=Path, default=work, help=texts["work"])
    if threads:
        parser.add_argument("--threads", type=int, default=1, help=texts["threads"])
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, help=texts["seed"])
    if force:
        parser.add_argument("--force", action="store_true", help=texts["force"])


# ---------------------------------------------------------------------------- set-up
def set_threads(threads: int = 1) -> None:
    """Torch's intra-op threads for this process (one by default: see ``THREADS_HELP``)."""
    import torch

    torch.set_num_threads(threads)


def start(args: argparse.Namespace) -> None:
    """A run's set-up: ``--threads`` torch threads (1 without the option) and the ``--out``
    and ``--work`` folders created (those the study has and that are set)."""
    set_threads(getattr(args, "threads", 1))
    for name in ("out", "work"):
        if getattr(args, name, None) is not None:
            getattr(args, name).mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- the machine
def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (2 decimals, as the kernel reports them): on
    shared cores every timing is read against the load it ran under."""
    return [round(x, 2) for x in os.getloadavg()]


def load_1min() -> float:
    """The 1-minute load average (2 decimals)."""
    return load_average()[0]


def host_facts() -> dict[str, str]:
    """Which machine a result row comes from: host name and CPU model."""
    return {"host": platform.node(), "cpu": cpu_model()}


def machine() -> dict[str, Any]:
    """The machine a summary was written on: CPU count, platform, torch version."""
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": str(torch.__version__)}


def now() -> str:
    """Local time to the second, as result rows record when they finished."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def log(message: str) -> None:
    """One progress line on stdout, with the time and the 1-minute load average."""
    print(f"[{time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:.2f} | {message}", flush=True)


# ---------------------------------------------------------------------------- result rows
def append_row(path: Path, row: Mapping[str, Any], *, what: str = "a study's result rows") -> None:
    """Record one finished unit (a run, a score) as one JSON line of ``path``, the moment it
    exists: a killed study resumes by reading the rows back (:func:`read_rows`)."""
    append_record(path, row, what=what)


def read_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The rows of every file in ``paths``, in order; a line a kill cut off is skipped with a
    warning (its unit counts as not done)."""
    return [row for path in paths for row in read_records(path)]


# ---------------------------------------------------------------------------- stages
class Stages:
    """Wall time and load average of each stage of a run, kept in a JSON file across resumed
    invocations (a stage run again adds its seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    @classmethod
    def for_run(cls, args: argparse.Namespace) -> Stages:
        """A run's set-up (:func:`start`) and its stages kept in ``--work``/stages.json."""
        start(args)
        return cls(args.work / "stages.json")

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        load0, t0 = load_average(), time.perf_counter()
        print(f"== {name} (load {load0[0]:.2f})", flush=True)
        result = fn()
        record = self.data.setdefault(name, {"seconds": 0.0, "invocations": 0})
        record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 1)
        record["invocations"] += 1
        record["loadavg_start"] = load0
        record["loadavg_end"] = load_average()
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"== {name} done: {record['seconds']:.0f} s so far", flush=True)
        return result


# ---------------------------------------------------------------------------- summaries
def write_yaml(path: Path, data: Any) -> str:
    """Write ``data`` as YAML in its own key order; returns the text (studies print it)."""
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return text


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write a Markdown (or any text) report, one line per item, ending in a newline."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend: studies write figures, never open windows
    (and run where there is no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = [
    "DATASETS", "OUTPUTS", "REPO", "RESULTS", "THREADS_HELP", "Stages", "add_common", "append_row",
    "cpu_model", "host_facts", "in_checkout", "load_1min", "load_average", "log", "machine", "now", "pyplot",
    "read_rows", "set_threads", "start", "study_parser", "write_lines", "write_yaml",
]
