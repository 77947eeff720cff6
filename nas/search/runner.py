"""Running a study: storage, parallel workers, one global budget, clean stops (recovery of
dead workers' trials: :mod:`nas.search.recovery`).

Storage is an Optuna JournalStorage file in the run folder by default, or any RDB URL
(``postgresql://``, ``mysql+pymysql://``, ``sqlite:///``) so workers on several machines
share one study. For RDB storages Optuna's own heartbeat fails and retries the trials of a
worker that died; the journal file has no heartbeat, so a worker's host and pid are stored
on each trial and a trial whose worker process is gone (same host) is failed and retried
when a worker starts.

**One budget for all workers.** Every worker, on any machine, runs until the study holds
``budget`` complete trials (:func:`nas.search.objective.counted_trials`: repeats of an evaluated
network, failed, killed and interrupted trials do not count). A trial starts only when the
complete trials plus the running trials numbered before it leave room in the budget;
otherwise it waits (a running trial may still fail) and ends PRUNED, unevaluated, when the
budget is reached. So the count is exact however many workers share the storage. A trial
still waiting gives way (PRUNED, unevaluated) to a retry of an earlier trial, so the
retried network finds its room; only a trial admitted in the moment between the failure and
the retry's enqueueing can take that room, and the retry then ends PRUNED.

**Fresh seeds per start.** Only the first worker of the process that created the study uses
the configured seed, so a fresh single-worker run is repeatable. Every other worker start (a
second worker, a resume, another machine joining) seeds its sampler from the configured seed,
its index, host and pid and fresh entropy from the OS: two workers that join an empty study
at the same moment do not replay one sequence.

**No network evaluated twice.** Two samplers can still propose the same network. A trial
records its network first, then :func:`claim_network` waits until every running trial
numbered before it has recorded its own; a network that one of them is evaluating is waited
for and its result reused (a repeat: not counted), so the lowest-numbered trial evaluates it
and nobody else does, on any storage."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from nas._io import OutOfSpaceError
from nas.errors import NASError
from nas.interrupts import install_sigint_handler, raise_if_interrupted
from nas.search.objective import counted_trials, evaluated_trial
from nas.search.recovery import fail_trials_of_exited_workers, recover_dead_workers, retry_parent
from nas.search.storage import StorageSettings, open_storage


log = logging.getLogger(__name__)


def worker_seed(seed: int, worker_index: int, *, created_study: bool) -> int:
    """The sampler seed of one worker start (see the module docstring)."""
    if created_study and worker_index == 0:
        return seed
    parts = [seed, worker_index, os.getpid(), zlib.crc32(socket.gethostname().encode()),
             int.from_bytes(os.urandom(8), "little")]
    return int(np.random.SeedSequence(parts).generate_state(1)[0] % (2**31 - 1))


class StudyNotFoundError(NASError, FileNotFoundError):
    """``resume`` of a study the storage does not hold."""


class StudyExistsError(NASError, FileExistsError):
    """A new study under a name the storage already holds."""


def load_or_create_study(
    storage: BaseStorage, *, study_name: str, directions: list[str], sampler: optuna.samplers.BaseSampler,
    resume: bool,
) -> optuna.Study:
    """Create the study, or load it when ``resume`` (a missing study is then an error)."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if resume and study_name not in names:
        raise StudyNotFoundError(f"resume: no study named {study_name!r} in the storage "
                                f"(found {names or 'none'})")
    if not resume and study_name in names:
        raise StudyExistsError(f"study {study_name!r} already exists in the storage; "
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
    budget: int
    sampler_factory: Callable[[Any, int], optuna.samplers.BaseSampler]
    sampler_args: Any
    seed: int = 0
    created_study: bool = False  # this process created the study (its worker 0 keeps the seed)
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
    poll_seconds: float = 2.0
    max_repeats: int = 100


class SamplerExhaustedError(NASError, RuntimeError):
    """The sampler keeps proposing networks the study has already evaluated."""


class BudgetReached(Exception):
    """Raised inside a waiting trial when the other workers have completed the budget."""


class GiveWay(Exception):
    """Raised inside a waiting trial when a retry of an earlier trial is waiting to run, or
    when the trial is a second retry of one failed trial."""


def _slots(trials: list[optuna.trial.FrozenTrial]) -> dict[int, int]:
    """Each trial's place in the budget order: its number, or for a retry its original's."""
    parents = {t.number: retry_parent(t) for t in trials}
    slots = {}
    for number in parents:
        slot = number
        while parents.get(slot) is not None and parents[slot] < slot:
            slot = parents[slot]
        slots[number] = slot
    return slots


def _gate(study: optuna.Study, trial: optuna.Trial, job: WorkerJob) -> None:
    """Wait until ``trial`` may run without overshooting the budget (module docstring)."""
    while True:
        done = counted_trials(study)
        if done >= job.budget:
            raise BudgetReached(f"budget of {job.budget} complete trials reached by other workers")
        trials = study.get_trials(deepcopy=False)
        # Two machines may both enqueue a retry of one failed trial (a restart's
        # requeue_failed and another machine's heartbeat callback, in the same moment): the
        # lowest-numbered retry runs, the others give way.
        parent = retry_parent(next(t for t in trials if t.number == trial.number))
        first = min((t.number for t in trials if retry_parent(t) == parent), default=trial.number)
        if parent is not None and first != trial.number:
            raise GiveWay(f"trial {first} already retries trial {parent}")
        slots = _slots(trials)
        mine = slots[trial.number]
        # A retry numbered after this waiting trial but retrying an earlier one would find its
        # room taken by it: this trial gives way (PRUNED, unevaluated), so a killed network is
        # evaluated again. Trials numbered after a retry already count it below.
        if any(not t.state.is_finished() and t.number > trial.number and slots[t.number] < mine
               and retry_parent(t) is not None for t in trials):
            raise GiveWay(f"trial {trial.number} gives way to a retry of an earlier trial")
        # Room is counted in trial-number order, which keeps the count exact.
        ahead = [t for t in trials if t.state == TrialState.RUNNING and t.number < trial.number]
        if done + len(ahead) < job.budget:
            return
        _wait_a_moment(study, job)


def _wait_a_moment(study: optuna.Study, job: WorkerJob) -> None:
    """Sleep one poll; a trial waited for may belong to a dead worker: let recovery fail it."""
    raise_if_interrupted()
    heartbeat = job.storage.url is not None
    recover_dead_workers(study, heartbeat=heartbeat, max_retry=job.storage.max_retry)
    if heartbeat:
        optuna.storages.fail_stale_trials(study)
    time.sleep(job.poll_seconds)


def claim_network(study: optuna.Study, trial: optuna.Trial, spec: str,
                  job: WorkerJob) -> optuna.trial.FrozenTrial | None:
    """The trial whose result ``trial`` (which has recorded ``spec``) reuses, or None when
    ``trial`` is the one to evaluate ``spec`` (module docstring).

    Waits while a running trial numbered before ``trial`` has not yet chosen its network (it
    may choose this one) or is evaluating this one; then answers with the first complete
    trial of ``spec``, if any. Trial numbers order the claims, so on every storage exactly
    one trial evaluates a network and the others wait for it.
    """
    while True:
        # Running trials first, completed ones after: a trial that leaves RUNNING between the
        # two reads is then already COMPLETE in the second. Read the other way round, a trial
        # finishing in between is missed by both and its network is evaluated twice.
        before = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                  if t.number < trial.number]
        if not any("spec" not in t.user_attrs or t.user_attrs["spec"] == spec for t in before):
            return evaluated_trial(study, spec)
        _wait_a_moment(study, job)


