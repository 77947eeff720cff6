"""``nas-supernet``: train a weight-sharing supernet once, extract sub-networks from it.

    nas-supernet train --space mobilenetv3_small --data cifar10_r32 --out outputs/supernet/small \\
        --set train.epochs=12                  # the supernet benchmark's schedule
    nas-supernet train --space mobilenetv3_small --data synthetic --out /tmp/sn \\
        --set train.steps=20 --set data.resolution=32
    torchrun --standalone --nproc-per-node 2 -m nas.cli.supernet train \\
        --data cifar10_r32 --out outputs/supernet/ddp      # data-parallel, one supernet
    nas-supernet extract --checkpoint outputs/supernet/small/supernet.pt --which largest \\
        --out outputs/supernet/small/extracted --evaluate
    nas-supernet extract --checkpoint outputs/supernet/small/supernet.pt --spec found.yaml --out nets/

``train`` composes the data config (``nas/conf/data/<name>.yaml`` or a YAML file) and the
``train`` section of ``nas/conf/evaluator/supernet.yaml`` (or ``--config``), applies
``--set key=value`` overrides (keys under ``data.`` or ``train.``), and trains with the
sandwich rule into ``--out`` (``supernet.pt``, resumed when present; ``config.yaml``;
``history.csv``). Use the checkpoint in a search with ``evaluator=supernet
evaluator.checkpoint=<out>/supernet.pt``. Under ``torchrun`` the processes train one supernet
data-parallel, each on its slice of every global batch (``data.batch_size``); rank 0 writes
and scores (:mod:`nas.supernet.parallel`).

``extract`` writes ``<name>.yaml`` (bneck YAML) and ``<name>.pth`` (a state_dict that loads
into ``nas.models.builder.build_model(spec)``); by default BatchNorm is first recalibrated for the
spec on the checkpoint's training data.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import yaml

from nas.errors import NASError
from nas.interrupts import install_sigint_handler

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
WHICH = ("largest", "smallest", "canonical", "random")


class CliError(NASError, ValueError):
    """A command-line problem; printed as one line with exit code 2."""


# ---------------------------------------------------------------------------- config
def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CliError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: a {what} file must be a mapping")
    return data


def load_data_config(name_or_path: str) -> dict[str, Any]:
    """A data config by name (``nas/conf/data/<name>.yaml``) or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_DIR / "data" / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
        raise CliError(f"--data: {name_or_path!r} is neither a YAML file nor a shipped data config "
                       f"(shipped: {shipped})")
    return _read_yaml(path, "data config")


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``--set section.key=value`` overrides to ``config`` in place.

    Parsed by OmegaConf's dotlist grammar, the one Hydra's command-line overrides use, so a
    value reads as it would after ``nas-search``: ``train.steps=20``, ``data.root=null``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for item in overrides:
        section, dot, _ = item.partition("=")[0].partition(".")
        if "=" not in item or not dot or section not in config:
            raise CliError(f"--set {item!r}: expected data.<key>=<value> or train.<key>=<value>")
    try:
        values = OmegaConf.to_container(OmegaConf.from_dotlist(overrides))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise CliError(f"--set: {str(err).splitlines()[0]}") from None
    assert isinstance(values, dict)
    for section, changes in values.items():
        config[section].update(changes)


def _absolute_root(data: dict[str, Any]) -> dict[str, Any]:
    # The checkpoint remembers its data; a relative root would break from another folder.
    if data.get("root") and data.get("name") != "synthetic":
        data = {**data, "root": str(Path(data["root"]).expanduser().resolve())}
    return data


