"""Repairing a study after a worker died: its running trials failed and retried once.

A journal-file study has no heartbeat, so each trial stores its worker's host and pid and a
trial whose worker process is gone (same host) is failed here when a worker starts; RDB
storages leave that to Optuna's heartbeat. Every failed trial (killed, interrupted, raised)
gets one retry enqueued with its parameters, so the budget is spent on complete trials
(:mod:`nas.search.runner` admits the retry into the failed trial's place in the budget)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.search.objective import retried_number
from nas.search.storage import StorageSettings, open_storage, repaired_trials


log = logging.getLogger(__name__)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process stays signalable as a zombie until its parent reaps it: not alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone since os.kill, or no procfs (not Linux: then trust os.kill)
        return not Path("/proc/self").exists()
    return stat.rpartition(")")[2].split()[0] != "Z"


def recover_dead_workers(study: optuna.Study, *, heartbeat: bool = False,
                         max_retry: int = 1) -> list[int]:
    """Fail RUNNING trials whose worker (on this host) is gone, and enqueue a retry.

    Only for storages without a heartbeat (the journal file): with ``heartbeat`` (an RDB
    storage) Optuna's own heartbeat does this. Returns the failed numbers.
    """
    if heartbeat:
        return []
    host = socket.gethostname()
    failed = []
    lost: dict[int, str] | None = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # someone else finished it in the meantime
        if lost is None:
            lost = _repaired_trials(study)
        # Read back by nas.search.objective.fail_reason (no public call annotates the trial).
        study.set_user_attr(f"fail_reason:{trial.number}",
                            lost.get(trial.number, f"worker {worker} died mid-trial"))
        failed.append(trial.number)
        requeued = _enqueue_retry(study, trial, max_retry)
        log.warning("trial %d: worker %s died mid-trial; marked FAIL%s", trial.number, worker,
                    " and re-enqueued" if requeued else "")
    return failed


def _repaired_trials(study: optuna.Study) -> dict[int, str]:
    """Trials whose record a journal repair dropped (a journal storage only)."""
    storage = study._storage  # no public accessor; the journal's path is on its backend
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_path", None)
    return repaired_trials(path) if isinstance(path, Path) else {}


def _enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retry: int) -> bool:
    """Enqueue ``trial``'s parameters once more, unless it has used its retries."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= max_retry or not trial.params:
        return False
    attrs: dict[str, Any] = {"retries": retries + 1, "retry_of": trial.number}
    if trial.user_attrs.get("canonical"):
        attrs["canonical"] = True
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    return True


def _retry_targets(study: optuna.Study) -> set[int]:
    """Numbers of failed trials that already have a retry (ours or Optuna's callback's)."""
    parents = (retry_parent(trial) for trial in study.get_trials(deepcopy=False))
    return {number for number in parents if number is not None}


def requeue_failed(study: optuna.Study, *, max_retry: int = 1) -> list[int]:
    """Enqueue one retry of every failed trial (killed, interrupted, or raised) that has none.

    Called once per start before the workers run, so a Ctrl-C'd or killed trial is tried
    again first and the budget is spent on complete trials. Returns the retried numbers.
    """
    retried = _retry_targets(study)
    queued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number not in retried and _enqueue_retry(study, trial, max_retry):
            queued.append(trial.number)
    return queued


def retry_parent(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the failed trial that ``trial`` retries (ours or Optuna's callback's)."""
    if "retry_of" in trial.user_attrs:
        return int(trial.user_attrs["retry_of"])
    return retried_number(trial)



def fail_trials_of_exited_workers(study_name: str, storage: StorageSettings, pids: list[int]) -> list[int]:
    """Mark FAIL the RUNNING trials of these (exited) worker processes, in any storage."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage),
                              sampler=optuna.samplers.RandomSampler())
    host = socket.gethostname()
    names = {f"{host}:{pid}" for pid in pids}
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") in names:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(trial.number)
    return failed
