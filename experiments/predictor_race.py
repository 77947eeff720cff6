"""The predictor benchmark's search part: supernet-scored TPE against the predictor search,
as hypervolume reached against the seconds spent (``experiments.predictor_benchmark``,
``--parts search``).

Each method runs with the same supernet scorer and latency table; the predictor search's
clock includes collecting its training scores, the fit, NSGA-II over the predicted networks
and re-scoring the chosen front members (Once-for-All's recipe: a predictor fitted on
supernet scores, an evolutionary search over it). Every run is appended to ``--work`` the
moment it finishes, and every supernet score is cached, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import optuna

from experiments import harness
from experiments.search_benchmark import hypervolume_2d
from nas.arch.codecs import to_string
from nas.arch.space import SearchSpace
from nas.cost.lut import LatencyTable
from nas.search.objective import Objective, StudySettings, enqueue_canonical, make_sampler
from nas.search.predictor import AccuracyPredictor, PredictorModelConfig
from nas.search.predictor_data import Score, collect_scores
from nas.search.predictor_search import coarse_to_fine, predictor_front, spread


def score_progress(what: str, total: int) -> Callable[[Score, int], None]:
    """A log line every 25 supernet scores and at the last."""

    def report(score: Score, done: int) -> None:
        if done % 25 == 0 or done == total:
            harness.log(f"{what}: {done}/{total} supernet scores ({score.seconds:.1f} s the last)")
    return report


def timeline(events: list[tuple[float, float | None, float | None]], max_latency: float) -> list[list[float]]:
    """``[seconds, hypervolume]`` after each event ``(seconds it took, top-1, latency)``; an
    event without a network (the fit, the predictor's search) only spends time."""
    points: list[tuple[float, float]] = []
    clock, out = 0.0, []
    for seconds, top1, latency in events:
        clock += seconds
        if top1 is not None and latency is not None:
            points.append((top1, latency))
        # A dominated point only re-splits the area's sum, which can cost its last bit of
        # float: keep the curve monotone, as search_benchmark.curve does.
        area = max(hypervolume_2d(points, max_latency), out[-1][1] if out else 0.0)
        out.append([round(clock, 3), area])
    return out


def run_tpe(args: argparse.Namespace, space: SearchSpace, scorer: Any, table: LatencyTable,
            seed: int, max_latency: float) -> dict[str, Any]:
    settings = StudySettings(sampler="tpe", seed=seed)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(args.work / f"tpe-seed{seed}.journal")))
    study = optuna.create_study(study_name=f"tpe-{seed}", storage=storage, load_if_exists=True,
                                directions=settings.directions, sampler=make_sampler(settings))
    enqueue_canonical(study, space)
    complete = (optuna.trial.TrialState.COMPLETE,)
    left = args.tpe_trials - len(study.get_trials(deepcopy=False, states=complete))
    if left > 0:
        objective = Objective(space=space, evaluator=scorer, latency=table.predict, settings=settings)
        study.optimize(objective, n_trials=left)
    trials = sorted(study.get_trials(deepcopy=False, states=complete), key=lambda t: t.number)
    # A trial's duration includes TPE's sampling and the supernet's score (a repeat: none).
    events = [(t.duration.total_seconds(), t.values[0], t.values[1]) for t in trials[:args.tpe_trials]]
    return {"method": "tpe", "samples": None, "seed": seed, "supernet_scores": len(events),
            "curve": timeline(events, max_latency)}


