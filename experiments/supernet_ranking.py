"""How well does a trained supernet rank networks? Against the reference protocol's seed mean
of the repeatability benchmark (the same 8 Small-space networks, ``runs.csv``), or with
``--transfer`` against the transfer study's ``reference_tin`` seed mean (its Small-space
networks, for a supernet trained on Tiny-ImageNet).

Each network is scored by its sub-network of the supernet (BatchNorm recalibrated on
``--bn-batches`` training batches, CIFAR-10 ``val`` or a seeded class-balanced-in-expectation
subset of ``--val-samples`` images), then Kendall tau and Spearman rho against the reference's
mean top-1 are written beside the reference's own seed-to-seed tau (``summary.yaml`` of the
benchmark) and the seconds each score took.

``--sweep-bn`` / ``--sweep-val`` score every combination of calibration batches and validation
images (``scoring_sweep.csv``): the ranking each scoring budget buys and what it costs, the
figure that sets the search's ``evaluator.bn_batches`` and ``data.val_samples``.
``--networks-matching REGEX`` ranks only the reference networks whose names match, e.g. the
transfer study's ``heldout_`` networks, on which no scoring setting was chosen.

    python -m experiments.supernet_ranking --checkpoint outputs/supernet/<run>/supernet.pt \
        --out experiments/results/supernet_cifar10
    python -m experiments.supernet_ranking --checkpoint outputs/supernet/<tin run>/supernet.pt \
        --protocol reference_tin --transfer experiments/results/transfer --out <folder>
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from scipy.stats import kendalltau, spearmanr

from experiments import harness, transfer_summary
from experiments.repeatability_stats import tau_interval
from nas.arch.codecs import from_string
from nas.supernet.evaluator import SupernetEvaluator
from nas.supernet.train import load_supernet
from nas.training.checkpoint import steps_done
from nas.training.protocols import load_protocol

BENCHMARK = harness.RESULTS / "repeatability"


def benchmark_reference(folder: Path) -> tuple[pd.DataFrame, float | None]:
    """The repeatability benchmark's reference runs (``runs.csv``) and its seed-to-seed tau."""
    runs = pd.read_csv(folder / "runs.csv")
    summary = yaml.safe_load((folder / "summary.yaml").read_text())
    return runs[runs["protocol"] == "reference"], summary["protocols"]["reference"]["seed_to_seed_tau_mean"]


def transfer_reference(folder: Path) -> tuple[pd.DataFrame, float | None]:
    """The transfer study's ``reference_tin`` runs of Small-space networks (``runs/*.jsonl``) and
    its seeds 0-1 Kendall tau (``summary.yaml``)."""
    runs = pd.DataFrame(harness.read_rows(sorted((folder / "runs").glob("runs-reference_tin-seed*.jsonl"))))
    if runs.empty:
        raise SystemExit(f"--transfer {folder}: no runs/runs-reference_tin-seed*.jsonl")
    summary = yaml.safe_load((folder / "summary.yaml").read_text())
    pair = summary["repeatability"]["seed_pairs"].get("0-1") or {}
    # The spec-library networks trained for scale (Large, MobileNetV2) are outside the Small space.
    return runs[~runs["spec"].isin(list(transfer_summary.LIBRARY))], pair.get("tau")


def rank(supernet: Any, data: Any, mean: pd.DataFrame, bn_batches: int) -> pd.DataFrame:
    """Score every benchmark network once: its supernet top-1 and the seconds it took."""
    evaluator = SupernetEvaluator(supernet, data, bn_batches=bn_batches, device="cpu")
    # Decode and cache the batches first, so no candidate's time includes them.
    list(evaluator.calibration_batches())
    list(evaluator.validation_batches())
    rows = []
    for _, row in mean.iterrows():
        started = time.perf_counter()
        score = evaluator.evaluate(from_string(row["arch"]).replace(num_classes=supernet.num_classes))
        rows.append({"spec": row["spec"], "reference_top1_mean": row["top1"],
                     "supernet_top1": score.top1, "seconds": time.perf_counter() - started})
    return pd.DataFrame(rows)


