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

    python experiments/throughput_benchmark.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "cifar10"
DEFAULT_OUT = REPO / "experiments" / "results" / "throughput"
# The last commit before the tensor-cached data and the one training loop.
DEFAULT_BASELINE = "02425e0"

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"tree": "baseline"},
    "current": {"tree": "current"},
    "current_nchw": {"tree": "current", "train": {"channels_last": False}},
    "current_bf16": {"tree": "current", "train": {"precision": "bf16"}},
    "current_compile": {"tree": "current", "train": {"compile": True}},
}


def worker(args: argparse.Namespace) -> None:
    """One timed training run in this process; prints a JSON line."""
    sys.path.insert(0, str(args.src))
    import torch

    torch.set_num_threads(1)
    from nas.arch.codecs import load_spec
    from nas.training.data_config import DataConfig
    from nas.training.train import train
    from nas.training.train_config import TrainConfig

    variant = VARIANTS[args.variant]
    if variant["tree"] == "baseline":
        data = DataConfig(name="imagefolder", root=str(args.data), resolution=48,
                          batch_size=args.batch_size, train_samples=args.images, val_samples=500,
                          augment="pad_crop")
    else:
        data = DataConfig(name="cifar10", root=str(args.data), resolution=48,
                          batch_size=args.batch_size, train_samples=args.images, val_samples=500,
                          augment="pad_crop")
    cfg = TrainConfig.from_dict({"epochs": 1, "progress": False, "bn_recalibration_batches": 1,
                                 "device": "cpu", **variant.get("train", {})})
    stamps: list[float] = []
    result = train(load_spec("small"), data, cfg, on_step=lambda step, _: stamps.append(time.perf_counter()))
    timed = stamps[args.warmup_steps - 1:]
    images = (len(timed) - 1) * args.batch_size
    print(json.dumps({"variant": args.variant, "images_per_second": images / (timed[-1] - timed[0]),
                      "steps": len(stamps), "loop_images_per_second": result.images_per_second,
                      "load": os.getloadavg()[0]}))


def ensure_baseline(ref: str, where: Path) -> Path:
    if not (where / "nas").is_dir():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref],
                       check=True, capture_output=True)
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=6400, help="training images per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import pandas as pd
    import yaml

    baseline_tree = ensure_baseline(args.baseline_ref, REPO / "outputs" / "baseline_tree")
    rows = []
    for round_number in range(args.rounds):
        for name in args.variants:
            src = baseline_tree if VARIANTS[name]["tree"] == "baseline" else REPO
            command = [sys.executable, __file__, "--worker", "--variant", name, "--src", str(src),
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
    (args.out / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    _plot(frame, args.out / "throughput.png", summary["what"])
    print(yaml.safe_dump(summary, sort_keys=False))
    return 0


def _plot(frame: Any, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
