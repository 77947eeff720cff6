"""``evaluator=predictor``: fit an accuracy predictor on supernet scores, search on the predictor.

Once-for-All's recipe (Cai et al., ICLR 2020, Sec. 3.4): train the supernet once, measure a few
hundred (OFA: 16K) random sub-networks with it, fit an accuracy predictor on them
(:mod:`nas.search.predictor`), then let the search query the predictor, which costs
microseconds a network where the supernet costs seconds. :class:`PredictorSearch` does, in
order, each step resumable in the run folder:

1. the supernet, trained or loaded as ``evaluator=supernet`` does
   (:func:`nas.supernet.evaluator.supernet_evaluator_from_config`);
2. ``evaluator.samples`` supernet scores of random networks, canonical first
   (:func:`nas.search.predictor_data.collect_scores`, ``<run>/predictor/scores.csv``), each also
   a trial of the study;
3. the predictor fitted on them (``<run>/predictor/predictor.pt`` and ``.json``);
4. :func:`predictor_front`: Optuna's NSGA-II over ``evaluator.candidates`` networks scored by the
   predictor and the latency table (``<run>/predictor/front.json``);
5. the predicted front (at most ``trials`` members, spread over latency) re-scored by the
   supernet, each a trial of the study carrying its prediction (``predicted_accuracy``).

So every value in the study, and in ``trials.csv`` and ``pareto.csv``, is a supernet score;
the predictor only decides which networks the supernet scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution

from nas.arch.codecs import to_string
from nas.arch.space import SearchSpace
from nas.arch.spec import NetworkSpec
from nas.config import ConfigError, check_int
from nas.search.objective import DEFAULT_REWARD_EXPONENT, StudySettings, mnasnet_reward
from nas.search.predictor import AccuracyPredictor, PredictorModelConfig, genome

RUN_SUBDIR = "predictor"
LatencyFn = Callable[[NetworkSpec], float]
T = TypeVar("T")


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PredictorEvaluatorConfig:
    """The ``evaluator`` section when ``kind: predictor`` (``nas/conf/evaluator/predictor.yaml``).

    Attributes:
        samples: random networks the supernet scores for fitting (canonical among them).
        population_size: NSGA-II's population over the predictor.
        candidates: networks the predictor scores in all (generations x population).
        model: the predictor (:class:`~nas.search.predictor.PredictorModelConfig`).
        supernet: the rest of the section, an ``evaluator=supernet`` section (checkpoint,
            bn_batches, train, ...).
    """

    samples: int = 300
    population_size: int = 200
    candidates: int = 10_000
    model: PredictorModelConfig = field(default_factory=PredictorModelConfig)
    supernet: dict[str, Any] = field(default_factory=lambda: {"kind": "supernet"})

    def __post_init__(self) -> None:
        check_int("evaluator", "samples", self.samples, minimum=2)
        check_int("evaluator", "population_size", self.population_size, minimum=2)
        check_int("evaluator", "candidates", self.candidates, minimum=self.population_size,
                  label=f"evaluator.candidates (at least evaluator.population_size, {self.population_size})")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PredictorEvaluatorConfig:
        """From the YAML mapping; the supernet keys are checked as ``evaluator=supernet``'s."""
        from nas.supernet.evaluator import SupernetEvaluatorConfig

        data = dict(data or {})
        kind = data.pop("kind", "predictor")
        if kind != "predictor":
            raise ConfigError(f"evaluator.kind must be 'predictor' here, got {kind!r}")
        own = {name: data.pop(name) for name in ("samples", "population_size", "candidates", "model")
               if name in data}
        model = own.get("model")
        if not isinstance(model, PredictorModelConfig):
            own["model"] = PredictorModelConfig.from_dict(model)
        supernet = {**data, "kind": "supernet"}
        SupernetEvaluatorConfig.from_dict(supernet)  # unknown keys refused with the allowed ones
        return cls(**own, supernet=supernet)