def agreement(frame: pd.DataFrame) -> dict[str, float]:
    """Kendall tau (with p), Spearman rho and seconds per candidate of one scoring."""
    tau, tau_p = kendalltau(frame["supernet_top1"], frame["reference_top1_mean"])
    rho, _ = spearmanr(frame["supernet_top1"], frame["reference_top1_mean"])
    return {"kendall_tau_vs_reference_mean": round(float(tau), 3),
            "kendall_tau_interval_90": tau_interval(frame["supernet_top1"], frame["reference_top1_mean"]),
            "kendall_p": round(float(tau_p), 3),
            "spearman_rho": round(float(rho), 3),
            "seconds_per_candidate_median": round(statistics.median(frame["seconds"]), 2),
            "seconds_per_candidate_max": round(float(frame["seconds"].max()), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--protocol", default="proxy", help="the data the supernet is scored on")
    parser.add_argument("--benchmark", type=Path, default=BENCHMARK)
    parser.add_argument("--transfer", type=Path, default=None,
                        help="rank against this transfer study folder's reference_tin runs instead")
    parser.add_argument("--networks-matching", default=None, metavar="REGEX",
                        help="rank only the reference networks whose names match (re.match)")
    parser.add_argument("--bn-batches", type=int, default=8)
    parser.add_argument("--val-samples", type=int, default=None,
                        help="score on a seeded subset of val of this many images (default: all)")
    parser.add_argument("--sweep-bn", type=int, nargs="+", default=None,
                        help="also score with each of these calibration batch counts")
    parser.add_argument("--sweep-val", type=int, nargs="+", default=None,
                        help="also score on each of these val subset sizes (0: all of val)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    harness.start(args)
    reference, seed_to_seed_tau = (transfer_reference(args.transfer) if args.transfer
                                   else benchmark_reference(args.benchmark))
    mean = reference.groupby(["spec", "arch"])["top1"].mean().reset_index()
    if args.networks_matching:
        mean = mean[mean["spec"].str.match(args.networks_matching)]
        if len(mean) < 3:
            raise SystemExit(f"--networks-matching {args.networks_matching!r}: {len(mean)} reference "
                             "network(s) match; a ranking needs 3")
    supernet, record = load_supernet(args.checkpoint)
    data = load_protocol(args.protocol).data

    def with_val(samples: int | None) -> Any:
        return dataclasses.replace(data, val_samples=samples or None)

    frame = rank(supernet, with_val(args.val_samples), mean, args.bn_batches)
    summary = {
        "checkpoint": str(args.checkpoint),
        "supernet_steps": steps_done(record),
        "specs": len(frame),
        "networks_matching": args.networks_matching,
        "reference_seeds": sorted(int(s) for s in reference["seed"].unique()),
        "bn_batches": args.bn_batches,
        "val_images": args.val_samples or "all",
        **agreement(frame),
        "reference": str(args.transfer or args.benchmark),
        "reference_seed_to_seed_tau": seed_to_seed_tau,
        "load_average_1min": harness.load_1min(),
    }
    frame.to_csv(args.out / "ranking.csv", index=False)
    text = harness.write_yaml(args.out / "ranking.yaml", summary)
    print(frame.to_string(index=False))
    print(text)
    if args.sweep_bn or args.sweep_val:
        sweep = []
        for bn, val in itertools.product(args.sweep_bn or [args.bn_batches],
                                         args.sweep_val or [args.val_samples or 0]):
            scored = rank(supernet, with_val(val), mean, bn)
            sweep.append({"bn_batches": bn, "val_images": val or "all", **agreement(scored),
                          "load_average_1min": harness.load_1min()})
            print(sweep[-1], flush=True)
        pd.DataFrame(sweep).to_csv(args.out / "scoring_sweep.csv", index=False)
    return summary


if __name__ == "__main__":
    main()
