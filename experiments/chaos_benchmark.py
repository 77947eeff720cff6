"""Chaos benchmark: does a study keep an exact count through kills, Ctrl-Cs and a full disk?

Per storage (the journal file, a real PostgreSQL): a fault-free ``nas-search`` of
``--trials`` trials with ``--workers`` worker processes is timed first. Then the same study
runs as ``--workers`` independent ``nas-search`` processes (as on separate machines; on the
journal they share one run folder) while a controller sends at least ``--faults`` random
SIGKILLs and SIGINTs to them, restarting each with ``resume=true``, and once, half-way through the
budget, fills the file system of the run folders (a tmpfs of its own) for ``--full-seconds``
and frees it. Every
two seconds it reads the study and remembers every complete trial, so a record that later
vanishes is counted as lost.

Reported per storage (``--out``/summary.csv, events.csv, summary.md): trials counted,
networks evaluated twice, records lost, damaged journals, runs that ended in a traceback,
and the wall time against the fault-free run, with the load average. Target: exact count,
no network twice, no record lost. Resumable: a storage already in summary.csv is skipped.

    python -m experiments.chaos_benchmark --postgres-url postgresql://postgres@127.0.0.1:5432/nas

Needs root for the tmpfs mount (the full disk is real, not simulated).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from experiments import harness
from nas.search.objective import counted_trials
from nas.search.storage import StorageSettings, open_storage

DEFAULT_OUT = harness.RESULTS / "chaos"
DEFAULT_WORK = harness.OUTPUTS / "chaos"
STUDY = "chaos"


@dataclass
class Worker:
    """One ``nas-search`` process (a "machine") and its restarts."""

    index: int
    run_dir: Path
    log_dir: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    signalled: int | None = None
    started_at: float = 0.0
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def start(self, command: list[str]) -> None:
        self.started_at = time.perf_counter()
        self.starts += 1
        self.signalled = None
        log = open(self.log_dir / f"worker{self.index}-start{self.starts:02d}.log", "w")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.log = log

    def finished(self) -> int | None:
        """The exit code once the process has ended (recorded once), else None."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        self.log.close()
        text = Path(self.log.name).read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        self.outcomes.append({"worker": self.index, "start": self.starts, "code": code,
                              "signal": self.signalled, "traceback": "Traceback" in text,
                              "last_line": lines[-1][:300] if lines else ""})
        self.process = None
        return code


def search_command(args: argparse.Namespace, run_dir: Path, storage: str | None, *extra: str) -> list[str]:
    command = [str(Path(sys.executable).parent / "nas-search"), f"hydra.run.dir={run_dir}",
               "data=synthetic", "evaluator=proxy", f"data.train_samples={args.train_samples}",
               "data.val_samples=128", "evaluator.train.epochs=1", f"latency.table={args.table}",
               f"trials={args.trials}", f"study_name={STUDY}", "heartbeat_interval=2", *extra]
    if storage is not None:
        command.append(f"storage={storage}")
    return command


def read_study(storage: StorageSettings, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"chaos_benchmark: cannot mount a tmpfs at {path} ({done.stderr.strip()}); "
                         "the full-disk fault needs root")


