"""``nas-search evaluator=predictor``: supernet scores, a fitted predictor, NSGA-II on it, and
the predicted front re-scored by the supernet; end to end on synthetic data, resumed, refused."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nas
from nas.arch.codecs import from_string, load_spec, to_string
from nas.arch.space import load_space
from nas.search.fingerprint import StudySettingsMismatch
from nas.search.objective import StudySettings
from nas.search.pipeline import SearchError, SearchInterrupted, SearchRun, build_evaluator
from nas.search.predictor import AccuracyPredictor, PredictorModelConfig, genome
from nas.search.predictor_data import read_scores
from nas.search.predictor_search import PredictorEvaluatorConfig, coarse_to_fine, predictor_front, spread
from nas.supernet.evaluator import SupernetEvaluator

pytestmark = pytest.mark.usefixtures("one_thread")

SPACES = Path(__file__).resolve().parents[1] / "data" / "spaces"
SCRIPT = str(Path(sys.executable).parent / "nas-search")
SAMPLES, TRIALS = 8, 3
SCORE = SupernetEvaluator.evaluate  # the real scoring, before any test patches it


def _overrides(table: Path, *extra: str) -> list[str]:
    return [f"hydra.searchpath=[file://{SPACES}]", "space=tiny", f"latency.table={table}", "latency.backend=torch",
            "latency.resolution=64", "data=synthetic", "data.train_samples=96", "data.val_samples=64",
            "data.batch_size=32", "evaluator=predictor", "evaluator.train.steps=3",
            "evaluator.train.progress=false", "evaluator.bn_batches=1", "evaluator.device=cpu",
            f"evaluator.samples={SAMPLES}", "evaluator.population_size=10", "evaluator.candidates=60",
            "evaluator.model.hidden=32", "evaluator.model.epochs=20", f"trials={TRIALS}",
            "profile_costs=false", *extra]


def _rescored(run_dir: Path) -> pd.DataFrame:
    trials = pd.read_csv(run_dir / "trials.csv")
    return trials[trials["predicted_accuracy"].notna()]


def test_nas_search_with_the_predictor_end_to_end(tmp_path: Path, tiny_table: Path):
    run_dir = tmp_path / "run"
    result = subprocess.run([SCRIPT, f"hydra.run.dir={run_dir}", *_overrides(tiny_table)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front" in result.stdout and "predictor: fitted on 8 scores" in result.stdout
    trials = pd.read_csv(run_dir / "trials.csv")
    assert (trials["state"] == "COMPLETE").all() and trials["spec"].is_unique
    assert trials.loc[0, "canonical"] and trials["canonical"].sum() == 1
    rescored = _rescored(run_dir)
    assert len(trials) == SAMPLES + len(rescored) and 1 <= len(rescored) <= TRIALS
    scores = read_scores(run_dir / "predictor" / "scores.csv")
    assert [s.spec for s in scores] == list(trials["spec"][:SAMPLES])
    assert np.allclose([s.top1 for s in scores], trials["accuracy"][:SAMPLES])
    front = json.loads((run_dir / "predictor" / "front.json").read_text())
    assert front["candidates"] == 60 and set(rescored["spec"]) <= {m["spec"] for m in front["members"]}
    assert (run_dir / "predictor" / "predictor.pt").is_file()

    # pareto.csv: supernet scores, the predictor's figure beside them; its YAMLs, its plot.
    pareto = pd.read_csv(run_dir / "pareto.csv")
    configs = sorted((run_dir / "pareto").glob("*.yaml"))
    assert len(configs) == len(pareto) >= 1 and (run_dir / "pareto.png").stat().st_size > 0
    assert {"accuracy", "val_accuracy", "predicted_accuracy"} <= set(pareto.columns)
    load_spec(configs[0])
    config = nas.search_config(overrides=_overrides(tiny_table))
    supernet = build_evaluator(config, run_dir)  # the run's supernet, finished: loaded
    assert isinstance(supernet, SupernetEvaluator)
    for _, row in pd.concat([pareto, rescored]).iterrows():
        assert supernet.evaluate(from_string(row["spec"])).top1 == pytest.approx(row["accuracy"], abs=1e-9)
    # The predictor's column is its own figure, not a copy of the supernet's.
    assert not np.allclose(rescored["predicted_accuracy"], rescored["accuracy"])


def test_a_holdout_search_reports_its_front_on_val(tmp_path: Path, tiny_table: Path, cifar_subset: Path):
    """selection=holdout: the samples and re-scores are holdout figures; val is scored after."""
    overrides = [o for o in _overrides(tiny_table) if not o.startswith("data")] + [
        "data=cifar10_subset", f"data.root={cifar_subset}", "data.resolution=32",
        "+data.train_samples=300", "data.batch_size=32"]
    config = nas.search_config(overrides=overrides)
    notes: list[str] = []
    study = SearchRun(config, tmp_path / "run", report=notes.append).run()
    assert study.user_attrs["context"]["selection"] == "holdout"
    pareto = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert pareto["val_accuracy"].notna().all() and pareto["accuracy"].notna().all()
    # Scored on val by the run's supernet (not copied from the holdout figure, as for synthetic data).
    assert any("ranked on a holdout carved from train; val_accuracy: the same supernet" in n for n in notes)
    assert not any("repeats the selection accuracy" in n for n in notes)


def _interrupt_after(monkeypatch, calls: int) -> list[str]:
    """Make the supernet's scoring raise Ctrl-C after ``calls`` scores; returns the scored specs."""
    scored: list[str] = []

    def evaluate(self, spec):
        if len(scored) >= calls:
            raise KeyboardInterrupt
        scored.append(to_string(spec))
        return SCORE(self, spec)

    monkeypatch.setattr(SupernetEvaluator, "evaluate", evaluate)
    return scored


