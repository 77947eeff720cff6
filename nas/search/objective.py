"""The platform-aware search: an Optuna study over accuracy and lookup-table latency.

Follows the paper's Sec. 4.1 (MnasNet-style platform-aware NAS) with two modes:

* ``pareto``: two objectives, top-1 (maximise) and latency in ms (minimise), with an
  optional latency budget as a constraint (``trial.set_constraint``) that the samplers
  respect;
* ``mnasnet``: one objective, the MnasNet reward ``ACC x (LAT / TAR)^w`` with w = -0.07
  (Large) or -0.15 (Small).

The canonical network of the space is enqueued as trial 0, so the found front is always
compared with it. Trials that raise or return a non-finite accuracy are recorded as failed
with their reason and the study goes on.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.arch.codecs import to_string
from nas.arch.spec import NetworkSpec
from nas.errors import NASError
from nas.arch.space import SearchSpace
from nas.training.evaluator import Evaluator

SAMPLERS = ("tpe", "nsga2", "nsga3", "random")
MODES = ("pareto", "mnasnet")
# MnasNet's exponent: -0.07 for Large (MnasNet, paper Sec. 4.1), -0.15 for Small (Sec. 4.2).
DEFAULT_REWARD_EXPONENT = {"mobilenetv3_large": -0.07, "mobilenetv3_small": -0.15}

LatencyFn = Callable[[NetworkSpec], float]


class SearchConfigError(NASError, ValueError):
    """A search setting is invalid (the message names the field and the allowed values)."""


@dataclass(frozen=True)
class StudySettings:
    """What defines the study (everything else is about how it is run)."""

    mode: Literal["pareto", "mnasnet"] = "pareto"
    sampler: str = "tpe"
    seed: int = 0
    budget_ms: float | None = None
    target_ms: float | None = None
    reward_exponent: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SearchConfigError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.sampler not in SAMPLERS:
            raise SearchConfigError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise SearchConfigError(f"budget_ms must be > 0 or null, got {self.budget_ms}")
        if self.mode == "mnasnet" and not (self.target_ms and self.target_ms > 0):
            raise SearchConfigError("mode 'mnasnet' needs target_ms > 0 (the reward's TAR)")

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.mode == "pareto" else ["maximize"]


def make_sampler(settings: StudySettings) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded; constraints come from ``trial.set_constraint``."""
    seed = settings.seed
    if settings.sampler == "tpe":
        # group=True: the depth choices make the space conditional (define-by-run), and
        # grouped multivariate TPE models the blocks that co-occur together.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if settings.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def mnasnet_reward(accuracy: float, latency_ms: float, target_ms: float, w: float) -> float:
    """MnasNet's reward ACC(m) x [LAT(m) / TAR]^w (MnasNet Eq. 2, reused by the paper, Sec. 4.1)."""
    return accuracy * (latency_ms / target_ms) ** w


