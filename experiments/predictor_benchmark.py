"""Does the accuracy predictor rank networks as the supernet does, and does searching on it
pay? (``evaluator=predictor`` on the Small space: CIFAR-10 at 32 px, the main job's supernet,
this host's latency table.)

The scorer is the main job's: ``nas-search``'s default supernet evaluator (350 sandwich steps
on train minus the carved holdout, scored on 2,500 images of that holdout; trained once into
``--work/supernet``, or ``--checkpoint``). Three parts (``--parts``), each resumable: every
supernet score and every finished run is appended to a file in ``--work`` the moment it exists.

* ``quality``: ``--test`` random networks held out, ``max(--train)`` more to fit on; for every N
  of ``--train``, Once-for-All's MLP (:class:`nas.search.predictor.AccuracyPredictor`) and
  scikit-learn's gradient-boosted trees, on the same one-hot encoding, fitted on the first N;
  RMSE, Kendall tau and Spearman rho against the supernet on the held-out networks (target:
  tau >= 0.9).
* ``trained``: the repeatability benchmark's 8 networks (the reference protocol's seed mean,
  ``experiments/results/repeatability/runs.csv``) and the 3 found networks
  (``experiments/results/search/front_vs_canonical/results.jsonl``): Kendall tau against their
  trained top-1 of the MLP fitted on every ``quality`` score, and of the supernet itself.
* ``search``: supernet-scored TPE (``--tpe-trials``, canonical first, as ``nas-search``) against
  the predictor search (``--samples`` supernet scores, canonical first; the fit; NSGA-II over
  ``--candidates`` predicted networks; at most ``--rescore`` members of the predicted front
  re-scored), same supernet and table, seeds ``--seeds``: the hypervolume of every network the
  supernet scored against the seconds spent (the predictor's including its scores'
  collection; the shared supernet training counted for neither). Target: the predictor search
  reaches TPE's final mean hypervolume in at most 1/5 of TPE's mean time
  (:mod:`experiments.predictor_race`).

Reported (``--out``): ``quality.csv``, ``trained.csv``, ``curves.csv``, ``runs.csv``,
``summary.yaml``, ``summary.md``, ``quality.png``, ``search.png``.

    python -m experiments.predictor_benchmark
    python -m experiments.predictor_benchmark --parts quality trained --train 100 300 1000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna
import pandas as pd
import yaml

from experiments import harness
from experiments.predictor_report import plot_quality, plot_search, write_markdown
from experiments.predictor_race import score_progress, search, search_summary
from experiments.search_benchmark import check_scoring
from nas.arch.codecs import from_string, load_spec, to_string
from nas.arch.space import SPACES_DIR, SearchSpace, space_from_dict
from nas.arch.spec import NetworkSpec
from nas.cost.lut import LatencyTable
from nas.search.config import SearchConfig
from nas.search.predictor import AccuracyPredictor, Encoding, PredictorModelConfig
from nas.search.predictor_data import collect_scores
from nas.search.selection import selection_split
from nas.training.data_config import DataConfig

DEFAULT_OUT = harness.RESULTS / "predictor"
DEFAULT_WORK = harness.OUTPUTS / "predictor_benchmark"
REPEATABILITY = harness.RESULTS / "repeatability" / "runs.csv"
FOUND = harness.RESULTS / "search"
PARTS = ("quality", "trained", "search")
QUALITY_SEED = 1000  # the quality pool's networks: apart from the search seeds' samples


# ---------------------------------------------------------------------------- set-up
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--space", default="mobilenetv3_small", help="a shipped space or a space YAML")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a supernet (nas-supernet train, data.carve_val=true); default: train "
                             "the main job's into --work/supernet")
    parser.add_argument("--table", default="auto", help="latency table folder (default auto: as "
                        "nas-search chooses it)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a nas-search override of the scorer's config (repeatable), e.g. "
                             "data.root=<cifar10>")
    parser.add_argument("--train", type=int, nargs="+", default=[100, 200, 300],
                        help="training-set sizes of the quality part")
    parser.add_argument("--test", type=int, default=200, help="held-out networks of the quality part")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tpe-trials", type=int, default=300)
    parser.add_argument("--samples", type=int, nargs="+", default=[50, 100, 300],
                        help="supernet scores the predictor search fits on (one run per value)")
    parser.add_argument("--population-size", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--rescore", type=int, default=60, help="predicted-front members re-scored")
    parser.add_argument("--hidden", type=int, default=PredictorModelConfig.hidden)
    parser.add_argument("--epochs", type=int, default=PredictorModelConfig.epochs)
    harness.add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK, threads=True)
    return parser.parse_args(argv)


def space_document(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    path = path if path.suffix else SPACES_DIR / f"{name_or_path}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def scorer_config(args: argparse.Namespace) -> SearchConfig:
    """The main job's config (the supernet evaluator) with ``--override`` and ``--checkpoint``."""
    import nas

    overrides = ["evaluator=supernet", "evaluator.train.progress=false", *args.override]
    if args.checkpoint is not None:
        overrides.append(f"evaluator.checkpoint={args.checkpoint.resolve()}")
    config = nas.search_config(overrides=overrides)
    return config.replace(space=space_document(args.space), threads=args.threads)


