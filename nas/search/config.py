"""What a search run is configured by (:class:`SearchConfig`), checked field by field.

The fields mirror ``nas/conf/search.yaml`` (what ``nas-search`` composes with Hydra): the
space, data and evaluator sections as mappings (each read by its own config class when the
run builds it), the study's settings, the latency policy, and how the run is done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.config import Config, ConfigError, check_choice, check_int, check_number
from nas.cost.policy import LatencyPolicy
from nas.search.objective import StudySettings
from nas.search.selection import SELECTIONS


def _mapping(owner: str, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{owner}.{name} must be a mapping (a config group), got {value!r}")
    return value


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class SearchConfig(Config):
    """One search run's settings.

    Attributes:
        space: the search space as a mapping (``nas/conf/space/*.yaml`` or a custom space).
        data: the data section (:class:`nas.training.data_config.DataConfig`).
        evaluator: the evaluator section (``kind: proxy | supernet | predictor`` and its
            settings).
        mode, sampler, seed, budget_ms, target_ms, reward_exponent: the study's settings
            (:class:`nas.search.objective.StudySettings`).
        selection: the split candidates are ranked on: ``holdout`` (carved from train; the
            data's val is only reported on, after the search) or ``val``
            (:mod:`nas.search.selection`).
        latency: the latency policy (:class:`nas.cost.policy.LatencyPolicy`).
        trials: complete trials in the study, over all workers and starts (with
            ``evaluator=predictor``: the most members of the predicted front the supernet
            re-scores).
        storage: an RDB URL, or None for the journal file in the run folder.
        study_name: the study's name in the storage.
        resume: continue the study (a missing one is an error; without it an existing one is).
        n_workers: worker processes on this machine.
        threads: torch intra-op threads per worker.
        heartbeat_interval: seconds between an RDB worker's heartbeats.
        profile_costs: record fvcore MAdds and parameters per trial.
    """

    space: dict[str, Any]
    data: dict[str, Any] = field(default_factory=lambda: {"name": "synthetic"})
    evaluator: dict[str, Any] = field(default_factory=lambda: {"kind": "proxy"})
    mode: str = "pareto"
    sampler: str = "tpe"
    seed: int = 0
    budget_ms: float | None = None
    target_ms: float | None = None
    reward_exponent: float | None = None
    selection: str = "holdout"
    latency: LatencyPolicy = field(default_factory=LatencyPolicy)
    trials: int = 60
    storage: str | None = None
    study_name: str = "mobilenetv3_search"
    resume: bool = False
    n_workers: int = 1
    threads: int = 1
    heartbeat_interval: int = 30
    profile_costs: bool = True

    def __post_init__(self) -> None:
        owner = "search"
        for name in ("space", "data", "evaluator"):
            _mapping(owner, name, getattr(self, name))
        if isinstance(self.latency, dict):
            object.__setattr__(self, "latency", LatencyPolicy.from_dict(self.latency))
        if not isinstance(self.latency, LatencyPolicy):
            raise ConfigError(f"{owner}.latency must be a mapping, got {self.latency!r}")
        check_int(owner, "trials", self.trials, minimum=1)
        check_int(owner, "n_workers", self.n_workers, minimum=1)
        check_int(owner, "threads", self.threads, minimum=1)
        check_int(owner, "seed", self.seed, minimum=0)
        check_int(owner, "heartbeat_interval", self.heartbeat_interval, minimum=1)
        for name in ("budget_ms", "target_ms", "reward_exponent"):
            low = 0.0 if name != "reward_exponent" else -float("inf")
            check_number(owner, name, getattr(self, name), low=low, low_open=True, optional=True)
        check_choice(owner, "selection", self.selection, SELECTIONS)
        for name in ("resume", "profile_costs"):
            _flag(f"{owner}.{name}", getattr(self, name))
        for name in ("study_name", "mode", "sampler"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{owner}.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.storage is not None and (not isinstance(self.storage, str) or not self.storage):
            raise ConfigError(f"{owner}.storage must be a database URL or null, got {self.storage!r}")
        self.study_settings  # mode, sampler and budgets are checked by StudySettings

    @property
    def study_settings(self) -> StudySettings:
        return StudySettings(mode=self.mode, sampler=self.sampler, seed=self.seed,  # type: ignore[arg-type]
                             budget_ms=self.budget_ms, target_ms=self.target_ms,
                             reward_exponent=self.reward_exponent)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["latency"] = self.latency.to_dict()
        return out

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` (a mapping for ``latency`` is read as a policy)."""
        return dataclasses.replace(self, **changes)

    def data_root(self) -> Path | None:
        """The data folder this run reads (None: synthetic data or a protocol's own)."""
        if self.evaluator.get("protocol") or self.data.get("name") == "synthetic" or not self.data.get("root"):
            return None
        return Path(str(self.data["root"])).expanduser()


__all__ = ["SearchConfig"]