def test_a_stopped_run_resumes_without_scoring_anything_twice(tmp_path: Path, tiny_table: Path,
                                                               monkeypatch):
    run_dir = tmp_path / "run"
    config = nas.search_config(overrides=_overrides(tiny_table))
    first = _interrupt_after(monkeypatch, 5)
    with pytest.raises(SearchInterrupted):
        SearchRun(config, run_dir, report=lambda line: None).run()
    assert len(read_scores(run_dir / "predictor" / "scores.csv")) == 5
    assert len(pd.read_csv(run_dir / "trials.csv")) == 5  # each score a trial, outputs written

    second = _interrupt_after(monkeypatch, 10_000)
    notes: list[str] = []
    study = SearchRun(config.replace(resume=True), run_dir, report=notes.append).run()
    assert not set(first) & set(second)
    trials = pd.read_csv(run_dir / "trials.csv")
    rescored = _rescored(run_dir)
    assert len(second) == SAMPLES - 5 + len(rescored) and trials["spec"].is_unique
    assert len(study.trials) == len(trials) == SAMPLES + len(rescored)

    third = _interrupt_after(monkeypatch, 10_000)  # finished: everything is read back
    notes.clear()
    SearchRun(config.replace(resume=True), run_dir, report=notes.append).run()
    assert third == [] and any("loaded" in n for n in notes) and any("searched before" in n for n in notes)
    assert pd.read_csv(run_dir / "trials.csv").equals(trials)

    more = config.replace(resume=True, evaluator={**config.evaluator, "samples": SAMPLES + 4})
    with pytest.raises(StudySettingsMismatch, match=r"evaluator.samples: the study has 8, this start 12"):
        SearchRun(more, run_dir, report=lambda line: None).run()


def test_settings_the_predictor_cannot_take_are_refused_before_anything_runs(tmp_path: Path,
                                                                             tiny_table: Path):
    config = nas.search_config(overrides=_overrides(tiny_table))
    with pytest.raises(SearchError, match="n_workers=1, got 2"):
        SearchRun(config.replace(n_workers=2), tmp_path / "a", report=lambda line: None).run()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]"):
        SearchRun(config.replace(evaluator={**config.evaluator, "bogus": 1}), tmp_path / "b",
                  report=lambda line: None).run()
    with pytest.raises(ValueError, match="evaluator.candidates .* must be an integer >= 10"):
        PredictorEvaluatorConfig.from_dict({**config.evaluator, "candidates": 5})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------- the inner search