def run_predictor(args: argparse.Namespace, space: SearchSpace, scorer: Any, table: LatencyTable,
                  seed: int, samples: int, max_latency: float, model: PredictorModelConfig) -> dict[str, Any]:
    scores = collect_scores(space, scorer, max(args.samples), args.work / f"search_scores-seed{seed}.csv",
                            seed=seed, canonical_first=True,
                            on_score=score_progress(f"search seed {seed}", max(args.samples)))[:samples]
    started = time.perf_counter()
    predictor = AccuracyPredictor(space, model)
    predictor.fit([s.network() for s in scores], [s.top1 for s in scores])
    fit_seconds = time.perf_counter() - started
    front, stats = predictor_front(predictor, table.predict, StudySettings(seed=seed),
                                   population_size=args.population_size, candidates=args.candidates)
    chosen = coarse_to_fine(spread(front, args.rescore))  # the order nas-search re-scores in
    cache = args.work / f"rescored-seed{seed}.jsonl"  # a network re-scored once per seed
    done = {row["spec"]: row for row in harness.read_rows([cache])}
    have = {s.spec for s in scores}
    events: list[tuple[float, float | None, float | None]] = [
        (s.seconds, s.top1, table.predict(s.network())) for s in scores]
    events.append((fit_seconds + stats["seconds"], None, None))
    for candidate in chosen:
        key = to_string(candidate.spec)
        if key in have:
            continue
        if key not in done:
            t0 = time.perf_counter()
            top1 = float(scorer.evaluate(candidate.spec).top1)
            done[key] = {"spec": key, "top1": top1, "seconds": round(time.perf_counter() - t0, 4)}
            harness.append_row(cache, done[key], what="re-scored networks")
        events.append((done[key]["seconds"], done[key]["top1"], candidate.latency_ms))
    return {"method": "predictor", "samples": samples, "seed": seed,
            "supernet_scores": sum(1 for e in events if e[1] is not None),
            "fit_seconds": round(fit_seconds, 2), "search_seconds": stats["seconds"],
            "candidates": stats["candidates"], "predicted_front": len(front),
            "curve": timeline(events, max_latency)}


def search(args: argparse.Namespace, space: SearchSpace, scorer: Any, table: LatencyTable,
           max_latency: float, model: PredictorModelConfig) -> list[dict[str, Any]]:
    """Every (method, samples, seed) race of ``args``, resumed from ``--work/search_runs.jsonl``."""
    path = args.work / "search_runs.jsonl"
    runs = {(r["method"], r["samples"], r["seed"]): r for r in harness.read_rows([path])}
    units = [("tpe", None, seed) for seed in args.seeds]
    units += [("predictor", n, seed) for seed in args.seeds for n in sorted(args.samples)]
    for method, samples, seed in units:
        if (method, samples, seed) in runs:
            continue
        harness.log(f"search: {method} seed {seed}" + (f", {samples} samples" if samples else ""))
        row = (run_tpe(args, space, scorer, table, seed, max_latency) if method == "tpe" else
               run_predictor(args, space, scorer, table, seed, samples, max_latency, model))
        row.update({"loadavg": harness.load_average(), **harness.host_facts(), "finished_at": harness.now()})
        harness.append_row(path, row, what="the predictor benchmark's search runs")
        runs[(method, samples, seed)] = row
    return [runs[unit] for unit in units]


def reach(curve: list[list[float]], target: float) -> float | None:
    """Seconds after which the hypervolume first reaches ``target`` (None: never)."""
    return next((seconds for seconds, hv in curve if hv >= target - 1e-12), None)


def search_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tpe = [r for r in runs if r["method"] == "tpe"]
    target = statistics.mean(r["curve"][-1][1] for r in tpe)
    tpe_seconds = statistics.mean(r["curve"][-1][0] for r in tpe)
    out: dict[str, Any] = {"tpe": {"final_hypervolume_mean": round(target, 4), "seconds_mean": round(tpe_seconds, 1),
                                   "supernet_scores": [r["supernet_scores"] for r in tpe]}}
    for n in sorted({r["samples"] for r in runs if r["method"] == "predictor"}):
        mine = [r for r in runs if r["samples"] == n and r["method"] == "predictor"]
        seconds = [reach(r["curve"], target) for r in mine]
        ratios = [None if s is None else round(s / tpe_seconds, 3) for s in seconds]
        out[f"predictor_{n}"] = {
            "final_hypervolume_mean": round(statistics.mean(r["curve"][-1][1] for r in mine), 4),
            "seconds_mean": round(statistics.mean(r["curve"][-1][0] for r in mine), 1),
            "seconds_to_reach_tpe_final_mean": [None if s is None else round(s, 1) for s in seconds],
            "share_of_tpe_seconds": ratios,
            "target_met_every_seed": all(r is not None and r <= 0.2 for r in ratios),
            "fit_seconds_mean": round(statistics.mean(r["fit_seconds"] for r in mine), 2),
            "search_seconds_mean": round(statistics.mean(r["search_seconds"] for r in mine), 2)}
    return out
