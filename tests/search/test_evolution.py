"""The numpy NSGA-II behind the predictor search: ranks, crowding, survival and the search itself."""

from __future__ import annotations

import numpy as np
import pytest

from nas.search.evolution import EvolutionConfig, constrained_ranks, crowding, dominates, evolve, survivors
from nas.search.predictor_search import pareto_indices


def brute_force_ranks(points: np.ndarray) -> list[int]:
    """Non-domination ranks by peeling fronts with a plain double loop."""
    left, ranks, rank = set(range(len(points))), [0] * len(points), 0
    while left:
        front = {i for i in left
                 if not any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def test_ranks_match_a_brute_force_peeling_of_fronts():
    rng = np.random.default_rng(0)
    points = rng.integers(0, 6, size=(60, 2)).astype(float)  # ties and duplicates on purpose
    assert constrained_ranks(points, np.zeros(60)).tolist() == brute_force_ranks(points)
    assert dominates(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 1.0]])).tolist() == [[False, True]]


def test_an_infeasible_member_ranks_after_every_feasible_one_by_its_violation():
    points = np.array([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0], [9.0, 9.0]])
    violation = np.array([2.0, 0.0, 0.5, 0.0])  # the best point breaks the constraint most
    ranks = constrained_ranks(points, violation)
    assert ranks.tolist() == [3, 0, 2, 1]


def test_crowding_gives_a_fronts_ends_infinity_and_favours_the_isolated():
    points = np.array([[0.0, 10.0], [1.0, 9.0], [2.0, 8.0], [8.0, 2.0], [10.0, 0.0]])
    distance = crowding(points, np.zeros(5, dtype=np.int64))
    assert np.isinf(distance[[0, 4]]).all() and np.isfinite(distance[1:4]).all()
    assert distance[3] > distance[1]  # far from its neighbours


def test_survival_keeps_whole_fronts_then_the_least_crowded():
    points = np.array([[0.0, 3.0], [3.0, 0.0], [1.0, 2.0], [1.1, 1.9], [5.0, 5.0]])
    kept = survivors(points, np.zeros(5), 3)
    assert set(kept.tolist()) <= {0, 1, 2, 3} and {0, 1} <= set(kept.tolist())


def test_pareto_indices_match_the_brute_force_front():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(300, 2))
    front = pareto_indices(points)
    assert sorted(front.tolist()) == [i for i, r in enumerate(brute_force_ranks(points)) if r == 0]
    assert np.all(np.diff(points[front, 1]) >= 0)  # by the second objective


def toy(genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two objectives over genes in 0..9: the front is every g0 with all other genes 0."""
    rest = genomes[:, 1:].sum(axis=1)
    objectives = np.stack([genomes[:, 0] + rest, (9 - genomes[:, 0]) + rest], axis=1).astype(float)
    return objectives, np.where(genomes[:, 0] > 7, 1.0, 0.0)  # g0 of 8 or 9: infeasible


def test_evolve_finds_the_toy_front_within_its_constraint_and_repeats_with_its_seed():
    config = EvolutionConfig(population_size=40, candidates=3000, seed=3)
    result = evolve([10] * 8, toy, config)
    assert len(result.genomes) == 3000 and result.generations == 75
    feasible = result.violation <= 0
    best = result.genomes[feasible][pareto_indices(result.objectives[feasible])]
    assert (best[:, 1:] == 0).all() and set(best[:, 0].tolist()) == set(range(8))
    again = evolve([10] * 8, toy, config)
    assert np.array_equal(again.genomes, result.genomes)
    random_front = np.random.default_rng(0).integers(0, 10, size=(3000, 8))
    assert (random_front[:, 1:].sum(axis=1) == 0).sum() < len(best)  # random search finds none


@pytest.mark.parametrize("population, candidates", [(10, 10), (10, 25)])
def test_evolve_scores_exactly_the_candidates_asked_for(population, candidates):
    result = evolve([3, 4], toy, EvolutionConfig(population_size=population, candidates=candidates))
    assert len(result.genomes) == len(result.objectives) == len(result.violation) == candidates
    assert (result.genomes < np.array([3, 4])).all() and (result.genomes >= 0).all()
