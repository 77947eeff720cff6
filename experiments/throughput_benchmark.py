"""Training throughput of canonical Small at 48 px on one thread: today's loop against a baseline.

Variants, each a fresh process, run in turn (A B C ... A B C ...) so that the shared
machine's drifting load hits all of them alike:

* ``baseline``: the training loop and data pipeline of an earlier commit (``--baseline-ref``,
  checked out as a git worktree): ``nas.training.train.train`` on the CIFAR-10 JPEG folder through
  ``imagefolder`` (PIL decoding and torchvision transforms every epoch, NCHW);
* ``current``: this checkout's defaults: the ``cifar10`` tensor cache with tensor
  augmentation, channels-last;
* ``current_nchw``, ``current_bf16``, ``current_compile``: one speed knob changed each.

Throughput is steady-state training images per second (optimiser steps between step
``--warmup-steps`` and the last, timed by the step callback: start-up, compilation and
evaluation excluded). Writes ``runs.csv``, ``summary.yaml`` (medians, ratios to the baseline
from the same rounds, load averages) and ``throughput.png`` into ``--out``.

    python -m experiments.throughput_benchmark --rounds 3
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from experiments import harness

DEFAULT_DATA = harness.DATASETS / "cifar10"
DEFAULT_OUT = harness.RESULTS / "throughput"
# The last commit before the tensor-cached data and the one training loop.
DEFAULT_BASELINE = "02425e0"
# One run, in a process of its own that imports ``nas`` from the tree it times.
WORKER = Path(__file__).resolve().with_name("throughput_worker.py")

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"tree": "baseline"},
    "current": {"tree": "current"},
    "current_nchw": {"tree": "current", "train": {"channels_last": False}},
    "current_bf16": {"tree": "current", "train": {"precision": "bf16"}},
    "current_compile": {"tree": "current", "train": {"compile": True}},
}


def ensure_baseline(ref: str, where: Path) -> Path:
    if not (where / "nas").is_dir():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(harness.REPO), "worktree", "add", "--detach", str(where), ref],
                       check=True, capture_output=True)
    return where


def main(argv: list[str] | None = None) -> int:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    harness.add_common(parser, out=DEFAULT_OUT)
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=6400, help="training images per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    # The baseline's worktree only when a baseline variant runs.
    baseline_tree = (ensure_baseline(args.baseline_ref, harness.OUTPUTS / "baseline_tree")
                     if any(VARIANTS[name]["tree"] == "baseline" for name in args.variants) else None)
    rows = []
    for round_number in range(args.rounds):
        for name in args.variants:
            tree = VARIANTS[name]["tree"]
            src = baseline_tree if tree == "baseline" and baseline_tree is not None else harness.REPO
            command = [sys.executable, str(WORKER), "--variant", name, "--tree", tree,
                       "--train", json.dumps(VARIANTS[name].get("train", {})),
                       "--data", str(args.data), "--images", str(args.images),
                       "--batch-size", str(args.batch_size), "--warmup-steps", str(args.warmup_steps)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src)}
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=src)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["round"] = round_number
            rows.append(row)
            print(f"round {round_number} {name}: {row['images_per_second']:.0f} images/s "
                  f"(load {row['load']:.2f})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "runs.csv", index=False)
    by_round = frame.pivot(index="round", columns="variant", values="images_per_second")
    summary: dict[str, Any] = {
        "what": "canonical Small, 48 px, batch %d, 1 thread, steady-state training images/s"
                % args.batch_size,
        "baseline_ref": args.baseline_ref, "rounds": args.rounds, "images_per_run": args.images,
        "load_average_median": round(float(frame["load"].median()), 2),
        "load_average_range": [round(float(frame["load"].min()), 2), round(float(frame["load"].max()), 2)],
        "images_per_second_median": {k: round(float(v), 1) for k, v in by_round.median().items()},
    }
    if "baseline" in by_round:
        ratios = by_round.div(by_round["baseline"], axis=0)
        summary["ratio_to_baseline_median"] = {k: round(float(v), 3) for k, v in ratios.median().items()}
        summary["ratio_to_baseline_per_round"] = {k: [round(float(x), 3) for x in v]
                                                  for k, v in ratios.items()}
    if "current" in by_round:
        ratios = by_round.div(by_round["current"], axis=0)
        summary["ratio_to_current_median"] = {k: round(float(v), 3) for k, v in ratios.median().items()}
    text = harness.write_yaml(args.out / "summary.yaml", summary)
    _plot(frame, args.out / "throughput.png", summary["what"])
    print(text)
    return 0


def _plot(frame: Any, path: Path, title: str) -> None:
    plt = harness.pyplot()
    order = list(dict.fromkeys(frame["variant"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(order):
        values = frame[frame.variant == name]["images_per_second"]
        ax.scatter([i] * len(values), values, alpha=0.7)
        ax.hlines(statistics.median(values), i - 0.3, i + 0.3)
    ax.set_xticks(range(len(order)), order, rotation=20)
    ax.set_ylabel("training images/s (median line)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
