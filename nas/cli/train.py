"""``nas-train``: train one architecture on a dataset and write its metrics and weights.

    nas-train small --data synthetic --resolution 64 --epochs 2 --out runs/small
    nas-train small --protocol proxy --out runs/small-proxy       # a named protocol (CIFAR-10)
    nas-train small --protocol reference --seed 1 --out runs/small-ref-s1
    nas-train large --data imagefolder --root ../shared/datasets/cifar10-subset --epochs 5
    nas-train my_bneck.yaml --data cifar10 --root ../shared/datasets/cifar10 --train-per-class 500
    nas-train small --data imagefolder --root DIR --weights mobilenet_v3_small.pth
    nas-train small --data synthetic --out runs/small --resume     # after an interruption
    torchrun --nproc-per-node 2 -m nas.cli.train small --protocol proxy --out runs/ddp  # DDP

A --protocol (nas/conf/protocol/<name>.yaml, or a YAML file) sets the data and training
fields; options given explicitly on the command line override it. One torch thread per
process by default (--threads): on a small shared CPU more threads are far slower (see the
docs' training page for the measurement).

Writes into --out: metrics.csv (one row per epoch), summary.yaml (final top-1/top-5, the
settings, seconds, images/s), model.pth (the trained state_dict, torchvision key names) and
checkpoint/last.pt (what --resume continues from).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nas.arch.spec import SpecError
from nas.config import ConfigError
from nas.interrupts import install_sigint_handler
from nas.training.data_config import DATASETS, DataConfig, DataError
from nas.training.train import CheckpointError, NonFiniteLossError, WeightsError
from nas.training.train_config import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig

# Errors that are the user's to fix: one line on stderr, exit status 2.
USER_ERRORS = (SpecError, ConfigError, DataError, WeightsError, CheckpointError, NonFiniteLossError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", help="a canonical name (small, large, small_minimal, ...) or a "
                                     "bneck YAML file")
    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=DATASETS, default="synthetic")
    data.add_argument("--root", help="dataset directory (imagefolder, cifar10: train/ and val/ "
                                     "class folders; cifar10 decodes them once into a tensor cache)")
    data.add_argument("--resolution", type=int, default=64,
                      help="training resolution; small images are upsampled to it (default 64)")
    data.add_argument("--train-per-class", type=int,
                      help="cifar10: a class-balanced seeded subset of train, this many a class")
    data.add_argument("--cache-dir", help="cifar10: tensor cache folder (default "
                                          "$NAS_CACHE_DIR or ~/.cache/mnv3-nas)")
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
    opt.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads per process (default 1: on a busy shared machine "
                          "more threads train far slower)")
    opt.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="bf16 autocast (CPU or CUDA) or fp16 AMP (CUDA)")
    opt.add_argument("--compile", action="store_true", help="torch.compile the model")
    opt.add_argument("--no-channels-last", action="store_true",
                     help="keep the NCHW memory format (channels-last is faster on CPUs)")
    parser.add_argument("--protocol", help="a named training protocol (proxy, reference) or a "
                                           "protocol YAML; explicit options override its fields")
    parser.add_argument("--out", type=Path, help="output folder (default outputs/nas-train/<arch>)")
    parser.add_argument("--weights", type=Path,
                        help="a state_dict .pth (e.g. torchvision's) to start from; the "
                             "classifier's last layer is re-initialised if the class count differs")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --out/checkpoint/last.pt when it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


# Command-line option -> (config part, field); the option's value goes to that field.
_DATA_OPTIONS = {"data": "name", "root": "root", "resolution": "resolution",
                 "num_classes": "num_classes", "train_samples": "train_samples",
                 "train_per_class": "train_per_class", "val_samples": "val_samples",
                 "val_fraction": "val_fraction", "batch_size": "batch_size",
                 "num_workers": "num_workers", "data_seed": "seed", "cache_dir": "cache_dir"}
_TRAIN_OPTIONS = {"epochs": "epochs", "steps": "steps", "lr": "lr", "optimizer": "optimizer",
                  "schedule": "schedule", "warmup_epochs": "warmup_epochs",
                  "weight_decay": "weight_decay", "label_smoothing": "label_smoothing",
                  "bn_recalibration_batches": "bn_recalibration_batches", "seed": "seed",
                  "device": "device", "checkpoint_every": "checkpoint_every",
                  "precision": "precision", "compile": "compile"}


def _explicit_options(argv: list[str] | None) -> set[str]:
    """The options given on the command line (not defaulted): they override a protocol."""
    parser = build_parser()
    # argparse fills in a default only where the namespace lacks the attribute: start from a
    # namespace holding a marker everywhere, and what no longer holds it was given.
    marker = object()
    dests = vars(parser.parse_args(argv))
    given = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(dests, marker)))
    return {dest for dest, value in vars(given).items() if value is not marker}


def _configs(args: argparse.Namespace, out: Path, explicit: set[str]) -> tuple[DataConfig, TrainConfig]:
    from nas.training.protocols import load_protocol

    display = {"checkpoint_dir": str(out / "checkpoint"), "progress": not args.no_progress,
               "channels_last": not args.no_channels_last}
    if args.protocol is None:
        data = {field: getattr(args, option) for option, field in _DATA_OPTIONS.items()}
        train = {field: getattr(args, option) for option, field in _TRAIN_OPTIONS.items()}
        return DataConfig.from_dict(data), TrainConfig.from_dict({**train, **display})
    data = {field: getattr(args, option) for option, field in _DATA_OPTIONS.items() if option in explicit}
    train = {field: getattr(args, option) for option, field in _TRAIN_OPTIONS.items()
             if option in explicit}
    protocol = load_protocol(args.protocol, data=data, train={**train, **display})
    return protocol.data, protocol.train


def run(args: argparse.Namespace, explicit: set[str] | None = None) -> dict[str, Any]:
    """Train as ``args`` say and write the outputs; returns the summary.

    ``explicit``: the options given on the command line (they override ``--protocol``).
    Under ``torchrun`` the processes train one network data-parallel; rank 0 writes.
    """
    import pandas as pd
    import torch
    import yaml

    from nas.arch.codecs import load_spec, to_string
    from nas.models.builder import build_model
    from nas.training.data import make_loaders
    from nas.training.distributed import init_from_env
    from nas.training.train import load_weights, train
    from nas.training.train_config import resolve_device

    explicit = explicit if explicit is not None else set(vars(args))
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    spec = load_spec(args.arch)
    stem = Path(str(args.arch)).stem if str(args.arch).endswith((".yaml", ".yml")) else str(args.arch)
    kind = args.protocol and Path(str(args.protocol)).stem or f"{args.data}-r{args.resolution}"
    out: Path = args.out or Path("outputs") / "nas-train" / f"{stem}-{kind}"
    data_cfg, train_cfg = _configs(args, out, explicit)
    device = resolve_device(train_cfg.device)
    parallel = init_from_env(train_cfg.device)
    loaders = make_loaders(data_cfg, seed=train_cfg.seed, pin_memory=device.type == "cuda",
                           device=device, rank=parallel.rank, world=parallel.world)
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
    result = train(target, data_cfg, train_cfg, loaders=loaders, resume=args.resume, parallel=parallel)
    summary_extra = {"protocol": args.protocol, "precision": train_cfg.precision,
                     "channels_last": train_cfg.channels_last, "compile": train_cfg.compile,
                     "processes": parallel.world, "rank": parallel.rank}
    if parallel.rank != 0:
        return {"top1": result.top1, "top5": result.top5, "steps": result.steps,
                "seconds": result.seconds, "images_per_second": result.images_per_second,
                "arch": str(args.arch), "out": str(out), **summary_extra}

    pd.DataFrame(result.history).to_csv(out / "metrics.csv", index=False)
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, out / "model.pth")
    summary = {
        "arch": str(args.arch),
        "arch_string": to_string(result.model.spec) if hasattr(result.model, "spec") else None,
        "num_classes": loaders.num_classes,
        "classes": list(loaders.classes),
        "resolution": data_cfg.resolution,
        "top1": result.top1,
        "top5": result.top5,
        "val_loss": result.loss,
        "steps": result.steps,
        "epochs": len(result.history),
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 2),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        **summary_extra,
        "weights": str(args.weights) if args.weights else None,
        "reinitialised": reinitialised,
        "out": str(out),
        "settings": result.settings,
    }
    (out / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    return summary


def main(argv: list[str] | None = None) -> int:
    from nas.training.distributed import shutdown

    args = build_parser().parse_args(argv)
    install_sigint_handler()
    try:
        summary = run(args, _explicit_options(argv))
    except USER_ERRORS as err:
        print(f"nas-train: error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if summary.get("rank", 0) != 0:
        return 0
    top5 = "n/a" if summary["top5"] is None else f"{summary['top5']:.4f}"
    print(f"{summary['arch']}: top-1 {summary['top1']:.4f}  top-5 {top5}  "
          f"({summary['steps']} steps, {summary['seconds']:.1f} s, "
          f"{summary['images_per_second']:.1f} images/s) -> {summary['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
