"""Score candidates with a trained supernet: the :class:`~nas.training.evaluator.Evaluator` of ``evaluator=supernet``.

A candidate is scored the way Once-for-All and BigNAS score sub-networks: activate its
spec in the supernet, recalibrate BatchNorm on a few training batches (the running
statistics accumulated during supernet training belong to no particular sub-network;
OFA Sec. 3.3, BigNAS Sec. 3.3), then measure top-1 on the validation split. No weights
change, so one supernet scores thousands of candidates at the cost of a few forward passes
each.

The supernet is trained once per search: either a checkpoint written by ``nas-supernet
train`` is loaded (``evaluator.checkpoint``), or :func:`supernet_evaluator_from_config`
trains one before the first trial into ``<run folder>/supernet/supernet.pt``. That training
is resumable (a resumed search continues or reuses it) and is done by one worker process
while the others wait on a file lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from nas.arch.codecs import to_string
from nas.arch.spec import NetworkSpec
from nas.config import ConfigError, check_int, config_from_dict
from nas.models.bn import recalibrate_bn
from nas.arch.space import SearchSpace, space_from_dict
from nas.supernet.network import Supernet
from nas.supernet.train import (
    SupernetCheckpointError,
    SupernetTrainConfig,
    load_supernet,
    new_supernet,
    space_from_plain,
    train_supernet,
)
from nas.training.data import Loaders, make_loaders
from nas.training.data_config import DataConfig
from nas.training.evaluator import EvalResult
from nas.training.scoring import evaluate_model
from nas.training.train_config import resolve_device

log = logging.getLogger(__name__)

RUN_SUBDIR = "supernet"


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SupernetEvaluatorConfig:
    """The ``evaluator`` section of the search config when ``kind: supernet``.

    Attributes:
        checkpoint: a ``nas-supernet train`` checkpoint; None trains one into the run folder.
        bn_batches: training batches for BatchNorm recalibration per candidate.
        cache_batches: keep the calibration and validation batches in memory (decode and
            resize the images once, not once per candidate).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        channels_last: score channels-last images (oneDNN runs them faster on CPU).
        train: :class:`~nas.supernet.train.SupernetTrainConfig` for on-the-fly training.
    """

    checkpoint: str | None = None
    bn_batches: int = 8
    cache_batches: bool = True
    device: str = "auto"
    channels_last: bool = True
    train: SupernetTrainConfig = field(default_factory=SupernetTrainConfig)

    def __post_init__(self) -> None:
        owner = "evaluator"
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, Path)):
            raise ConfigError(f"{owner}.checkpoint must be a path or null, got {self.checkpoint!r}")
        check_int(owner, "bn_batches", self.bn_batches, minimum=1)
        for flag in ("cache_batches", "channels_last"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{owner}.{flag} must be true or false, got {getattr(self, flag)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SupernetEvaluatorConfig:
        """From the YAML mapping (``kind`` must be ``supernet`` when present)."""
        data = dict(data or {})
        kind = data.pop("kind", "supernet")
        if kind != "supernet":
            raise ConfigError(f"evaluator.kind must be 'supernet' here, got {kind!r}")
        train = data.get("train")
        if not isinstance(train, SupernetTrainConfig):
            data["train"] = SupernetTrainConfig.from_dict(train)
        return config_from_dict(cls, data)  # unknown keys refused with the allowed ones


# ---------------------------------------------------------------------------- evaluator
class SupernetEvaluator:
    """Scores specs by their sub-network of a trained supernet (see the module docstring).

    Args:
        supernet: the trained supernet.
        data_cfg: the data (the validation split is scored, training batches calibrate BN).
        bn_batches: training batches for BatchNorm recalibration.
        device: where to run (``auto``: CUDA when present).
        loaders: prebuilt loaders for ``data_cfg``.
        cache_batches: keep calibration and validation batches in memory.
        seed: the loader seed (fixes which training batches calibrate BN: the same for
            every candidate, so scores are comparable).
        channels_last: feed channels-last images (faster oneDNN convolutions on CPU).
        provenance: facts recorded in every result's ``details`` (checkpoint, steps, ...).
    """

    def __init__(self, supernet: Supernet, data_cfg: DataConfig, *, bn_batches: int = 8,
                 device: str = "auto",
                 loaders: Loaders | None = None, cache_batches: bool = True, seed: int = 0,
                 channels_last: bool = True, provenance: dict[str, Any] | None = None) -> None:
        check_int("SupernetEvaluator", "bn_batches", bn_batches, minimum=1)
        self.device = resolve_device(device)
        self.supernet = supernet.to(self.device).eval()
        self.data_cfg = data_cfg
        self.bn_batches = bn_batches
        self.loaders = loaders or make_loaders(data_cfg, seed=seed,
                                               pin_memory=self.device.type == "cuda")
        if self.loaders.num_classes != supernet.num_classes:
            raise ConfigError(f"the supernet has {supernet.num_classes} classes but the data has "
                              f"{self.loaders.num_classes} (DataConfig.num_classes / class folders)")
        self.cache_batches = cache_batches
        self.channels_last = channels_last
        self.seed = seed
        self.provenance = dict(provenance or {})
        self._calibration: list[Any] | None = None
        self._validation: list[Any] | None = None

    # ------------------------------------------------------------------ data
    def _prepare(self, batches: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, target in batches:
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, target.to(self.device, non_blocking=True)

    def _calibration_source(self) -> Iterable[Any]:
        sampler = self.loaders.train.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(0)  # the same images for every candidate
        return self._prepare(islice(self.loaders.train, self.bn_batches))

    def _validation_source(self) -> Iterable[Any]:
        # The whole split: its batches come in class order, so a cap on batches would score a
        # few classes only; a smaller, seeded subset is DataConfig.val_samples.
        return self._prepare(self.loaders.val)

    def calibration_batches(self) -> Iterable[Any]:
        """The BatchNorm recalibration batches (cached after the first call when enabled)."""
        if not self.cache_batches:
            return self._calibration_source()
        if self._calibration is None:
            self._calibration = list(self._calibration_source())
        return self._calibration

    def validation_batches(self) -> Iterable[Any]:
        """The scored validation batches (cached after the first call when enabled)."""
        if not self.cache_batches:
            return self._validation_source()
        if self._validation is None:
            self._validation = list(self._validation_source())
        return self._validation

    def scoring_on(self, data_cfg: DataConfig) -> SupernetEvaluator:
        """The same supernet and BatchNorm-recalibration batches, scoring ``data_cfg``'s val split.

        A search that ranked candidates on a holdout reports its Pareto members on the data's
        real val this way: only the scored images change, so the two figures differ by the
        split alone.
        """
        val = make_loaders(data_cfg, seed=self.seed, pin_memory=self.device.type == "cuda").val
        other = SupernetEvaluator(self.supernet, data_cfg, bn_batches=self.bn_batches,
                                  device=str(self.device), loaders=self.loaders._replace(val=val),
                                  cache_batches=self.cache_batches, seed=self.seed,
                                  channels_last=self.channels_last, provenance=self.provenance)
        other._calibration = self._calibration
        return other

    # ------------------------------------------------------------------ scoring
    def activate(self, spec: NetworkSpec) -> None:
        """Activate ``spec`` and recalibrate BatchNorm for it (what :meth:`evaluate` scores)."""
        self.supernet.set_active(spec)
        recalibrate_bn(self.supernet, self.calibration_batches(), self.bn_batches, self.device)

    def evaluate(self, spec: NetworkSpec) -> EvalResult:
        """Top-1/top-5 of ``spec``'s sub-network after BN recalibration."""
        started = time.perf_counter()
        self.activate(spec)
        top1, top5, loss = evaluate_model(self.supernet, self.validation_batches(), self.device)
        details = {
            "evaluator": "supernet", "arch": to_string(spec), "val_loss": loss,
            "bn_batches": self.bn_batches, "val_images": self.data_cfg.val_samples or "all",
            "resolution": self.data_cfg.resolution, "seconds": time.perf_counter() - started,
            **self.provenance,
        }
        return EvalResult(top1=top1, top5=top5, details=details)


