"""The steps of an ``evaluator=predictor`` search run, on its study and in its run folder.

:class:`PredictorSearch` is what :class:`nas.search.pipeline.SearchRun` runs instead of its
workers when ``evaluator.kind`` is ``predictor`` (the steps: :mod:`nas.search.predictor_search`).
Every network the supernet scores becomes a complete trial of the study
(``study.add_trial``), so the study's outputs (``trials.csv``, ``pareto.csv``, ``pareto/``,
``pareto.png``) and the val report after the search are those of any search; a re-scored
member of the predicted front also carries its prediction (``predicted_accuracy``).

Resuming (``resume=true``) continues where a start stopped: scores already in
``predictor/scores.csv`` are not taken again, a predictor fitted on the same scores with the
same settings is loaded, the predicted front is read back when the predictor and the search
settings are the same, and networks already in the study are not re-scored.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from nas._io import write_text_atomic
from nas.arch.codecs import from_string, to_string
from nas.arch.space import SearchSpace
from nas.arch.spec import NetworkSpec
from nas.search.fingerprint import table_identity
from nas.search.objective import mnasnet_reward
from nas.search.predictor import AccuracyPredictor, PredictorError, genome
from nas.search.predictor_data import Score, collect_scores
from nas.search.predictor_search import (
    RUN_SUBDIR,
    Candidate,
    PredictorEvaluatorConfig,
    coarse_to_fine,
    predictor_front,
    reward_exponent,
    spread,
)
from nas.training.evaluator import Evaluator

if TYPE_CHECKING:  # pragma: no cover
    from nas.cost.lut import LatencyTable
    from nas.search.config import SearchConfig

PREDICTED_ATTR = "predicted_top1"  # the predictor's figure on a re-scored trial
SOURCE_ATTR = "predictor_step"     # "sample" (fitting data) or "front" (re-scored)


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PredictorSearch:
    """Run the predictor steps of ``config`` into ``study`` (see the module docstring).

    Args:
        config: the search's settings (``config.evaluator`` a predictor section).
        run_dir: the run folder (``predictor/`` is written there).
        space: the search space.
        table: the latency table.
        evaluator: the supernet evaluator (built as ``evaluator=supernet`` builds it).
        say: receives one-line progress notes.
        after_trial: called with the study after each re-scored network (writes the outputs).
    """

    def __init__(self, config: SearchConfig, run_dir: Path, space: SearchSpace, table: LatencyTable,
                 evaluator: Evaluator, *, say: Callable[[str], None],
                 after_trial: Callable[[optuna.Study], None] = lambda study: None) -> None:
        self.config = config
        self.settings = PredictorEvaluatorConfig.from_dict(config.evaluator)
        self.folder = Path(run_dir) / RUN_SUBDIR
        self.space = space
        self.table = table
        self.evaluator = evaluator
        self.say = say
        self.after_trial = after_trial
        self.choices = dict(genome(space))
        self.w = reward_exponent(config.study_settings, space)

    # ------------------------------------------------------------------ trials
    def _known(self, study: optuna.Study) -> set[str]:
        return {t.user_attrs["spec"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "spec" in t.user_attrs}

    def _add(self, study: optuna.Study, spec: NetworkSpec, top1: float, seconds: float,
             attrs: dict[str, Any]) -> None:
        """``spec``'s supernet score as a complete trial, with what a worker's trial records."""
        settings = self.config.study_settings
        latency_ms = float(self.table.predict(spec))
        params = self.space.params_of(spec)
        user_attrs: dict[str, Any] = {"worker": f"{socket.gethostname()}:{os.getpid()}",
                                      "spec": to_string(spec), "accuracy": top1,
                                      "latency_ms": latency_ms, "seconds": seconds, **attrs}
        if self.config.profile_costs:
            from nas.cost.profile import profile_spec

            profile = profile_spec(spec)
            user_attrs.update(madds=profile.madds, params=profile.params)
        if settings.mode == "pareto":
            values = [top1, latency_ms]
        else:
            assert settings.target_ms is not None
            user_attrs["reward"] = mnasnet_reward(top1, latency_ms, settings.target_ms, self.w)
            values = [user_attrs["reward"]]
        constraints = ({"latency_budget": latency_ms - settings.budget_ms}
                       if settings.budget_ms is not None else None)
        trial = optuna.trial.create_trial(
            values=values, params=params, user_attrs=user_attrs, constraints=constraints,
            distributions={name: CategoricalDistribution(list(self.choices[name])) for name in params})
        # Its duration in trials.csv is the scoring's, as a worker's trial's would be.
        trial.datetime_start = trial.datetime_complete - datetime.timedelta(seconds=seconds)
        study.add_trial(trial)

    # ------------------------------------------------------------------ steps
    def collect(self, study: optuna.Study) -> list[Score]:
        """Step 2: the supernet scores of ``samples`` random networks (canonical first)."""
        count = self.settings.samples
        path = self.folder / "scores.csv"
        canonical = to_string(self.space.canonical())
        known = self._known(study)

        def record(score: Score) -> None:
            if score.spec not in known:
                attrs: dict[str, Any] = {SOURCE_ATTR: "sample"}
                if score.spec == canonical:
                    attrs["canonical"] = True
                self._add(study, score.network(), score.top1, score.seconds, attrs)
                known.add(score.spec)

        def scored(score: Score, done: int) -> None:
            record(score)
            if done % 10 == 0 or done == count:
                self.say(f"predictor: {done}/{count} supernet scores ({score.seconds:.1f} s the last)")

        self.say(f"predictor: scoring {count} random networks with the supernet into {path}")
        scores = collect_scores(self.space, self.evaluator, count, path, seed=self.config.seed,
                                canonical_first=True, on_score=scored)
        for score in scores:  # a start killed between the CSV row and its trial
            record(score)
        return scores

    def fit(self, scores: list[Score]) -> AccuracyPredictor:
        """Step 3: the predictor fitted on ``scores`` (loaded when fitted on them before)."""
        model = self.settings.model
        key = _key({"scores": [tuple(s[:2]) for s in scores], "model": model.to_dict(),
                    "space": self.space.name})
        path = self.folder / "predictor.pt"
        if path.with_suffix(".json").is_file():
            try:
                saved = AccuracyPredictor.load(path)
            except PredictorError as err:
                self.say(f"predictor: {err}; fitting again")
            else:
                if saved.fitted.get("key") == key:
                    saved.check_space(self.space)
                    self.say(f"predictor: fitted before on these {len(scores)} scores; loaded {path}")
                    return saved
        predictor = AccuracyPredictor(self.space, model)
        fit = predictor.fit([s.network() for s in scores], [s.top1 for s in scores])
        predictor.fitted["key"] = key
        predictor.save(path)
        self.say(f"predictor: fitted on {len(scores)} scores (training RMSE "
                 f"{100 * fit['train_rmse']:.2f} points of top-1); saved {path}")
        return predictor

    def search(self, predictor: AccuracyPredictor) -> list[Candidate]:
        """Step 4: the predicted front (read back when searched before with these settings)."""
        settings = self.config.study_settings
        key = _key({"predictor": predictor.fitted.get("key"), "settings": settings.__dict__,
                    "population_size": self.settings.population_size,
                    "candidates": self.settings.candidates,
                    "table": table_identity(self.table, self.space)})  # its figures, not its name
        path = self.folder / "front.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                self.say(f"predictor: the predicted front searched before, read from {path}")
                return [Candidate(from_string(m["spec"]), m["predicted_top1"], m["latency_ms"])
                        for m in saved["members"]]
        self.say(f"predictor: NSGA-II over {self.settings.candidates} networks scored by the "
                 f"predictor (population {self.settings.population_size})")
        front, stats = predictor_front(predictor, self.table.predict, settings,
                                       population_size=self.settings.population_size,
                                       candidates=self.settings.candidates)
        members = [{"spec": to_string(c.spec), "predicted_top1": c.predicted_top1,
                    "latency_ms": c.latency_ms} for c in front]
        write_text_atomic(path, json.dumps({"key": key, **stats, "members": members}, indent=1),
                          what="the predicted front")
        self.say(f"predictor: {stats['candidates']} candidates ({stats['distinct_networks']} "
                 f"distinct networks) in {stats['seconds']:.1f} s; {len(front)} on the predicted front")
        return front

    def rescore(self, study: optuna.Study, front: list[Candidate]) -> None:
        """Step 5: at most ``trials`` members of the predicted front scored by the supernet."""
        count = self.config.trials
        # pareto: spread over latency and scored coarse to fine (both ends, the middle, ...);
        # mnasnet: the best predicted rewards first.
        chosen = coarse_to_fine(spread(front, count)) if self.config.mode == "pareto" else front[:count]
        known = self._known(study)
        todo = [c for c in chosen if to_string(c.spec) not in known]
        self.say(f"predictor: re-scoring {len(todo)} of the front's {len(front)} networks with the "
                 f"supernet ({len(chosen) - len(todo)} scored before; trials={count} at most)")
        for number, candidate in enumerate(todo, start=1):
            started = time.perf_counter()
            result = self.evaluator.evaluate(candidate.spec)
            seconds = time.perf_counter() - started
            self._add(study, candidate.spec, float(result.top1), seconds,
                      {SOURCE_ATTR: "front", PREDICTED_ATTR: candidate.predicted_top1})
            self.after_trial(study)
            self.say(f"predictor: re-scored {number}/{len(todo)}: supernet top-1 "
                     f"{100 * result.top1:.2f}% (predicted {100 * candidate.predicted_top1:.2f}%), "
                     f"{candidate.latency_ms:.3f} ms")

    def run(self, study: optuna.Study) -> None:
        """Steps 2 to 5 (the supernet, step 1, is the evaluator's)."""
        scores = self.collect(study)
        self.after_trial(study)
        predictor = self.fit(scores)
        self.rescore(study, self.search(predictor))


__all__ = ["PREDICTED_ATTR", "PredictorSearch", "SOURCE_ATTR"]
