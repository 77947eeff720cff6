"""Short-term fine-tuning and scoring of proposals, and the long-term final training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from nas.models.bn import recalibrate_bn
from nas.config import check_choice
from nas.netadapt.config import NetAdaptError, SELECTIONS
from nas.training.data import Loaders, make_loaders
from nas.training.data_config import DataConfig
from nas.training.scoring import evaluate_model
from nas.training.train import train
from nas.training.train_config import TrainConfig, resolve_device


# ---------------------------------------------------------------------------- training
class FineTuner:
    """Short-term and long-term fine-tuning and scoring, on top of :func:`nas.training.train.train`.

    Args:
        data_cfg: the data; its validation split scores the final network.
        short_term: the short-term fine-tune (``steps`` is NetAdapt's ``T``); its
            ``bn_recalibration_batches`` also apply to scoring the start network.
        long_term: the long-term fine-tune of the result (None: none).
        selection: ``"holdout"`` (score proposals on a holdout carved from train) or
            ``"val"`` (on the validation split).
    """

    def __init__(self, data_cfg: DataConfig, short_term: TrainConfig, long_term: TrainConfig | None, *,
                 selection: str = "holdout") -> None:
        check_choice("", "selection", selection, SELECTIONS, error=NetAdaptError)
        if short_term.steps is None:
            raise NetAdaptError("short_term needs 'steps' (NetAdapt's T)")
        self.data_cfg = data_cfg
        self.short_term = dataclasses.replace(short_term, checkpoint_dir=None, eval_every=0,
                                              progress=False)
        self.long_term = long_term
        self.selection = selection
        carve = selection == "holdout" and data_cfg.name != "synthetic"
        # The data proposals are trained and scored on: (train minus the holdout, holdout).
        self.select_cfg = dataclasses.replace(data_cfg, carve_val=True) if carve else data_cfg
        self.device = resolve_device(short_term.device)
        self._final: Loaders | None = None
        self._select: dict[int, Loaders] = {}

    # ------------------------------------------------------------------ loaders
    def final_loaders(self) -> Loaders:
        if self._final is None:
            self._final = make_loaders(self.data_cfg, seed=self.short_term.seed)
        return self._final

    def select_loaders(self, seed: int) -> Loaders:
        """Loaders of the selection data whose shuffling/augmentation is fixed by ``seed``."""
        if seed not in self._select:
            self._select = {seed: make_loaders(self.select_cfg, seed=seed)}  # keep one
        return self._select[seed]

    @property
    def num_classes(self) -> int:
        return self.final_loaders().num_classes

    # ------------------------------------------------------------------ scoring
    def selection_top1(self, model: nn.Module, seed: int) -> float:
        """Top-1 on the selection split, after BN recalibration as in the short-term runs."""
        loaders = self.select_loaders(seed)
        model.to(self.device)
        batches = self.short_term.bn_recalibration_batches
        if batches:
            sampler = loaders.train.sampler
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(0)  # a fixed set of batches: the score is repeatable
            recalibrate_bn(model, loaders.train, batches, self.device)
        return evaluate_model(model, loaders.val, self.device)[0]

    def final_top1(self, model: nn.Module) -> float:
        """Top-1 on the validation split (the figure to report)."""
        model.to(self.device)
        return evaluate_model(model, self.final_loaders().val, self.device)[0]

    # ------------------------------------------------------------------ training
    def short(self, model: nn.Module, seed: int) -> float:
        """Fine-tune ``model`` in place for ``T`` steps; return its selection top-1.

        :func:`nas.training.train.train` recalibrates BatchNorm before it scores
        (``bn_recalibration_batches``): MobileNetV3's BN momentum of 0.01 would otherwise
        keep the pre-pruning statistics through a short fine-tune.
        """
        cfg = dataclasses.replace(self.short_term, seed=seed)
        return train(model, self.select_cfg, cfg, loaders=self.select_loaders(seed)).top1

    def long(self, model: nn.Module, checkpoint_dir: Path | None) -> tuple[nn.Module, int]:
        """Long-term fine-tune (resumable from ``checkpoint_dir``); ``(model, steps)``."""
        if self.long_term is None:
            return model, 0
        where = str(checkpoint_dir) if checkpoint_dir is not None else None
        cfg = dataclasses.replace(self.long_term, checkpoint_dir=where)
        result = train(model, self.select_cfg, cfg, resume=checkpoint_dir is not None)
        return result.model, result.steps

    def settings(self) -> dict[str, Any]:
        return {"data": self.data_cfg.settings(), "short_term": self.short_term.settings(),
                "long_term": self.long_term.settings() if self.long_term else None,
                "selection": self.selection}