# ---------------------------------------------------------------------------- from the config
@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (parallel search workers share one supernet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def space_of_config(cfg: dict[str, Any]) -> SearchSpace:
    """The search space of a search config's plain form (its ``space`` document)."""
    space = cfg.get("space")
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, dict):
        raise ConfigError("the search config needs a 'space' mapping (a search space document) "
                          "for evaluator.kind=supernet")
    return space_from_dict(space, f"space '{space.get('name', '?')}'")


def _check_holdout_unseen(path: Path, saved: dict[str, Any], data_cfg: DataConfig,
                         selection: str | None) -> None:
    """Refuse a supernet that trained on the images a carved val split would score it on.

    A warning would not do: the holdout's scores of every candidate would be inflated by
    memorised images, and the ranking would favour the sub-networks that memorise best.
    """
    if not data_cfg.carve_val:
        return
    carve = ("carve_val", "val_fraction", "seed")  # these fix which images the holdout holds
    if all(saved.get(key) == getattr(data_cfg, key) for key in carve):
        return
    trained = ("the whole train split (data.carve_val=false)" if not saved.get("carve_val") else
               f"train minus another holdout (data.val_fraction={saved.get('val_fraction')}, "
               f"data.seed={saved.get('seed')})")
    scored = ("selection=holdout ranks candidates" if selection == "holdout"
              else "the search scores candidates")
    raise SupernetCheckpointError(
        f"evaluator.checkpoint: {path} was trained on {trained}, but {scored} on a holdout "
        f"carved from train (data.carve_val=true, val_fraction={data_cfg.val_fraction}, "
        f"seed={data_cfg.seed}) that it has seen; train one with `nas-supernet train ... --set "
        "data.carve_val=true` (or leave evaluator.checkpoint=null), or search with selection=val")


