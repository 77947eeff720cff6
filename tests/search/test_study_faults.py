"""A study nobody can corrupt: racing workers, changed settings, full disks, damaged journals,
credentials. The stand-in evaluator keeps these fast; test_cli_search.py runs the real one."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas._io import OutOfSpaceError, write_text_atomic
from nas.search.credentials import hide_passwords, redact, reveal, scrub_folder
from nas.search.fingerprint import (
    MAY_CHANGE,
    StudySettingsMismatch,
    check_or_store,
    differences,
    study_fingerprint,
)
from nas.search.objective import Objective, StudySettings, counted_trials, fail_reason
from nas.search.outputs import TrialReporter
from nas.search.recovery import recover_dead_workers
from nas.search.runner import WorkerJob, load_or_create_study, run_worker
from nas.arch.space import load_space
from nas.search.storage import (
    HeartbeatRetry,
    JournalError,
    StorageSettings,
    StorageUnreachableError,
    check_journal,
    open_storage,
    repair_journal,
)
from nas.training.evaluator import EvalResult

SPACE = "mobilenetv3_small"
POSTGRES_URL = os.environ.get("NAS_TEST_POSTGRES_URL")


def _latency(spec) -> float:
    return 1.0 + sum(b.expansion * b.kernel for b in spec.blocks) / 1e4


class LoggingEvaluator:
    """Scores a spec by a fixed function of it, slowly, and logs every evaluation to a file
    (one line per evaluation, from any process)."""

    def __init__(self, log: Path, seconds: float) -> None:
        self.log, self.seconds = log, seconds

    def evaluate(self, spec) -> EvalResult:
        from nas._io import append_line
        from nas.arch.codecs import to_string

        time.sleep(self.seconds)
        append_line(self.log, to_string(spec), what="the test's evaluation log")
        return EvalResult(top1=0.5 + (_latency(spec) % 0.3))


def logging_objective(args: tuple[str, float]) -> Objective:
    log, seconds = args
    return Objective(space=load_space(SPACE), evaluator=LoggingEvaluator(Path(log), seconds),
                     latency=_latency, settings=StudySettings(sampler="random"))


def same_sequence_sampler(args: int, seed: int) -> optuna.samplers.BaseSampler:
    """Ignores the worker's seed: both workers propose the same networks, the worst case."""
    return optuna.samplers.RandomSampler(seed=0)


def _released_worker(job: WorkerJob, go: str) -> None:
    while not Path(go).exists():
        time.sleep(0.005)
    run_worker(job)


def _race(storage_settings: StorageSettings, study_name: str, tmp_path: Path, budget: int) -> optuna.Study:
    storage = open_storage(storage_settings)
    load_or_create_study(storage, study_name=study_name, directions=["maximize", "minimize"],
                         sampler=optuna.samplers.RandomSampler(), resume=False)
    log, go = tmp_path / "evaluations.log", tmp_path / "go"
    job = WorkerJob(storage=storage_settings, study_name=study_name, factory=logging_objective,
                    factory_args=(str(log), 0.3), budget=budget, sampler_factory=same_sequence_sampler,
                    sampler_args=0, poll_seconds=0.05)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_released_worker, args=(job, str(go))) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(3)  # both imported and waiting
    go.touch()  # released together on the empty study
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    evaluated = log.read_text().splitlines()
    assert len(evaluated) == len(set(evaluated)) == budget  # no network evaluated twice
    study = optuna.load_study(study_name=study_name, storage=storage)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    counted = [t for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(counted) == counted_trials(study) == budget  # exact count
    assert {t.user_attrs["spec"] for t in counted} == set(evaluated)
    repeats = [t for t in complete if "duplicate_of" in t.user_attrs]
    assert repeats, "the two samplers proposed the same networks: some must be repeats"
    assert all(study.trials[t.user_attrs["duplicate_of"]].values == t.values for t in repeats)
    return study


def test_two_workers_released_together_on_an_empty_journal_study_run_each_network_once(tmp_path: Path):
    _race(StorageSettings(run_dir=str(tmp_path / "run")), "race", tmp_path, budget=5)


@pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL: set NAS_TEST_POSTGRES_URL "
                                             "(.ci/run starts a throw-away cluster)")
