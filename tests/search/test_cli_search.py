"""nas-search end to end: real proxy training on synthetic data, a real (tiny) latency table."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from nas.arch.codecs import from_string, load_spec
from nas.cost.lut import LatencyTable
from nas.search.objective import fail_reason, retried_number
from nas.arch.space import load_space
from nas.search.storage import JOURNAL_NAME

SPACES = Path(__file__).resolve().parents[1] / "data" / "spaces"
SCRIPT = str(Path(sys.executable).parent / "nas-search")


def _args(run_dir: Path, table: Path, *extra: str) -> list[str]:
    return [
        SCRIPT, f"hydra.searchpath=[file://{SPACES}]", "space=tiny",
        f"latency.table={table}", "latency.backend=torch", "latency.resolution=64", f"hydra.run.dir={run_dir}",
        "data=synthetic", "evaluator=proxy", "data.train_samples=96", "data.val_samples=64", "data.batch_size=32",
        "evaluator.train.epochs=1", *extra,
    ]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def test_search_end_to_end_and_resume(tmp_path: Path, tiny_table: Path):
    run_dir = tmp_path / "run"
    result = _run(_args(run_dir, tiny_table, "trials=3", "sampler=nsga2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front" in result.stdout
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 3 and (trials["state"] == "COMPLETE").all()
    assert trials.loc[0, "canonical"]  # the canonical network is trial 0
    assert trials["accuracy"].between(0, 1).all() and (trials["latency_ms"] > 0).all()
    assert (trials["madds"] > 0).all() and (trials["params"] > 0).all()
    pareto = pd.read_csv(run_dir / "pareto.csv")
    configs = sorted((run_dir / "pareto").glob("*.yaml"))
    assert len(configs) == len(pareto) >= 1
    load_spec(configs[0])  # the builder's loader reads them back
    assert (run_dir / "pareto.png").stat().st_size > 0
    assert (run_dir / JOURNAL_NAME).is_file()

    resumed = _run(_args(run_dir, tiny_table, "trials=5", "sampler=nsga2", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    counted = trials[(trials["state"] == "COMPLETE") & trials["duplicate_of"].isna()]
    assert len(counted) == 5 and trials["canonical"].sum() == 1
    # The resumed sampler does not replay the first start's sequence: no network twice.
    assert counted["spec"].is_unique


def test_missing_latency_keys_stop_the_run_or_get_measured(tmp_path: Path, tiny_table: Path):
    full = LatencyTable.load(tiny_table)
    kept = {key: full.entry(key) for key in full.keys[5:]}
    LatencyTable(full.provenance, kept).save(tmp_path / "partial")
    result = _run(_args(tmp_path / "run1", tmp_path / "partial", "trials=1"))
    assert result.returncode == 2
    assert "no entry for 5 key(s)" in result.stderr and "measure_missing=true" in result.stderr
    measured = _run(_args(tmp_path / "run2", tmp_path / "partial", "trials=1",
                          "latency.measure_missing=true"))
    assert measured.returncode == 0, measured.stderr[-3000:]
    assert "measuring 5 missing" in measured.stdout + measured.stderr
    space = load_space(SPACES / "space" / "tiny.yaml")
    # The measured keys extend the run's own copy; the configured table is never written.
    assert LatencyTable.load(tmp_path / "run2" / "latency_table").missing_keys(space) == []
    assert len(LatencyTable.load(tmp_path / "partial").missing_keys(space)) == 5
    resumed = _run(_args(tmp_path / "run2", tmp_path / "partial", "trials=2", "resume=true",
                         "latency.measure_missing=true"))
    assert resumed.returncode == 0 and "measuring" not in resumed.stdout + resumed.stderr


def test_table_resolution_must_match(tmp_path: Path, tiny_table: Path):
    result = _run(_args(tmp_path / "run", tiny_table, "latency.resolution=224"))
    assert result.returncode == 2 and "resolution" in result.stderr


def _stacks_of(process: subprocess.Popen, log: Path) -> str:
    """Abort a stuck run and return its log, which ends with every thread's Python stack."""
    process.send_signal(signal.SIGABRT)  # faulthandler (PYTHONFAULTHANDLER=1) dumps the stacks
    process.wait(timeout=60)
    text = log.read_text(errors="replace")
    notable = [line for line in text.splitlines()
               if any(word in line for word in ("Exception ignored", "Traceback", "nterrupt", "Error"))]
    return "\n".join(notable[:40]) + "\n...\n" + text[-6000:]


