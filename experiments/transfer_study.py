"""Do the CIFAR-10 rankings transfer to ImageNet photographs? (Tiny-ImageNet at 64 px)

Trains from scratch, with the ``reference_tin`` protocol (``nas/conf/protocol/reference_tin.yaml``:
100 Tiny-ImageNet classes from WebDataset shards at 64 px), the networks whose CIFAR-10
reference accuracy is known: the repeatability benchmark's 8 Small-space networks
(``supernet_benchmark.pick_specs``: smallest, largest, canonical Small, five random at
parameter-count quantiles) and the search's found_80/90/100
(``experiments/results/search/found_*.yaml``), plus canonical MobileNetV3-Large and
MobileNetV2 from the spec library for scale. Canonical Small and the found three get 2 seeds,
the rest 1. Runs go in the order that answers most soonest (``plan``): canonical Small and the
found networks at seed 0, their second seeds, the other networks from the cheapest, Large and
MobileNetV2 last. ``--network NAME=BNECK_YAML`` adds a network trained and compared with
canonical Small like the found three (2 seeds), e.g. the picks of a search on Tiny-ImageNet.
``--heldout N`` adds ``heldout_q01..`` : N further Small-space networks at parameter-count
quantiles of a pool drawn with ``--heldout-seed`` (the benchmark's rule, another seed), one seed
each, so that a ranking chosen on the study's networks (a proxy, a supernet's scoring) can be
checked on networks it was not chosen on. ``--inherit SUPERNET_CHECKPOINT`` starts each
Small-space network from its weights in a trained supernet instead of from scratch (Once-for-All's
inherit-then-fine-tune proxy, e.g. with ``--protocol finetune_tin``); its runs are keyed by the
protocol and the checkpoint together, so fine-tunes from two supernets never mix.

Every finished run is one JSON line in ``--runs`` (one file per seed); a run in progress
checkpoints every ``--checkpoint-every`` steps in ``--work``: a killed study resumes where it
stopped, and a finished run is never trained again. ``--report`` writes ``summary.yaml`` and
``summary.md`` in ``--out``: each network's Tiny-ImageNet val top-1 beside its CIFAR-10
reference top-1 (seed means from ``experiments/results/repeatability/runs`` and, for the
found networks, ``experiments/results/search/front_vs_canonical/results.jsonl``), Kendall tau
between the two rankings with a 90% bootstrap interval, and each found network against
canonical Small with the seeds available. Tune and report on val only::

    nohup nice -n 10 python -m experiments.transfer_study > outputs/transfer_study.log 2>&1 &
    python -m experiments.transfer_study --report
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from experiments.harness import (
    DATASETS, OUTPUTS, RESULTS, add_common, append_row, host_facts, load_1min, log, now,
    read_rows, start, study_parser, write_lines, write_yaml,
)
from experiments.repeatability_stats import tau, tau_interval
from experiments.supernet_benchmark import params_of, pick_specs
from experiments.transfer_summary import (
    FOUND,
    HELDOUT_PREFIX,
    LIBRARY,
    found_vs_canonical,
    markdown,
    mean_std,
    rankings,
)
from nas.arch.codecs import load_spec, to_string
from nas.arch.space import load_space
from nas.arch.spec import NetworkSpec
from nas.training.data import make_loaders
from nas.training.protocols import Protocol, load_protocol, with_fields
from nas.training.scoring import encode_correct, predict
from nas.supernet.network import Supernet
from nas.supernet.train import load_supernet
from nas.training.train import train

DEFAULT_OUT = RESULTS / "transfer"
DEFAULT_WORK = OUTPUTS / "transfer_study"
FOUND_DIR = RESULTS / "search"
CIFAR_RUNS = RESULTS / "repeatability" / "runs"
FOUND_RUNS = RESULTS / "search" / "front_vs_canonical" / "results.jsonl"


# ---------------------------------------------------------------------------- the plan
def networks(args: argparse.Namespace) -> dict[str, NetworkSpec]:
    """Every network of the study by name (the benchmark's 8 named as it names them)."""
    specs = dict(pick_specs(load_space("mobilenetv3_small"), args.specs, args.pool, args.spec_seed))
    for name in FOUND:
        specs[name] = load_spec(args.found_dir / f"{name}.yaml").replace(name=name)
    if args.inherit is None:  # the spec-library networks have no weights in a Small-space supernet
        for name, library_name in LIBRARY.items():
            specs[name] = load_spec(library_name).replace(name=name)
    for name, path in args.network:
        specs[name] = load_spec(path).replace(name=name)
    specs.update(heldout_specs(args.heldout, args.pool, args.heldout_seed))
    return specs


def heldout_specs(count: int, pool: int, seed: int) -> dict[str, NetworkSpec]:
    """``heldout_q01..``: ``count`` random Small-space networks at parameter-count quantiles of a
    pool drawn with ``seed`` (``pick_specs``' random picks, without its fixed three)."""
    if count <= 0:
        return {}
    picked = pick_specs(load_space("mobilenetv3_small"), count + 3, pool, seed)
    renamed = {name.replace("random_", HELDOUT_PREFIX): spec for name, spec in picked.items()
               if name.startswith("random_")}
    return {name: spec.replace(name=name) for name, spec in renamed.items()}


def parse_network(text: str) -> tuple[str, Path]:
    """``NAME=BNECK_YAML`` (``--network``): a further network to train beside the found ones."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--network {text!r}: expected NAME=BNECK_YAML")
    if name in (*FOUND, *LIBRARY, "canonical"):
        raise argparse.ArgumentTypeError(f"--network {text!r}: {name!r} names one of the study's own networks")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--network {text!r}: no such file {path}")
    return name, Path(path)


def plan(specs: dict[str, NetworkSpec], all_seeds: int | None = None,
         extra: Sequence[str] = ()) -> list[tuple[str, int]]:
    """``(network, seed)`` in the order to train: the question first (canonical Small and the
    found networks, then their second seeds), then the ranking (the other benchmark networks
    from the cheapest), then the scale references. With ``all_seeds``, every network is then
    trained with seeds ``0 .. all_seeds - 1`` (a seed-to-seed ranking needs every network
    twice), the further seeds after the plan, in its order. ``extra`` (``--network``) are
    trained like the found networks: two seeds, right after them."""
    lead = ["canonical", *FOUND, *extra]
    rest = sorted((n for n in specs if n not in lead and n not in LIBRARY),
                  key=lambda n: params_of(specs[n], 100))
    order = [(n, 0) for n in lead] + [(n, 1) for n in ("canonical", "found_80")]
    order += [(n, 0) for n in rest] + [(n, 1) for n in ("found_90", "found_100", *extra)]
    order += [(n, 0) for n in LIBRARY]
    for seed in range(1, all_seeds or 0):
        order += [(n, seed) for n in [*lead, *rest, *LIBRARY] if (n, seed) not in order]
    return [(n, s) for n, s in order if n in specs]


def extra_names(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(name for name, _ in args.network)


def protocol_of(args: argparse.Namespace) -> Protocol:
    data: dict[str, Any] = {} if args.root is None else {"root": str(args.root)}
    train_fields: dict[str, Any] = {"device": "cpu", "progress": args.progress}
    if args.epochs is not None:
        train_fields["epochs"] = args.epochs
    return with_fields(load_protocol(args.protocol), data=data, train=train_fields)


def run_key(args: argparse.Namespace, protocol: Protocol) -> str:
    """The settings key of this invocation's runs: the protocol's, or with ``--inherit`` a hash of
    the protocol's key and the supernet checkpoint's bytes."""
    if args.inherit is None:
        return protocol.key()
    checkpoint = hashlib.sha256(args.inherit.read_bytes()).hexdigest()[:12]
    return hashlib.sha256(f"{protocol.key()}+{checkpoint}".encode()).hexdigest()[:12]


def initial_model(spec: NetworkSpec, supernet: Supernet | None) -> NetworkSpec | torch.nn.Module:
    """What a run starts from: the spec (trained from scratch), or its sub-network's inherited
    weights when a supernet is given."""
    if supernet is None:
        return spec
    return supernet.extract(spec.replace(num_classes=supernet.num_classes))


# ---------------------------------------------------------------------------- training
def run_all(args: argparse.Namespace) -> None:
    start(args)
    protocol = protocol_of(args)
    key = run_key(args, protocol)
    supernet = None if args.inherit is None else load_supernet(args.inherit)[0]
    specs = networks(args)
    done = {(r["arch"], r["seed"]) for r in read_rows(sorted(args.runs.glob("runs-*.jsonl")))
            if r.get("settings_key") == key}
    todo = [(n, s) for n, s in plan(specs, args.all_seeds, extra_names(args)) if (not args.only or n in args.only)
            and (to_string(specs[n]), s) not in done]
    log(f"{protocol.name} (key {key}): {len(todo)} runs to train")
    loaders: dict[int, Any] = {}
    for number, (name, seed) in enumerate(todo, start=1):
        if seed not in loaders:
            loaders = {seed: make_loaders(protocol.data, seed=seed)}
        folder = args.work / "checkpoints" / key / f"{name}-seed{seed}"
        cfg = with_fields(protocol, train={"seed": seed, "checkpoint_dir": str(folder),
                                           "checkpoint_every": args.checkpoint_every}).train
        log(f"{number}/{len(todo)} {name} seed {seed}: training ({cfg.epochs} epochs at "
            f"{protocol.data.resolution} px{', resuming' if folder.exists() else ''})")
        load_start = load_1min()
        result = train(initial_model(specs[name], supernet), protocol.data, cfg, loaders=loaders[seed], resume=True)
        plain = predict(result.model, loaders[seed].val, "cpu")
        flipped = predict(result.model, loaders[seed].val, "cpu", flip=True)
        row = {"protocol": protocol.name, "settings_key": key, "spec": name,
               "arch": to_string(specs[name]), "seed": seed, "top1": result.top1,
               "top5": result.top5, "loss": result.loss, "top1_flip": flipped.top1(),
               "val_correct": encode_correct(plain.correct()), "val_images": len(plain.target),
               "seconds": result.seconds, "images_per_second": result.images_per_second,
               "steps": result.steps, "params": params_of(specs[name], loaders[seed].num_classes),
               "inherited_from": None if args.inherit is None else str(args.inherit),
               "load_start": load_start, "load_end": load_1min(), **host_facts(),
               "threads": torch.get_num_threads(), "finished_at": now()}
        append_row(args.runs / f"runs-{protocol.name}-seed{seed}.jsonl", row,
                   what="the transfer study's finished runs")
        weights = args.work / "weights" / key / f"{name}-seed{seed}.pth"
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.model.state_dict(), weights)
        shutil.rmtree(folder, ignore_errors=True)
        log(f"{name} seed {seed}: top-1 {result.top1:.4f} ({result.seconds:.0f} s, "
            f"{result.images_per_second:.0f} images/s)")


# ---------------------------------------------------------------------------- the report
def cifar_reference(specs: dict[str, NetworkSpec], args: argparse.Namespace) -> pd.Series:
    """Each network's CIFAR-10 reference top-1 (seed mean), by network name."""
    key = load_protocol("reference").key()
    by_arch = {to_string(spec): name for name, spec in specs.items()}
    values: dict[str, list[float]] = {}
    for row in read_rows(sorted(args.cifar_runs.glob("runs-reference-seed*.jsonl"))):
        if row.get("settings_key") == key and row["arch"] in by_arch:
            values.setdefault(by_arch[row["arch"]], []).append(row["top1"])
    found = read_rows([args.found_runs]) if args.found_runs.is_file() else []
    for row in found:
        arch, _, row_key = str(row.get("arch", "")).partition("@")
        if (row.get("kind") == "top1" and row_key == key and arch in by_arch
                and not row.get("imported_from")):  # canonical's rows are the benchmark's own
            values.setdefault(by_arch[arch], []).append(row["top1"])
    return pd.Series({name: statistics.mean(v) for name, v in values.items()}, dtype=float)


def report(args: argparse.Namespace) -> dict[str, Any]:
    protocol = protocol_of(args)
    key = run_key(args, protocol)
    specs = networks(args)
    # Only this invocation's networks: runs of a --network not named now are left out of every figure.
    rows = [r for r in read_rows(sorted(args.runs.glob("runs-*.jsonl")))
            if r.get("settings_key") == key and r["spec"] in specs]
    runs = pd.DataFrame(rows)
    cifar = cifar_reference(specs, args)
    extra = extra_names(args)
    planned = plan(specs, args.all_seeds, extra)
    # Seeds trained beyond this invocation's plan (an earlier --all-seeds) count as planned too.
    wanted = set(planned) | {(r["spec"], r["seed"]) for r in rows}
    summary: dict[str, Any] = {"protocol": protocol.name, "settings_key": key,
                               "inherited_from": None if args.inherit is None else str(args.inherit),
                               "runs_done": len(rows), "runs_planned": len(wanted),
                               "written": now(), "networks": {}}
    if runs.empty:
        summary["note"] = "no finished runs yet"
    else:
        tin = runs.groupby("spec")["top1"].mean()
        for name in [n for n, _ in planned if n in set(runs["spec"])]:
            part = runs[runs.spec == name]
            summary["networks"].setdefault(name, {
                "params": int(part["params"].iloc[0]), **mean_std(part["top1"].tolist()),
                "cifar10_reference_top1": round(100 * float(cifar[name]), 2) if name in cifar else None,
                "seconds_median": round(float(part["seconds"].median())),
            })
        benchmark = [n for n in tin.index if n in cifar.index and n not in FOUND and n not in LIBRARY]
        with_found = [n for n in tin.index if n in cifar.index]
        summary["kendall_tau"] = {
            label: {"networks": len(names),
                    "tau": None if tau(tin[names], cifar[names]) is None else round(tau(tin[names], cifar[names]), 3),
                    "interval_90": tau_interval(tin[names], cifar[names])}
            for label, names in (("benchmark_8", benchmark), ("with_found", with_found))}
        summary["found_vs_canonical"] = found_vs_canonical(runs, (*FOUND, *extra))
        ranked = rankings(runs, reference_means(specs, args, protocol), load_protocol(args.reference_protocol).name)
        summary["repeatability"] = ranked.pop("all/top1")
        if ranked:
            summary["further_rankings"] = ranked
    args.out.mkdir(parents=True, exist_ok=True)
    write_yaml(args.out / "summary.yaml", summary)
    write_lines(args.out / "summary.md", markdown(summary))
    log(f"report written to {args.out} ({len(rows)} of {len(wanted)} runs)")
    return summary


def reference_means(specs: dict[str, NetworkSpec], args: argparse.Namespace,
                    protocol: Protocol) -> pd.Series | None:
    """The reference protocol's seed mean top-1 by network (``--reference-protocol``, its runs in
    ``--reference-runs``), the ranking a cheaper protocol is judged against; None when
    ``protocol`` is that reference."""
    reference = with_fields(load_protocol(args.reference_protocol),
                            data={} if args.root is None else {"root": str(args.root)})
    if protocol.key() == reference.key():
        return None
    names = {to_string(spec): name for name, spec in specs.items()}
    values: dict[str, list[float]] = {}
    for row in read_rows(sorted(args.reference_runs.glob(f"runs-{reference.name}-seed*.jsonl"))):
        if row.get("settings_key") == reference.key() and row["arch"] in names:
            values.setdefault(names[row["arch"]], []).append(row["top1"])
    return pd.Series({name: statistics.mean(v) for name, v in values.items()}, dtype=float)


# ---------------------------------------------------------------------------- options
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = study_parser(__doc__)
    add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK, threads=True)
    parser.add_argument("--runs", type=Path, default=None,
                        help="finished runs, one JSON-lines file per seed (default <out>/runs)")
    parser.add_argument("--protocol", default="reference_tin",
                        help="protocol name or YAML (default %(default)s; smoke tests pass a tiny one)")
    parser.add_argument("--root", type=Path, default=None,
                        help=f"shard root replacing the protocol's (e.g. {DATASETS / 'tiny-imagenet'})")
    parser.add_argument("--epochs", type=int, default=None, help="replace the protocol's epochs")
    parser.add_argument("--only", nargs="+", default=None, metavar="NETWORK", help="train only these")
    parser.add_argument("--specs", type=int, default=8, help="the benchmark's networks (as it picks them)")
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--spec-seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=0, metavar="N",
                        help="add N held-out networks heldout_q01.. (one seed each)")
    parser.add_argument("--heldout-seed", type=int, default=1,
                        help="the held-out networks' sampling seed (default %(default)s; the "
                             "benchmark's networks use --spec-seed)")
    parser.add_argument("--found-dir", type=Path, default=FOUND_DIR)
    parser.add_argument("--network", type=parse_network, action="append", default=[], metavar="NAME=BNECK_YAML",
                        help="a further network trained and compared with canonical like the found ones "
                             "(2 seeds), e.g. a Tiny-ImageNet search's pick (repeatable)")
    parser.add_argument("--cifar-runs", type=Path, default=CIFAR_RUNS)
    parser.add_argument("--found-runs", type=Path, default=FOUND_RUNS)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--all-seeds", type=int, default=None, metavar="N",
                        help="then train every network with seeds 0..N-1 (a seed-to-seed ranking)")
    parser.add_argument("--reference-protocol", default="reference_tin",
                        help="the protocol another one is ranked against (default %(default)s)")
    parser.add_argument("--reference-runs", type=Path, default=DEFAULT_OUT / "runs",
                        help="the reference protocol's finished runs (default %(default)s)")
    parser.add_argument("--inherit", type=Path, default=None, metavar="SUPERNET_CHECKPOINT",
                        help="start each Small-space network from its weights in this trained supernet")
    parser.add_argument("--report", action="store_true", help="no training: write the summary")
    args = parser.parse_args(argv)
    if args.inherit is not None and not args.inherit.is_file():
        parser.error(f"--inherit {args.inherit}: no such supernet checkpoint")
    if args.heldout and args.heldout_seed == args.spec_seed:
        parser.error(f"--heldout-seed {args.heldout_seed} is the benchmark networks' --spec-seed: "
                     "the held-out networks would be drawn from the same pool")
    args.runs = args.runs or args.out / "runs"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report:
        started = time.perf_counter()
        run_all(args)
        log(f"all runs done ({time.perf_counter() - started:.0f} s this invocation)")
    report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