def model_config(args: argparse.Namespace) -> PredictorModelConfig:
    return PredictorModelConfig(hidden=args.hidden, epochs=args.epochs)


# ---------------------------------------------------------------------------- the models
def fit_mlp(space: SearchSpace, networks: Sequence[NetworkSpec], targets: Sequence[float],
            config: PredictorModelConfig) -> Callable:
    """Once-for-All's MLP on one-hot block choices, fitted to ``targets`` (supernet top-1, or
    any other per-network score)."""
    predictor = AccuracyPredictor(space, config)
    predictor.fit(list(networks), list(targets))
    return predictor.predict


def fit_gbr(space: SearchSpace, networks: Sequence[NetworkSpec], targets: Sequence[float],
            config: PredictorModelConfig) -> Callable:
    """scikit-learn's gradient-boosted regression trees on the MLP's encoding."""
    from sklearn.ensemble import GradientBoostingRegressor

    encoding = Encoding(space)
    model = GradientBoostingRegressor(n_estimators=400, learning_rate=0.05, max_depth=3,
                                      subsample=0.8, random_state=config.seed)
    model.fit(encoding.encode(list(networks)), list(targets))
    return lambda specs: model.predict(encoding.encode(specs))


MODELS = {"mlp": fit_mlp, "gbr": fit_gbr}


