"""Which split the search ranks candidates on (``selection``), kept apart from the one it reports on.

A front chosen by its val figures and then reported on the same val is biased upward: of many
candidates, the ones whose val score was lucky are kept. With ``selection: holdout`` (the
default) everything the search ranks candidates on, the supernet's training and its scoring,
each proxy candidate's training and its scoring, uses the data with ``carve_val=True``: trained
on train minus a seeded, class-stratified holdout of ``data.val_fraction``, scored on that
holdout. It is the carve NetAdapt's ``selection: holdout`` uses
(:attr:`~nas.training.data_config.DataConfig.carve_val`); the data's own val is seen once,
after the search, when the Pareto members are reported on it (:mod:`nas.search.report`).
``selection: val`` ranks on val itself.

Synthetic data has no real val (both splits are generated images): as in NetAdapt it is not
carved, and the run says so.
"""

from __future__ import annotations

import dataclasses

from nas.errors import NASError
from nas.training.data_config import DataConfig

SELECTIONS = ("holdout", "val")


class SelectionError(NASError, ValueError):
    """The data cannot give the selection split asked for (the message says which setting)."""


def carves(data_cfg: DataConfig, selection: str) -> bool:
    """Whether ``selection`` ranks on a holdout carved from ``data_cfg``'s train split."""
    return selection == "holdout" and data_cfg.name != "synthetic"


def selection_data(data_cfg: DataConfig, selection: str) -> DataConfig:
    """The data the search trains and ranks candidates on: its val split is the selection split.

    ``holdout``: ``data_cfg`` with ``carve_val=True`` (train minus the holdout, the holdout);
    ``val`` and synthetic data: ``data_cfg`` itself.
    """
    if not carves(data_cfg, selection):
        return data_cfg
    if data_cfg.stream:
        raise SelectionError(
            "selection=holdout carves a holdout from train, which streamed shards "
            "(data.stream=true) cannot give: set data.stream=false (decoded once) or selection=val")
    return dataclasses.replace(data_cfg, carve_val=True)


def selection_split(data_cfg: DataConfig, selection: str) -> str:
    """The split candidates are ranked on, as the outputs name it: ``holdout`` or ``val``."""
    return "holdout" if carves(data_cfg, selection) else "val"


def selection_note(data_cfg: DataConfig, selection: str) -> str:
    """One line for the run's log: what candidates are trained and ranked on, and why."""
    if data_cfg.name == "synthetic":
        return (f"selection={selection}: data=synthetic has no real val split (both splits are "
                "generated images), so nothing is carved: candidates are ranked on its generated "
                "val, and val_accuracy repeats that figure")
    if selection == "val":
        return ("selection=val: candidates are ranked on the data's val split, the split they are "
                "reported on too (the front's val figures are biased upward by the selection)")
    subset = f" ({data_cfg.val_samples} of its images, seeded)" if data_cfg.val_samples else ""
    line = (f"selection=holdout: candidates are trained on train minus a seeded, class-stratified "
            f"{data_cfg.val_fraction:.0%} holdout and ranked on that holdout{subset}; the val split "
            "is scored only after the search, for the Pareto members (pareto.csv val_accuracy)")
    if data_cfg.carve_val:
        line += ("; note: data.carve_val=true makes the data's val itself that holdout, so the "
                 "report split is the selection split")
    return line


__all__ = ["SELECTIONS", "SelectionError", "carves", "selection_data", "selection_note",
           "selection_split"]