def _check_checkpoint(path: Path, record: dict[str, Any], space: SearchSpace,
                      data_cfg: DataConfig, selection: str | None = None) -> None:
    if not record["finished"]:
        raise SupernetCheckpointError(
            f"evaluator.checkpoint: {path} is an unfinished run (step {record['progress']['step']}); "
            "finish it with `nas-supernet train` (it resumes) or set evaluator.checkpoint=null")
    trained = space_from_plain(record["arch"]["space"])
    if trained != space:
        raise SupernetCheckpointError(
            f"evaluator.checkpoint: {path} was trained for space {trained.name!r}, which differs "
            f"from the search's space {space.name!r} (stages or choices); train one for this space")
    saved = dict(record["settings"]["data"])
    _check_holdout_unseen(path, saved, data_cfg, selection)
    now = data_cfg.settings()
    for settings in (saved, now):  # ../shared/x and /abs/shared/x are the same data
        if settings.get("root"):
            settings["root"] = str(Path(settings["root"]).resolve())
    differ = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if differ:
        log.warning("supernet checkpoint %s was trained on other data settings: %s", path,
                    ", ".join(f"{k}: checkpoint {a!r} vs search {b!r}" for k, (a, b) in differ.items()))


def search_training(ev_cfg: SupernetEvaluatorConfig, run_dir: Path) -> tuple[SupernetTrainConfig, Path]:
    """How a search without ``evaluator.checkpoint`` trains its supernet, and into which folder
    (``run_dir/supernet``): ``train.device`` 'auto' follows the evaluator's device."""
    train_device = ev_cfg.train.device if ev_cfg.train.device != "auto" else ev_cfg.device
    return dataclasses.replace(ev_cfg.train, device=train_device), Path(run_dir) / RUN_SUBDIR


def supernet_evaluator_from_config(cfg: dict[str, Any], data_cfg: DataConfig,
                                   run_dir: Path) -> SupernetEvaluator:
    """The search's supernet evaluator; trains the supernet first unless a checkpoint is given.

    Args:
        cfg: the whole (plain) search config: ``cfg["evaluator"]`` is the
            :class:`SupernetEvaluatorConfig` mapping, ``cfg["space"]`` the search space,
            ``cfg["selection"]`` (named in errors) the split candidates are ranked on.
        data_cfg: the data candidates are trained and ranked on (with ``carve_val`` when the
            search selects on a holdout: :func:`nas.search.selection.selection_data`).
        run_dir: the run folder; an on-the-fly supernet is trained into ``run_dir/supernet``
            (resumed, or reused when finished, by a resumed search).
    """
    ev_cfg = SupernetEvaluatorConfig.from_dict(cfg.get("evaluator"))
    space = space_of_config(cfg)
    device = resolve_device(ev_cfg.device)
    loaders = make_loaders(data_cfg, seed=ev_cfg.train.seed, pin_memory=device.type == "cuda")
    if ev_cfg.checkpoint:
        path = Path(ev_cfg.checkpoint)
        supernet, record = load_supernet(path)
        _check_checkpoint(path, record, space, data_cfg, cfg.get("selection"))
        steps = record["progress"]["step"]
    else:
        train_cfg, folder = search_training(ev_cfg, run_dir)
        with _file_lock(folder / "train.lock"):
            log.warning("no evaluator.checkpoint given: training a supernet for space %s on data %s%s%s "
                        "into %s first (resumable; pass evaluator.checkpoint=<supernet.pt> to reuse "
                        "one from `nas-supernet train`)", space.name, data_cfg.name,
                        f" ({data_cfg.root})" if data_cfg.root else "",
                        f" minus its {data_cfg.val_fraction:.0%} holdout" if data_cfg.carve_val else "",
                        folder)
            result = train_supernet(new_supernet(space, loaders.num_classes, train_cfg), data_cfg,
                                    train_cfg, checkpoint_dir=folder, resume=True, loaders=loaders)
        supernet, path, steps = result.supernet, folder / "supernet.pt", result.steps
        log.info("supernet ready: %d steps, %.0f s", result.steps, result.seconds)
    provenance = {"supernet_checkpoint": str(path), "supernet_steps": steps}
    return SupernetEvaluator(supernet, data_cfg, bn_batches=ev_cfg.bn_batches,
                             device=ev_cfg.device, loaders=loaders,
                             cache_batches=ev_cfg.cache_batches, seed=ev_cfg.train.seed,
                             channels_last=ev_cfg.channels_last, provenance=provenance)


__all__ = ["SupernetEvaluator", "SupernetEvaluatorConfig", "search_training", "space_of_config",
           "supernet_evaluator_from_config"]
