"""NSGA-II over integer genomes, vectorised with numpy: the predictor search's engine.

Deb et al.'s NSGA-II (IEEE TEVC 2002): binary tournaments on (non-domination rank, crowding
distance) pick parents, uniform crossover and per-gene mutation make children, and parents and
children together are cut back to the population by rank, then crowding. Constraints follow
Deb's rule, as Optuna's NSGA-II sampler applies them: a feasible network beats an infeasible
one, and of two infeasible ones the smaller violation wins. The operators' defaults are Optuna's
(:class:`optuna.samplers.NSGAIISampler`: uniform crossover with swap probability 0.5, crossover
probability 0.9, mutation probability 1/genes).

Why not Optuna's sampler itself: its per-trial bookkeeping (a trial object, every parameter's
distribution checked and stored, the population rebuilt from the storage) costs milliseconds a
candidate, measured at 3-14 ms here, which is what caps a study at thousands of candidates;
the point of an accuracy predictor is to look at 10^5 (Once-for-All's evolutionary search is a
numpy loop over a population for the same reason, Cai et al., ICLR 2020, Sec. 3.4). Here a
whole generation is one array, scored in one call.

Objectives are minimised; a caller that maximises negates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

#: Scores a generation: genomes (n x genes) -> (objectives (n x m, minimised), violation (n,), >0: infeasible).
Evaluate = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EvolutionConfig:
    """NSGA-II's settings (Optuna's defaults where it has one)."""

    population_size: int = 200
    candidates: int = 10_000
    crossover_prob: float = 0.9
    swap_prob: float = 0.5
    mutation_prob: float | None = None  # None: 1 / genes
    seed: int | None = 0  # None: fresh entropy


@dataclass
class Evaluated:
    """Every genome scored, in order, with its objectives and violation."""

    genomes: np.ndarray
    objectives: np.ndarray
    violation: np.ndarray
    generations: int


def dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out[i, j]``: row i of ``a`` Pareto-dominates row j of ``b`` (all objectives minimised)."""
    le = (a[:, None, :] <= b[None, :, :]).all(axis=2)
    lt = (a[:, None, :] < b[None, :, :]).any(axis=2)
    return le & lt


def constrained_ranks(objectives: np.ndarray, violation: np.ndarray) -> np.ndarray:
    """Non-domination rank (0 best) under Deb's constraint rule: the feasible are ranked by
    Pareto fronts; each infeasible network ranks after every feasible one, by its violation."""
    n = len(objectives)
    ranks = np.empty(n, dtype=np.int64)
    feasible = np.flatnonzero(violation <= 0)
    dom = dominates(objectives[feasible], objectives[feasible])
    beaten_by = dom.sum(axis=0)
    rank, left = 0, np.ones(len(feasible), dtype=bool)
    while left.any():
        front = left & (beaten_by == 0)
        ranks[feasible[front]] = rank
        left &= ~front
        beaten_by = beaten_by - dom[front].sum(axis=0)
        rank += 1
    infeasible = np.flatnonzero(violation > 0)
    order = infeasible[np.argsort(violation[infeasible], kind="stable")]
    ranks[order] = rank + np.arange(len(order))
    return ranks


def crowding(objectives: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Crowding distance of each member within its front (the ends of a front: infinite)."""
    distance = np.zeros(len(objectives))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        if len(members) <= 2:
            distance[members] = np.inf
            continue
        for column in objectives[members].T:
            order = np.argsort(column, kind="stable")
            span = column[order[-1]] - column[order[0]]
            distance[members[order[[0, -1]]]] = np.inf
            if span > 0:
                distance[members[order[1:-1]]] += (column[order[2:]] - column[order[:-2]]) / span
    return distance


def _better(ranks: np.ndarray, distance: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Tournament winners between members ``i`` and ``j``: lower rank, then larger crowding."""
    win_i = (ranks[i] < ranks[j]) | ((ranks[i] == ranks[j]) & (distance[i] >= distance[j]))
    return np.where(win_i, i, j)


def offspring(population: np.ndarray, ranks: np.ndarray, distance: np.ndarray, sizes: np.ndarray,
              count: int, config: EvolutionConfig, rng: np.random.Generator) -> np.ndarray:
    """``count`` children: binary-tournament parents, uniform crossover, per-gene mutation."""
    n, genes = population.shape
    pick = lambda: _better(ranks, distance, rng.integers(0, n, count), rng.integers(0, n, count))
    first, second = population[pick()], population[pick()]
    swap = rng.random((count, genes)) < config.swap_prob
    swap &= (rng.random(count) < config.crossover_prob)[:, None]
    children = np.where(swap, second, first)
    rate = config.mutation_prob if config.mutation_prob is not None else 1.0 / max(1, genes)
    mutate = rng.random((count, genes)) < rate
    drawn = (rng.random((count, genes)) * sizes).astype(np.int64)
    return np.where(mutate, drawn, children)


def survivors(objectives: np.ndarray, violation: np.ndarray, size: int) -> np.ndarray:
    """Indices of the ``size`` members NSGA-II keeps: whole fronts, the last one cut by crowding."""
    ranks = constrained_ranks(objectives, violation)
    distance = crowding(objectives, ranks)
    order = np.lexsort((-distance, ranks))  # rank first, then the least crowded
    return order[:size]


def evolve(sizes: list[int], evaluate: Evaluate, config: EvolutionConfig) -> Evaluated:
    """Run NSGA-II over genomes whose gene g takes ``sizes[g]`` values, until
    ``config.candidates`` genomes were scored; returns all of them."""
    rng = np.random.default_rng(config.seed)
    width = np.asarray(sizes, dtype=np.int64)
    population = (rng.random((config.population_size, len(sizes))) * width).astype(np.int64)
    objectives, violation = evaluate(population)
    history = [(population, objectives, violation)]
    done, generations = len(population), 1
    while done < config.candidates:
        ranks = constrained_ranks(objectives, violation)
        distance = crowding(objectives, ranks)
        count = min(config.population_size, config.candidates - done)
        children = offspring(population, ranks, distance, width, count, config, rng)
        child_objectives, child_violation = evaluate(children)
        history.append((children, child_objectives, child_violation))
        done += count
        generations += 1
        pool = np.concatenate([population, children])
        pool_objectives = np.concatenate([objectives, child_objectives])
        pool_violation = np.concatenate([violation, child_violation])
        # A genome present twice would hold two places in the population: keep its first copy.
        _, first = np.unique(pool, axis=0, return_index=True)
        first = np.sort(first)
        keep = first[survivors(pool_objectives[first], pool_violation[first], config.population_size)]
        population, objectives, violation = pool[keep], pool_objectives[keep], pool_violation[keep]
    return Evaluated(genomes=np.concatenate([h[0] for h in history]),
                     objectives=np.concatenate([h[1] for h in history]),
                     violation=np.concatenate([h[2] for h in history]), generations=generations)


__all__ = ["EvolutionConfig", "Evaluated", "constrained_ranks", "crowding", "dominates", "evolve",
           "offspring", "survivors"]
