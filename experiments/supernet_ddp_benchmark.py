"""Data-parallel supernet training: wall time of one process against two, one thread each.

The same supernet training (``nas-supernet train``: the shipped ``train`` section of
``nas/conf/evaluator/supernet.yaml``, a fixed number of sandwich steps, checkpoints only at
the end) is run under ``torchrun --standalone --nproc-per-node N`` for every N of
``--processes`` (default 1 and 2), each process on one torch thread. The runs alternate
(1 2, 2 1, 1 2, ...) over ``--repeats`` so that the shared machine's drifting load hits both
alike; each run is a fresh launch on a fresh output folder.

Per run: the training seconds (optimiser steps only, read from the checkpoint's progress),
the launch's wall time (start-up, data, rendezvous and the final write included), training
images per second, the load average before and after, and the largest difference of any
weight or buffer from the first one-process run (the runs train one supernet; they agree to
float rounding). Data: ``cifar10_r32`` when ``../shared/datasets/cifar10`` exists, else
``synthetic``. Writes ``runs.csv``, ``summary.yaml`` (medians, the one-to-N ratios, paired
per repeat, load averages, host) and ``summary.md`` into ``--out``; finished runs are kept in
``--work``/runs.jsonl, so a killed benchmark resumes (``--force`` starts over).

    python -m experiments.supernet_ddp_benchmark --repeats 3 --steps 40
    python -m experiments.supernet_ddp_benchmark --data synthetic --steps 2 --repeats 1 \\
        --set data.train_samples=64 --set data.batch_size=16     # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from experiments import harness

DEFAULT_OUT = harness.RESULTS / "supernet_ddp"
DEFAULT_WORK = harness.OUTPUTS / "supernet_ddp_benchmark"


def default_data() -> str:
    return "cifar10_r32" if (harness.DATASETS / "cifar10" / "train").is_dir() else "synthetic"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--data", default=None,
                        help="data config name or YAML (default: cifar10_r32 when "
                             "../shared/datasets/cifar10 exists, else synthetic)")
    parser.add_argument("--space", default="mobilenetv3_small")
    parser.add_argument("--steps", type=int, default=40, help="sandwich steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each process count")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="process counts to compare (the first is the reference)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="nas-supernet train override, e.g. data.batch_size=128 (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a run may take")
    harness.add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK, force=True)
    args = parser.parse_args(argv)
    args.data = args.data or default_data()
    if args.steps < 1 or args.repeats < 1 or min(args.processes) < 1:
        parser.error("--steps, --repeats and --processes must be >= 1")
    return args


def command(args: argparse.Namespace, processes: int, out: Path) -> list[str]:
    """One launch: torchrun for every count, so all runs pay the same launcher start-up."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(processes), "-m", "nas.cli.supernet", "train", "--space", args.space,
            "--data", args.data, "--out", str(out), "--no-resume", "--no-eval", "--threads", "1",
            "--set", f"train.steps={args.steps}", "--set", "train.progress=false",
            "--set", "train.checkpoint_every=null", *[f"--set={item}" for item in args.set]]


def settings_key(args: argparse.Namespace) -> str:
    """What a recorded run was run with: rows and the reference of other settings are ignored."""
    text = "|".join([args.space, args.data, str(args.steps), *args.set])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def max_difference(state: dict[str, Any], reference: dict[str, Any]) -> float:
    return max(float((state[k].double() - reference[k].double()).abs().max()) for k in reference)


def run_once(args: argparse.Namespace, processes: int, repeat: int) -> dict[str, Any]:
    import torch

    out = args.work / f"run_p{processes}"
    shutil.rmtree(out, ignore_errors=True)
    load_before = harness.load_average()
    started = time.perf_counter()
    done = subprocess.run(command(args, processes, out), cwd=harness.REPO, capture_output=True,
                          text=True, timeout=args.timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"supernet_ddp_benchmark: the {processes}-process run failed:\n"
                         f"{done.stderr[-3000:]}")
    ckpt = torch.load(out / "supernet.pt", map_location="cpu", weights_only=True)
    progress, settings = ckpt["progress"], ckpt["settings"]
    reference_path = args.work / f"reference-{settings_key(args)}.pt"
    if not reference_path.is_file() and processes == args.processes[0]:
        torch.save(ckpt["model"], reference_path)
    difference = (max_difference(ckpt["model"], torch.load(reference_path, weights_only=True))
                  if reference_path.is_file() else None)
    shutil.rmtree(out, ignore_errors=True)  # a supernet checkpoint per run would pile up
    batch = settings["data"]["batch_size"]
    return {"key": settings_key(args), "repeat": repeat, "processes": processes, "steps": progress["step"],
            "train_seconds": round(progress["train_seconds"], 3), "wall_seconds": round(wall, 3),
            "images_per_second": round(progress["step"] * batch / progress["train_seconds"], 2),
            "max_abs_difference_vs_reference": difference, "load_before": load_before,
            "load_after": harness.load_average(), "global_batch": batch,
            "resolution": settings["data"]["resolution"], "data": settings["data"]["name"],
            "finished": harness.now(), **harness.host_facts()}


