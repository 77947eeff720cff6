"""One timed training run of the throughput benchmark (:mod:`experiments.throughput_benchmark`),
in a process of its own; prints one JSON line.

Started by path, not with ``-m``: the benchmark sets ``PYTHONPATH`` to the tree whose ``nas``
it times (this checkout, or an earlier commit checked out as a git worktree, which has no
``experiments`` package), so this imports nothing but ``nas`` and the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from nas.arch.codecs import load_spec
from nas.training.data_config import DataConfig
from nas.training.train import train
from nas.training.train_config import TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True, help="the variant's name (echoed in the result)")
    parser.add_argument("--tree", choices=["baseline", "current"], required=True,
                        help="baseline: the JPEG folder through imagefolder; current: the cifar10 tensor cache")
    parser.add_argument("--train", default="{}", help="the variant's TrainConfig fields (JSON)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=int, required=True, help="training images")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--warmup-steps", type=int, required=True, help="steps left out of the timing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = DataConfig(name="imagefolder" if args.tree == "baseline" else "cifar10", root=str(args.data),
                      resolution=48, batch_size=args.batch_size, train_samples=args.images,
                      val_samples=500, augment="pad_crop")
    cfg = TrainConfig.from_dict({"epochs": 1, "progress": False, "bn_recalibration_batches": 1,
                                 "device": "cpu", **json.loads(args.train)})
    stamps: list[float] = []
    result = train(load_spec("small"), data, cfg, on_step=lambda step, _: stamps.append(time.perf_counter()))
    timed = stamps[args.warmup_steps - 1:]
    images = (len(timed) - 1) * args.batch_size
    print(json.dumps({"variant": args.variant, "images_per_second": images / (timed[-1] - timed[0]),
                      "steps": len(stamps), "loop_images_per_second": result.images_per_second,
                      "load": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
