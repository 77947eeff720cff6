"""``ProxyTrainingEvaluator``: score a spec by training it briefly (MnasNet's proxy task).

MnasNet trained each sampled model for 5 epochs on a proxy dataset; here the budget, data
and optimiser are a :class:`~nas.training.data_config.DataConfig` plus
:class:`~nas.training.train_config.TrainConfig`.
Results are cached by ``to_string(spec)`` and a hash of the settings that determine them,
in memory and, when ``cache_path`` is given, in a JSON-lines file that is appended after
every training, so a resumed search (or another process) does not retrain a spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from nas._io import append_line
from nas.arch.codecs import to_string
from nas.arch.spec import NetworkSpec
from nas.training.data import Loaders, make_loaders
from nas.training.data_config import DataConfig
from nas.training.evaluator import EvalResult
from nas.training.train import run_settings, train
from nas.training.train_config import TrainConfig, resolve_device


def settings_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able settings mapping."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ProxyTrainingEvaluator:
    """Train each spec with fixed proxy settings; report validation top-1/top-5.

    Implements :class:`nas.training.evaluator.Evaluator`. ``details`` of each result hold
    ``arch`` (the one-line spec), ``settings`` (data and training settings),
    ``settings_hash``, ``loss``, ``steps``, ``seconds``, ``images_per_second``,
    ``history`` and ``device``.

    Attributes:
        trainings: how many specs this instance actually trained (cache misses).
        cache_hits: how many evaluations were answered from the cache.
    """

    def __init__(self, data_cfg: DataConfig, train_cfg: TrainConfig, *,
                 cache_path: str | Path | None = None) -> None:
        """
        Args:
            data_cfg: the proxy dataset.
            train_cfg: the proxy training budget; its ``checkpoint_dir``, when set, gets one
                sub-folder per spec so an interrupted training resumes.
            cache_path: a ``.jsonl`` file of results to read at start and append to.
        """
        self.data_cfg = data_cfg
        self.train_cfg = train_cfg
        self.settings = run_settings(data_cfg, train_cfg)
        self.settings_hash = settings_hash(self.settings)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.trainings = 0
        self.cache_hits = 0
        self._cache: dict[str, EvalResult] = {}
        self._loaders: Loaders | None = None
        if self.cache_path is not None:
            self._cache.update(self._read_cache(self.cache_path))

    def key(self, spec: NetworkSpec) -> str:
        """The cache key: the one-line spec and the settings hash."""
        return f"{to_string(spec)}#{self.settings_hash}"

    def cached(self, spec: NetworkSpec) -> EvalResult | None:
        """The cached result for ``spec`` under these settings, if any (no training)."""
        return self._cache.get(self.key(spec))

    def evaluate(self, spec: NetworkSpec) -> EvalResult:
        """Proxy-train ``spec`` (or answer from the cache) and return its accuracy."""
        key = self.key(spec)
        hit = self._cache.get(key)
        if hit is not None:
            self.cache_hits += 1
            return hit
        if self._loaders is None:
            # Built once: scanning an image folder for every spec would dominate small runs.
            device = resolve_device(self.train_cfg.device)
            self._loaders = make_loaders(self.data_cfg, seed=self.train_cfg.seed,
                                         pin_memory=device.type == "cuda")
        train_cfg = self.train_cfg
        if train_cfg.checkpoint_dir:
            sub = hashlib.sha256(key.encode()).hexdigest()[:16]
            train_cfg = dataclasses.replace(
                train_cfg, checkpoint_dir=str(Path(train_cfg.checkpoint_dir) / sub))
        outcome = train(spec, self.data_cfg, train_cfg, loaders=self._loaders,
                        resume=bool(train_cfg.checkpoint_dir))
        self.trainings += 1
        result = EvalResult(
            top1=outcome.top1,
            top5=outcome.top5,
            details={
                "arch": to_string(spec),
                "name": spec.name,
                "settings": self.settings,
                "settings_hash": self.settings_hash,
                "loss": outcome.loss,
                "steps": outcome.steps,
                "seconds": outcome.seconds,
                "images_per_second": outcome.images_per_second,
                "history": outcome.history,
                "device": str(next(outcome.model.parameters()).device),
            },
        )
        self._cache[key] = result
        if self.cache_path is not None:
            self._append(key, result)
        return result

    # ------------------------------------------------------------------ disk cache
    def _append(self, key: str, result: EvalResult) -> None:
        assert self.cache_path is not None
        line = json.dumps({"key": key, "top1": result.top1, "top5": result.top5,
                           "details": result.details}, default=str)
        append_line(self.cache_path, line, what="the proxy evaluator's result cache")

    @staticmethod
    def _read_cache(path: Path) -> dict[str, EvalResult]:
        """Results in ``path`` (all settings); a torn last line from a crash is skipped."""
        results: dict[str, EvalResult] = {}
        if not path.exists():
            return results
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                results[row["key"]] = EvalResult(top1=float(row["top1"]), top5=row["top5"],
                                                 details=row["details"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                warnings.warn(f"{path}:{number}: skipped an unreadable cache line ({err})",
                              stacklevel=3)
        return results


__all__ = ["ProxyTrainingEvaluator", "settings_hash"]