# ---------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from nas.arch.space import load_space
    from nas.supernet.evaluator import SupernetEvaluator
    from nas.supernet.parallel import agree_to_start, rank_settings
    from nas.supernet.train import (
        SupernetTrainConfig,
        checkpoint_file,
        new_supernet,
        space_to_dict,
        train_supernet,
    )
    from nas.training.data import make_loaders
    from nas.training.data_config import DataConfig
    from nas.training.distributed import init_from_env
    from nas.training.train_config import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    space = load_space(args.space)
    evaluator_cfg = _read_yaml(args.config, "supernet config")
    config = {"data": load_data_config(args.data), "train": dict(evaluator_cfg.get("train") or {})}
    apply_overrides(config, args.set or [])
    config["data"] = _absolute_root(config["data"])
    data_cfg = DataConfig.from_dict(config["data"])
    train_cfg = SupernetTrainConfig.from_dict(config["train"])
    out = Path(args.out)
    parallel = init_from_env(train_cfg.device)
    loaders = make_loaders(data_cfg, seed=train_cfg.seed,
                           pin_memory=resolve_device(train_cfg.device).type == "cuda",
                           rank=parallel.rank, world=parallel.world)
    supernet = new_supernet(space, loaders.num_classes, train_cfg)
    resume_from = checkpoint_file(out) if not args.no_resume else None
    # Before any file is written: ranks started differently stop here, in one line.
    agree_to_start(parallel, space=space_to_dict(space), data_cfg=data_cfg,
                   train=rank_settings(train_cfg), loaders=loaders, resume_from=resume_from)
    if parallel.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(
            {"space": space.name, "data": data_cfg.to_dict(), "train": train_cfg.to_dict()},
            sort_keys=False))
    result = train_supernet(supernet, data_cfg, train_cfg, checkpoint_dir=out,
                            resume=not args.no_resume, loaders=loaders, parallel=parallel)
    if parallel.rank != 0:
        return
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    status = "finished" if result.finished else "unfinished"
    ranks = f" on {parallel.world} processes" if parallel.world > 1 else ""
    print(f"supernet {status}: {result.steps} steps in {result.seconds:.0f} s{ranks} "
          f"({result.images_per_second:.1f} images/s); checkpoint {result.checkpoint}")
    if args.no_eval:
        return
    # Scored by rank 0 alone, on whole batches (a rank's loaders hold its share of each).
    evaluator = SupernetEvaluator(result.supernet, data_cfg, bn_batches=args.bn_batches,
                                  device=train_cfg.device, seed=train_cfg.seed,
                                  loaders=loaders if parallel.world == 1 else None)
    for label, spec in (("largest", supernet.largest_spec()), ("canonical", space.base),
                        ("smallest", supernet.smallest_spec())):
        score = evaluator.evaluate(spec)
        print(f"  {label:<9} top-1 {100 * score.top1:5.1f}%  ({score.details['seconds']:.2f} s to score)")


# ---------------------------------------------------------------------------- extract
def _pick_spec(args: argparse.Namespace, supernet: Any) -> tuple[Any, str]:
    """The spec to extract and its default name."""
    from nas.arch.codecs import load_spec

    if args.spec is not None:
        # Named like the input file (or the canonical name), so outputs are easy to pair.
        return load_spec(args.spec), Path(str(args.spec)).stem
    if args.which == "largest":
        return supernet.largest_spec(), "supernet_largest"
    if args.which == "smallest":
        return supernet.smallest_spec(), "supernet_smallest"
    if args.which == "canonical":
        return supernet.space.base, supernet.space.base.name or "canonical"
    return supernet.sample_spec(random.Random(args.seed)), f"supernet_random{args.seed}"


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "subnet"