def test_two_workers_released_together_on_an_empty_postgresql_study_run_each_network_once(tmp_path: Path):
    _race(StorageSettings(run_dir=str(tmp_path / "run"), url=POSTGRES_URL, heartbeat_interval=5,
                          grace_period=15), f"race_{os.getpid()}_{int(time.time())}", tmp_path, budget=5)


def test_a_failed_trial_retried_twice_at_once_is_evaluated_once(tmp_path: Path):
    """A restart's requeue and another machine's heartbeat callback may both enqueue a retry
    of one failed trial; the lowest-numbered retry runs, the other gives way unevaluated."""
    settings = StorageSettings(run_dir=str(tmp_path / "run"))
    storage = open_storage(settings)
    study = load_or_create_study(storage, study_name="retries", directions=["maximize", "minimize"],
                                 sampler=optuna.samplers.RandomSampler(), resume=False)
    space = load_space(SPACE)
    params = space.params_of(space.canonical())
    study.enqueue_trial(params)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    for _ in range(2):  # the two retries, enqueued in the same moment
        study.enqueue_trial(params, user_attrs={"retries": 1, "retry_of": failed.number},
                            skip_if_exists=False)
    log = tmp_path / "evaluations.log"
    job = WorkerJob(storage=settings, study_name="retries", factory=logging_objective,
                    factory_args=(str(log), 0.0), budget=3, sampler_factory=same_sequence_sampler,
                    sampler_args=0, poll_seconds=0.05)
    run_worker(job)
    evaluated = log.read_text().splitlines()
    assert len(evaluated) == len(set(evaluated)) == 3
    study = optuna.load_study(study_name="retries", storage=storage)
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == failed.number]
    assert [t.state for t in retries] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert retries[1].user_attrs["fail_reason"] == (
        f"not run: trial {retries[0].number} already retries trial {failed.number}")
    assert "duplicate_of" not in retries[0].user_attrs  # the retry itself was evaluated


# ---------------------------------------------------------------------------- fingerprint
def _cfg(epochs: int = 1) -> dict:
    return {"space": {"name": "tiny", "choices": {"kernel": [3, 5]}}, "mode": "pareto",
            "budget_ms": None, "target_ms": None, "reward_exponent": None,
            "data": {"name": "synthetic", "root": "/a", "num_workers": 0},
            "evaluator": {"kind": "proxy", "train": {"epochs": epochs, "progress": False}},
            "latency": {"table": "/t", "runtime": "torch-cpu", "resolution": 64},
            "trials": 3, "n_workers": 1}


class FakeTable:
    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.provenance = {"runtime": "torch-cpu", "runtime_version": "2.14", "device": "cpu",
                           "threads": 1, "batch": 1, "dtype": "float32"}

    def __contains__(self, key: str) -> bool:
        return True

    def ms(self, key: str) -> float:
        return len(key) * self.scale


def test_a_changed_defining_setting_is_refused_naming_both_values(tmp_path: Path):
    space = load_space(SPACE)
    storage = open_storage(StorageSettings(run_dir=str(tmp_path)))
    study = load_or_create_study(storage, study_name="f", directions=["maximize"],
                                 sampler=optuna.samplers.RandomSampler(), resume=False)
    check_or_store(study, study_fingerprint(_cfg(), FakeTable(), space))
    # How the run is done may change; what the values mean may not.
    relaxed = {**_cfg(), "trials": 9, "n_workers": 4, "data": {**_cfg()["data"], "root": "/b"}}
    check_or_store(study, study_fingerprint(relaxed, FakeTable(), space))
    with pytest.raises(StudySettingsMismatch) as refused:
        check_or_store(study, study_fingerprint(_cfg(epochs=2), FakeTable(scale=2.0), space))
    message = str(refused.value)
    assert "\n" not in message
    assert "evaluator.train.epochs: the study has 1, this start 2" in message
    assert "latency.table.figures: the study has sha256:" in message
    assert "trials" in message and "n_workers" in message  # the settings that may change