def run_worker(job: WorkerJob, worker_index: int = 0) -> int:
    """Join the study and run trials until it holds ``job.budget`` counted trials.

    Returns how many counted trials this worker added.
    """
    storage = open_storage(job.storage)
    probe = optuna.load_study(study_name=job.study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler())
    # Enqueued (WAITING) trials, such as the canonical seed, do not make a study "started".
    started = probe.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING))
    seed = worker_seed(job.seed, worker_index, created_study=job.created_study and not started)
    log.info("worker %d: sampler seed %d", worker_index, seed)
    study = optuna.load_study(study_name=job.study_name, storage=storage,
                              sampler=job.sampler_factory(job.sampler_args, seed))
    recover_dead_workers(study, heartbeat=job.storage.url is not None,
                         max_retry=job.storage.max_retry)
    objective = job.factory(job.factory_args)
    # The objective asks the runner whether its network is already scored or being scored.
    objective.find_original = lambda trial, spec: claim_network(study, trial, spec, job)
    before = counted_trials(study)
    repeats = {"run": 0}
    fatal: list[OutOfSpaceError] = []  # a full disk met inside a trial

    def gated(trial: optuna.Trial) -> Any:
        raise_if_interrupted()
        # Recorded first, so a worker that dies while its trial waits is recognised too.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            _gate(study, trial, job)
        except BudgetReached as err:
            study.stop()
            trial.set_user_attr("fail_reason", f"not run: {err}")
            raise optuna.TrialPruned(str(err)) from None
        except GiveWay as err:  # unevaluated and not counted; this worker takes the retry next
            trial.set_user_attr("fail_reason", f"not run: {err}")
            raise optuna.TrialPruned(str(err)) from None
        try:
            return objective(trial)
        except OutOfSpaceError as err:
            # The trial fails (retried on resume) and the worker stops after it: every later
            # write would fail too. Optuna catches the error; the callback re-raises it.
            fatal.append(err)
            raise

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if fatal:
            raise fatal[0]
        raise_if_interrupted()
        repeats["run"] = repeats["run"] + 1 if "duplicate_of" in trial.user_attrs else 0
        if job.on_trial_end is not None:
            job.on_trial_end(study, trial)
        if counted_trials(study) >= job.budget:
            study.stop()
        elif repeats["run"] >= job.max_repeats:
            study.stop()
            raise SamplerExhaustedError(
                f"the sampler proposed {repeats['run']} networks in a row that the study has "
                f"already evaluated ({counted_trials(study)} of {job.budget} trials done); the "
                "space may be exhausted: lower `trials` or widen the space")

    if counted_trials(study) < job.budget:
        # catch=Exception: a failing trial is recorded (with its reason) and the study goes on.
        study.optimize(gated, n_trials=None, catch=(Exception,), callbacks=[after],
                       gc_after_trial=True)
    return counted_trials(study) - before


