"""Do the samplers find better networks than random sampling? (TPE, NSGA-II, random at equal
budgets on the Small space, scored by a trained supernet and this host's latency table.)

For each sampler and seed an Optuna study of ``--trials`` trials runs the project's own
objective (:class:`nas.search.objective.Objective`: the space's suggest, the table latency,
the evaluator's top-1; canonical Small enqueued first, as ``nas-search`` does). The
supernet scores are cached by network in ``--work/scores.jsonl`` (shared by every study:
the same network gets the same score whichever sampler proposes it), each study lives in a
journal file in ``--work``: a killed benchmark resumes where it stopped.

Reported (``--out``): ``curves.csv`` (the 2-D hypervolume of top-1 against table latency
after every trial; reference point: top-1 0 at the latency of the space's largest network),
``hypervolume.png`` (mean and min-max band over seeds), ``fronts.csv`` (every study's final
front), ``fronts.png`` (each sampler's front of the first seed, and canonical Small),
``summary.yaml`` (final hypervolume per sampler, and the trials each sampler needs to reach
random sampling's final mean). With
``--mode mnasnet`` the curve is the best MnasNet reward at ``--target-ms`` instead.

    python -m experiments.search_benchmark --checkpoint runs/supernet/supernet.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from experiments import harness
from nas.arch.codecs import to_string
from nas.arch.space import load_space
from nas.arch.spec import NetworkSpec
from nas.cost.host_table import host_table
from nas.cost.lut import LatencyTable
from nas.cost.table_files import resolve_table_dir
from nas.search.objective import Objective, StudySettings, enqueue_canonical, make_sampler
from nas.supernet.evaluator import SupernetEvaluator
from nas.supernet.train import load_supernet
from nas.training.evaluator import EvalResult
from nas.training.protocols import load_protocol

DEFAULT_OUT = harness.RESULTS / "search_benchmark"
DEFAULT_WORK = harness.OUTPUTS / "search_benchmark"


class CachedScores:
    """An evaluator that asks the wrapped one once per network, remembering on disk."""

    def __init__(self, evaluator: Any, path: Path) -> None:
        self.evaluator, self.path = evaluator, path
        self.scores: dict[str, float] = {row["spec"]: row["top1"] for row in harness.read_rows([path])}
        self.evaluated = 0

    def evaluate(self, spec: NetworkSpec) -> EvalResult:
        key = to_string(spec)
        if key not in self.scores:
            top1 = float(self.evaluator.evaluate(spec).top1)
            harness.append_row(self.path, {"spec": key, "top1": top1}, what="the search benchmark's score cache")
            self.scores[key] = top1
            self.evaluated += 1
        return EvalResult(top1=self.scores[key])


def check_scoring(work: Path, settings: dict[str, Any]) -> None:
    """The cached scores in ``work`` belong to one scoring setting: refuse another one."""
    path = work / "scoring.json"
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if recorded != settings:
            differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
            raise SystemExit(f"search_benchmark: {work} caches scores made with other settings "
                             f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in differ.items())}); "
                             "use another --work")
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1), encoding="utf-8")


def hypervolume_2d(points: list[tuple[float, float]], max_latency: float) -> float:
    """Area dominated by ``(top1, latency)`` points (top-1 up, latency down) above top-1 0
    and left of ``max_latency``."""
    area, best = 0.0, 0.0
    inside = sorted((lat, acc) for acc, lat in points if lat < max_latency)
    for i, (lat, acc) in enumerate(inside):
        best = max(best, acc)
        right = inside[i + 1][0] if i + 1 < len(inside) else max_latency
        area += (right - lat) * best
    return area


def curve(study: optuna.Study, mode: str, max_latency: float) -> list[float]:
    """The figure of merit after each complete trial, in trial order."""
    values, points, best = [], [], float("-inf")
    for trial in sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                        key=lambda t: t.number):
        if mode == "pareto":
            points.append((trial.values[0], trial.values[1]))
            # A point never shrinks the dominated area; a dominated one only re-splits the
            # sum, which can cost the last bit of a float: keep the curve monotone.
            values.append(max(hypervolume_2d(points, max_latency), values[-1] if values else 0.0))
        else:
            best = max(best, trial.values[0])
            values.append(best)
    return values


def trials_to_reach(values: list[float], target: float) -> int | None:
    """1-based number of trials after which ``values`` first reaches ``target``."""
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def run_study(args: argparse.Namespace, sampler: str, seed: int, objective_for, work: Path) -> optuna.Study:
    settings = StudySettings(mode=args.mode, sampler=sampler, seed=seed, target_ms=args.target_ms)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(work / f"{args.mode}-{sampler}-seed{seed}.journal")))
    study = optuna.create_study(study_name=f"{args.mode}-{sampler}-{seed}", storage=storage,
                                load_if_exists=True, directions=settings.directions,
                                sampler=make_sampler(settings))
    enqueue_canonical(study, objective_for(settings).space)
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if done < args.trials:
        started = time.monotonic()
        objective = objective_for(settings)

        def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            n = trial.number + 1
            if n % 25 == 0 or n == args.trials:
                print(f"[{time.strftime('%H:%M:%S')}] {args.mode} {sampler} seed {seed}: {n}/{args.trials} "
                      f"trials, {objective.evaluator.evaluated} scored, "
                      f"{time.monotonic() - started:.0f} s", flush=True)

        study.optimize(objective, n_trials=args.trials - done, callbacks=[report])
    return study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a nas-supernet train checkpoint")
    parser.add_argument("--space", default="mobilenetv3_small")
    parser.add_argument("--protocol", default="proxy", help="data the supernet is scored on")
    parser.add_argument("--table", default="auto",
                        help="latency table folder (default auto: as nas-search chooses it)")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--mode", choices=["pareto", "mnasnet"], default="pareto")
    parser.add_argument("--target-ms", type=float, default=None,
                        help="MnasNet TAR (default: canonical Small's table latency)")
    parser.add_argument("--bn-batches", type=int, default=8)
    parser.add_argument("--val-samples", type=int, default=2500,
                        help="score on a seeded subset of val of this many images (0: all; "
                             "default 2500, as the main job's data=cifar10_r32)")
    harness.add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    harness.start(args)
    space = load_space(args.space)
    if args.table == "auto":
        choice = host_table(space, runtime="torch-cpu", resolution=space.base.resolution)
        print(f"latency table {choice.path}: {choice.reason}", flush=True)
        table = LatencyTable.load(choice.path)
    else:
        table = LatencyTable.load(resolve_table_dir(args.table))
    canonical = space.canonical()
    if args.mode == "mnasnet" and args.target_ms is None:
        args.target_ms = table.predict(canonical)
    supernet, _ = load_supernet(args.checkpoint)
    data = dataclasses.replace(load_protocol(args.protocol).data, val_samples=args.val_samples or None)
    check_scoring(args.work, {"checkpoint": str(args.checkpoint.resolve()), "protocol": args.protocol,
                              "bn_batches": args.bn_batches, "val_samples": args.val_samples or None})
    scores = CachedScores(SupernetEvaluator(supernet, data, bn_batches=args.bn_batches, device="cpu"),
                          args.work / "scores.jsonl")

    def objective_for(settings: StudySettings) -> Objective:
        return Objective(space=space, evaluator=scores, latency=table.predict, settings=settings)

    # The reference point's latency: the slowest network found among the supernet's largest
    # and 2,000 random members (the hypervolume counts what lies faster than it).
    rng = random.Random(0)
    max_latency = max(table.predict(s) for s in (supernet.largest_spec(),
                                                 *(space.sample(rng) for _ in range(2000))))
    rows, kept = [], []  # kept: each study's front (pareto) or best network (mnasnet)
    for sampler in args.samplers:
        for seed in args.seeds:
            study = run_study(args, sampler, seed, objective_for, args.work)
            for i, value in enumerate(curve(study, args.mode, max_latency)):
                rows.append({"mode": args.mode, "sampler": sampler, "seed": seed, "trial": i + 1,
                             "value": value})
            # pareto: the study's front; mnasnet: its best-rewarded network.
            best = study.best_trials if args.mode == "pareto" else [study.best_trial]
            for trial in best:
                kept.append({"sampler": sampler, "seed": seed, "number": trial.number,
                             "top1": trial.user_attrs.get("accuracy"),
                             "latency_ms": trial.user_attrs.get("latency_ms"),
                             "reward": trial.values[0] if args.mode == "mnasnet" else None,
                             "spec": trial.user_attrs.get("spec")})
    write_outputs(args, pd.DataFrame(rows), pd.DataFrame(kept), table.predict(canonical),
                  scores.scores.get(to_string(canonical)), max_latency)


def write_outputs(args: argparse.Namespace, curves: pd.DataFrame, kept: pd.DataFrame,
                  canonical_ms: float, canonical_top1: float | None, max_latency: float) -> None:
    plt = harness.pyplot()
    curves.to_csv(args.out / f"curves-{args.mode}.csv", index=False)
    final = curves[curves["trial"] == curves.groupby(["sampler", "seed"])["trial"].transform("max")]
    summary: dict[str, Any] = {"mode": args.mode, "trials": args.trials, "seeds": args.seeds,
                               "reference_latency_ms": max_latency,
                               "canonical_latency_ms": round(canonical_ms, 4),
                               "canonical_supernet_top1": canonical_top1, "samplers": {}}
    random_final = final[final["sampler"] == "random"]["value"]
    target = float(random_final.mean()) if len(random_final) else None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler, group in curves.groupby("sampler"):
        by_trial = group.groupby("trial")["value"]
        mean, low, high = by_trial.mean(), by_trial.min(), by_trial.max()
        ax.plot(mean.index, mean.values, label=sampler)
        ax.fill_between(mean.index, low.values, high.values, alpha=0.2)
        finals = final[final["sampler"] == sampler]["value"].tolist()
        reach = [trials_to_reach(g["value"].tolist(), target) for _, g in group.groupby("seed")] \
            if target is not None else []
        summary["samplers"][sampler] = {
            "final_mean": round(statistics.mean(finals), 4),
            "final_std": round(statistics.stdev(finals), 4) if len(finals) > 1 else None,
            "trials_to_reach_random_final_mean": reach,
        }
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (top-1 x ms)" if args.mode == "pareto" else "best MnasNet reward")
    ax.set_title(f"{args.mode}: mean and min-max over seeds {args.seeds}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / f"hypervolume-{args.mode}.png", dpi=120)
    plt.close(fig)
    if not kept.empty and args.mode == "mnasnet":
        kept.to_csv(args.out / "best-mnasnet.csv", index=False)
        summary["best_per_study"] = kept.drop(columns="spec").round(4).to_dict(orient="records")
        summary["target_ms"] = args.target_ms
    elif not kept.empty:
        kept.drop(columns="reward").to_csv(args.out / "fronts.csv", index=False)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for sampler, group in kept[kept["seed"] == args.seeds[0]].groupby("sampler"):
            group = group.sort_values("latency_ms")
            ax.step(group["latency_ms"], group["top1"], where="post", marker="o", label=sampler)
        if canonical_top1 is not None:
            ax.plot([canonical_ms], [canonical_top1], "k*", markersize=12, label="canonical Small")
        ax.set_xlabel("table latency (ms)")
        ax.set_ylabel("supernet top-1")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.out / "fronts.png", dpi=120)
        plt.close(fig)
    print(harness.write_yaml(args.out / f"summary-{args.mode}.yaml", summary))


if __name__ == "__main__":
    main()
