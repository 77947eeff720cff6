"""How repeatable is the supernet score an accuracy predictor learns? (a ceiling on its tau)

The predictor benchmark's ``quality`` part fits predictors on supernet scores and measures
their Kendall tau against the supernet on held-out random networks. Part of each score is not
the architecture's: which 2,500 holdout images are scored, and which training batches
recalibrate BatchNorm. No predictor of the architecture can agree with the score beyond
the score's agreement with itself. This re-scores the ``quality`` part's held-out networks
with the same supernet:

* **images**: one pass keeps every image's correctness; each network's top-1 on the even and
  on the odd images gives the split-half Kendall tau and Pearson r. Spearman-Brown turns r
  into the reliability of the whole score, R = 2r / (1 + r); a predictor that knew each
  architecture's expected score exactly would correlate with the measured one at sqrt(R),
  which for normal errors is a Kendall tau of (2 / pi) arcsin(sqrt(R)) (Greiner's relation).
* **BatchNorm batches**: a second pass recalibrates on other training batches (loader seed
  ``--bn-seed``) and scores the same images: tau and r between the two calibrations.
* **A continuous score**: the same pass keeps every image's cross-entropy, so the supernet's
  holdout loss gets the same split-half reliability. The quality part's ``--pool`` networks
  after the held-out ones are scored for loss too, and the benchmark's two predictors (the
  MLP and gradient-boosted trees) are fitted on their losses: their held-out tau against the
  supernet's loss says whether the predictor, given a score that repeats itself, learns it.

Per-network figures go to ``--work/noise_scores.csv`` as they are measured (resumable); the
summary to ``--out/noise.yaml`` and ``--out/noise.md``.

    python -m experiments.predictor_noise --checkpoint outputs/platform_study/supernet.pt
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments import harness
from experiments.predictor_benchmark import DEFAULT_OUT, DEFAULT_WORK, scorer_config, space_document
from nas.arch.codecs import from_string
from nas.search.predictor import PredictorModelConfig

QUALITY_SCORES = "quality_scores.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the supernet the predictor benchmark scored with (default: the one "
                             "it trained into --work)")
    parser.add_argument("--space", default="mobilenetv3_small")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--n", type=int, default=200,
                        help="the quality part's first N networks (its held-out ones: 200)")
    parser.add_argument("--bn-seed", type=int, default=1, help="loader seed of the second calibration")
    parser.add_argument("--pool", type=int, default=300,
                        help="the quality part's networks after the held-out ones, scored for loss "
                             "and fitted on (default %(default)s, its largest training set)")
    parser.add_argument("--hidden", type=int, default=PredictorModelConfig.hidden, help="the MLP's hidden width")
    parser.add_argument("--epochs", type=int, default=PredictorModelConfig.epochs, help="the MLP's epochs")
    harness.add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK, threads=True)
    return parser.parse_args(argv)


def tau_ceiling(split_half_r: float) -> dict[str, float]:
    """Spearman-Brown reliability of the whole score and the Kendall tau a perfect predictor
    of the expected score would reach against it (normal errors)."""
    reliability = 2 * split_half_r / (1 + split_half_r)
    r_max = math.sqrt(max(reliability, 0.0))
    return {"reliability": round(reliability, 3), "pearson_ceiling": round(r_max, 3),
            "tau_ceiling": round(2 / math.pi * math.asin(r_max), 3)}


def _agreement(a: pd.Series, b: pd.Series) -> dict[str, float]:
    from scipy.stats import kendalltau, pearsonr

    return {"kendall_tau": round(float(kendalltau(a, b).statistic), 3),
            "pearson_r": round(float(pearsonr(a, b).statistic), 3)}


def score_networks(args: argparse.Namespace, specs: list[str], held_out: int) -> pd.DataFrame:
    """Each network's top-1 and cross-entropy on all, even and odd images; the first
    ``held_out`` also after the other calibration."""
    import torch

    from nas.search.pipeline import build_evaluator
    from nas.supernet.evaluator import SupernetEvaluator
    from nas.training.data import make_loaders
    from nas.training.scoring import predict

    config = scorer_config(argparse.Namespace(override=args.override, checkpoint=args.checkpoint,
                                              space=args.space, threads=args.threads))
    config = config.replace(space=space_document(args.space))
    torch.set_num_threads(args.threads)
    scorer = build_evaluator(config, args.work)
    other = SupernetEvaluator(scorer.supernet, scorer.data_cfg, bn_batches=scorer.bn_batches,
                              device=str(scorer.device), seed=args.bn_seed,
                              loaders=make_loaders(scorer.data_cfg, seed=args.bn_seed),
                              channels_last=scorer.channels_last)
    labels = [target for _, target in scorer.validation_batches()]
    assert all(torch.equal(a, b) for a, b in zip(labels, (t for _, t in other.validation_batches()))), \
        "the second calibration must score the same images"
    path = args.work / "noise_scores.csv"
    # Rows written before the loss was kept lack it: those networks are scored again.
    done = {row["spec"]: row for row in harness.read_rows([path]) if "loss" in row} if path.is_file() else {}
    for number, spec in enumerate(specs, start=1):
        if spec in done:
            continue
        network = from_string(spec)
        scorer.activate(network)
        predictions = predict(scorer.supernet, scorer.validation_batches(), scorer.device)
        correct = predictions.correct().float()
        loss = torch.nn.functional.cross_entropy(predictions.logits.double(), predictions.target,
                                                 reduction="none")
        row = {"spec": spec, "top1": float(correct.mean()), "even": float(correct[0::2].mean()),
               "odd": float(correct[1::2].mean()), "loss": float(loss.mean()),
               "loss_even": float(loss[0::2].mean()), "loss_odd": float(loss[1::2].mean())}
        if number <= held_out:
            row["other_bn"] = float(other.evaluate(network).top1)
        harness.append_row(path, row, what="noise scores")
        done[spec] = row
        if number % 25 == 0:
            harness.log(f"noise: {number}/{len(specs)} networks")
    return pd.DataFrame([done[s] for s in specs])


def loss_predictors(args: argparse.Namespace, frame: pd.DataFrame) -> dict[str, Any]:
    """The benchmark's predictors fitted on the pool's supernet losses, against the held-out
    networks' losses (and, the sign turned, their top-1)."""
    from experiments.predictor_benchmark import MODELS, agreement, model_config
    from nas.arch.space import space_from_dict

    space = space_from_dict(space_document(args.space))
    held_out, pool = frame[:args.n], frame[args.n:]
    networks = [from_string(s) for s in pool["spec"]]
    out: dict[str, Any] = {"fitted_on": len(pool), "held_out": len(held_out)}
    for name, fit in MODELS.items():
        predict = fit(space, networks, list(pool["loss"]), model_config(args))
        predicted = predict([from_string(s) for s in held_out["spec"]])
        out[name] = {"against_loss": agreement(predicted, held_out["loss"]),
                     "against_top1_kendall_tau": _agreement(-np.asarray(predicted), held_out["top1"])["kendall_tau"]}
        harness.log(f"loss predictor {name}: tau {out[name]['against_loss']['kendall_tau']} against the "
                    f"loss, {out[name]['against_top1_kendall_tau']} against top-1")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    harness.start(args)
    quality = pd.read_csv(args.work / QUALITY_SCORES)
    if len(quality) < args.n + args.pool:
        raise SystemExit(f"{args.work / QUALITY_SCORES} holds {len(quality)} networks, fewer than "
                         f"--n {args.n} plus --pool {args.pool}")
    everything = score_networks(args, list(quality["spec"][:args.n + args.pool]), held_out=args.n)
    frame = everything[:args.n]
    recorded = quality["top1"][:args.n].to_numpy()
    halves = _agreement(frame["even"], frame["odd"])
    loss_halves = _agreement(frame["loss_even"], frame["loss_odd"])
    summary = {
        "networks": len(frame), "checkpoint": str(args.checkpoint or "trained in --work"),
        "score_spread_points": round(100 * float(frame["top1"].std()), 3),
        "matches_quality_scores_max_abs": round(float(np.abs(frame["top1"].to_numpy() - recorded).max()), 5),
        "split_half": halves, **tau_ceiling(halves["pearson_r"]),
        "other_bn_calibration": {**_agreement(frame["top1"], frame["other_bn"]), "seed": args.bn_seed},
        "loss": {"spread": round(float(frame["loss"].std()), 4), "split_half": loss_halves,
                 **tau_ceiling(loss_halves["pearson_r"]),
                 "against_top1_kendall_tau": _agreement(-frame["loss"], frame["top1"])["kendall_tau"]},
        "loss_predictors": loss_predictors(args, everything),
        **harness.host_facts(), "loadavg": harness.load_average(), "finished_at": harness.now(),
    }
    harness.write_yaml(args.out / "noise.yaml", summary)
    (args.out / "noise.md").write_text(
        f"Re-scored {summary['networks']} held-out networks (score spread {summary['score_spread_points']} "
        f"points, std). Split-half over images: tau {halves['kendall_tau']}, r {halves['pearson_r']}; "
        f"reliability of the whole score {summary['reliability']}: a perfect predictor of the expected "
        f"score reaches tau {summary['tau_ceiling']} against it. Another BatchNorm calibration (loader "
        f"seed {args.bn_seed}): tau {summary['other_bn_calibration']['kendall_tau']}, r "
        f"{summary['other_bn_calibration']['pearson_r']} against the first.\n\n"
        f"Holdout cross-entropy instead of top-1 (spread {summary['loss']['spread']}, std): split-half tau "
        f"{loss_halves['kendall_tau']}, r {loss_halves['pearson_r']}; reliability {summary['loss']['reliability']}, "
        f"ceiling tau {summary['loss']['tau_ceiling']}; it ranks the networks against their top-1 at tau "
        f"{summary['loss']['against_top1_kendall_tau']}. Predictors fitted on "
        f"{summary['loss_predictors']['fitted_on']} networks' losses, held-out tau against the loss: MLP "
        f"{summary['loss_predictors']['mlp']['against_loss']['kendall_tau']} (RMSE "
        f"{summary['loss_predictors']['mlp']['against_loss']['rmse']}), gradient-boosted trees "
        f"{summary['loss_predictors']['gbr']['against_loss']['kendall_tau']} (RMSE "
        f"{summary['loss_predictors']['gbr']['against_loss']['rmse']}).\n")
    print(harness.write_yaml(args.out / "noise.yaml", summary))
    return summary


if __name__ == "__main__":
    main()
