"""Data-parallel supernet training: two CPU processes on gloo train what one process trains.

The two-process runs are launched as ``torchrun`` launches them: by ``torchrun --standalone``
itself, or (to kill one rank, or give the ranks different arguments, and read each rank's
output apart) as two processes with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
set, the ``env://`` rendezvous torchrun uses.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import write_image_folder
from nas.supernet.parallel import data_facts, step_sampler
from nas.training.data import RankBatches, make_loaders
from nas.training.data_config import DataConfig
from nas.training.distributed import describe_disagreement
from nas.training.transforms import EpochSampler

REPO = Path(__file__).resolve().parents[2]

#: Largest |difference| allowed between any weight or buffer of two runs that should agree,
#: after STEPS steps. The ranks sum gradients and BatchNorm statistics in another order than
#: one process does, so the runs agree to float rounding, not bit for bit: measured 3.6e-7
#: (lr 0.01). Sandwich training amplifies rounding with the learning rate: at lr 0.05 the
#: same runs differ by up to 7e-5, as much as two one-process runs that differ only in
#: memory layout and thread count. The faults this must catch (BatchNorm statistics or
#: dropout masks of a rank's slice) move weights by 1e-3 or more.
TOLERANCE = 1e-5
STEPS = 8

DATA = {"name": "synthetic", "resolution": 32, "num_classes": 4, "train_samples": 64,
        "val_samples": 32, "batch_size": 16, "num_workers": 0, "seed": 0}
# largest_warmup_steps: the run also crosses the channel sort; distillation and the
# classifier's dropout are on (the dropout mask is drawn for the global batch).
TRAIN = {"steps": STEPS, "lr": 0.01, "num_random": 1, "largest_warmup_steps": 2, "distill": True,
         "device": "cpu", "progress": False, "checkpoint_every": 1, "seed": 0}

RANK_SCRIPT = textwrap.dedent("""
    import sys, torch, yaml
    from nas.arch.space import load_space
    from nas.supernet.train import SupernetTrainConfig, new_supernet, train_supernet
    from nas.training.data import make_loaders
    from nas.training.data_config import DataConfig
    from nas.training.distributed import init_from_env, shutdown

    torch.set_num_threads(1)
    parallel = init_from_env("cpu")
    data = DataConfig.from_dict(yaml.safe_load(open(sys.argv[1])))
    cfg = SupernetTrainConfig.from_dict(yaml.safe_load(open(sys.argv[2]))["train"])
    loaders = make_loaders(data, seed=cfg.seed, rank=parallel.rank, world=parallel.world)
    result = train_supernet(new_supernet(load_space("mobilenetv3_small"), loaders.num_classes, cfg),
                            data, cfg, loaders=loaders, parallel=parallel)
    torch.save({"state": result.supernet.state_dict(), "history": result.history,
                "processes": result.processes}, f"{sys.argv[3]}/rank{parallel.rank}.pt")
    shutdown()
""")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(argvs: list[list[str]]) -> list[subprocess.Popen[str]]:
    """One process per argv, rank = position, joined through the env:// rendezvous."""
    port, world = _free_port(), len(argvs)
    return [subprocess.Popen(
        [sys.executable, *argv], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                 LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
        for rank, argv in enumerate(argvs)]


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, out, err))
    return results


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("supernet_ddp")
    paths = {"data": root / "data.yaml", "train": root / "train.yaml", "script": root / "rank.py"}
    paths["data"].write_text(yaml.safe_dump(DATA))
    paths["train"].write_text(yaml.safe_dump({"train": TRAIN}))
    paths["script"].write_text(RANK_SCRIPT)
    return paths


