"""Smoke test of ``python -m experiments.transfer_study`` on tiny generated shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import run_study
from experiments.transfer_summary import markdown, repeatability

wds = pytest.importorskip("webdataset")

CLASSES = 4


def _shards(root: Path) -> Path:
    """``train/train-000{0,1}.tar`` (4 images a class) and ``val/val-0000.tar`` (2 a class)."""
    rng = np.random.default_rng(0)
    number = 0
    for split, shards, per_class in (("train", 2, 2), ("val", 1, 2)):
        (root / split).mkdir(parents=True)
        for s in range(shards):
            with wds.TarWriter(str(root / split / f"{split}-{s:04d}.tar")) as sink:
                for label in range(CLASSES):
                    for _ in range(per_class):
                        pixels = np.clip(rng.normal(60 * label, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                        buffer = io.BytesIO()
                        Image.fromarray(pixels).save(buffer, format="JPEG")
                        sink.write({"__key__": f"k{number:04d}", "jpg": buffer.getvalue(),
                                    "cls": str(label).encode()})
                        number += 1
    (root / "classes.tsv").write_text("".join(f"{i}\tc{i}\tclass {i}\n" for i in range(CLASSES)))
    return root


def _protocol(path: Path, root: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "data": {"name": "webdataset", "root": str(root), "class_list": "classes.tsv",
                 "resolution": 32, "num_classes": CLASSES, "batch_size": 4, "augment": "pad_crop"},
        "train": {"epochs": 1, "lr": 0.05, "warmup_epochs": 0.0, "bn_recalibration_batches": 2,
                  "eval_every": 0},
    }))
    return path


def test_the_study_trains_in_order_resumes_and_reports(tmp_path: Path) -> None:
    root = _shards(tmp_path / "shards")
    protocol = _protocol(tmp_path / "tiny.yaml", root)
    args = ["--protocol", str(protocol), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--specs", "4", "--pool", "8", "--reference-protocol", str(protocol),
            "--only", "canonical", "found_80", "smallest", "largest", "random_q01"]
    env = {"NAS_CACHE_DIR": str(tmp_path / "cache")}
    first = run_study("transfer_study", *args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for f in sorted((tmp_path / "out" / "runs").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    started = [line.split("| ", 1)[1].split(":")[0].split(" ", 1)[1]
               for line in first.stdout.splitlines() if ": training (" in line]
    done = [(name, int(seed)) for name, seed in (s.split(" seed ") for s in started)]
    # The question first: canonical and found_80 at seed 0, their second seeds, then the rest.
    assert done[:4] == [("canonical", 0), ("found_80", 0), ("canonical", 1), ("found_80", 1)]
    assert done[4:] == [("smallest", 0), ("random_q01", 0), ("largest", 0)]  # the cheapest first
    assert sorted((r["spec"], r["seed"]) for r in rows) == sorted(done)
    assert all(r["val_images"] == 2 * CLASSES and r["params"] > 0 and r["threads"] == 1 for r in rows)
    assert len(list((tmp_path / "work" / "weights").rglob("*.pth"))) == len(rows)
    assert not list((tmp_path / "work" / "checkpoints").rglob("*.pt"))  # finished: removed

    again = run_study("transfer_study", *args, env=env)
    assert again.returncode == 0 and "training" not in again.stdout  # nothing trained twice

    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    assert summary["runs_done"] == 7
    nets = summary["networks"]
    assert nets["canonical"]["seeds"] == 2 and nets["canonical"]["cifar10_reference_top1"] > 70
    assert nets["found_80"]["cifar10_reference_top1"] > 70  # from the front-vs-canonical study
    assert nets["random_q01"]["cifar10_reference_top1"] is None  # another pool: not the benchmark's
    taus = summary["kendall_tau"]
    assert taus["benchmark_8"]["networks"] == 3 and taus["with_found"]["networks"] == 4
    assert -1 <= taus["with_found"]["tau"] <= 1
    found = summary["found_vs_canonical"]
    assert found["found_80"]["seeds"] == 2 and found["found_80"]["verdict"].startswith(("better", "worse", "tie"))
    assert len(found["found_80"]["interval_90_points"]) == 2
    assert "found_80" in (tmp_path / "out" / "summary.md").read_text()
    report = run_study("transfer_study", "--report", *args, env=env)
    assert report.returncode == 0 and "report written" in report.stdout
    assert summary["repeatability"]["seed_pairs"]["0-1"] == {"tau": None, "networks": 2}  # tau needs 3
    assert "vs_reference_mean" not in summary["repeatability"]  # it is the reference

    # A cheaper protocol, every network twice, ranked against the first one's seed mean.
    proxy = tmp_path / "tiny_proxy.yaml"
    document = yaml.safe_load(protocol.read_text())
    proxy.write_text(yaml.safe_dump({**document, "train": {**document["train"], "lr": 0.02}}))
    cheap = ["--protocol", str(proxy), "--reference-protocol", str(protocol),
             "--reference-runs", str(tmp_path / "out" / "runs"), "--out", str(tmp_path / "proxy"),
             "--work", str(tmp_path / "work"), "--specs", "4", "--pool", "8", "--all-seeds", "2",
             "--only", "smallest", "largest", "random_q01"]
    ranked = run_study("transfer_study", *cheap, env=env)
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    trained = [line.split(": training")[0].split("| ", 1)[1].split(" ", 1)[1]
               for line in ranked.stdout.splitlines() if ": training (" in line]
    assert trained == ["smallest seed 0", "random_q01 seed 0", "largest seed 0",
                       "smallest seed 1", "random_q01 seed 1", "largest seed 1"]
    rep = yaml.safe_load((tmp_path / "proxy" / "summary.yaml").read_text())["repeatability"]
    assert rep["seed_pairs"]["0-1"]["networks"] == 3 and -1 <= rep["seed_pairs"]["0-1"]["tau"] <= 1
    assert rep["reference"] == "tiny" and rep["vs_reference_networks"] == {"seed 0": 3, "seed 1": 3, "seed mean": 3}
    assert set(rep["vs_reference_mean"]) == {"seed 0", "seed 1", "seed mean"}
    # Tiny runs can tie every network (all at chance): tau is then undefined, and reported as None.
    def runs_in(folder: Path) -> pd.DataFrame:
        return pd.concat(pd.read_json(f, lines=True) for f in (folder / "runs").glob("*.jsonl"))

    reference = runs_in(tmp_path / "out")
    ranked_three = reference[reference.spec.isin(["smallest", "largest", "random_q01"])]
    reference_tied = ranked_three.groupby("spec")["top1"].mean().nunique() == 1
    for seed, part in runs_in(tmp_path / "proxy").groupby("seed"):
        t = rep["vs_reference_mean"][f"seed {seed}"]
        assert (t is None) if (part["top1"].nunique() == 1 or reference_tied) else (-1 <= t <= 1)
    assert rep["seconds_per_run_median"] > 0
    # A report asked without --all-seeds still counts the second seeds among the planned runs.
    one_seed = [a for a in cheap if a not in ("--all-seeds", "2")]
    assert run_study("transfer_study", "--report", *one_seed, env=env).returncode == 0
    counted = yaml.safe_load((tmp_path / "proxy" / "summary.yaml").read_text())
    assert counted["runs_done"] == 6 <= counted["runs_planned"]


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    root = _shards(tmp_path / "shards")
    protocol = _protocol(tmp_path / "tiny.yaml", root)
    args = ["--protocol", str(protocol), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--specs", "4", "--pool", "8", "--only", "smallest", "--epochs", "60", "--checkpoint-every", "5"]
    env = {**os.environ, "NAS_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "experiments.transfer_study", *args], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "work" / "checkpoints").rglob("*.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed, "the run ended before it could be killed mid-way"
    assert not list((tmp_path / "out" / "runs").glob("*.jsonl")) or not (
        tmp_path / "out" / "runs" / "runs-tiny-seed0.jsonl").read_text().strip()
    resumed = run_study("transfer_study", *args, env={"NAS_CACHE_DIR": str(tmp_path / "cache")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "smallest seed 0: training (60 epochs at 32 px, resuming)" in resumed.stdout
    rows = (tmp_path / "out" / "runs" / "runs-tiny-seed0.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["steps"] == 60 * 4  # 16 images, 4 a batch


def test_a_further_network_is_trained_twice_beside_the_found_ones_and_compared(tmp_path: Path) -> None:
    import argparse

    import pandas as pd

    from experiments import transfer_study, transfer_summary
    from nas.arch.codecs import load_spec, save_spec

    pick = save_spec(load_spec("small").replace(name="pick"), tmp_path / "pick.yaml")
    name, path = transfer_study.parse_network(f"tin_80={pick}")
    assert (name, path) == ("tin_80", pick)
    for bad, reason in (("tin_80", "NAME=BNECK_YAML"), ("found_80=" + str(pick), "the study's own"),
                        (f"tin_80={tmp_path / 'none.yaml'}", "no such file")):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            transfer_study.parse_network(bad)
    specs = {n: load_spec("small") for n in ("canonical", "found_80", "found_90", "found_100", "small_a", "tin_80")}
    order = transfer_study.plan(specs, extra=["tin_80"])
    assert order.index(("tin_80", 0)) < order.index(("canonical", 1))  # with the question, first
    assert ("tin_80", 1) in order and order.index(("tin_80", 1)) > order.index(("small_a", 0))
    runs = pd.DataFrame({"spec": ["canonical", "canonical", "tin_80", "tin_80"], "top1": [0.40, 0.42, 0.50, 0.52]})
    compared = transfer_summary.found_vs_canonical(runs, (*transfer_summary.FOUND, "tin_80"))
    assert compared["tin_80"]["delta_points"] == pytest.approx(10.0) and "found_80" not in compared


def test_each_tau_against_the_reference_names_the_networks_its_seed_covers():
    # A third seed trained for two of four networks: its tau is over those two, not over four.
    rows = [{"spec": name, "seed": seed, "top1": top1, "seconds": 60.0}
            for seed, values in ((0, (0.40, 0.45, 0.50, 0.55)), (1, (0.41, 0.44, 0.52, 0.56)), (2, (0.42, 0.47)))
            for name, top1 in zip(("a", "b", "c", "d"), values)]
    reference = pd.Series({"a": 0.60, "b": 0.62, "c": 0.61, "d": 0.70})
    rep = repeatability(pd.DataFrame(rows), reference)
    assert rep["vs_reference_networks"] == {"seed 0": 4, "seed 1": 4, "seed 2": 2, "seed mean": 4}
    assert rep["vs_reference_mean"]["seed 0"] == round(4 / 6, 3)  # 5 concordant pairs, 1 discordant
    assert set(rep["vs_reference_interval_90"]) == {"seed 0", "seed 1", "seed 2", "seed mean"}
    assert rep["vs_reference_interval_90"]["seed 2"] is None  # two networks: no interval
    assert rep["vs_reference_interval_90"]["seed mean"] is not None
    lines = markdown({"protocol": "proxy", "runs_done": 10, "runs_planned": 12, "written": "now",
                      "networks": {"a": {"params": 1e6, "seeds": 3, "top1_mean": 41.0, "top1_std": 1.0,
                                         "cifar10_reference_top1": None, "seconds_median": 60}},
                      "kendall_tau": {}, "repeatability": {**rep, "reference": "reference_tin"}})
    assert "- seed 2 against the reference_tin seed mean: tau" in "\n".join(lines)
    assert any(line.startswith("- seed 2 against") and "(2 networks)" in line for line in lines)


def test_heldout_networks_come_from_another_pool_and_train_once_each(tmp_path: Path) -> None:
    from experiments import transfer_study
    from experiments.supernet_benchmark import params_of
    from nas.arch.codecs import to_string

    args = transfer_study.parse_args(["--heldout", "4", "--heldout-seed", "1", "--pool", "20",
                                      "--out", str(tmp_path)])
    specs = transfer_study.networks(args)
    heldout = [name for name in specs if name.startswith("heldout_")]
    assert heldout == ["heldout_q01", "heldout_q02", "heldout_q03", "heldout_q04"]
    study = {to_string(spec) for name, spec in specs.items() if name not in heldout}
    assert not study & {to_string(specs[name]) for name in heldout}  # none is a study network
    sizes = [params_of(specs[name], 100) for name in heldout]
    assert sizes == sorted(sizes)  # quantiles of the pool, smallest first
    order = transfer_study.plan(specs)
    assert [(n, s) for n, s in order if n in heldout] == [(name, 0) for name in heldout]
    with pytest.raises(SystemExit):  # the benchmark's own pool: not held out
        transfer_study.parse_args(["--heldout", "4", "--heldout-seed", "0"])


def test_inherited_runs_start_from_the_supernet_and_are_keyed_by_it(tmp_path: Path) -> None:
    import torch

    from experiments import transfer_study
    from nas.arch.space import load_space
    from nas.supernet.train import (SupernetTrainConfig, checkpoint_file, load_supernet, new_supernet,
                                    train_supernet)
    from nas.training.data_config import DataConfig

    root = _shards(tmp_path / "shards")
    protocol = _protocol(tmp_path / "tiny.yaml", root)
    document = yaml.safe_load(protocol.read_text())
    frozen = tmp_path / "frozen.yaml"  # a vanishing lr: the run keeps the weights it started from
    frozen.write_text(yaml.safe_dump({**document, "train": {**document["train"], "lr": 1e-12}}))
    cfg = SupernetTrainConfig(steps=2, lr=0.05, num_random=1, device="cpu", progress=False)
    data = DataConfig(name="synthetic", resolution=32, num_classes=CLASSES, train_samples=16,
                      val_samples=8, batch_size=4)
    train_supernet(new_supernet(load_space("mobilenetv3_small"), CLASSES, cfg), data, cfg,
                   checkpoint_dir=tmp_path / "sn")
    checkpoint = checkpoint_file(tmp_path / "sn")
    args = ["--protocol", str(frozen), "--inherit", str(checkpoint), "--out", str(tmp_path / "out"),
            "--work", str(tmp_path / "work"), "--specs", "4", "--pool", "8", "--only", "smallest",
            "--reference-protocol", str(protocol), "--reference-runs", str(tmp_path / "none")]
    result = run_study("transfer_study", *args, env={"NAS_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [json.loads(line) for f in (tmp_path / "out" / "runs").glob("*.jsonl")
              for line in f.read_text().splitlines()]
    parsed = transfer_study.parse_args(args)
    from nas.training.protocols import load_protocol
    assert row["settings_key"] == transfer_study.run_key(parsed, load_protocol(str(frozen)))
    assert row["settings_key"] != load_protocol(str(frozen)).key()  # never mixed with scratch runs
    assert row["inherited_from"] == str(checkpoint)
    trained = torch.load(next((tmp_path / "work" / "weights").rglob("*.pth")), weights_only=True)
    supernet = load_supernet(checkpoint)[0]
    smallest = transfer_study.networks(parsed)["smallest"]
    inherited = supernet.extract(smallest.replace(num_classes=CLASSES)).state_dict()
    weights = [k for k, v in inherited.items() if k.endswith("weight") and v.dim() > 1]
    assert weights and all(torch.allclose(trained[k], inherited[k], atol=1e-6) for k in weights)
    fresh = build_fresh(smallest)
    assert not all(torch.allclose(trained[k], fresh[k], atol=1e-3) for k in weights)
    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    assert summary["inherited_from"] == str(checkpoint)

    missing = run_study("transfer_study", "--inherit", str(tmp_path / "no.pt"), "--report")
    assert missing.returncode != 0 and "no such supernet checkpoint" in missing.stderr


def build_fresh(spec):
    """A freshly initialised model of ``spec`` (what a run from scratch starts from)."""
    from nas.models.builder import build_model

    return build_model(spec.replace(num_classes=CLASSES)).state_dict()


def test_a_screen_is_also_ranked_by_its_flipped_score_and_on_the_heldout_networks_alone():
    from experiments.transfer_summary import rankings

    names = ("a", "b", "heldout_q01", "heldout_q02", "heldout_q03")
    top1 = (0.30, 0.31, 0.32, 0.33, 0.34)
    flip = (0.34, 0.33, 0.30, 0.32, 0.31)  # another order: the flipped view must not copy top1's
    rows = [{"spec": n, "seed": 0, "top1": t, "top1_flip": f, "seconds": 90.0} for n, t, f in zip(names, top1, flip)]
    reference = pd.Series(dict(zip(names, (0.40, 0.41, 0.42, 0.43, 0.44))))
    ranked = rankings(pd.DataFrame(rows), reference, "reference_tin")
    assert set(ranked) == {"all/top1", "all/top1_flip", "heldout/top1", "heldout/top1_flip"}
    assert ranked["all/top1"]["vs_reference_mean"]["seed 0"] == 1.0
    assert ranked["heldout/top1"]["vs_reference_networks"]["seed 0"] == 3
    assert ranked["heldout/top1_flip"]["vs_reference_mean"]["seed 0"] == round(1 / 3, 3)  # 2 of 3 pairs agree
    assert ranked["all/top1_flip"]["vs_reference_mean"]["seed 0"] < 0
    lines = markdown({"protocol": "finetune", "runs_done": 5, "runs_planned": 5, "written": "now",
                      "networks": {}, "kendall_tau": {},
                      "further_rankings": ranked})
    assert lines[-1] == "No finished runs yet."  # no networks: nothing else is drawn
    without_flip = rankings(pd.DataFrame(rows).drop(columns="top1_flip"), reference, "reference_tin")
    assert set(without_flip) == {"all/top1", "heldout/top1"}
    assert set(rankings(pd.DataFrame(rows), None, "reference_tin")) == {"all/top1"}  # the reference itself