def agreement(predicted: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    p, t = np.asarray(predicted, dtype=float), np.asarray(truth, dtype=float)
    return {"rmse": round(float(np.sqrt(np.mean((p - t) ** 2))), 5),
            "kendall_tau": round(float(kendalltau(p, t).statistic), 3),
            "spearman_rho": round(float(spearmanr(p, t).statistic), 3)}


# ---------------------------------------------------------------------------- part (a)
def quality(args: argparse.Namespace, space: SearchSpace, scorer: Any) -> pd.DataFrame:
    scores = collect_scores(space, scorer, args.test + max(args.train), args.work / "quality_scores.csv",
                            seed=QUALITY_SEED, on_score=score_progress("quality", args.test + max(args.train)))
    test, pool = scores[:args.test], scores[args.test:]
    truth = [s.top1 for s in test]
    rows = []
    for n in sorted(args.train):
        for name, fit in MODELS.items():
            started = time.perf_counter()
            predict = fit(space, [s.network() for s in pool[:n]], [s.top1 for s in pool[:n]],
                          model_config(args))
            seconds = time.perf_counter() - started
            predicted = predict([s.network() for s in test])
            rows.append({"model": name, "train": n, "test": len(test), **agreement(predicted, truth),
                         "fit_seconds": round(seconds, 2), "predicted": [round(float(v), 5) for v in predicted]})
            harness.log(f"quality: {name} on {n} scores: tau {rows[-1]['kendall_tau']}, "
                        f"RMSE {rows[-1]['rmse']}")
    frame = pd.DataFrame(rows)
    plot_quality(frame, truth, args.out / "quality.png")
    return frame.drop(columns="predicted")


# ---------------------------------------------------------------------------- part (b)
def trained_networks(space: SearchSpace) -> pd.DataFrame:
    """The networks trained with the reference protocol: name, arch, seeds, trained top-1 mean."""
    runs = pd.read_csv(REPEATABILITY)
    reference = runs[runs["protocol"] == "reference"].drop_duplicates(["arch", "seed"])
    rows = [{"name": spec, "arch": arch, "seeds": len(group), "trained_top1": group["top1"].mean(),
             "source": "repeatability"} for (spec, arch), group in reference.groupby(["spec", "arch"])]
    names = {to_string(load_spec(path)): path.stem for path in sorted(FOUND.glob("found_*.yaml"))}
    found: dict[str, list[float]] = {}
    for line in (FOUND / "front_vs_canonical" / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        arch = str(record.get("arch", "")).split("@")[0]
        if record.get("kind") == "top1" and record.get("protocol") == "reference" and arch in names:
            found.setdefault(arch, []).append(float(record["top1"]))
    rows += [{"name": names[arch], "arch": arch, "seeds": len(top1), "trained_top1": statistics.mean(top1),
              "source": "front_vs_canonical"} for arch, top1 in found.items()]
    frame = pd.DataFrame(rows).drop_duplicates("arch")  # canonical is in both: its 3 seeds kept
    for arch in frame["arch"]:
        space.params_of(from_string(arch))  # each a network of the space, or a one-line error
    return frame.reset_index(drop=True)


def trained(args: argparse.Namespace, space: SearchSpace, scorer: Any) -> pd.DataFrame:
    frame = trained_networks(space)
    cache = args.work / "trained_scores.jsonl"
    scored = {row["arch"]: row["top1"] for row in harness.read_rows([cache])}
    for arch in frame["arch"]:
        if arch not in scored:
            scored[arch] = float(scorer.evaluate(from_string(arch)).top1)
            harness.append_row(cache, {"arch": arch, "top1": scored[arch]}, what="supernet scores")
    scores = collect_scores(space, scorer, args.test + max(args.train), args.work / "quality_scores.csv",
                            seed=QUALITY_SEED)
    predict = fit_mlp(space, [s.network() for s in scores], [s.top1 for s in scores], model_config(args))
    frame["supernet_top1"] = [scored[a] for a in frame["arch"]]
    frame["predicted_top1"] = predict([from_string(a) for a in frame["arch"]])
    frame.attrs["fitted_on"] = len(scores)
    return frame


# ---------------------------------------------------------------------------- main
def _previous_summary(path: Path) -> dict[str, Any]:
    import yaml

    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from nas.cost.host_table import host_table
    from nas.cost.table_files import resolve_table_dir
    from nas.search.pipeline import build_evaluator
    from nas.supernet.network import Supernet

    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    harness.start(args)
    config = scorer_config(args)
    space = space_from_dict(config.space, args.space)
    check_scoring(args.work, {"space": space.name, "checkpoint": str(args.checkpoint or "trained in --work"),
                              "evaluator": {k: v for k, v in config.evaluator.items() if k != "train"},
                              "data": config.data, "selection": config.selection})
    scorer = build_evaluator(config, args.work)  # trains the main job's supernet the first time
    list(scorer.calibration_batches()), list(scorer.validation_batches())  # decoded before timing
    split = selection_split(DataConfig.from_dict(config.data), config.selection)
    summary: dict[str, Any] = {"space": space.name, "supernet": scorer.provenance, "selection": split,
                               **harness.host_facts(), **harness.machine()}
    frames: dict[str, pd.DataFrame] = {}
    if "quality" in args.parts:
        frames["quality"] = quality(args, space, scorer)
        frames["quality"].to_csv(args.out / "quality.csv", index=False)
        summary["quality"] = frames["quality"].to_dict(orient="records")
    if "trained" in args.parts:
        frame = trained(args, space, scorer)
        frame.drop(columns="arch").to_csv(args.out / "trained.csv", index=False)
        summary["trained"] = {"networks": len(frame), "predictor_fitted_on": frame.attrs["fitted_on"],
                              "predictor_vs_trained": agreement(frame["predicted_top1"], frame["trained_top1"]),
                              "supernet_vs_trained": agreement(frame["supernet_top1"], frame["trained_top1"]),
                              "predictor_vs_supernet": agreement(frame["predicted_top1"], frame["supernet_top1"])}
        frames["trained"] = frame
    if "search" in args.parts:
        if args.table == "auto":
            choice = host_table(space, runtime="torch-cpu", resolution=space.base.resolution)
            harness.log(f"latency table {choice.path}: {choice.reason}")
            table = LatencyTable.load(choice.path)
        else:
            table = LatencyTable.load(resolve_table_dir(args.table))
        rng = random.Random(0)
        largest = Supernet(space, num_classes=10).largest_spec()
        max_latency = max(table.predict(s) for s in (largest, *(space.sample(rng) for _ in range(2000))))
        runs = search(args, space, scorer, table, max_latency, model_config(args))
        curves = pd.DataFrame([{"method": r["method"], "samples": r["samples"], "seed": r["seed"], "step": i,
                                "seconds": s, "hypervolume": hv}
                               for r in runs for i, (s, hv) in enumerate(r["curve"])])
        counts = {"samples": "Int64"}  # empty for TPE, a whole number for the predictor
        curves.astype(counts).to_csv(args.out / "curves.csv", index=False)
        pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in runs]).astype(
            {**counts, "candidates": "Int64", "predicted_front": "Int64"}).to_csv(args.out / "runs.csv", index=False)
        summary["search"] = {"reference_latency_ms": round(max_latency, 4), "seeds": list(args.seeds),
                             "tpe_trials": args.tpe_trials, "candidates": args.candidates,
                             "population_size": args.population_size, "rescore": args.rescore,
                             **search_summary(runs)}
        plot_search(curves, summary["search"]["tpe"]["final_hypervolume_mean"], args.out / "search.png")
    settings = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, list) else v)
                for k, v in vars(args).items()}
    # The parts run apart (two processes, or one part again): keep the figures, load and
    # settings of the parts this run did not repeat.
    previous = _previous_summary(args.out / "summary.yaml")
    for part in PARTS:
        if part in args.parts:
            summary[f"run_{part}"] = {"loadavg": harness.load_average(), "finished_at": harness.now(),
                                      "settings": settings}
        else:
            summary.update({key: previous[key] for key in (part, f"run_{part}") if key in previous})
    print(harness.write_yaml(args.out / "summary.yaml", summary))
    write_markdown(summary, args.out / "summary.md")
    return summary


if __name__ == "__main__":
    main()