def _worker_process(job: WorkerJob, worker_index: int, errors: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    install_sigint_handler()
    try:
        run_worker(job, worker_index)
    except KeyboardInterrupt:
        # Optuna has marked the running trial FAIL; it is retried at the next start.
        raise SystemExit(130) from None
    except Exception as err:  # reported by the parent with the worker's index
        errors.put((worker_index, f"{type(err).__name__}: {err}"))
        raise SystemExit(1) from None


class WorkerError(NASError, RuntimeError):
    """A worker process failed (the message names the worker and the reason)."""


def run_parallel(job: WorkerJob, n_workers: int) -> None:
    """Run worker processes on this machine until the study holds ``job.budget`` trials.

    Each process opens the storage itself; the journal's file lock and the RDB's
    transactions keep trial numbers unique, and the budget is shared (module docstring). A
    worker that dies leaves its running trial to :func:`recover_dead_workers` (journal) or
    Optuna's heartbeat (RDB), and the others carry on to the full budget. Ctrl-C lets the
    workers fail their running trials, then re-raises ``KeyboardInterrupt``.
    """
    if n_workers == 1:
        run_worker(job)
        return
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    processes = []
    for index in range(n_workers):
        process = context.Process(target=_worker_process, args=(job, index, errors), daemon=False)
        process.start()
        processes.append(process)
    try:
        # Reap each worker as soon as it exits, in any order: an unreaped dead worker is a
        # zombie, and a survivor waiting on its running trial would wait forever.
        pending = list(processes)
        while pending:
            ready = wait([process.sentinel for process in pending])
            for process in [p for p in pending if p.sentinel in ready]:
                process.join()
                pending.remove(process)
    except KeyboardInterrupt:
        # The workers got the same SIGINT: give them time to mark their trials, then stop them.
        deadline = time.monotonic() + 30
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
        _fail_trials_of(job, processes)
        raise
    reasons = {}
    while not errors.empty():
        index, reason = errors.get()
        reasons[index] = reason
    bad = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode != 0]
    if bad:
        _fail_trials_of(job, processes)
        described = "; ".join(f"worker {i} exited with code {code}"
                              + (f" ({reasons[i]})" if i in reasons else
                                 " (killed by a signal)" if code is not None and code < 0 else "")
                              for i, code in bad)
        raise WorkerError(described)


def _fail_trials_of(job: WorkerJob, processes: list[Any]) -> None:
    """Mark FAIL the running trials of the job's (exited) worker processes."""
    fail_trials_of_exited_workers(job.study_name, job.storage, [p.pid for p in processes if p.pid is not None])