class Objective:
    """Scores one trial: spec from the space, latency from the table, accuracy from the evaluator."""

    def __init__(
        self,
        *,
        space: SearchSpace,
        evaluator: Evaluator,
        latency: LatencyFn,
        settings: StudySettings,
        cost: Callable[[NetworkSpec], tuple[int, int]] | None = None,
    ) -> None:
        self.space = space
        self.evaluator = evaluator
        self.latency = latency
        self.settings = settings
        self.cost = cost
        self.reward_exponent = settings.reward_exponent
        if self.reward_exponent is None:
            self.reward_exponent = DEFAULT_REWARD_EXPONENT.get(space.name, -0.07)
        # Which trial already scored this network (its result is reused); the study runner
        # replaces it with one that also waits for a network being scored by another worker.
        self.find_original: Callable[[optuna.Trial, str], FrozenTrial | None] = (
            lambda trial, spec: evaluated_trial(trial.study, spec))

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        started = time.perf_counter()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            spec = self.space.suggest(trial)
            trial.set_user_attr("spec", to_string(spec))
            latency_ms = float(self.latency(spec))
            trial.set_user_attr("latency_ms", latency_ms)
            if self.settings.budget_ms is not None:
                # Feasible when <= 0 (Optuna's convention); samplers prefer feasible trials.
                trial.set_constraint("latency_budget", latency_ms - self.settings.budget_ms)
            original = self.find_original(trial, to_string(spec))
            if original is not None:
                # A repeat of a network the study has already scored (a resumed sampler or
                # another worker proposed it): answered with that trial's result, costs no
                # evaluation and does not count towards the budget.
                return self._repeat(trial, original)
            if self.cost is not None:
                madds, params = self.cost(spec)
                trial.set_user_attr("madds", madds)
                trial.set_user_attr("params", params)
            result = self.evaluator.evaluate(spec)
            accuracy = float(result.top1)
            if not math.isfinite(accuracy) or not math.isfinite(latency_ms):
                raise FloatingPointError(
                    f"non-finite result: accuracy {accuracy}, latency {latency_ms} ms"
                )
            trial.set_user_attr("accuracy", accuracy)
            if result.top5 is not None:
                trial.set_user_attr("top5", float(result.top5))
            trial.set_user_attr("eval_details", _jsonable(result.details))
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            raise
        except Exception as err:  # recorded on the trial, then Optuna marks it FAIL
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            trial.set_user_attr("fail_traceback", traceback.format_exc()[-2000:])
            raise
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - started)
        if self.settings.mode == "pareto":
            return accuracy, latency_ms
        assert self.settings.target_ms is not None
        reward = mnasnet_reward(accuracy, latency_ms, self.settings.target_ms, self.reward_exponent)
        trial.set_user_attr("reward", reward)
        return reward


    @staticmethod
    def _repeat(trial: optuna.Trial, original: FrozenTrial) -> float | tuple[float, float]:
        for key in ("accuracy", "top5", "madds", "params", "reward"):
            if key in original.user_attrs:
                trial.set_user_attr(key, original.user_attrs[key])
        trial.set_user_attr("duplicate_of", original.number)
        values = original.values
        return values[0] if len(values) == 1 else (values[0], values[1])


def evaluated_trial(study: optuna.Study, spec: str) -> FrozenTrial | None:
    """The first complete, non-repeat trial of ``study`` that scored the network ``spec``."""
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.user_attrs.get("spec") == spec and "duplicate_of" not in other.user_attrs:
            return other
    return None


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    """Keep what a storage can hold (numbers, strings, lists, dicts)."""
    out: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value):
            out[key] = list(value)
        elif isinstance(value, dict):
            out[key] = _jsonable(value)
        else:
            out[key] = str(value)
    return out


def enqueue_canonical(study: optuna.Study, space: SearchSpace) -> bool:
    """Enqueue the space's canonical network once; returns whether it was enqueued now."""
    params = space.params_of(space.canonical())
    for trial in study.get_trials(deepcopy=False):
        if trial.params == params or trial.system_attrs.get("fixed_params") == params:
            return False
    study.enqueue_trial(params, user_attrs={"canonical": True})
    return True


def retried_number(trial: FrozenTrial) -> int | None:
    """The failed trial that ``trial`` retries, when Optuna's heartbeat callback enqueued it."""
    with warnings.catch_warnings():  # experimental in Optuna since 2.8, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def fail_reason(trial: FrozenTrial, study_attrs: dict[str, Any]) -> str | None:
    """Why ``trial`` failed: its own record, or the one a recovering worker left on the study.

    Optuna has no public call that annotates another worker's trial, so a worker that finds
    a dead one records the reason as the study attribute ``fail_reason:<number>``
    (``study_attrs`` is ``study.user_attrs``, read once by the caller).
    """
    return trial.user_attrs.get("fail_reason") or study_attrs.get(f"fail_reason:{trial.number}")


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete networks, each counted once.

    Failed, killed and interrupted trials do not count (they are retried), nor do repeats.
    """
    specs = set()
    unnamed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "duplicate_of" in t.user_attrs:
            continue
        if "spec" in t.user_attrs:
            specs.add(t.user_attrs["spec"])
        else:
            unnamed += 1
    return len(specs) + unnamed


def feasible(trial: FrozenTrial) -> bool:
    """Whether ``trial`` meets its constraints (Optuna's convention: every value <= 0)."""
    return all(value <= 0 for value in trial.constraints.values())


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated feasible trials, repeats left out (``mnasnet``: the best feasible)."""
    if len(study.directions) == 1:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if feasible(t) and "duplicate_of" not in t.user_attrs]
        return [max(complete, key=lambda t: t.value)] if complete else []
    return [t for t in study.best_trials if "duplicate_of" not in t.user_attrs]