def test_differences_lists_every_setting_once():
    assert differences({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == [
        "b: the study has 2, this start 3", "c: the study has (not set), this start 4"]
    assert "latency.table" in MAY_CHANGE and "space" not in MAY_CHANGE


# ---------------------------------------------------------------------------- full disk
def test_an_atomic_write_on_a_full_disk_names_the_file_and_leaves_no_temporary(small_disk):
    target = small_disk.path / "trials.csv"
    write_text_atomic(target, "old\n")
    small_disk.fill()
    with pytest.raises(OutOfSpaceError, match=r"no space left on the device of .*trials.csv while "
                                              r"writing the trial table"):
        write_text_atomic(target, "x" * 100_000, what="the trial table")
    assert target.read_text() == "old\n"
    assert small_disk.temporary_files() == []


def test_a_journal_append_on_a_full_disk_leaves_the_journal_whole(small_disk):
    settings = StorageSettings(run_dir=str(small_disk.path / "run"))
    study = load_or_create_study(open_storage(settings), study_name="d", directions=["maximize"],
                                 sampler=optuna.samplers.RandomSampler(seed=0), resume=False)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    before = settings.journal_path.read_bytes()
    small_disk.fill()
    for _ in range(3):  # a retry on the still-full disk never lands on half a record
        with pytest.raises(OutOfSpaceError, match="study.journal while writing the study journal"):
            study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y" * 3000, 0, 1),
                           n_trials=1)
        check_journal(settings.journal_path)  # no damage
    small_disk.free()
    resumed = optuna.load_study(study_name="d", storage=open_storage(settings))
    resumed.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert settings.journal_path.read_bytes().startswith(before)
    assert len(resumed.get_trials(states=(TrialState.COMPLETE,))) == 4


def _damaged_journal(tmp_path: Path) -> tuple[StorageSettings, bytes, int]:
    settings = StorageSettings(run_dir=str(tmp_path))
    study = load_or_create_study(open_storage(settings), study_name="r", directions=["maximize"],
                                 sampler=optuna.samplers.RandomSampler(seed=0), resume=False)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    head = settings.journal_path.read_bytes()
    records = head.count(b"\n")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    tail = settings.journal_path.read_bytes()[len(head):]
    # A record cut short by a full disk, with the next append written onto it: one garbled
    # line holding a torn fragment and then a whole record, and the records after it.
    first, _, rest = tail.partition(b"\n")
    garbled = b'{"op_code":5,"worker_id":"w","trial_id":1,"param_na' + first + b"\n"
    settings.journal_path.write_bytes(head + garbled + rest)
    return settings, head + first + b"\n" + rest, records + 1


def test_a_garbled_record_mid_journal_is_named_and_repair_keeps_every_complete_record(tmp_path: Path):
    from nas.cli.study import main as study_main

    settings, whole, line = _damaged_journal(tmp_path)
    with pytest.raises(JournalError, match=rf"study.journal:{line}: not a complete journal record; "
                                           r"repair with `nas-study repair .*study.journal`"):
        open_storage(settings)
    assert study_main(["repair", str(settings.journal_path)]) == 0
    assert settings.journal_path.read_bytes() == whole  # the record after the garbled one kept
    study = optuna.load_study(study_name="r", storage=open_storage(settings))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_a_journal_damaged_mid_run_names_the_file_line_and_repair(tmp_path: Path):
    settings = StorageSettings(run_dir=str(tmp_path))
    study = load_or_create_study(open_storage(settings), study_name="m", directions=["maximize"],
                                 sampler=optuna.samplers.RandomSampler(seed=0), resume=False)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    records = settings.journal_path.read_bytes().count(b"\n")
    with open(settings.journal_path, "ab") as handle:  # another writer's damage, then a record
        handle.write(b'{"op_code":5,"wor\n{"op_code":0,"worker_id":"w","study_name":"z","directions":[1]}\n')
    with pytest.raises(JournalError, match=rf"study.journal:{records + 1}: .*nas-study repair"):
        study.get_trials()


def test_repair_on_a_full_disk_refuses_and_changes_nothing(small_disk, capsys):
    from nas.cli.study import main as study_main

    settings, _, _ = _damaged_journal(small_disk.path / "run")
    damaged = settings.journal_path.read_bytes()
    small_disk.fill()
    assert study_main(["repair", str(settings.journal_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not repaired" in err and "no space left" in err
    assert settings.journal_path.read_bytes() == damaged
    assert not list(settings.journal_path.parent.glob("*.damaged-*"))
    assert small_disk.temporary_files() == []


def test_a_trial_whose_record_a_repair_dropped_says_so_when_it_is_rerun(tmp_path: Path):
    settings = StorageSettings(run_dir=str(tmp_path))
    study = load_or_create_study(open_storage(settings), study_name="t", directions=["maximize"],
                                 sampler=optuna.samplers.RandomSampler(seed=0), resume=False)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    dead = 2 ** 22 + 4321
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead}")
    with open(settings.journal_path, "ab") as handle:  # its COMPLETE record, cut short
        handle.write(b'{"op_code":6,"worker_id":"w","trial_id":%d,"state":1,"val' % trial.number)
    repair_journal(settings.journal_path)
    study = optuna.load_study(study_name="t", storage=open_storage(settings))
    assert recover_dead_workers(study) == [trial.number]
    reason = fail_reason(study.trials[trial.number], study.user_attrs)
    assert "journal record was lost" in reason and "nas-study repair" in reason


# ---------------------------------------------------------------------------- credentials
def test_passwords_are_redacted_and_revealed_only_in_memory(tmp_path: Path):
    argv = ["nas-search", "storage=postgresql://ann:pa:ss@db.example:5433/nas", "trials=3"]
    cleaned = hide_passwords(argv)
    assert cleaned[1] == "storage=postgresql://ann:***@db.example:5433/nas"
    assert reveal("postgresql://ann:***@db.example:5433/nas") == "postgresql://ann:pa:ss@db.example:5433/nas"
    assert redact("sqlite:///x.db and postgresql://u@h/db") == "sqlite:///x.db and postgresql://u@h/db"
    (tmp_path / "config.yaml").write_text("storage: mysql+pymysql://root:hunter2@localhost/x\n")
    assert scrub_folder(tmp_path) == [tmp_path / "config.yaml"]
    assert "hunter2" not in (tmp_path / "config.yaml").read_text()


def test_an_unreachable_database_is_one_line_naming_host_port_and_database(tmp_path: Path):
    settings = StorageSettings(run_dir=str(tmp_path), url="postgresql://ann:hunter2@127.0.0.1:9/studies")
    with pytest.raises(StorageUnreachableError) as refused:
        open_storage(settings)
    message = str(refused.value)
    assert "\n" not in message and "hunter2" not in message
    assert "'studies' at 127.0.0.1:9 as user 'ann'" in message


def test_a_heartbeat_failed_trial_has_its_reason_and_no_deprecation_warning(tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        storage = open_storage(StorageSettings(run_dir=str(tmp_path), url=f"sqlite:///{tmp_path}/s.db",
                                               heartbeat_interval=1, grace_period=2))
    study = optuna.create_study(study_name="h", storage=storage)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("worker", "elsewhere:42")
    study.tell(trial, state=TrialState.FAIL)  # what the heartbeat does to a stale trial
    HeartbeatRetry(max_retry=1, grace_period=2)(study, study.trials[trial.number])
    reason = fail_reason(study.trials[trial.number], study.user_attrs)
    assert reason.startswith("worker elsewhere:42 stopped its heartbeat for over 2 s")
    assert study.trials[-1].state == TrialState.WAITING  # and it is retried


# ---------------------------------------------------------------------------- smaller items
def test_each_workers_progress_line_is_its_own_trial(tmp_path: Path, capsys):
    from nas.arch.codecs import load_spec, to_string

    study = optuna.create_study(directions=["maximize", "minimize"])
    for value, name in ((0.1, "small"), (0.2, "large")):
        trial = study.ask()
        trial.set_user_attr("accuracy", value)
        trial.set_user_attr("latency_ms", 1.0)
        trial.set_user_attr("spec", to_string(load_spec(name)))
        study.tell(trial, [value, 1.0])
    TrialReporter(tmp_path, budget=2)(study, study.trials[0])  # the study's latest is trial 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("trial 0 [2/2] top-1 10.00%")
    assert f"| {to_string(load_spec('small'))} | " in line  # trial 0's network, not trial 1's


def test_train_and_val_of_different_sizes_are_refused(tmp_path: Path):
    from PIL import Image

    from nas.training.tensor_data import TensorDataError, load_tensor_folder

    for split, size in (("train", 8), ("val", 16)):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (size, size)).save(folder / "0.png")
    with pytest.raises(TensorDataError, match=r"different sizes .*train 8x8.*val 16x16"):
        load_tensor_folder(tmp_path / "data", cache_dir=tmp_path / "cache", verbose=False)


def test_importing_a_binary_file_names_it(tmp_path: Path, capsys):
    from nas.cli.lut import main as lut_main

    blob = tmp_path / "table.csv"
    blob.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SystemExit) as stopped:
        lut_main(["import", str(blob), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"{blob}: not a text file" in err and "Traceback" not in err


def test_a_checkpoint_and_a_latency_table_on_a_full_disk_name_their_file(small_disk):
    from nas.cost.lut import LatencyTable
    from nas.training.checkpoint import save_atomic

    small_disk.fill()
    with pytest.raises(OutOfSpaceError, match=r"last.pt while writing a checkpoint"):
        save_atomic({"weights": list(range(100_000))}, small_disk.path / "last.pt")
    table = LatencyTable({"runtime": "torch-cpu", "resolution": 32, "threads": 1, "batch": 1},
                         {"pool_r4_i16": {"ms": 0.01}})
    with pytest.raises(OutOfSpaceError, match=r"table.csv while writing table.csv"):
        table.save(small_disk.path / "table")
    assert small_disk.temporary_files() == []


def test_a_study_stored_with_the_retired_global_batchnorm_resumes_as_one_batchnorm_slice(tmp_path: Path) -> None:
    """evaluator.train.global_batchnorm=true (whole-batch BatchNorm) is batchnorm_slices=1 today;
    a study stored with false trained with per-process slices and must not resume as 1."""
    storage = open_storage(StorageSettings(run_dir=str(tmp_path)))
    now = {"mode": '"pareto"', "evaluator.train.batchnorm_slices": "1"}
    for stored, resumes in (("true", True), ("false", False)):
        study = load_or_create_study(storage, study_name=f"old-{stored}", directions=["maximize"],
                                     sampler=optuna.samplers.RandomSampler(), resume=False)
        check_or_store(study, {"mode": '"pareto"', "evaluator.train.global_batchnorm": stored})
        if resumes:
            check_or_store(study, now)
            with pytest.raises(StudySettingsMismatch, match='batchnorm_slices: the study has 1, this start 2'):
                check_or_store(study, {**now, "evaluator.train.batchnorm_slices": "2"})
        else:
            with pytest.raises(StudySettingsMismatch, match="global_batchnorm: the study has false"):
                check_or_store(study, now)

