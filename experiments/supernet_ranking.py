"""How well does a trained supernet rank networks? Against the reference protocol's seed mean
of the repeatability benchmark (the same 8 Small-space networks, ``runs.csv``).

Each network is scored by its sub-network of the supernet (BatchNorm recalibrated on
``--bn-batches`` training batches, the whole CIFAR-10 ``val``), then Kendall tau and Spearman
rho against the reference's mean top-1 are written beside the reference's own seed-to-seed
tau (``summary.yaml`` of the benchmark) and the seconds each score took.

    python experiments/supernet_ranking.py --checkpoint outputs/supernet/<run>/supernet.pt \
        --out experiments/results/supernet_cifar10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

BENCHMARK = REPO / "experiments" / "results" / "repeatability"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--protocol", default="proxy", help="the data the supernet is scored on")
    parser.add_argument("--benchmark", type=Path, default=BENCHMARK)
    parser.add_argument("--bn-batches", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    from nas.arch.codecs import from_string
    from nas.supernet.evaluator import SupernetEvaluator
    from nas.supernet.train import load_supernet
    from nas.training.protocols import load_protocol

    torch.set_num_threads(1)
    runs = pd.read_csv(args.benchmark / "runs.csv")
    reference = runs[runs["protocol"] == "reference"]
    mean = reference.groupby(["spec", "arch"])["top1"].mean().reset_index()
    supernet, record = load_supernet(args.checkpoint)
    evaluator = SupernetEvaluator(supernet, load_protocol(args.protocol).data,
                                  bn_batches=args.bn_batches, device="cpu")
    rows = []
    for _, row in mean.iterrows():
        started = time.perf_counter()
        score = evaluator.evaluate(from_string(row["arch"]).replace(num_classes=supernet.num_classes))
        rows.append({"spec": row["spec"], "reference_top1_mean": row["top1"],
                     "supernet_top1": score.top1, "seconds": time.perf_counter() - started})
    frame = pd.DataFrame(rows)
    tau, tau_p = kendalltau(frame["supernet_top1"], frame["reference_top1_mean"])
    rho, _ = spearmanr(frame["supernet_top1"], frame["reference_top1_mean"])
    benchmark = yaml.safe_load((args.benchmark / "summary.yaml").read_text())
    summary = {
        "checkpoint": str(args.checkpoint),
        "supernet_steps": int(record["progress"]["step"]),
        "specs": len(frame),
        "reference_seeds": sorted(int(s) for s in reference["seed"].unique()),
        "kendall_tau_vs_reference_mean": round(float(tau), 3),
        "kendall_p": round(float(tau_p), 3),
        "spearman_rho": round(float(rho), 3),
        "reference_seed_to_seed_tau": benchmark["protocols"]["reference"]["seed_to_seed_tau_mean"],
        "seconds_per_candidate_median": round(statistics.median(frame["seconds"]), 2),
        "seconds_per_candidate_max": round(float(frame["seconds"].max()), 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "ranking.csv", index=False)
    (args.out / "ranking.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    print(frame.to_string(index=False))
    print(yaml.safe_dump(summary, sort_keys=False))
    return summary


if __name__ == "__main__":
    main()