def _extract(args: argparse.Namespace) -> None:
    import torch

    from nas.arch.codecs import save_spec, to_string
    from nas.supernet.evaluator import SupernetEvaluator
    from nas.supernet.train import load_supernet
    from nas.training.data_config import DataConfig
    from nas.training.scoring import evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    supernet, record = load_supernet(args.checkpoint)
    spec, default_name = _pick_spec(args, supernet)
    name = args.name or default_name
    # The weights have the supernet's classifier: the spec says so, so that
    # build_model(spec) takes the state_dict as is.
    spec = spec.replace(num_classes=supernet.num_classes, name=name)
    supernet.resolve(spec)  # fails early, naming the block and field, when outside the space
    evaluator = None
    if not args.no_recalibrate or args.evaluate:
        data = dict(record["settings"]["data"])
        if args.data_root:
            data["root"] = args.data_root
        data_cfg = DataConfig.from_dict(data)
        evaluator = SupernetEvaluator(supernet, data_cfg, bn_batches=args.bn_batches, device="cpu",
                                      seed=record["settings"]["train"]["seed"])
    if not args.no_recalibrate:
        assert evaluator is not None
        evaluator.activate(spec)  # BN statistics for this spec, copied into the extracted net
    model = supernet.extract(spec)
    out = Path(args.out)
    yaml_path = save_spec(spec, out / f"{_file_stem(name)}.yaml")
    weights_path = out / f"{_file_stem(name)}.pth"
    torch.save(model.state_dict(), weights_path)
    params = sum(p.numel() for p in model.parameters())
    print(f"{to_string(spec)}\nwrote {yaml_path} and {weights_path} ({params:,} parameters)")
    if args.evaluate:
        assert evaluator is not None
        top1, _, _ = evaluate_model(model, evaluator.validation_batches(), "cpu")
        print(f"extracted model top-1 {100 * top1:.1f}% on the validation split"
              + ("" if not args.no_recalibrate else " (BatchNorm not recalibrated)"))


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-supernet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a supernet with the sandwich rule (resumable)")
    train.add_argument("--space", default="mobilenetv3_small",
                       help="a shipped space name (mobilenetv3_small, mobilenetv3_large) or a space YAML")
    train.add_argument("--data", default="synthetic",
                       help="a data config name under nas/conf/data (synthetic, cifar10_r32, cifar10, ...) or a YAML file")
    train.add_argument("--config", type=Path, default=CONF_DIR / "evaluator" / "supernet.yaml",
                       help="YAML whose 'train' section holds the SupernetTrainConfig")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override, e.g. train.epochs=5 or data.resolution=32 (repeatable)")
    train.add_argument("--out", required=True, help="output folder (checkpoint, config, history)")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    train.add_argument("--no-eval", action="store_true", help="skip scoring largest/canonical/smallest")
    train.add_argument("--bn-batches", type=int, default=8, help="BN recalibration batches for scoring")
    train.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1: with all threads under load the "
                            "supernet trained 20-25x slower)")
    train.set_defaults(func=_train)

    extract = sub.add_parser("extract", help="write a sub-network as bneck YAML + state_dict")
    extract.add_argument("--checkpoint", required=True, type=Path, help="a supernet.pt")
    which = extract.add_mutually_exclusive_group()
    which.add_argument("--spec", help="a bneck YAML (or canonical name) inside the supernet's space")
    which.add_argument("--which", choices=WHICH, default="largest",
                       help="a named point of the space (default: largest)")
    extract.add_argument("--seed", type=int, default=0, help="seed of --which random")
    extract.add_argument("--out", required=True, help="output folder")
    extract.add_argument("--name", default=None, help="file stem and spec name")
    extract.add_argument("--bn-batches", type=int, default=8, help="BN recalibration batches")
    extract.add_argument("--no-recalibrate", action="store_true",
                         help="copy the supernet's BN statistics as they are (no data needed)")
    extract.add_argument("--data-root", default=None, help="override the checkpoint's data root")
    extract.add_argument("--evaluate", action="store_true",
                         help="print the extracted model's validation top-1")
    extract.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    extract.set_defaults(func=_extract)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point; configuration errors end with one line and exit code 2.

    Under ``torchrun`` a disagreement between the ranks is printed by rank 0 alone (every
    rank raises the same line); a rank that loses its peers ends with one line and exit code 1.
    """
    import torch.distributed as dist

    from nas.arch.spec import SpecError
    from nas.arch.space import SpaceError
    from nas.supernet.dynamic_ops import SupernetError
    from nas.supernet.train import SupernetCheckpointError
    from nas.training.distributed import (
        CollectiveError,
        DataParallel,
        RanksDisagreeError,
        shutdown,
    )

    args = build_parser().parse_args(argv)
    install_sigint_handler()
    try:
        args.func(args)
    except (CliError, SpecError, SpaceError, SupernetError, SupernetCheckpointError,
            ValueError, FileNotFoundError) as err:
        if not isinstance(err, RanksDisagreeError) or DataParallel.current().rank == 0:
            print(f"nas-supernet: error: {err}", file=sys.stderr)
        return 2
    except (CollectiveError, dist.DistError) as err:
        # A peer died or the rendezvous failed: the collectives cannot go on. The last
        # checkpoint stays; the same command resumes from it.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"nas-supernet: error: {first}; the data-parallel processes cannot go on: rerun "
              "the same command on every rank to resume from the last checkpoint", file=sys.stderr)
        return 1
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