@pytest.fixture(scope="module")
def fitted():
    """A predictor of the tiny space fitted on a known target (bigger kernels and expansions
    score higher) and a latency that grows with them too: a real trade-off."""
    space = load_space(SPACES / "space" / "tiny.yaml")
    rng = random.Random(0)
    specs = [space.sample(rng) for _ in range(200)]

    def quality(spec):
        return 0.5 + sum(b.kernel * 0.004 + b.expansion * 0.0002 + 0.01 * b.se for b in spec.blocks)

    predictor = AccuracyPredictor(space, PredictorModelConfig(hidden=64, layers=2, epochs=100, lr=3e-3))
    predictor.fit(specs, [quality(s) for s in specs])
    return predictor, (lambda spec: sum(b.kernel * b.expansion for b in spec.blocks) / 1000.0), specs


def test_the_predicted_front_beats_as_many_random_networks(fitted):
    from experiments.search_benchmark import hypervolume_2d

    predictor, latency, _ = fitted
    front, stats = predictor_front(predictor, latency, StudySettings(sampler="nsga2", seed=0),
                                   population_size=20, candidates=400)
    assert stats["candidates"] == 400 and len(front) >= 3
    assert [c.latency_ms for c in front] == sorted(c.latency_ms for c in front)
    points = [(c.predicted_top1, c.latency_ms) for c in front]
    for top1, ms in points:  # non-dominated
        assert not any(t >= top1 and m <= ms and (t, m) != (top1, ms) for t, m in points)
    space = predictor.space
    rng = random.Random(1)
    randoms = [space.sample(rng) for _ in range(400)]
    random_points = list(zip(predictor.predict(randoms), map(latency, randoms)))
    limit = max(m for _, m in random_points + points) + 1
    assert hypervolume_2d(points, limit) > hypervolume_2d(random_points, limit)


def test_a_budget_is_respected_and_mnasnet_mode_ranks_by_reward(fitted):
    predictor, latency, specs = fitted
    budget = float(np.median([latency(s) for s in specs]))
    front, _ = predictor_front(predictor, latency, StudySettings(seed=0, budget_ms=budget),
                               population_size=20, candidates=200)
    assert front and all(c.latency_ms <= budget for c in front)
    best, _ = predictor_front(predictor, latency, StudySettings(mode="mnasnet", target_ms=budget, seed=0),
                              population_size=20, candidates=200)
    rewards = [c.predicted_top1 * (c.latency_ms / budget) ** -0.07 for c in best]
    assert rewards == sorted(rewards, reverse=True) and len({to_string(c.spec) for c in best}) == len(best)


def test_coarse_to_fine_covers_the_range_early_and_keeps_every_item():
    assert coarse_to_fine(list(range(9))) == [0, 8, 4, 2, 6, 1, 3, 5, 7]
    order = coarse_to_fine(list(range(60)))
    assert sorted(order) == list(range(60)) and order[:3] == [0, 59, 29]
    assert coarse_to_fine([5]) == [5] and coarse_to_fine([]) == []


def test_spread_keeps_the_ends_and_spaces_the_rest():
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread(list(range(3)), 5) == [0, 1, 2]
    assert len(set(spread(list(range(61)), 60))) == 60


def test_the_genome_names_every_parameter_the_space_can_suggest():
    space = load_space("mobilenetv3_small")
    names = dict(genome(space))
    rng = random.Random(0)
    for _ in range(50):
        for name, value in space.params_of(space.sample(rng)).items():
            assert value in names[name]
    assert len(names) == 3 + 4 * (1 + 2 + 4 + 3 + 4)  # 3 searched depths, 14 block positions