def test_ctrl_c_stops_cleanly_with_outputs(tmp_path: Path, tiny_table: Path):
    run_dir, log = tmp_path / "run", tmp_path / "nas-search.log"
    # Output goes to a file, not a pipe nobody reads while we wait (a full pipe would stall
    # the run); faulthandler lets a stuck run show where it is stuck.
    with open(log, "w") as sink:
        process = subprocess.Popen(_args(run_dir, tiny_table, "trials=200"), stdout=sink,
                                   stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                                   # A test session started in the background (`cmd &`) has
                                   # SIGINT ignored, and children inherit that: give the run
                                   # the default disposition a terminal's Ctrl-C meets.
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, finished = time.time() + 240, 0
    while time.time() < deadline and finished < 2:
        time.sleep(2)
        if (run_dir / JOURNAL_NAME).is_file():
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(run_dir / JOURNAL_NAME)))
            try:
                study = optuna.load_study(study_name="mobilenetv3_search", storage=storage)
            except KeyError:
                continue
            finished = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    if finished < 2:
        pytest.fail(f"nas-search finished {finished} trial(s) in 240 s:\n{_stacks_of(process, log)}")
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"nas-search ignored Ctrl-C for 120 s:\n{_stacks_of(process, log)}")
    assert "interrupted" in log.read_text()
    assert "Traceback" not in log.read_text()  # Optuna's traceback of the stopped trial too
    assert process.returncode == 130  # the shell's code for an interrupted command
    trials = pd.read_csv(run_dir / "trials.csv")
    assert (trials["state"] == "COMPLETE").sum() >= 2
    assert len(trials) < 200
    assert (run_dir / "pareto.png").is_file()


