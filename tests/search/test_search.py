"""Study mechanics with a fast stand-in evaluator (the real one is exercised end to end in
test_cli_search.py): failures, constraints, the MnasNet reward, parallel workers, recovery."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from nas.arch.codecs import from_string, load_spec
from nas.arch.spec import NetworkSpec
from nas.search.objective import (
    Objective,
    SearchConfigError,
    StudySettings,
    enqueue_canonical,
    fail_reason,
    make_sampler,
    mnasnet_reward,
    pareto_trials,
)
import nas.search.outputs as outputs
from nas.search.outputs import summary_table, write_outputs
from nas.search.runner import (
    BudgetReached,
    GiveWay,
    WorkerJob,
    load_or_create_study,
    run_parallel,
    run_worker,
    worker_seed,
)
from nas.search.runner import _gate as gate
from nas.search.recovery import recover_dead_workers, requeue_failed
from nas.arch.space import load_space
from nas.search.storage import StorageSettings, open_storage
from nas.training.evaluator import EvalResult

SPACE = "mobilenetv3_small"


def expansion_latency(spec: NetworkSpec) -> float:
    """A deterministic stand-in for a lookup table: wider and bigger kernels cost more."""
    return 1.0 + sum(b.expansion * b.kernel ** 2 * (1.3 if b.se else 1.0) for b in spec.blocks) / 1e5


class CountingEvaluator:
    """Scores a spec by a fixed function of it (no training); can be told to fail."""

    def __init__(self, fail_every: int = 0, nan_every: int = 0) -> None:
        self.calls = 0
        self.fail_every = fail_every
        self.nan_every = nan_every

    def evaluate(self, spec: NetworkSpec) -> EvalResult:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("simulated out-of-memory")
        if self.nan_every and self.calls % self.nan_every == 0:
            return EvalResult(top1=math.nan)
        score = 0.5 + 0.4 * math.tanh(expansion_latency(spec) - 1.5)
        return EvalResult(top1=score, details={"stand_in": True})


def _journal_study(tmp_path: Path, name: str) -> tuple[StorageSettings, optuna.Study]:
    """A fresh two-objective study in a journal file under ``tmp_path``, random sampler."""
    storage_settings = StorageSettings(run_dir=str(tmp_path))
    study = load_or_create_study(open_storage(storage_settings), study_name=name,
                                 directions=["maximize", "minimize"],
                                 sampler=optuna.samplers.RandomSampler(seed=0), resume=False)
    return storage_settings, study


def _study(tmp_path: Path, settings: StudySettings, name: str = "s") -> optuna.Study:
    storage = open_storage(StorageSettings(run_dir=str(tmp_path)))
    return load_or_create_study(storage, study_name=name, directions=settings.directions,
                                sampler=make_sampler(settings), resume=False)


def test_failing_and_nan_trials_are_recorded_and_the_study_goes_on(tmp_path: Path):
    settings = StudySettings(sampler="random")
    space = load_space(SPACE)
    study = _study(tmp_path, settings)
    enqueue_canonical(study, space)
    objective = Objective(space=space, evaluator=CountingEvaluator(fail_every=3, nan_every=4),
                          latency=expansion_latency, settings=settings)
    study.optimize(objective, n_trials=10, catch=(Exception,))
    states = [t.state for t in study.trials]
    assert len(states) == 10
    assert states.count(TrialState.FAIL) >= 3 and states.count(TrialState.COMPLETE) >= 5
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.trials if t.state == TrialState.FAIL]
    assert any("simulated out-of-memory" in r for r in reasons)
    assert any("non-finite" in r for r in reasons)
    first = study.trials[0]
    assert first.user_attrs["canonical"] and from_string(first.user_attrs["spec"]) == load_spec("small")


def test_enqueue_canonical_only_once(tmp_path: Path):
    study = _study(tmp_path, StudySettings())
    space = load_space(SPACE)
    assert enqueue_canonical(study, space) is True
    assert enqueue_canonical(study, space) is False


def test_budget_is_a_constraint(tmp_path: Path):
    settings = StudySettings(sampler="nsga2", budget_ms=1.5)
    space = load_space(SPACE)
    study = _study(tmp_path, settings)
    study.optimize(Objective(space=space, evaluator=CountingEvaluator(), latency=expansion_latency,
                             settings=settings), n_trials=8)
    for t in study.trials:
        assert t.constraints == {"latency_budget": pytest.approx(t.user_attrs["latency_ms"] - 1.5)}
    for t in study.best_trials:
        assert t.user_attrs["latency_ms"] <= 1.5


def test_mnasnet_mode_uses_the_reward(tmp_path: Path):
    settings = StudySettings(mode="mnasnet", target_ms=1.2, sampler="tpe")
    space = load_space(SPACE)
    study = _study(tmp_path, settings)
    study.optimize(Objective(space=space, evaluator=CountingEvaluator(), latency=expansion_latency,
                             settings=settings), n_trials=4)
    t = study.trials[0]
    expected = mnasnet_reward(t.user_attrs["accuracy"], t.user_attrs["latency_ms"], 1.2, -0.15)
    assert t.value == pytest.approx(expected)
    assert mnasnet_reward(0.8, 2.0, 1.0, -0.07) == pytest.approx(0.8 * 2 ** -0.07)


@pytest.mark.parametrize("kwargs, field", [
    ({"sampler": "cmaes"}, "sampler"), ({"mode": "single"}, "mode"),
    ({"mode": "mnasnet"}, "target_ms"), ({"budget_ms": -1.0}, "budget_ms"),
])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(SearchConfigError, match=field):
        StudySettings(**kwargs)


def test_outputs_are_written(tmp_path: Path):
    settings = StudySettings(sampler="random")
    space = load_space(SPACE)
    study = _study(tmp_path, settings)
    enqueue_canonical(study, space)
    study.optimize(Objective(space=space, evaluator=CountingEvaluator(fail_every=5),
                             latency=expansion_latency, settings=settings), n_trials=6, catch=(Exception,))
    paths = write_outputs(study, tmp_path)
    trials = pd.read_csv(paths["trials"])
    assert len(trials) == 6 and {"accuracy", "latency_ms", "spec", "state", "duration_s"} <= set(trials.columns)
    assert any(c.startswith("param_s1_b1_") for c in trials.columns)
    pareto = pd.read_csv(paths["pareto"])
    configs = sorted(paths["configs"].glob("*.yaml"))
    assert len(configs) == len(pareto) > 0
    assert {load_spec(p).replace(name="") for p in configs} == {from_string(s) for s in pareto["spec"]}
    assert paths["plot"].stat().st_size > 0
    assert "Pareto front" in summary_table(study)
    # A YAML of a trial that has left the front is removed at the next write.
    stale = paths["configs"] / "trial9999.yaml"
    stale.write_text(configs[0].read_text())
    write_outputs(study, tmp_path)
    assert not stale.exists() and len(list(paths["configs"].glob("*.yaml"))) == len(configs)


def test_a_write_killed_at_any_point_leaves_no_dangling_pareto_row(tmp_path: Path, monkeypatch):
    """Interrupt write_outputs before each of its file writes while the front changes: every
    row of pareto.csv always has its YAML, and the next write removes any stale one."""
    import shutil

    import nas.search.outputs as outputs

    settings = StudySettings(sampler="random")
    space = load_space(SPACE)
    study = _study(tmp_path, settings)
    objective = Objective(space=space, evaluator=CountingEvaluator(), latency=expansion_latency,
                          settings=settings)
    study.optimize(objective, n_trials=2)
    before = tmp_path / "before"
    write_outputs(study, before)
    study.optimize(objective, n_trials=10)
    old_front = set(pd.read_csv(before / "pareto.csv")["number"])
    assert {t.number for t in pareto_trials(study)} != old_front  # the front moves
    real_write = outputs.write_text_atomic
    for kill_at in range(1, 100):
        run_dir = tmp_path / f"killed{kill_at}"
        shutil.copytree(before, run_dir)
        calls = {"n": 0}

        def killed_write(path, text, calls=calls, kill_at=kill_at, **kwargs):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt  # the process dies here
            real_write(path, text, **kwargs)

        monkeypatch.setattr(outputs, "write_text_atomic", killed_write)
        try:
            write_outputs(study, run_dir)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(outputs, "write_text_atomic", real_write)
        rows = set(pd.read_csv(run_dir / "pareto.csv")["number"])
        yamls = {int(p.stem.removeprefix("trial")) for p in (run_dir / "pareto").glob("trial*.yaml")}
        assert rows <= yamls, f"killed before write {kill_at}: rows {rows - yamls} have no YAML"
        write_outputs(study, run_dir)  # the next write leaves exactly the front
        yamls = {int(p.stem.removeprefix("trial")) for p in (run_dir / "pareto").glob("trial*.yaml")}
        assert yamls == set(pd.read_csv(run_dir / "pareto.csv")["number"]) == {t.number for t in pareto_trials(study)}
        if finished:
            break
    assert finished and kill_at > 3  # every write point was tried


# ------------------------------------------------------------------ workers and recovery
def stand_in_objective(args: tuple[str, int]) -> Objective:
    """Factory used by worker processes (must be importable)."""
    space_name, fail_every = args
    return Objective(space=load_space(space_name), evaluator=CountingEvaluator(fail_every=fail_every),
                     latency=expansion_latency, settings=StudySettings(sampler="random"))


def stand_in_sampler(args: int, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def test_worker_seeds_differ_per_start_but_a_fresh_run_keeps_its_seed():
    assert worker_seed(7, 0, created_study=True) == 7  # fresh single-worker run: repeatable
    # Every other start draws fresh entropy, even two starts of one process on an empty study.
    seeds = {worker_seed(7, 0, created_study=False) for _ in range(4)}
    seeds |= {worker_seed(7, 1, created_study=True), worker_seed(7, 1, created_study=False)}
    assert len(seeds) == 6 and 7 not in seeds


def test_two_worker_processes_share_one_journal(tmp_path: Path):
    storage_settings, study = _journal_study(tmp_path, "w")
    enqueue_canonical(study, load_space(SPACE))
    job = WorkerJob(storage=storage_settings, study_name="w", factory=stand_in_objective,
                    factory_args=(SPACE, 0), budget=12, sampler_factory=stand_in_sampler, sampler_args=0,
                    poll_seconds=0.2)
    run_parallel(job, 2)
    study = optuna.load_study(study_name="w", storage=open_storage(storage_settings))
    trials = study.trials
    counted = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(counted) == 12  # the budget counts across both processes, exactly
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    specs = [t.user_attrs["spec"] for t in counted]
    assert len(specs) == len(set(specs))  # no network evaluated twice
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes ran trials
    assert sum(bool(t.user_attrs.get("canonical")) for t in trials) == 1  # popped once


def test_dead_worker_trial_is_failed_and_retried(tmp_path: Path):
    storage_settings, study = _journal_study(tmp_path, "d")
    space = load_space(SPACE)
    # A trial left RUNNING by a worker process that no longer exists.
    trial = study.ask()
    space.suggest(trial)
    dead_pid = 2 ** 22 + 12345
    while _alive(dead_pid):
        dead_pid += 1
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid}")
    # And one of a live worker (this process), which must be left alone.
    live = study.ask()
    space.suggest(live)
    live.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    assert recover_dead_workers(study) == [trial.number]
    frozen = study.trials
    assert frozen[trial.number].state == TrialState.FAIL
    assert "died mid-trial" in fail_reason(frozen[trial.number], study.user_attrs)
    assert frozen[live.number].state == TrialState.RUNNING
    retry = study.ask()
    space.suggest(retry)  # an enqueued trial's parameters are fixed when suggested
    assert retry.params == frozen[trial.number].params and retry.user_attrs["retry_of"] == trial.number


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux procfs")
def test_a_killed_worker_not_yet_reaped_counts_as_dead(tmp_path: Path):
    """A SIGKILLed child stays signalable as a zombie until its parent reaps it; a survivor
    that took it for alive waited forever on its running trial (a CI hang)."""
    storage_settings, study = _journal_study(tmp_path, "z")
    space = load_space(SPACE)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, 0)  # still signalable: the zombie the check must see through
        trial = study.ask()
        space.suggest(trial)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{child.pid}")
        assert recover_dead_workers(study) == [trial.number]
    finally:
        child.wait()


def test_a_retry_keeps_its_place_before_fresh_trials(tmp_path: Path):
    """A killed trial's retry runs in its original's place; a fresh trial gives way to it."""
    storage_settings, study = _journal_study(tmp_path, "g")
    space = load_space(SPACE)
    first = study.ask()
    space.suggest(first)
    study.tell(first, [0.5, 1.0])
    victim = study.ask()
    space.suggest(victim)
    study.tell(victim, state=TrialState.FAIL)
    fresh = study.ask()  # proposed before the retry was queued, so numbered after it
    assert requeue_failed(study) == [victim.number]
    job = WorkerJob(storage=storage_settings, study_name="g", factory=None, factory_args=None,
                    budget=2, sampler_factory=None, sampler_args=None, poll_seconds=0.01)
    with pytest.raises(GiveWay):
        gate(study, fresh, job)
    study.tell(fresh, state=TrialState.PRUNED)
    retry = study.ask()  # a worker's next trial takes the waiting retry
    assert retry.number > fresh.number
    gate(study, retry, job)  # returns: its original's place in the budget is free
    space.suggest(retry)
    assert retry.params == study.trials[victim.number].params
    study.tell(retry, [0.6, 1.0])
    later = study.ask()
    with pytest.raises(BudgetReached):
        gate(study, later, job)


def test_a_swallowed_ctrl_c_is_still_raised(tmp_path: Path):
    """Python drops a KeyboardInterrupt raised inside a finalizer; the recorded one stops us."""
    import signal

    from nas.interrupts import install_sigint_handler, raise_if_interrupted

    previous = signal.getsignal(signal.SIGINT)
    try:
        # A test run started in the background of a shell inherits SIGINT ignored, which the
        # handler rightly leaves alone; this test is about the record, so start from default.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        install_sigint_handler()
        raise_if_interrupted()  # nothing recorded yet
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        except KeyboardInterrupt:
            pass  # what a weakref callback does with it
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    finally:
        install_sigint_handler()  # clears the record for the tests that follow
        signal.signal(signal.SIGINT, previous)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_resume_requires_an_existing_study(tmp_path: Path):
    storage = open_storage(StorageSettings(run_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no study named"):
        load_or_create_study(storage, study_name="x", directions=["maximize"],
                             sampler=optuna.samplers.RandomSampler(), resume=True)
    load_or_create_study(storage, study_name="x", directions=["maximize"],
                         sampler=optuna.samplers.RandomSampler(), resume=False)
    with pytest.raises(FileExistsError, match="resume=true"):
        load_or_create_study(storage, study_name="x", directions=["maximize"],
                             sampler=optuna.samplers.RandomSampler(), resume=False)


# ------------------------------------------------------------------ a damaged journal
def test_a_torn_journal_is_refused_then_repaired(tmp_path: Path):
    from nas.cli.study import main as study_main
    from nas.search.storage import JournalError

    storage_settings, study = _journal_study(tmp_path, "j")
    space = load_space(SPACE)
    study.optimize(Objective(space=space, evaluator=CountingEvaluator(), latency=expansion_latency,
                             settings=StudySettings(sampler="random")), n_trials=3)
    journal = storage_settings.journal_path
    whole = journal.read_bytes()
    records = whole.count(b"\n")
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id"')  # disk full mid-write
    with pytest.raises(JournalError, match=rf"study.journal:{records + 1}: the last record is cut short.*nas-study repair"):
        open_storage(storage_settings)
    assert study_main(["repair", str(journal)]) == 0
    assert journal.read_bytes() == whole  # every complete record kept
    assert len(list(tmp_path.glob("study.journal.damaged-*"))) == 1
    resumed = optuna.load_study(study_name="j", storage=open_storage(storage_settings))
    assert len(resumed.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_mnasnet_best_respects_the_budget_and_none_feasible_is_said(tmp_path: Path):
    settings = StudySettings(mode="mnasnet", target_ms=1.2, sampler="random", budget_ms=0.01)
    space = load_space(SPACE)
    study = _study(tmp_path, settings)
    study.optimize(Objective(space=space, evaluator=CountingEvaluator(), latency=expansion_latency,
                             settings=settings), n_trials=3)
    from nas.search.objective import pareto_trials

    assert pareto_trials(study) == []  # the best reward is infeasible: not reported as best
    text = summary_table(study)
    assert "no feasible trial: none of the 3 complete trials meets the latency budget" in text


def test_trial_eta_counts_from_the_first_finished_trial(monkeypatch, tmp_path: Path):
    from nas.search import outputs

    clock = iter([100.0, 400.0, 410.0, 430.0, 500.0])  # set-up ends at 400 s, then 10 s a trial
    monkeypatch.setattr(outputs.time, "monotonic", lambda: next(clock))
    reporter = outputs.TrialReporter(tmp_path, budget=10)
    assert reporter._eta(1) == ""                  # no rate yet
    assert reporter._eta(2) == ", ETA 80 s"         # 10 s a trial, 8 to go
    assert reporter._eta(4) == ", ETA 60 s"         # 30 s for 3 trials since the first, 6 to go
    assert reporter._eta(10) == ""                 # done
