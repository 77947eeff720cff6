"""A search run as a library object: the main job, whoever calls it.

:class:`SearchRun` does, in order: read the space; apply the latency policy once (choose,
load, extend and check the table: :func:`nas.cost.policy.resolve_table`); open or create the
study and refuse settings that differ from it (:mod:`nas.search.fingerprint`); retry what a
previous start left failed; run the workers (:mod:`nas.search.runner`), each rebuilding its
objective from the config and the table it is handed; write the outputs
(:mod:`nas.search.outputs`). ``nas-search`` composes a :class:`~nas.search.config.SearchConfig`
with Hydra and prints; :func:`nas.run_search` and the experiments build one in Python.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.storages import BaseStorage

from nas.arch.space import SearchSpace, space_from_dict
from nas.cost.policy import resolve_table
from nas.errors import NASError
from nas.search.config import SearchConfig
from nas.search.credentials import reveal
from nas.search.fingerprint import check_or_store, study_fingerprint
from nas.search.objective import Objective, StudySettings, counted_trials, enqueue_canonical, make_sampler
from nas.search.outputs import TrialReporter, write_outputs
from nas.search.report import report_on_val, search_data
from nas.search.recovery import recover_dead_workers, requeue_failed
from nas.search.runner import WorkerJob, load_or_create_study, run_parallel
from nas.search.selection import selection_data, selection_note, selection_split
from nas.search.storage import StorageSettings, open_storage

if TYPE_CHECKING:  # pragma: no cover
    from nas.arch.spec import NetworkSpec
    from nas.cost.lut import LatencyTable

log = logging.getLogger(__name__)


class SearchError(NASError, RuntimeError):
    """The run cannot start (bad config, missing data, ...); the message says why."""


class SearchInterrupted(NASError):
    """Ctrl-C stopped the run after its outputs were written (``study`` holds what finished)."""

    def __init__(self, study: optuna.Study) -> None:
        super().__init__("interrupted; the outputs of the finished trials are written")
        self.study = study


@dataclass(frozen=True)
class WorkerArgs:
    """What a worker process needs to rebuild the objective (picklable: sent, not saved)."""

    config: SearchConfig
    run_dir: str
    table: LatencyTable
    space_origin: str


def build_evaluator(config: SearchConfig, run_dir: Path):
    """The evaluator named by ``evaluator.kind`` (proxy training or the supernet; for
    ``predictor``, the supernet whose scores the predictor is fitted on and that re-scores its front).

    Both train and score on the selection data (:func:`nas.search.selection.selection_data`):
    with ``selection: holdout``, train minus a carved holdout, and that holdout.
    """
    from nas.training.data_config import DataConfig

    kind = config.evaluator.get("kind")
    data_cfg = DataConfig.from_dict(config.data)
    if kind == "proxy":
        from nas.training.proxy import ProxyTrainingEvaluator
        from nas.training.train_config import TrainConfig

        train_cfg = TrainConfig.from_dict(config.evaluator.get("train"))
        if config.evaluator.get("protocol"):
            from nas.training.protocols import load_protocol

            # A named protocol replaces the data group and the train section (device and
            # display settings stay the evaluator's).
            protocol = load_protocol(config.evaluator["protocol"], train={
                "device": train_cfg.device, "progress": train_cfg.progress})
            data_cfg, train_cfg = protocol.data, protocol.train
        cache = run_dir / "proxy_cache.jsonl" if config.evaluator.get("cache", True) else None
        return ProxyTrainingEvaluator(selection_data(data_cfg, config.selection), train_cfg,
                                      cache_path=cache)
    if kind in ("supernet", "predictor"):
        from nas.supernet.evaluator import supernet_evaluator_from_config

        plain = config.to_dict()
        if kind == "predictor":  # the predictor is fitted on this supernet's scores
            from nas.search.predictor_search import supernet_section

            plain["evaluator"] = supernet_section(plain["evaluator"])
        return supernet_evaluator_from_config(plain, selection_data(data_cfg, config.selection), run_dir)
    raise SearchError(f"evaluator.kind must be 'proxy', 'supernet' or 'predictor', got {kind!r}")


def build_objective(args: WorkerArgs) -> Objective:
    """Worker-side factory: the objective of one worker process."""
    import torch

    # Oversubscribed intra-op threads are catastrophic on a small shared CPU (the docs'
    # training page has the measurement), so each worker uses a fixed, configured number.
    torch.set_num_threads(args.config.threads)
    cost = None
    if args.config.profile_costs:
        from nas.cost.profile import profile_spec

        def cost(spec: NetworkSpec) -> tuple[int, int]:
            prof = profile_spec(spec)
            return prof.madds, prof.params

    return Objective(space=space_from_dict(args.config.space, args.space_origin),
                     evaluator=build_evaluator(args.config, Path(args.run_dir)),
                     latency=args.table.predict, settings=args.config.study_settings, cost=cost)


def build_sampler(config: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler with this worker start's seed (:func:`~nas.search.runner.worker_seed`)."""
    settings = config.study_settings
    return make_sampler(StudySettings(**{**settings.__dict__, "seed": seed}))