def test_search_with_the_supernet_evaluator(tmp_path: Path, tiny_table: Path):
    run_dir = tmp_path / "run"
    result = _run([a for a in _args(run_dir, tiny_table, "trials=3") if not a.startswith("evaluator.")]
                  + ["evaluator=supernet", "evaluator.train.steps=3", "evaluator.bn_batches=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 3 and (trials["state"] == "COMPLETE").all()
    assert (run_dir / "supernet" / "supernet.pt").is_file()


def _front_specs(run_dir: Path) -> set:
    """The networks of the YAMLs in ``run_dir/pareto``."""
    return {load_spec(p).replace(name="") for p in (run_dir / "pareto").glob("*.yaml")}


def _pareto_specs(run_dir: Path) -> set:
    """The networks ``run_dir/pareto.csv`` lists."""
    return {from_string(s) for s in pd.read_csv(run_dir / "pareto.csv")["spec"]}


def test_a_killed_run_leaves_outputs_and_its_resume_counts_exactly(tmp_path: Path, tiny_table: Path):
    run_dir, log = tmp_path / "run", tmp_path / "nas-search.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(_args(run_dir, tiny_table, "trials=4"), stdout=sink,
                                   stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    # Kill (SIGKILL: no handler runs) once two trials are complete and a third is running.
    while time.time() < deadline:
        time.sleep(0.5)
        if (run_dir / "trials.csv").is_file():
            frame = pd.read_csv(run_dir / "trials.csv")
            if (frame["state"] == "COMPLETE").sum() >= 2:
                break
    process.kill()
    process.wait(timeout=60)
    frame = pd.read_csv(run_dir / "trials.csv")  # written after every trial, not only at the end
    assert (frame["state"] == "COMPLETE").sum() >= 2
    # No dangling row (a kill mid-write may leave a stale YAML; the next write removes it).
    assert _pareto_specs(run_dir) <= _front_specs(run_dir)
    resumed = _run(_args(run_dir, tiny_table, "trials=4", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _pareto_specs(run_dir) == _front_specs(run_dir)
    trials = pd.read_csv(run_dir / "trials.csv")
    counted = trials[(trials["state"] == "COMPLETE") & trials["duplicate_of"].isna()]
    assert len(counted) == 4 and counted["spec"].is_unique
    killed = trials[trials["state"] == "FAIL"]
    assert len(killed) <= 1  # the trial that was running when the process died
    if len(killed):
        assert "died" in str(killed["fail_reason"].iloc[0])
        number = int(killed["number"].iloc[0])
        had_params = killed.filter(like="param_").notna().any(axis=1).iloc[0]
        # Run again on resume (when it had got as far as its parameters).
        assert (trials["retry_of"] == number).sum() == (1 if had_params else 0)


def test_two_processes_on_one_study_share_one_budget(tmp_path: Path, tiny_table: Path):
    run_dir = tmp_path / "run"
    first = _run(_args(run_dir, tiny_table, "trials=1"))  # creates the study
    assert first.returncode == 0, first.stderr[-3000:]
    # Two more "machines" join with resume=true; together they bring the study to 6.
    joined = [subprocess.Popen(_args(run_dir, tiny_table, "trials=6", "resume=true"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for process in joined:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    counted = trials[(trials["state"] == "COMPLETE") & trials["duplicate_of"].isna()]
    assert len(counted) == 6 and counted["spec"].is_unique
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"}  # PRUNED: waited, budget reached


POSTGRES_URL = os.environ.get("NAS_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL: set NAS_TEST_POSTGRES_URL "
                                             "(.ci/run starts a throw-away cluster)")
def test_two_machines_share_a_postgresql_study_through_a_kill(tmp_path: Path, tiny_table: Path):
    study_name = f"scaleout_{os.getpid()}_{int(time.time())}"
    storage_args = [f"storage={POSTGRES_URL}", f"study_name={study_name}", "heartbeat_interval=1",
                    "trials=6"]
    machine_a = subprocess.Popen(_args(tmp_path / "a", tiny_table, *storage_args),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = optuna.storages.RDBStorage(POSTGRES_URL)
    deadline = time.time() + 120
    while study_name not in optuna.get_all_study_names(storage) and time.time() < deadline:
        time.sleep(0.5)

    def start_b() -> subprocess.Popen:
        return subprocess.Popen(_args(tmp_path / "b", tiny_table, *storage_args, "resume=true"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def evaluating(worker: str) -> list[int]:
        """Trials of ``worker`` still RUNNING with their network chosen."""
        study = optuna.load_study(study_name=study_name, storage=storage)
        return [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.user_attrs.get("worker") == worker and "spec" in t.user_attrs]

    victim = None
    for _ in range(3):  # a trial can finish between the look and the kill: kill B again
        machine_b = start_b()
        worker_b = f"{socket.gethostname()}:{machine_b.pid}"
        while not evaluating(worker_b) and machine_b.poll() is None and time.time() < deadline + 120:
            time.sleep(0.05)
        machine_b.kill()  # SIGKILL: no handler runs; only the heartbeat can tell
        machine_b.wait(timeout=60)
        # Looked up after the kill (the heartbeat's grace period is far longer than this).
        killed = evaluating(worker_b)
        if killed:
            victim = killed[0]
            break
    assert victim is not None, "machine B was never killed mid-trial"
    machine_b = start_b()
    for process in (machine_a, machine_b):
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials()
    counted = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
               and "duplicate_of" not in t.user_attrs]
    assert len(counted) == 6  # exactly the budget over both machines
    specs = [t.user_attrs["spec"] for t in counted]
    assert len(set(specs)) == 6  # no network evaluated twice
    assert trials[victim].state == optuna.trial.TrialState.FAIL  # failed by the heartbeat
    assert "stopped its heartbeat" in fail_reason(trials[victim], study.user_attrs)
    retries = [t for t in trials
               if retried_number(t) == victim or t.user_attrs.get("retry_of") == victim]
    assert retries, "the killed trial was never re-enqueued"
    # Two machines may each enqueue a retry of the killed trial (the restart's requeue and the
    # other machine's heartbeat recovery): at most one runs; every other one gives way or
    # finds the budget already reached, unevaluated ("not run"), or is left in the queue.
    run = [t for t in retries if t.state != optuna.trial.TrialState.WAITING
           and "not run" not in t.user_attrs.get("fail_reason", "")]
    assert len(run) <= 1, [(t.number, t.state, t.user_attrs) for t in retries]
    # Evaluated with the killed trial's network, unless a trial admitted in the moment
    # between the heartbeat's FAIL and the retry's enqueueing took the room (the count stays
    # exact either way).
    assert all(t.params == trials[victim].params for t in run)
    for folder in (tmp_path / "a", tmp_path / "b"):  # each machine's outputs are consistent
        frame = pd.read_csv(folder / "trials.csv")
        assert len(list((folder / "pareto").glob("*.yaml"))) == len(pd.read_csv(folder / "pareto.csv"))
        assert set(frame["number"]) <= {t.number for t in trials}


def _wait_for_complete(run_dir: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
        if (run_dir / "trials.csv").is_file():
            frame = pd.read_csv(run_dir / "trials.csv")
            if (frame["state"] == "COMPLETE").sum() >= count:
                return
    pytest.fail(f"fewer than {count} complete trials in {timeout} s")


def test_two_workers_ctrl_c_leave_no_running_trial_and_resume_retries(tmp_path: Path, tiny_table: Path):
    run_dir, log = tmp_path / "run", tmp_path / "nas-search.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(_args(run_dir, tiny_table, "trials=8", "n_workers=2"), stdout=sink,
                                   stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_complete(run_dir, 2, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert "RUNNING" not in set(trials["state"])  # every interrupted trial is marked
    resumed = _run(_args(run_dir, tiny_table, "trials=8", "n_workers=2", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    counted = trials[(trials["state"] == "COMPLETE") & trials["duplicate_of"].isna()]
    assert len(counted) == 8 and counted["spec"].is_unique
    interrupted = trials[trials["state"] == "FAIL"]
    with_params = interrupted[interrupted.filter(like="param_").notna().any(axis=1)]
    for number in with_params["number"]:
        assert (trials["retry_of"] == number).sum() == 1  # each retried once on resume


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_a_killed_worker_is_named_and_the_other_finishes_the_budget(tmp_path: Path, tiny_table: Path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_args(run_dir, tiny_table, "trials=6", "n_workers=2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_complete(run_dir, 1, process)
    workers = [c for c in _children(process.pid)
               if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]
    assert re.search(r"nas-search: error: worker [01] exited with code -9 \(killed by a signal\)", err)
    assert "Traceback" not in err
    trials = pd.read_csv(run_dir / "trials.csv")
    counted = trials[(trials["state"] == "COMPLETE") & trials["duplicate_of"].isna()]
    assert len(counted) == 6 and counted["spec"].is_unique  # the survivor did the dead one's share
    assert "RUNNING" not in set(trials["state"])


def test_a_fresh_one_worker_run_is_repeatable(tmp_path: Path, tiny_table: Path):
    runs = [_run(_args(tmp_path / f"run{i}", tiny_table, "trials=3", "sampler=random")) for i in (0, 1)]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    specs = [list(pd.read_csv(tmp_path / f"run{i}" / "trials.csv")["spec"]) for i in (0, 1)]
    assert specs[0] == specs[1]  # the configured seed, not a per-start one


def test_a_resumed_auto_run_keeps_the_table_it_chose(tmp_path: Path, tiny_table: Path):
    """latency.table=auto is resolved once per run: a resumed study is scored with the same
    table even when the cache has been rebuilt since."""
    from nas.cost.policy import CHOICE_FILE, LatencyPolicy, choose_source

    (tmp_path / CHOICE_FILE).write_text(f"{tiny_table}\n")
    source, reason = choose_source(LatencyPolicy(table="auto", resolution=64),
                                   load_space(SPACES / "space" / "tiny.yaml"), tmp_path, resume=True)
    assert source == tiny_table and "resumed" in reason


def test_a_resume_with_other_settings_is_refused_naming_each(tmp_path: Path, tiny_table: Path):
    run_dir = tmp_path / "run"
    first = _run(_args(run_dir, tiny_table, "trials=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    other_table = tmp_path / "other_table"  # the same keys, measured 2x slower
    other_table.mkdir()
    (other_table / "provenance.json").write_text((tiny_table / "provenance.json").read_text())
    frame = pd.read_csv(tiny_table / "table.csv")
    frame["ms"] = frame["ms"] * 2
    frame.to_csv(other_table / "table.csv", index=False)
    refused = _run([a.replace(f"latency.table={tiny_table}", f"latency.table={other_table}")
                    for a in _args(run_dir, tiny_table, "trials=2", "resume=true",
                                   "evaluator.train.epochs=2")])
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = [line for line in refused.stderr.splitlines() if line.startswith("nas-search: error:")]
    assert len(error) == 1 and "Traceback" not in refused.stderr
    assert "evaluator.train.epochs: the study has 1, this start 2" in error[0]
    assert "latency.table.figures: the study has sha256:" in error[0]
    assert len(pd.read_csv(run_dir / "trials.csv")) == 1  # nothing mixed in
    allowed = _run(_args(run_dir, tiny_table, "trials=2", "resume=true", "n_workers=1", "threads=1"))
    assert allowed.returncode == 0, allowed.stderr[-3000:]


@pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL: set NAS_TEST_POSTGRES_URL "
                                             "(.ci/run starts a throw-away cluster)")
def test_a_password_in_the_storage_url_reaches_neither_disk_nor_output(tmp_path: Path, tiny_table: Path):
    password = "Pw-never-on-disk-31337"
    # The CI cluster trusts local connections, so any password is accepted (and ignored).
    url = POSTGRES_URL.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    run_dir = tmp_path / "run"
    result = _run(_args(run_dir, tiny_table, "trials=1", f"storage={url}",
                        f"study_name=secret_{os.getpid()}_{int(time.time())}"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert password not in result.stdout + result.stderr
    written = [p for p in run_dir.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert written == []
    assert "postgres:***@" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    unreachable = _run(_args(tmp_path / "down", tiny_table, "trials=1",
                             f"storage=postgresql://ann:{password}@127.0.0.1:9/studies"))
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip().splitlines()[-1].startswith(
        "nas-search: error: storage: cannot use the postgresql database 'studies' at 127.0.0.1:9")
    assert password not in unreachable.stdout + unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert not [p for p in (tmp_path / "down").rglob("*") if p.is_file() and password.encode() in p.read_bytes()]


def test_a_full_disk_stops_the_run_in_one_line_and_the_resume_counts_exactly(
        small_disk, tmp_path: Path, tiny_table: Path):
    from nas.search.storage import check_journal

    run_dir = small_disk.path / "run"
    first = _run(_args(run_dir, tiny_table, "trials=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    small_disk.fill()
    for _ in range(2):  # a resume on the still-full disk: the same one line, nothing torn
        stopped = _run(_args(run_dir, tiny_table, "trials=4", "resume=true"))
        assert stopped.returncode == 1, stopped.stderr[-3000:]
        assert "Traceback" not in stopped.stderr, stopped.stderr[-6000:]
        last = stopped.stderr.strip().splitlines()[-1]
        assert last.startswith("nas-search: error: no space left on the device of "), last
        assert small_disk.temporary_files() == []
        check_journal(run_dir / JOURNAL_NAME)
    small_disk.free()
    resumed = _run(_args(run_dir, tiny_table, "trials=4", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_csv(run_dir / "trials.csv")
    counted = trials[(trials["state"] == "COMPLETE") & trials["duplicate_of"].isna()]
    assert len(counted) == 4 and counted["spec"].is_unique
