"""Running a study: storage, parallel workers, dead-worker recovery, clean interruption.

Storage is an Optuna JournalStorage file in the run folder by default, or any RDB URL
(``postgresql://``, ``mysql+pymysql://``, ``sqlite:///``) so workers on several machines
share one study. For RDB storages Optuna's own heartbeat fails and retries the trials of a
worker that died; the journal file has no heartbeat, so a worker's host and pid are stored
on each trial and a trial whose worker process is gone (same host) is failed and retried
when a worker starts.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from nas.search import finished_trials

log = logging.getLogger(__name__)

JOURNAL_NAME = "study.journal"


@dataclass(frozen=True)
class StorageSettings:
    """Where the study lives. ``url`` None means the journal file in ``run_dir``."""

    run_dir: str
    url: str | None = None
    heartbeat_interval: int = 30
    grace_period: int = 90
    max_retry: int = 1

    @property
    def journal_path(self) -> Path:
        return Path(self.run_dir) / JOURNAL_NAME


def open_storage(settings: StorageSettings) -> BaseStorage:
    """Open (creating if needed) the study storage."""
    if settings.url is None:
        path = settings.journal_path
        path.parent.mkdir(parents=True, exist_ok=True)
        # The open-lock works on any file system (the symlink lock does not on some mounts).
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return JournalStorage(backend)
    return RDBStorage(
        settings.url,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        failed_trial_callback=RetryFailedTrialCallback(max_retry=settings.max_retry),
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_workers(study: optuna.Study, *, max_retry: int = 1) -> list[int]:
    """Fail RUNNING trials whose worker (on this host) is gone, and enqueue a retry.

    Only for storages without a heartbeat (the journal file). Returns the failed numbers.
    """
    if isinstance(study._storage, RDBStorage):  # Optuna's heartbeat handles these
        return []
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        storage = study._storage
        # FrozenTrial._trial_id is what Optuna's own fail_stale_trials uses as well.
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker {worker} died mid-trial")
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            continue  # someone else finished it in the meantime
        failed.append(trial.number)
        retries = int(trial.user_attrs.get("retries", 0))
        if retries < max_retry and trial.params:
            attrs = {"retries": retries + 1, "retry_of": trial.number}
            if trial.user_attrs.get("canonical"):
                attrs["canonical"] = True
            study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
        log.warning("trial %d: worker %s died mid-trial; marked FAIL%s", trial.number, worker,
                    " and re-enqueued" if retries < max_retry else "")
    return failed


def load_or_create_study(
    storage: BaseStorage, *, study_name: str, directions: list[str], sampler: optuna.samplers.BaseSampler,
    resume: bool,
) -> optuna.Study:
    """Create the study, or load it when ``resume`` (a missing study is then an error)."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if resume and study_name not in names:
        raise FileNotFoundError(f"resume: no study named {study_name!r} in the storage "
                                f"(found {names or 'none'})")
    if not resume and study_name in names:
        raise FileExistsError(f"study {study_name!r} already exists in the storage; "
                              "set resume=true to continue it or choose another study_name")
    return optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                               sampler=sampler, load_if_exists=resume)


ObjectiveFactory = Callable[[Any], Callable[[optuna.Trial], Any]]


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker process needs to rebuild its objective and join the study."""

    storage: StorageSettings
    study_name: str
    factory: ObjectiveFactory
    factory_args: Any
    n_trials: int
    sampler_factory: Callable[[Any], optuna.samplers.BaseSampler]
    sampler_args: Any


def run_worker(job: WorkerJob, worker_index: int = 0) -> int:
    """Join the study and run ``job.n_trials`` trials; returns how many this worker finished."""
    storage = open_storage(job.storage)
    study = optuna.load_study(study_name=job.study_name, storage=storage,
                              sampler=job.sampler_factory(job.sampler_args, worker_index))
    recover_dead_workers(study, max_retry=job.storage.max_retry)
    objective = job.factory(job.factory_args)
    before = finished_trials(study)
    # catch=Exception: a failing trial is recorded (with its reason) and the study goes on.
    study.optimize(objective, n_trials=job.n_trials, catch=(Exception,), gc_after_trial=True)
    return finished_trials(study) - before


def _worker_process(job: WorkerJob, worker_index: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(job, worker_index)


def split_trials(n_trials: int, n_workers: int) -> list[int]:
    """Shares of ``n_trials`` for ``n_workers`` that add up exactly."""
    base, extra = divmod(n_trials, n_workers)
    return [base + (1 if i < extra else 0) for i in range(n_workers)]


def run_parallel(job: WorkerJob, n_workers: int) -> None:
    """Run ``job.n_trials`` trials over ``n_workers`` processes on this machine.

    Each process opens the storage itself; the journal's file lock and the RDB's
    transactions keep trial numbers unique. A worker that dies leaves its running trial to
    :func:`recover_dead_workers` (journal) or Optuna's heartbeat (RDB).
    """
    if n_workers == 1:
        run_worker(job)
        return
    context = multiprocessing.get_context("spawn")
    processes = []
    for index, share in enumerate(split_trials(job.n_trials, n_workers)):
        if share == 0:
            continue
        worker_job = WorkerJob(**{**job.__dict__, "n_trials": share})
        process = context.Process(target=_worker_process, args=(worker_job, index), daemon=False)
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join()
        raise
    bad = [p.exitcode for p in processes if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} worker process(es) exited with codes {bad}")