class SearchRun:
    """Run (or resume) the study ``config`` describes, with outputs in ``run_dir``.

    Args:
        config: the run's settings.
        run_dir: the run folder (journal, outputs, the table's run copy).
        space_origin: the file the space came from, named in its errors.
        report: receives one-line notes (the table chosen, host warnings); default: logging.
    """

    def __init__(self, config: SearchConfig, run_dir: str | Path, *, space_origin: str | None = None,
                 report: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.space_origin = space_origin or f"space '{config.space.get('name', '?')}'"
        self.report = report or log.info

    def _check_data_root(self) -> None:
        root = self.config.data_root()
        if root is not None and not root.is_dir():
            raise SearchError(
                f"data.root {self.config.data['root']} ({root.resolve()}): no such directory "
                f"(data={self.config.data.get('name')}; the default, CIFAR-10, is "
                "../shared/datasets/cifar10 beside the checkout): run from the checkout, set "
                "data.root=<the folder>, or run offline with data=synthetic evaluator=proxy")

    def _storage_settings(self) -> StorageSettings:
        interval = self.config.heartbeat_interval
        return StorageSettings(run_dir=str(self.run_dir), url=reveal(self.config.storage),
                               heartbeat_interval=interval, grace_period=3 * interval)

    def _open_study(self, storage: BaseStorage, space: SearchSpace, table: LatencyTable) -> optuna.Study:
        config, settings = self.config, self.config.study_settings
        study = load_or_create_study(storage, study_name=config.study_name,
                                     directions=settings.directions, sampler=make_sampler(settings),
                                     resume=config.resume)
        # Before anything of this start reaches the study: refuse settings that differ from it.
        check_or_store(study, study_fingerprint(config.to_dict(), table, space))
        with warnings.catch_warnings():  # experimental in Optuna, but shown by optuna-dashboard
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["top1", "latency_ms"] if settings.mode == "pareto" else ["reward"])
        protocol = config.evaluator.get("protocol")
        study.set_user_attr("context", {  # named in the plot's title and kept with the study
            "space": space.name, "data": f"protocol {protocol}" if protocol else config.data.get("name"),
            "evaluator": config.evaluator.get("kind"), "table": table.path.name if table.path else None,
            "selection": selection_split(search_data(config), config.selection),
            "budget_ms": config.budget_ms})
        return study

    def _check_predictor(self) -> None:
        """Refuse what ``evaluator=predictor`` cannot do, before the supernet trains."""
        from nas.search.predictor_search import PredictorEvaluatorConfig

        PredictorEvaluatorConfig.from_dict(self.config.evaluator)  # its keys, checked
        if self.config.n_workers != 1:
            raise SearchError(f"evaluator=predictor runs in one process (the supernet scores and the "
                              f"predictor's search are one sequence): set n_workers=1, got "
                              f"{self.config.n_workers}")

    def _run_predictor(self, study: optuna.Study, space: SearchSpace, table: LatencyTable) -> None:
        """The ``evaluator=predictor`` steps (:class:`nas.search.predictor_run.PredictorSearch`)."""
        import torch

        from nas.search.predictor_run import PredictorSearch

        torch.set_num_threads(self.config.threads)  # as a worker does
        evaluator = build_evaluator(self.config, self.run_dir)
        PredictorSearch(self.config, self.run_dir, space, table, evaluator, say=self.report,
                        after_trial=lambda s: write_outputs(s, self.run_dir)).run(study)

    def run(self) -> optuna.Study | None:
        """Run until the study holds ``config.trials`` counted trials; returns the study
        (``None`` on a ``torchrun`` rank other than 0, which only trains the supernet:
        :mod:`nas.search.rank_supernet`).

        With ``evaluator=predictor`` the predictor's steps run instead of the workers (the study
        then holds the supernet-scored networks: the fitting samples and the re-scored front).
        Raises :class:`SearchInterrupted` (outputs written) on Ctrl-C.
        """
        config = self.config
        space = space_from_dict(config.space, self.space_origin)
        self._check_data_root()
        predictor = config.evaluator.get("kind") == "predictor"
        if predictor:
            self._check_predictor()
        data_cfg = search_data(config)
        selection_data(data_cfg, config.selection)  # a data set that cannot be carved stops here
        self.report(selection_note(data_cfg, config.selection))
        from nas.search.rank_supernet import train_supernet_on_ranks

        if not train_supernet_on_ranks(config, self.run_dir, self.report):
            return None  # under torchrun, a rank other than 0: its part was the supernet
        resolved = resolve_table(config.latency, space, self.run_dir, resume=config.resume)
        self.report(f"latency table {resolved.source}: {resolved.reason}")
        for line in resolved.warnings:
            self.report(f"warning: {line}")
        storage_settings = self._storage_settings()
        storage = open_storage(storage_settings)  # one storage for this process's reads
        study = self._open_study(storage, space, resolved.table)
        if not predictor:
            recover_dead_workers(study, heartbeat=config.storage is not None)
            retried = requeue_failed(study)
            if retried:
                log.info("retrying failed, killed or interrupted trial(s) %s first", retried)
            enqueue_canonical(study, space)
        done = counted_trials(study)
        if not predictor:  # the predictor's steps say what they do themselves
            log.info("study %s: %d of %d trial(s) complete, %d worker(s) here; run folder %s",
                     config.study_name, done, config.trials, config.n_workers, self.run_dir)
        interrupted = False
        try:
            if predictor:
                self._run_predictor(study, space, resolved.table)
            elif done < config.trials:
                job = WorkerJob(storage=storage_settings, study_name=config.study_name,
                                factory=build_objective,
                                factory_args=WorkerArgs(config, str(self.run_dir), resolved.table,
                                                        self.space_origin),
                                budget=config.trials, sampler_factory=build_sampler, sampler_args=config,
                                seed=config.seed, created_study=not config.resume,
                                on_trial_end=TrialReporter(self.run_dir, config.trials))
                run_parallel(job, config.n_workers)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: writing the outputs of the finished trials")
        finally:
            study = optuna.load_study(study_name=config.study_name, storage=storage)
            self.outputs = write_outputs(study, self.run_dir)
        if interrupted:
            raise SearchInterrupted(study)
        try:
            # Only now is the val split looked at: the Pareto members are reported on it.
            report_on_val(study, config, self.run_dir, self.report)
        except KeyboardInterrupt:
            log.warning("interrupted while scoring the Pareto members on val: their val_accuracy "
                        "is left empty (a resumed run scores them)")
            raise SearchInterrupted(study) from None
        self.outputs = write_outputs(study, self.run_dir)
        return study


def run_search(config: SearchConfig, run_dir: str | Path, **kwargs: Any) -> optuna.Study:
    """:class:`SearchRun` ``(config, run_dir, **kwargs).run()``."""
    return SearchRun(config, run_dir, **kwargs).run()


__all__ = ["SearchError", "SearchInterrupted", "SearchRun", "WorkerArgs", "build_evaluator",
           "build_objective", "build_sampler", "run_search"]
