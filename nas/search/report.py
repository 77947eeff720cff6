"""The Pareto members on the data's val split, scored once the search is over.

A search with ``selection: holdout`` ranks candidates on a holdout carved from train
(:mod:`nas.search.selection`), so the val split is still unseen when it ends. Then
:func:`report_on_val` scores each Pareto member on val and keeps the figures on the study (the
``val_report`` study attribute: they survive a resume and every machine's outputs read them),
where :func:`nas.search.outputs.write_outputs` puts them in ``pareto.csv``'s ``val_accuracy``
column beside the selection ``accuracy``.

* ``evaluator=supernet`` and ``evaluator=predictor`` (whose Pareto members are supernet
  scores too): the same supernet weights and BatchNorm recalibration batches, with
  val's images scored instead of the holdout's (:meth:`SupernetEvaluator.scoring_on`). Where
  nothing was carved (``selection=val``, synthetic data) the selection figure is the val
  figure and is copied.
* ``evaluator=proxy``: the candidates' trained weights are not kept, so there is no val figure
  to give without training again; the column stays empty and the note says so (``nas-train``
  with the reference protocol gives one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from nas.arch.codecs import from_string
from nas.search.objective import pareto_trials
from nas.search.selection import carves, selection_data, selection_split
from nas.training.data_config import DataConfig

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    import pandas as pd

    from nas.search.config import SearchConfig
    from nas.supernet.evaluator import SupernetEvaluator

VAL_REPORT_ATTR = "val_report"


def val_report(study: optuna.Study) -> dict[str, Any]:
    """The study's val report: ``selection`` (split ranked on), ``figures`` (val top-1 by trial
    number, as strings: JSON keys) and ``note`` (how they were obtained); empty before one."""
    report = study.user_attrs.get(VAL_REPORT_ATTR)
    return dict(report) if isinstance(report, dict) else {}


def val_figures(study: optuna.Study) -> dict[int, float]:
    """Val top-1 by trial number, for the trials that have one."""
    return {int(number): float(top1) for number, top1 in val_report(study).get("figures", {}).items()}


def search_data(config: SearchConfig) -> DataConfig:
    """The data of the search's evaluator before any carve (a protocol's data replaces ``data``)."""
    protocol = config.evaluator.get("protocol") if config.evaluator.get("kind") == "proxy" else None
    if protocol:
        from nas.training.protocols import load_protocol

        return load_protocol(protocol).data
    return DataConfig.from_dict(config.data)


def _supernet_scorer(config: SearchConfig, run_dir: Path,
                     data_cfg: DataConfig) -> SupernetEvaluator | None:
    """The val scorer of a supernet search: its supernet, calibrated as during the search
    (None: this run folder holds no supernet)."""
    import torch

    from nas.supernet.evaluator import RUN_SUBDIR, supernet_evaluator_from_config

    # As a worker does: more intra-op threads than configured are slower on a shared CPU.
    torch.set_num_threads(config.threads)
    plain = config.to_dict()
    if plain["evaluator"].get("kind") == "predictor":  # its supernet gives the val figures
        from nas.search.predictor_search import supernet_section

        plain["evaluator"] = supernet_section(plain["evaluator"])
    if not plain["evaluator"].get("checkpoint"):
        # The supernet the search trained into its run folder, loaded (and checked) as a
        # checkpoint: finished, so nothing is trained again.
        trained = run_dir / RUN_SUBDIR / "supernet.pt"
        if not trained.is_file():  # this start ran no trial: another machine trained its own
            return None
        plain["evaluator"] = {**plain["evaluator"], "checkpoint": str(trained)}
    selecting = supernet_evaluator_from_config(plain, selection_data(data_cfg, config.selection), run_dir)
    return selecting.scoring_on(data_cfg)


def report_on_val(study: optuna.Study, config: SearchConfig, run_dir: Path,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """Give every Pareto member of ``study`` its val figure (when the evaluator allows one).

    Args:
        study: the finished study.
        config: the search's settings.
        run_dir: the run folder (the supernet the search trained is there).
        say: receives the one-line notes for the run's log.

    Returns the stored report (see :func:`val_report`).
    """
    data_cfg = search_data(config)
    front = pareto_trials(study)
    report = val_report(study)
    figures: dict[str, float] = dict(report.get("figures", {}))
    split = selection_split(data_cfg, config.selection)
    kind = config.evaluator.get("kind")
    if kind not in ("supernet", "predictor"):
        note = ("val_accuracy is empty: the proxy evaluator keeps no trained weights, so the Pareto "
                "members' val figures need a reference training (e.g. nas-train <run>/pareto/trial<N>.yaml "
                "--protocol reference)")
    elif not carves(data_cfg, config.selection) or data_cfg.carve_val:
        # Nothing was held out from val (or val is itself the holdout): the selection figure
        # is the val figure, obtained by the same procedure.
        figures.update({str(t.number): float(t.user_attrs["accuracy"]) for t in front})
        note = (f"val_accuracy repeats the selection accuracy (ranked on {split}: "
                f"{'synthetic data is not carved' if data_cfg.name == 'synthetic' else 'selection=val'}); "
                "it is biased upward by the selection")
    else:
        missing = [t for t in front if str(t.number) not in figures]
        evaluator: SupernetEvaluator | None = None
        if missing:
            say(f"scoring the {len(missing)} Pareto member(s) without a val figure on val "
                "(the same supernet and BatchNorm recalibration as on the holdout)")
            evaluator = _supernet_scorer(config, run_dir, data_cfg)
            for trial in missing if evaluator is not None else []:
                spec = from_string(trial.user_attrs["spec"])
                figures[str(trial.number)] = float(evaluator.evaluate(spec).top1)
        note = ("ranked on a holdout carved from train; val_accuracy: the same supernet and "
                "BatchNorm recalibration, scored on val")
        if missing and evaluator is None:
            note += (f"; no supernet in {run_dir} to score trial(s) "
                     f"{', '.join(str(t.number) for t in missing)} with: their val_accuracy is empty")
    report = {"selection": split, "figures": figures, "note": note}
    # Re-read before writing: another machine on the same study may have stored figures too.
    merged = {**val_report(study).get("figures", {}), **figures}
    study.set_user_attr(VAL_REPORT_ATTR, {**report, "figures": merged})
    say(note)
    return {**report, "figures": merged}


def with_val_column(frame: pd.DataFrame, study: optuna.Study) -> pd.DataFrame:
    """``frame`` (trial rows) with ``val_accuracy`` beside ``accuracy`` (empty where none)."""
    figures = val_figures(study)
    out = frame.copy()
    column = out["number"].map(lambda n: figures.get(int(n))) if len(out) else []
    out.insert(list(out.columns).index("accuracy") + 1, "val_accuracy", column)
    return out


__all__ = ["VAL_REPORT_ATTR", "report_on_val", "search_data", "val_figures", "val_report",
           "with_val_column"]
