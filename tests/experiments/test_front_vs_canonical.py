"""Picking the found networks to train against canonical Small: the latency fractions, the
emitted bneck YAMLs, a study nas-ablate accepts, canonical's reference runs imported once."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import yaml

from experiments import front_vs_canonical
from nas.ablate.results import Results, protocol_key, trained_arch
from nas.ablate.study import study_from_dict
from nas.arch.codecs import load_spec, to_string
from nas.arch.space import load_space


def _fronts(tmp_path: Path) -> Path:
    space = load_space("mobilenetv3_small")
    rng = random.Random(0)
    specs = [to_string(space.sample(rng)) for _ in range(6)]
    rows = [  # (top1, ms): canonical is at 10 ms
        ("tpe", 0, 1, 0.55, 9.9, specs[0]),
        ("tpe", 0, 2, 0.53, 8.5, specs[1]),
        ("random", 1, 3, 0.52, 8.9, specs[2]),   # dominated by specs[1]
        ("nsga2", 0, 4, 0.50, 7.9, specs[3]),
        ("nsga2", 2, 5, 0.58, 11.0, specs[4]),   # slower than canonical
        ("tpe", 1, 1, 0.55, 9.9, specs[0]),      # the same network in another study
        ("tpe", 2, 0, 0.60, 10.0, to_string(load_spec("small"))),  # canonical: never picked
    ]
    frame = pd.DataFrame(rows, columns=["sampler", "seed", "number", "top1", "latency_ms", "spec"])
    path = tmp_path / "bench" / "fronts.csv"
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    return path


def test_picks_the_best_scored_network_under_each_latency_fraction(tmp_path: Path):
    fronts = _fronts(tmp_path)
    out = tmp_path / "search"
    picked = front_vs_canonical.main(["--fronts", str(fronts), "--canonical-ms", "10",
                                      "--out", str(out), "--import-runs", str(tmp_path / "none.csv")])
    assert list(picked["name"]) == ["found_100", "found_90", "found_80"]
    assert list(picked["latency_ms"]) == [9.9, 8.5, 7.9]
    assert picked.iloc[0]["found_by"] == "tpe seed 0 trial 1"
    for _, row in picked.iterrows():
        spec = load_spec(out / f"{row['name']}.yaml")
        assert to_string(spec) == row["spec"] and spec.name == row["name"]
    study = study_from_dict(yaml.safe_load((out / "ablation" / "front_vs_canonical.yaml").read_text()))
    assert study.baseline == "canonical_small"
    assert study.accuracy.protocol == "reference" and list(study.accuracy.seeds) == [0, 1]
    assert to_string(study.variants[1].spec()) == picked.iloc[0]["spec"]


def test_canonical_reference_runs_are_imported_once(tmp_path: Path):
    fronts = _fronts(tmp_path)
    key = protocol_key("reference")
    canonical = to_string(load_spec("small"))
    runs = pd.DataFrame([
        {"protocol": "reference", "settings_key": key, "arch": canonical, "seed": 0, "top1": 0.75,
         "seconds": 1700.0, "load_start": 2.0},
        {"protocol": "reference", "settings_key": "another", "arch": canonical, "seed": 1,
         "top1": 0.70, "seconds": 1700.0, "load_start": 2.0},   # other settings: not this protocol
        {"protocol": "proxy", "settings_key": key, "arch": canonical, "seed": 1, "top1": 0.5,
         "seconds": 60.0, "load_start": 2.0},
    ])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    argv = ["--fronts", str(fronts), "--canonical-ms", "10", "--out", str(tmp_path / "search"),
            "--import-runs", str(tmp_path / "runs.csv")]
    front_vs_canonical.main(argv)
    front_vs_canonical.main(argv)  # again: nothing imported twice
    lines = (tmp_path / "search" / "front_vs_canonical" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = Results(tmp_path / "search" / "front_vs_canonical").get(
        "top1", trained_arch(load_spec("small"), key), 0)
    assert record["top1"] == 0.75 and record["imported_from"].endswith("runs.csv")
