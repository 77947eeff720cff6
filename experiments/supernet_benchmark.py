"""Supernet benchmark on the CIFAR-10 subset: ranking quality, training and scoring time.

1. Pick specs spanning the space (``mobilenetv3_small`` by default): its smallest, largest
   and canonical networks plus random specs at evenly spaced parameter-count quantiles of a
   seeded pool.
2. Train each stand-alone as the reference ranking: the search's proxy data and optimiser
   (``nas/conf/data/cifar10_subset.yaml``, ``nas/conf/evaluator/proxy.yaml``) at 48 px for
   6 epochs (the proxy benchmark's most repeatable setting), over two seeds, through
   :class:`nas.training.proxy.ProxyTrainingEvaluator`; results are cached in JSON-lines files, so an
   interrupted benchmark resumes.
3. Train one supernet with the sandwich rule, with in-place distillation or (``--no-distill``)
   on the labels only (checkpointed, resumes), then score every spec with :class:`nas.supernet.evaluator.SupernetEvaluator`
   (activate, recalibrate BN, validation top-1), timing each score.
4. Kendall's tau (and Spearman's rho) between supernet scores and the reference's mean
   top-1, the reference's own seed-to-seed tau (the ceiling), and the parameter count as a
   naive baseline predictor.

Writes results.csv, summary.yaml, summary.md and scatter.png into --out (the report:
:mod:`experiments.supernet_report`); checkpoints and the
reference caches go to --work (outside git). Two processes can share the work on two cores:

    python -m experiments.supernet_benchmark --phase reference --reference-seeds 0 &
    python -m experiments.supernet_benchmark --phase supernet --supernet-epochs 16 &
    wait; python -m experiments.supernet_benchmark --phase reference --reference-seeds 1
    python -m experiments.supernet_benchmark --supernet-epochs 16   # scores and summarises
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from experiments import harness
from experiments.supernet_report import resummarise, summarise
from nas.arch.codecs import to_string
from nas.arch.space import SearchSpace, load_space
from nas.arch.spec import NetworkSpec
from nas.models.builder import build_model
from nas.supernet.evaluator import SupernetEvaluator
from nas.supernet.train import SupernetTrainConfig, new_supernet, train_supernet
from nas.training.data import make_loaders
from nas.training.data_config import DataConfig
from nas.training.proxy import ProxyTrainingEvaluator
from nas.training.train_config import TrainConfig

CONF = harness.REPO / "nas" / "conf"
DEFAULT_ROOT = harness.DATASETS / "cifar10-subset"
DEFAULT_OUT = harness.RESULTS / "supernet"
DEFAULT_WORK = harness.OUTPUTS / "supernet_benchmark"


def params_of(spec: NetworkSpec, num_classes: int) -> int:
    return sum(p.numel() for p in build_model(spec, num_classes=num_classes).parameters())


def pick_specs(space: SearchSpace, count: int, pool: int, seed: int) -> dict[str, NetworkSpec]:
    """Smallest, largest, canonical, and ``count - 3`` random specs spread over model size."""
    from nas.supernet.network import Supernet

    probe = Supernet(space, num_classes=10)
    specs = {"smallest": probe.smallest_spec(), "largest": probe.largest_spec(),
             "canonical": space.base}
    rng = random.Random(seed)
    candidates = [space.sample(rng) for _ in range(pool)]
    sized = sorted(candidates, key=lambda s: params_of(s, 10))
    n = count - len(specs)
    for i in range(n):
        # Evenly spaced quantiles of the pool's parameter counts (both ends excluded).
        index = round((i + 1) * (len(sized) - 1) / (n + 1))
        specs[f"random_q{i + 1:02d}"] = sized[index]
    return {name: spec.replace(name=name) for name, spec in specs.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--space", default="mobilenetv3_small")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="imagefolder root")
    harness.add_common(parser, out=DEFAULT_OUT, threads=True, seed=0, help={"seed": "spec sampling seed"})
    parser.add_argument("--work", type=Path, default=None,
                        help="supernet checkpoint and reference caches (resumable state); "
                             "default outputs/supernet_benchmark/r<resolution>; the supernet's checkpoint "
                             "goes to its sub-folder supernet_e<supernet epochs>")
    parser.add_argument("--specs", type=int, default=12, help="specs to compare (>= 10)")
    parser.add_argument("--pool", type=int, default=200, help="random specs to pick quantiles from")
    parser.add_argument("--resolution", type=int, default=48,
                        help="proxy resolution of both the reference and the supernet (48: the "
                             "proxy benchmark's most repeatable setting)")
    parser.add_argument("--train-samples", type=int, default=None, help="subset of train (quick looks)")
    parser.add_argument("--val-samples", type=int, default=None, help="subset of val (quick looks)")
    parser.add_argument("--reference-epochs", type=int, default=6,
                        help="stand-alone training epochs of the reference ranking (6 at 48 px: "
                             "seed-to-seed Kendall tau 0.64 in experiments/proxy_benchmark.py)")
    parser.add_argument("--reference-seeds", type=int, nargs="+", default=[0, 1],
                        help="stand-alone seeds; the reference is their mean top-1")
    parser.add_argument("--only", nargs="+", default=None, metavar="SPEC",
                        help="with --phase reference: train only these specs (split the "
                             "reference over processes)")
    parser.add_argument("--phase", choices=("all", "reference", "supernet"), default="all",
                        help="'reference' or 'supernet' does only that part (two processes can "
                             "share the work: results are cached in --work); 'all' does what is "
                             "missing, then scores and summarises")
    parser.add_argument("--supernet-epochs", type=int, default=8)
    parser.add_argument("--num-random", type=int, default=2)
    parser.add_argument("--no-distill", action="store_true",
                        help="train the supernet on the labels only, without in-place "
                             "distillation from the largest network (checkpoint folder "
                             "supernet_e<epochs>_nodistill)")
    parser.add_argument("--bn-batches", type=int, default=8)
    parser.add_argument("--progress", action="store_true", help="tqdm bars")
    parser.add_argument("--resummarise", action="store_true",
                        help="rewrite summary.yaml/summary.md/scatter.png from results.csv and the "
                             "recorded timings (no training, no scoring)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resummarise:
        return resummarise(args)
    if args.work is None:
        args.work = DEFAULT_WORK / f"r{args.resolution}"
    harness.start(args)
    load_start = harness.load_average()
    started = time.perf_counter()

    # The proxy data and optimiser of every search (the shipped configs), at the benchmark's
    # resolution; the reference trains longer than a search's 2-epoch proxy, because 2 epochs
    # rank this space's largest network last (the proxy benchmark: seeds then agree at tau
    # 0.54 or less), and the supernet must be judged against a ranking that is itself
    # repeatable.
    data_doc = yaml.safe_load((CONF / "data" / "cifar10_subset.yaml").read_text())
    data_doc["root"] = str(args.root)
    data_doc["resolution"] = args.resolution
    data_doc.update(train_samples=args.train_samples, val_samples=args.val_samples)
    data_cfg = DataConfig.from_dict(data_doc)
    proxy_doc = yaml.safe_load((CONF / "evaluator" / "proxy.yaml").read_text())["train"]
    proxy_cfg = dataclasses.replace(TrainConfig.from_dict(proxy_doc), device="cpu",
                                    progress=args.progress, epochs=args.reference_epochs,
                                    warmup_epochs=0.3 if args.reference_epochs > 2 else 0.0,
                                    bn_recalibration_batches=16)
    space = load_space(args.space)
    specs = pick_specs(space, args.specs, args.pool, args.seed)
    unknown = sorted(set(args.only or []) - set(specs))
    if unknown:
        raise SystemExit(f"supernet_benchmark: --only names unknown specs {unknown}; "
                         f"known: {sorted(specs)}")
    harness.log(f"{len(specs)} specs from {args.space}; data {data_cfg.name} at {data_cfg.resolution}px; "
                f"phase {args.phase}")

    # ---- stand-alone reference training (one cache per seed, resumable)
    standalone: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    if args.phase in ("all", "reference"):
        for seed in args.reference_seeds:
            proxy = ProxyTrainingEvaluator(
                data_cfg, dataclasses.replace(proxy_cfg, seed=seed),
                cache_path=args.work / f"reference_seed{seed}.jsonl")
            standalone[seed] = {}
            for name, spec in specs.items():
                if args.phase == "reference" and args.only and name not in args.only:
                    continue
                cached = proxy.cached(spec) is not None
                result = proxy.evaluate(spec)
                standalone[seed][name] = result
                harness.log(f"stand-alone {name} seed {seed}: top-1 {result.top1:.4f} "
                            f"({result.details['seconds']:.0f} s{', cached' if cached else ''})")
    standalone_wall = time.perf_counter() - t0
    if args.phase == "reference":
        return 0

    # ---- the supernet (checkpointed, resumable)
    train_cfg = SupernetTrainConfig(
        epochs=args.supernet_epochs, lr=proxy_cfg.lr, optimizer=proxy_cfg.optimizer,
        weight_decay=proxy_cfg.weight_decay, label_smoothing=proxy_cfg.label_smoothing,
        num_random=args.num_random, distill=not args.no_distill, device="cpu",
        progress=args.progress, checkpoint_every=20)
    checkpoint_name = f"supernet_e{args.supernet_epochs}" + ("_nodistill" if args.no_distill else "")
    loaders = make_loaders(data_cfg, seed=train_cfg.seed)
    t0 = time.perf_counter()
    trained = train_supernet(new_supernet(space, loaders.num_classes, train_cfg), data_cfg,
                             train_cfg, checkpoint_dir=args.work / checkpoint_name,
                             loaders=loaders)
    supernet_wall_this_call = time.perf_counter() - t0
    harness.log(f"supernet: {trained.steps} steps, {trained.seconds:.0f} s training in all")
    if args.phase == "supernet":
        return 0

    # ---- scoring
    evaluator = SupernetEvaluator(trained.supernet, data_cfg, bn_batches=args.bn_batches,
                                  device="cpu", loaders=loaders, seed=train_cfg.seed)
    t0 = time.perf_counter()
    list(evaluator.calibration_batches()), list(evaluator.validation_batches())
    cache_fill = time.perf_counter() - t0
    rows = []
    for name, spec in specs.items():
        scores = [evaluator.evaluate(spec) for _ in range(3)]
        seconds = [s.details["seconds"] for s in scores]
        assert len({s.top1 for s in scores}) == 1, "supernet scores must be deterministic"
        by_seed = {seed: standalone[seed][name] for seed in args.reference_seeds}
        reference = statistics.fmean(r.top1 for r in by_seed.values())
        rows.append({
            "spec": name, "params": params_of(spec, loaders.num_classes),
            "standalone_top1": reference,
            **{f"standalone_top1_seed{seed}": r.top1 for seed, r in by_seed.items()},
            "standalone_seconds": sum(r.details["seconds"] for r in by_seed.values()),
            "supernet_top1": scores[0].top1, "supernet_val_loss": scores[0].details["val_loss"],
            "score_seconds_median": statistics.median(seconds), "arch": to_string(spec),
        })
        harness.log(f"supernet score {name}: top-1 {scores[0].top1:.4f} "
                    f"(stand-alone {reference:.4f}; {statistics.median(seconds):.2f} s)")
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "results.csv", index=False)
    summarise(frame, args, data_cfg, proxy_cfg, train_cfg, trained, {
        "load_average_at_start": load_start,
        "load_average_at_end": harness.load_average(),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
        "standalone_wall_seconds_this_invocation": round(standalone_wall, 1),
        "supernet_wall_seconds_this_invocation": round(supernet_wall_this_call, 1),
        "score_cache_fill_seconds": round(cache_fill, 2),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