def fill(path: Path) -> None:
    with open(path / ".filler", "ab", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue


def clean_run(args: argparse.Namespace, work: Path, url: str | None) -> float:
    """Wall seconds of the fault-free study (``--workers`` worker processes in one command)."""
    run_dir = work / "clean"
    storage, name = (url, f"{STUDY}_clean_{int(time.time())}") if url else (None, STUDY)
    started = time.perf_counter()
    done = subprocess.run(search_command(args, run_dir, storage, f"n_workers={args.workers}",
                                         f"study_name={name}"), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"chaos_benchmark: the fault-free run failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def chaos_run(args: argparse.Namespace, work: Path, url: str | None, events: list[dict[str, Any]]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    disk = work / "disk"
    mount_tmpfs(disk, args.disk_size)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = f"{STUDY}_{int(time.time())}" if url else STUDY
    # The journal's workers share one run folder (its journal); PostgreSQL's have one each.
    workers = [Worker(i, disk / ("run" if url is None else f"run{i}"), logs) for i in range(args.workers)]
    storage = StorageSettings(run_dir=str(workers[0].run_dir), url=url)
    t0 = time.perf_counter()

    def note(kind: str, **info: Any) -> None:
        events.append({"storage": "postgresql" if url else "journal", "t_s": round(time.perf_counter() - t0, 1),
                       "event": kind, **info})
        print(f"[{events[-1]['t_s']:7.1f} s] {kind} {info}", flush=True)

    def start(worker: Worker, resume: bool) -> None:
        extra = ["resume=true"] if resume else []
        worker.start(search_command(args, worker.run_dir, url, f"study_name={name}", *extra))

    start(workers[0], resume=False)
    while (study := read_study(storage, name)) is None:
        time.sleep(0.2)
    for worker in workers[1:]:
        start(worker, resume=True)
    seen: dict[int, tuple[str, tuple[float, ...]]] = {}
    faults = {"SIGKILL": 0, "SIGINT": 0}
    disk_state = "never"  # -> "full" -> "freed"
    full_since = 0.0
    next_fault = time.perf_counter() + rng.uniform(2, 6)
    last_look = 0.0
    while True:
        now = time.perf_counter()
        if now - last_look > 2:
            last_look = now
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                seen.setdefault(t.number, (t.user_attrs.get("spec", ""), tuple(t.values)))
        complete = False
        for worker in workers:
            code = worker.finished()
            if code is None:
                continue
            outcome = worker.outcomes[-1]
            note("exit", worker=worker.index, code=code, signal=worker.signalled,
                 traceback=outcome["traceback"], last_line=outcome["last_line"][:160])
            if code == 0:
                complete = True
        total = sum(faults.values())
        if disk_state == "never" and counted_trials(study) >= args.trials // 2:
            fill(disk)
            disk_state, full_since = "full", now
            note("disk full", free_bytes=os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize)
        elif disk_state == "full" and now - full_since > args.full_seconds:
            (disk / ".filler").unlink()
            disk_state = "freed"
            note("disk freed")
        # A process is signalled once it has started up (a Ctrl-C while Python imports the
        # package is Python's own traceback, before any handler of ours exists).
        live = [w for w in workers if w.process is not None and now - w.started_at > 3]
        if total < args.faults and now >= next_fault and live and disk_state != "full":
            victim = rng.choice(live)
            kind = "SIGKILL" if faults["SIGKILL"] <= faults["SIGINT"] else "SIGINT"
            if rng.random() < 0.2:
                kind = "SIGINT" if kind == "SIGKILL" else "SIGKILL"
            victim.signalled = int(getattr(signal, kind))
            victim.process.send_signal(victim.signalled)
            faults[kind] += 1
            note(kind, worker=victim.index, pid=victim.process.pid)
            next_fault = now + rng.uniform(args.min_interval, args.max_interval)
        done = counted_trials(study) >= args.trials
        for worker in workers:
            if worker.process is None and not (done or complete):
                time.sleep(0.5 if disk_state != "full" else 2.0)
                start(worker, resume=True)
                note("restart", worker=worker.index)
        if all(w.process is None for w in workers) and (done or complete):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    study = read_study(storage, name)  # a fresh read of everything, as a new process sees it
    assert study is not None
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    specs = [t.user_attrs.get("spec") for t in counted]
    lost = [n for n, (spec, values) in seen.items()
            if trials[n].state != TrialState.COMPLETE or tuple(trials[n].values) != values
            or trials[n].user_attrs.get("spec", "") != spec]
    outcomes = [o for w in workers for o in w.outcomes]
    row = {
        "storage": "postgresql" if url else "journal", "trials_budget": args.trials,
        "workers": args.workers, "sigkills": faults["SIGKILL"], "sigints": faults["SIGINT"],
        "disk_full_s": args.full_seconds, "process_starts": sum(w.starts for w in workers),
        "trials_counted": counted_trials(study), "trials_in_study": len(trials),
        "complete_trials": len(counted), "networks_distinct": len(set(specs)),
        "networks_evaluated_twice": len(specs) - len(set(specs)),
        "records_seen": len(seen), "records_lost": len(lost),
        "runs_with_traceback": sum(o["traceback"] for o in outcomes),
        "unexpected_exits": sum(o["code"] not in (0, 130, -9) and o["signal"] is None and
                                "no space left" not in o["last_line"] for o in outcomes),
        "out_of_space_exits": sum("no space left" in o["last_line"] for o in outcomes),
        "wall_s": round(wall, 1),
    }
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return row


def write_report(out: Path, rows: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "summary.csv", index=False)
    lines = ["# Chaos benchmark", "",
             "Each row: one study of `trials_budget` trials run by `workers` independent `nas-search`",
             "processes under random SIGKILLs and SIGINTs and one full disk; `wall_ratio` is its",
             "wall time over the fault-free run's (same storage, same settings, one command with",
             "the same number of workers). Target: exact count, no network twice, no record lost.", "",
             frame.to_markdown(index=False) if hasattr(frame, "to_markdown") else frame.to_string(index=False)]
    harness.write_lines(out / "summary.md", lines)


def main(argv: list[str] | None = None) -> int:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--storage", nargs="+", choices=["journal", "postgresql"],
                        default=["journal", "postgresql"])
    parser.add_argument("--postgres-url", default=os.environ.get("NAS_TEST_POSTGRES_URL"),
                        help="a PostgreSQL database for the study (default $NAS_TEST_POSTGRES_URL)")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faults", type=int, default=24, help="SIGKILLs + SIGINTs in all")
    parser.add_argument("--min-interval", type=float, default=1.5)
    parser.add_argument("--max-interval", type=float, default=4.0)
    parser.add_argument("--full-seconds", type=float, default=10.0)
    parser.add_argument("--disk-size", default="256m")
    parser.add_argument("--train-samples", type=int, default=2048)
    parser.add_argument("--table", default="cpu-torch-1t-b1-224")
    harness.add_common(parser, seed=0, out=DEFAULT_OUT, work=DEFAULT_WORK, force=True,
                       help={"force": "re-run storages already reported"})
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "summary.csv"
    rows = pd.read_csv(summary).to_dict("records") if summary.is_file() else []
    events_path = args.out / "events.csv"
    for storage in args.storage:
        if any(r["storage"] == storage for r in rows) and not args.force:
            print(f"{storage}: already in {summary} (--force to re-run)")
            continue
        url = None
        if storage == "postgresql":
            if not args.postgres_url:
                print("postgresql: skipped (no --postgres-url or NAS_TEST_POSTGRES_URL)")
                continue
            url = args.postgres_url
        work = args.work / f"{storage}-{time.strftime('%Y%m%d-%H%M%S')}"
        load_before = harness.load_1min()
        clean_s = clean_run(args, work, url)
        events: list[dict[str, Any]] = []
        row = chaos_run(args, work, url, events)
        row.update({"clean_wall_s": round(clean_s, 1), "wall_ratio": round(row["wall_s"] / clean_s, 2),
                    "loadavg_1m_start": load_before, "loadavg_1m_end": harness.load_1min(),
                    "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": harness.cpu_model()})
        rows = [r for r in rows if r["storage"] != storage] + [row]
        old = pd.read_csv(events_path) if events_path.is_file() else pd.DataFrame()
        if not old.empty:
            old = old[old["storage"] != storage]
        pd.concat([old, pd.DataFrame(events)]).to_csv(events_path, index=False)
        write_report(args.out, rows)
        print(pd.Series(row).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
