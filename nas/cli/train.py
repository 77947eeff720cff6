"""``nas-train``: train one architecture on a dataset and write its metrics and weights.

    nas-train small --data synthetic --resolution 64 --epochs 2 --out runs/small
    nas-train large --data imagefolder --root ../shared/datasets/cifar10-subset --epochs 5
    nas-train my_bneck.yaml --data cifar10 --root ~/data/cifar10 --download
    nas-train small --data imagefolder --root DIR --weights mobilenet_v3_small.pth
    nas-train small --data synthetic --out runs/small --resume     # after an interruption

Writes into --out: metrics.csv (one row per epoch), summary.yaml (final top-1/top-5, the
settings, seconds, images/s), model.pth (the trained state_dict, torchvision key names) and
checkpoint/last.pt (what --resume continues from).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nas.arch import SpecError
from nas.data import DATASETS, ConfigError, DataConfig, DataError
from nas.train import (
    OPTIMIZERS,
    SCHEDULES,
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    WeightsError,
)

# Errors that are the user's to fix: one line on stderr, exit status 2.
USER_ERRORS = (SpecError, ConfigError, DataError, WeightsError, CheckpointError, NonFiniteLossError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", help="a canonical name (small, large, small_minimal, ...) or a "
                                     "bneck YAML file")
    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=DATASETS, default="synthetic")
    data.add_argument("--root", help="dataset directory (imagefolder: train/ and val/ class "
                                     "folders; cifar10: torchvision's CIFAR-10 root)")
    data.add_argument("--resolution", type=int, default=64,
                      help="training resolution; small images are upsampled to it (default 64)")
    data.add_argument("--num-classes", type=int, help="synthetic: classes (default 10)")
    data.add_argument("--train-samples", type=int,
                      help="synthetic: train size (default 2000); others: a seeded subset")
    data.add_argument("--val-samples", type=int,
                      help="synthetic: val size (default 500); others: a seeded subset")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of train carved out as val when there is no val split")
    data.add_argument("--batch-size", type=int, default=64)
    data.add_argument("--num-workers", type=int, default=0)
    data.add_argument("--data-seed", type=int, default=0,
                      help="seed of the synthetic images and of carved splits")
    data.add_argument("--download", action="store_true", help="cifar10: fetch it if missing")
    opt = parser.add_argument_group("training")
    opt.add_argument("--epochs", type=int, default=1)
    opt.add_argument("--steps", type=int, help="optimiser steps in all (overrides --epochs)")
    opt.add_argument("--lr", type=float, default=0.05)
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    opt.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    opt.add_argument("--warmup-epochs", type=float, default=0.0)
    opt.add_argument("--weight-decay", type=float, default=4e-5)
    opt.add_argument("--label-smoothing", type=float, default=0.1)
    opt.add_argument("--bn-recalibration-batches", type=int, default=16,
                     help="re-estimate BatchNorm statistics on this many batches before "
                          "each evaluation (0: off)")
    opt.add_argument("--seed", type=int, default=0, help="training seed")
    opt.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    opt.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    opt.add_argument("--threads", type=int,
                     help="torch CPU threads (default: torch's choice; on a busy shared "
                          "machine 1 is often faster)")
    parser.add_argument("--out", type=Path, help="output folder (default outputs/nas-train/<arch>)")
    parser.add_argument("--weights", type=Path,
                        help="a state_dict .pth (e.g. torchvision's) to start from; the "
                             "classifier's last layer is re-initialised if the class count differs")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --out/checkpoint/last.pt when it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _configs(args: argparse.Namespace, out: Path) -> tuple[DataConfig, TrainConfig]:
    data_cfg = DataConfig(
        name=args.data, root=args.root, resolution=args.resolution, num_classes=args.num_classes,
        train_samples=args.train_samples, val_samples=args.val_samples,
        val_fraction=args.val_fraction, batch_size=args.batch_size, num_workers=args.num_workers,
        seed=args.data_seed, download=args.download,
    )
    train_cfg = TrainConfig(
        epochs=args.epochs, steps=args.steps, lr=args.lr, optimizer=args.optimizer,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        bn_recalibration_batches=args.bn_recalibration_batches, seed=args.seed,
        device=args.device, checkpoint_dir=str(out / "checkpoint"),
        checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
    )
    return data_cfg, train_cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` say and write the outputs; returns the summary."""
    import pandas as pd
    import torch
    import yaml

    from nas.data import make_loaders
    from nas.formats import load_spec, to_string
    from nas.model import build_model
    from nas.train import load_weights, resolve_device, train

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    spec = load_spec(args.arch)
    stem = Path(str(args.arch)).stem if str(args.arch).endswith((".yaml", ".yml")) else str(args.arch)
    out: Path = args.out or Path("outputs") / "nas-train" / f"{stem}-{args.data}-r{args.resolution}"
    data_cfg, train_cfg = _configs(args, out)
    device = resolve_device(train_cfg.device)
    loaders = make_loaders(data_cfg, seed=train_cfg.seed, pin_memory=device.type == "cuda")
    reinitialised: list[str] = []
    if args.weights is not None:
        torch.manual_seed(train_cfg.seed)
        model = build_model(spec, num_classes=loaders.num_classes)
        reinitialised = load_weights(model, args.weights)
        if reinitialised:
            print(f"nas-train: {args.weights}: re-initialised {', '.join(reinitialised)} "
                  f"for {loaders.num_classes} classes", file=sys.stderr)
        target: Any = model
    else:
        target = spec
    out.mkdir(parents=True, exist_ok=True)
    result = train(target, data_cfg, train_cfg, loaders=loaders, resume=args.resume)

    pd.DataFrame(result.history).to_csv(out / "metrics.csv", index=False)
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, out / "model.pth")
    summary = {
        "arch": str(args.arch),
        "arch_string": to_string(result.model.spec) if hasattr(result.model, "spec") else None,
        "num_classes": loaders.num_classes,
        "top1": result.top1,
        "top5": result.top5,
        "val_loss": result.loss,
        "steps": result.steps,
        "epochs": len(result.history),
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 2),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "weights": str(args.weights) if args.weights else None,
        "reinitialised": reinitialised,
        "out": str(out),
        "settings": result.settings,
    }
    (out / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except USER_ERRORS as err:
        print(f"nas-train: error: {err}", file=sys.stderr)
        return 2
    top5 = "n/a" if summary["top5"] is None else f"{summary['top5']:.4f}"
    print(f"{summary['arch']}: top-1 {summary['top1']:.4f}  top-5 {top5}  "
          f"({summary['steps']} steps, {summary['seconds']:.1f} s, "
          f"{summary['images_per_second']:.1f} images/s) -> {summary['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