def prepare(args: argparse.Namespace) -> None:
    """Decode the data once (the tensor cache) before any timed run."""
    from nas.cli.supernet import apply_overrides, load_data_config
    from nas.training.data import make_loaders
    from nas.training.data_config import DataConfig

    config = {"data": load_data_config(args.data), "train": {}}
    apply_overrides(config, [item for item in args.set if item.startswith("data.")])
    make_loaders(DataConfig.from_dict(config["data"]))


def summarise(frame: pd.DataFrame, args: argparse.Namespace) -> dict[str, Any]:
    first = args.processes[0]
    medians = frame.groupby("processes")[["train_seconds", "wall_seconds", "images_per_second"]].median()
    paired = frame.pivot(index="repeat", columns="processes", values="train_seconds")
    loads = [load[0] for column in ("load_before", "load_after") for load in frame[column]]
    row = frame.iloc[0]
    summary: dict[str, Any] = {
        "what": (f"nas-supernet train, space {args.space}, data {row['data']} at {row['resolution']} px, "
                 f"global batch {row['global_batch']}, {args.steps} sandwich steps, one torch thread "
                 "per process, launched with torchrun" + (f"; {', '.join(args.set)}" if args.set else "")),
        "repeats": int(frame["repeat"].nunique()), "processes": args.processes,
        "train_seconds_median": {int(k): round(float(v), 2) for k, v in medians["train_seconds"].items()},
        "wall_seconds_median": {int(k): round(float(v), 2) for k, v in medians["wall_seconds"].items()},
        "images_per_second_median": {int(k): round(float(v), 1)
                                     for k, v in medians["images_per_second"].items()},
        # > 1: N processes train faster than the first count.
        "speedup_train_seconds_median": {
            int(n): round(float(medians.loc[first, "train_seconds"] / medians.loc[n, "train_seconds"]), 3)
            for n in medians.index},
        "speedup_wall_seconds_median": {
            int(n): round(float(medians.loc[first, "wall_seconds"] / medians.loc[n, "wall_seconds"]), 3)
            for n in medians.index},
        "speedup_train_seconds_per_repeat": {
            int(n): [round(float(x), 3) for x in (paired[first] / paired[n]).dropna()]
            for n in paired.columns},
        "max_abs_weight_difference_vs_first": round(float(frame["max_abs_difference_vs_reference"]
                                                          .dropna().max()), 8),
        "load_average_1min_median": round(statistics.median(loads), 2),
        "load_average_1min_range": [min(loads), max(loads)],
        "host": harness.host_facts(), "machine": harness.machine(),
        "command": "python " + " ".join(command(args, 2, Path("<out>"))[1:]),
    }
    harness.write_yaml(args.out / "summary.yaml", summary)
    lines = [
        "# Data-parallel supernet training: one process against several", "",
        f"{summary['what']}; {summary['repeats']} repeats, alternated. Host {summary['host']['host']} "
        f"({summary['host']['cpu']}, {summary['machine']['cpus']} CPUs, shared); 1-minute load "
        f"average median {summary['load_average_1min_median']} "
        f"(range {summary['load_average_1min_range'][0]}-{summary['load_average_1min_range'][1]}).", "",
        "| processes | training s (median) | wall s (median) | images/s | speedup (training) "
        "| speedup (wall) |", "|---|---|---|---|---|---|",
    ]
    for n in medians.index:
        lines.append(f"| {n} | {summary['train_seconds_median'][n]:.1f} | "
                     f"{summary['wall_seconds_median'][n]:.1f} | {summary['images_per_second_median'][n]:.1f} | "
                     f"{summary['speedup_train_seconds_median'][n]:.2f} | "
                     f"{summary['speedup_wall_seconds_median'][n]:.2f} |")
    lines += ["", f"Largest difference of any weight or buffer from the first {first}-process run: "
              f"{summary['max_abs_weight_difference_vs_first']:.2g}."]
    harness.write_lines(args.out / "summary.md", lines)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.start(args)
    rows_path = args.work / "runs.jsonl"
    key = settings_key(args)
    if args.force:
        rows_path.unlink(missing_ok=True)
        (args.work / f"reference-{key}.pt").unlink(missing_ok=True)
    done = {(row["repeat"], row["processes"]) for row in harness.read_rows([rows_path])
            if row.get("key") == key}
    prepare(args)
    for repeat in range(args.repeats):
        # Alternate the order every repeat: neither count always runs first.
        order = args.processes if repeat % 2 == 0 else list(reversed(args.processes))
        for processes in order:
            if (repeat, processes) in done:
                continue
            row = run_once(args, processes, repeat)
            harness.append_row(rows_path, row)
            harness.log(f"repeat {repeat}, {processes} process(es): {row['train_seconds']:.1f} s "
                        f"training, {row['wall_seconds']:.1f} s wall, max |diff| "
                        f"{row['max_abs_difference_vs_reference']}")
    rows = [row for row in harness.read_rows([rows_path]) if row.get("key") == key
            and row["repeat"] < args.repeats and row["processes"] in args.processes]
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "runs.csv", index=False)
    summary = summarise(frame, args)
    print(f"speedup (training seconds, median): {summary['speedup_train_seconds_median']}; "
          f"load {summary['load_average_1min_median']}; results in {harness.in_checkout(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