def supernet_section(evaluator: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluator=supernet`` section inside an ``evaluator=predictor`` one."""
    return PredictorEvaluatorConfig.from_dict(evaluator).supernet


# ---------------------------------------------------------------------------- the search
@dataclass(frozen=True)
class Candidate:
    """A network the predictor search keeps: its predicted top-1 and table latency."""

    spec: NetworkSpec
    predicted_top1: float
    latency_ms: float


class _Params:
    """A trial-like view of a parameter mapping (:meth:`SearchSpace.suggest` reads it)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.params[name]


def reward_exponent(settings: StudySettings, space: SearchSpace) -> float:
    """MnasNet's w for ``settings`` (as :class:`~nas.search.objective.Objective` chooses it)."""
    if settings.reward_exponent is not None:
        return settings.reward_exponent
    return DEFAULT_REWARD_EXPONENT.get(space.name, -0.07)


def predictor_front(predictor: AccuracyPredictor, latency: LatencyFn, settings: StudySettings, *,
                    population_size: int, candidates: int) -> tuple[list[Candidate], dict[str, Any]]:
    """Search the predictor with NSGA-II; returns the best networks and what the search did.

    Why NSGA-II (Optuna's) rather than Once-for-All's own evolutionary search: the search here
    has two objectives (top-1 up, latency down) and wants their whole front in one run, which
    NSGA-II's non-dominated sorting and crowding give (OFA's evolution maximises accuracy
    under one latency constraint per run); Optuna's sampler also honours the latency budget
    as a constraint, as in the other evaluators' studies. The study lives in memory and is
    driven by ask/tell one generation at a time, so a whole generation is predicted in one
    batch; Optuna's bookkeeping (a few ms a candidate) then dominates the predictor's cost.
    The genome is fixed-length (:func:`~nas.search.predictor.genome`: a stage's deeper blocks
    are genes even while unused) so that crossover and mutation see every block; with the
    space's define-by-run parameters NSGA-II would draw the conditional blocks at random.

    Returns (pareto mode) the feasible non-dominated networks, fastest first, or (mnasnet mode)
    the networks by predicted reward, best first; each network once.
    """
    space = predictor.space
    distributions = {name: CategoricalDistribution(list(choices)) for name, choices in genome(space)}
    sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=settings.seed)
    study = optuna.create_study(directions=settings.directions, sampler=sampler)
    w = reward_exponent(settings, space)
    kept: dict[int, Candidate] = {}
    started = time.perf_counter()
    done = 0
    while done < candidates:
        batch = [study.ask(distributions) for _ in range(min(population_size, candidates - done))]
        specs = [space.suggest(_Params(trial.params)) for trial in batch]
        predicted = predictor.predict(specs)  # one forward pass for the generation
        for trial, spec, top1 in zip(batch, specs, predicted):
            latency_ms = float(latency(spec))
            if settings.budget_ms is not None:
                trial.set_constraint("latency_budget", latency_ms - settings.budget_ms)
            kept[trial.number] = Candidate(spec, float(top1), latency_ms)
            if settings.mode == "pareto":
                study.tell(trial, (float(top1), latency_ms))
            else:
                assert settings.target_ms is not None
                study.tell(trial, mnasnet_reward(float(top1), latency_ms, settings.target_ms, w))
        done += len(batch)
    if settings.mode == "pareto":
        best = sorted((kept[t.number] for t in study.best_trials), key=lambda c: c.latency_ms)
    else:
        complete = [t for t in study.get_trials(deepcopy=False)
                    if all(v <= 0 for v in t.constraints.values())]
        best = [kept[t.number] for t in sorted(complete, key=lambda t: -t.values[0])]
    unique: dict[str, Candidate] = {}
    for candidate in best:
        unique.setdefault(to_string(candidate.spec), candidate)
    stats = {"candidates": done, "distinct_networks": len({to_string(c.spec) for c in kept.values()}),
             "seconds": round(time.perf_counter() - started, 2)}
    return list(unique.values()), stats


def spread(front: list[T], count: int) -> list[T]:
    """At most ``count`` members of ``front`` (in its order), evenly spaced along it."""
    if len(front) <= count:
        return list(front)
    # Spacing above 1: the rounded positions are distinct.
    return [front[int(i)] for i in np.round(np.linspace(0, len(front) - 1, count))]


def coarse_to_fine(items: list[T]) -> list[T]:
    """``items`` reordered so that every prefix covers their range evenly: both ends, the
    middle, the quarters, ... A front re-scored in this order is covered end to end early,
    so a run stopped part-way (or read at any moment) has scores across all latencies."""
    if len(items) <= 2:
        return list(items)
    order, seen = [0, len(items) - 1], {0, len(items) - 1}
    spans = [(0, len(items) - 1)]
    while spans:
        following = []
        for low, high in spans:
            middle = (low + high) // 2
            if middle not in seen:
                seen.add(middle)
                order.append(middle)
            if middle - low > 1:
                following.append((low, middle))
            if high - middle > 1:
                following.append((middle, high))
        spans = following
    return [items[i] for i in order]


__all__ = ["Candidate", "PredictorEvaluatorConfig", "RUN_SUBDIR", "coarse_to_fine", "predictor_front",
           "reward_exponent", "spread", "supernet_section"]