@pytest.fixture(scope="module")
def runs(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The library run in one process and, under ``torchrun``, in two."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    args = [str(files["script"]), str(files["data"]), str(files["train"])]
    done = subprocess.run([sys.executable, *args, str(one)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", *args, str(two)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    load = lambda path: torch.load(path, weights_only=True)  # noqa: E731
    return {"one": load(one / "rank0.pt"), "two": [load(two / f"rank{r}.pt") for r in (0, 1)]}


def _cli(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["-m", "nas.cli.supernet", "train", "--data", str(files["data"]), "--config",
            str(files["train"]), "--out", str(out), "--no-eval", *extra]


# ---------------------------------------------------------------------------- equivalence
def test_two_processes_train_the_supernet_one_process_trains(runs: dict[str, Any]) -> None:
    one, (rank0, rank1) = runs["one"], runs["two"]
    assert (one["processes"], rank0["processes"]) == (1, 2)
    # The ranks hold one network: weights and BatchNorm statistics equal bit for bit.
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    # ... and it is the one one process trains on the global batch.
    difference = _max_difference(one["state"], rank0["state"])
    assert difference <= TOLERANCE, f"max |difference| {difference:.3g} > {TOLERANCE}"
    # The losses recorded are those of the global batch (averaged over the ranks).
    for a, b in zip(one["history"], rank0["history"]):
        for key in ("loss_largest", "loss_smallest", "loss_random"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key


def test_batchnorm_slices_two_processes_train_what_one_process_trains_with_two_slices(
        files: dict[str, Path], runs: dict[str, Any], tmp_path: Path) -> None:
    """train.batchnorm_slices=2: each rank normalises its slice with no collective, the running
    statistics are averaged with the gradients; one process normalising the same two slices
    trains the same weights, and both leave the whole-batch BatchNorm's weights."""
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"train": {**TRAIN, "batchnorm_slices": 2}}))
    args = [str(files["script"]), str(files["data"]), str(train)]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    done = subprocess.run([sys.executable, *args, str(one)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", *args, str(two)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    single = torch.load(one / "rank0.pt", weights_only=True)
    rank0, rank1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    difference = _max_difference(single["state"], rank0["state"])
    assert difference <= TOLERANCE, f"max |difference| {difference:.3g} > {TOLERANCE}"
    # Slice statistics are not the global batch's: the weights leave the whole-batch run's.
    assert _max_difference(runs["one"]["state"], rank0["state"]) > 100 * TOLERANCE
    assert _max_difference(runs["one"]["state"], single["state"]) > 100 * TOLERANCE


def test_a_killed_rank_resumes_to_the_uninterrupted_result(files: dict[str, Path], runs: dict[str, Any],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "run"
    checkpoint = out / "supernet.pt"
    procs = _launch([_cli(files, out)] * 2)
    deadline = time.monotonic() + 180
    step = 0
    while step < 4:  # a checkpoint after two sandwich steps (past the two largest-only ones)
        assert time.monotonic() < deadline and procs[1].poll() is None, "no checkpoint was written"
        if checkpoint.is_file():
            step = torch.load(checkpoint, weights_only=True)["progress"]["step"]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    (code0, _, err0), (code1, _, _) = _finish(procs, timeout=120)
    assert code1 == -signal.SIGKILL
    # The survivor stops in one line, leaving the last checkpoint unfinished.
    assert code0 == 1 and "Traceback" not in err0, err0
    assert err0.count("nas-supernet: error:") == 1 and "rerun the same command" in err0, err0
    killed = torch.load(checkpoint, weights_only=True)
    assert not killed["finished"] and 4 <= killed["progress"]["step"] < STEPS

    results = _finish(_launch([_cli(files, out)] * 2))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    assert results[0][1].count("supernet finished") == 1 and results[1][1] == ""  # rank 0 reports
    resumed = torch.load(checkpoint, weights_only=True)
    assert resumed["finished"] and resumed["progress"]["step"] == STEPS
    difference = _max_difference(runs["two"][0]["state"], resumed["model"])
    assert difference <= TOLERANCE, f"max |difference| {difference:.3g} > {TOLERANCE}"


def test_ranks_started_differently_stop_in_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = _finish(_launch([_cli(files, out),
                               _cli(files, out, "--set", "train.lr=0.2", "--set", "data.seed=1")]))
    codes = [code for code, _, _ in results]
    assert codes == [2, 2], results
    lines = results[0][2].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas-supernet: error:"), results[0][2]
    assert "rank 1 has train.lr=0.2 where rank 0 has 0.01" in lines[0]
    assert "rank 1 has data.seed=1 where rank 0 has 0" in lines[0]
    assert results[1][2].strip() == ""  # the same line, printed once
    assert not any("Traceback" in err for _, _, err in results)
    assert not out.exists()  # refused before anything was written


# ---------------------------------------------------------------------------- pieces
def test_each_step_draws_its_sub_networks_from_the_seed_and_the_step() -> None:
    draws = [step_sampler(0, s).random() for s in range(3)]
    assert len(set(draws)) == 3
    random.random()  # no state is shared with other generators
    assert [step_sampler(0, s).random() for s in (2, 0, 1)] == [draws[2], draws[0], draws[1]]
    assert step_sampler(1, 0).random() != draws[0]


def test_rank_batches_split_every_global_batch() -> None:
    order = EpochSampler(40, seed=3)
    whole = list(RankBatches(order, 8, 0, 1, drop_last=True))
    halves = [list(RankBatches(order, 8, rank, 2, drop_last=True)) for rank in (0, 1)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 5
    for batch, first, second in zip(whole, *halves):
        assert first + second == batch


def test_a_disagreement_names_each_field_and_both_values() -> None:
    line = describe_disagreement([{"train": {"lr": 0.05, "seed": 0}, "checkpoint": None},
                                  {"train": {"lr": 0.2, "seed": 0}, "checkpoint": "ab12"}])
    assert "rank 1 has train.lr=0.2 where rank 0 has 0.05" in line
    assert "rank 1 has checkpoint='ab12' where rank 0 has None" in line
    assert "seed" not in line and "\n" not in line


def test_data_facts_tell_two_image_folders_apart(tmp_path: Path) -> None:
    def facts(name: str, images: int) -> dict[str, Any]:
        root = write_image_folder(tmp_path / name, {"train": images, "val": 2})
        cfg = DataConfig(name="imagefolder", root=str(root), resolution=8, batch_size=2)
        return data_facts(make_loaders(cfg))

    assert facts("a", 4) == facts("b", 4)  # the same files under another root
    assert facts("a", 4)["train"] != facts("c", 5)["train"]
