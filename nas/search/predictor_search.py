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
4. :func:`predictor_front`: NSGA-II (:mod:`nas.search.evolution`) over ``evaluator.candidates``
   networks scored by the predictor and the latency table (``<run>/predictor/front.json``);
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

from nas.arch.codecs import to_string
from nas.arch.space import SearchSpace
from nas.arch.spec import NetworkSpec
from nas.config import ConfigError, check_int
from nas.search.evolution import EvolutionConfig, evolve
from nas.search.objective import DEFAULT_REWARD_EXPONENT, StudySettings
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

    samples: int = 50
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

    Why NSGA-II rather than Once-for-All's own evolutionary search: the search here has two
    objectives (top-1 up, latency down) and wants their whole front in one run, which NSGA-II's
    non-dominated sorting and crowding give (OFA's evolution maximises accuracy under one
    latency constraint per run); the latency budget is a constraint, as in the other
    evaluators' studies. The engine is :mod:`nas.search.evolution` (numpy, a generation
    predicted in one batch), not Optuna's sampler, whose per-trial bookkeeping would cost more
    than the predictor. The genome is fixed-length (:func:`~nas.search.predictor.genome`: a
    stage's deeper blocks are genes even while unused) so that crossover and mutation see every
    block.

    Returns (pareto mode) the feasible non-dominated networks of all candidates scored, fastest
    first, or (mnasnet mode) the feasible networks by predicted reward, best first; each
    network once.
    """
    space = predictor.space
    genes = genome(space)
    w = reward_exponent(settings, space)
    specs: list[NetworkSpec] = []
    top1s: list[float] = []
    latencies: list[float] = []

    known: dict[bytes, tuple[NetworkSpec, float]] = {}  # a network met again: decoded once

    def decode(row: list[int]) -> tuple[NetworkSpec, float]:
        spec = space.suggest(_Params({name: choices[i] for (name, choices), i in zip(genes, row)}))
        return spec, float(latency(spec))

    def evaluate(genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = predictor.encoding.encode_genomes(genomes)
        top1 = predictor.predict_encoded(x)  # one forward pass for the generation
        # Genomes differing only in blocks their depth leaves out are one network: one row of x.
        batch = [known.get(key) or known.setdefault(key, decode(row))
                 for key, row in zip(map(bytes, x), genomes.tolist())]
        ms = np.array([m for _, m in batch])
        specs.extend(spec for spec, _ in batch)
        top1s.extend(top1.tolist())
        latencies.extend(ms.tolist())
        if settings.mode == "pareto":
            objectives = np.stack([-top1, ms], axis=1)
        else:
            assert settings.target_ms is not None
            objectives = -(top1 * (ms / settings.target_ms) ** w)[:, None]
        budget = settings.budget_ms
        violation = ms - budget if budget is not None else np.zeros(len(batch))
        return objectives, violation

    started = time.perf_counter()
    result = evolve([len(choices) for _, choices in genes], evaluate,
                    EvolutionConfig(population_size=population_size, candidates=candidates,
                                    seed=settings.seed))
    feasible = np.flatnonzero(result.violation <= 0)
    if settings.mode == "pareto":
        best = feasible[pareto_indices(result.objectives[feasible])]
    else:
        best = feasible[np.argsort(result.objectives[feasible, 0], kind="stable")]
    unique: dict[int, Candidate] = {}  # a network's every copy is one decoded object
    for i in best.tolist():
        unique.setdefault(id(specs[i]), Candidate(specs[i], top1s[i], latencies[i]))
    stats = {"candidates": len(specs), "distinct_networks": len(known),
             "generations": result.generations, "seconds": round(time.perf_counter() - started, 2)}
    return list(unique.values()), stats


def pareto_indices(objectives: np.ndarray) -> np.ndarray:
    """Rows of a two-column (minimised) objective array on its Pareto front, by the second
    objective ascending; of identical points the first. O(n log n), for 10^5 candidates."""
    order = np.lexsort((objectives[:, 0], objectives[:, 1]))
    first = objectives[order, 0]
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], first[:-1]]))
    return order[first < best_before]


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


__all__ = ["Candidate", "PredictorEvaluatorConfig", "RUN_SUBDIR", "coarse_to_fine", "pareto_indices",
           "predictor_front", "reward_exponent", "spread", "supernet_section"]
