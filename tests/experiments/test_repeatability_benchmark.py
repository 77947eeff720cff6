"""Smoke test of ``python -m experiments.repeatability_benchmark`` on a tiny generated folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import jsonl_rows, run_study, study_folders, write_image_folder


def _folder(root: Path) -> Path:
    return write_image_folder(root, {"train": 6, "val": 3}, classes=10, size=32)


def test_benchmark_runs_resumes_and_summarises(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    args = ["--root", str(root), *study_folders(tmp_path), "--specs", "4", "--pool", "8",
            "--protocols", "reference", "proxy", "--seeds", "0", "1", "--train-per-class", "4", "--epochs", "1"]
    env = {"NAS_CACHE_DIR": str(tmp_path / "cache")}
    first = run_study("repeatability_benchmark", *args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = jsonl_rows(tmp_path / "runs")
    assert len(rows) == 4 * 2 * 2  # specs x protocols x seeds
    weights = sorted((tmp_path / "work" / "weights").glob("*.pth"))
    assert len(weights) == len(rows) and (tmp_path / "work" / "weights" / "reference-canonical-seed1.pth") in weights
    again = run_study("repeatability_benchmark", *args, env=env)
    assert again.returncode == 0 and "training" not in again.stdout  # all cached: nothing retrained
    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    reference = summary["protocols"]["reference"]
    assert reference["seeds"] == [0, 1] and reference["networks_with_all_seeds"] == 4
    assert "tau_vs_reference_mean_per_seed" in summary["protocols"]["proxy"]
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 0
    assert (tmp_path / "out" / "networks.csv").is_file()
    per_image = reference["per_image"]
    assert per_image["networks"] and per_image["val_noise_std_points_pooled"] >= 0
    # 10 classes x 3 val images: 30 bits, 4 bytes, 8 base64 characters.
    assert all(r["val_images"] == 30 and len(r["val_correct"]) == 8 and "top1_flip" in r for r in rows)

    # Runs recorded before per-image records existed: --rescore trains them again and checks the
    # repeat reproduces the recorded top-1; without --rescore they count as done.
    reference_file = tmp_path / "runs" / "runs-reference-seed0.jsonl"
    old = [json.loads(line) for line in reference_file.read_text().splitlines()]
    stripped = [{k: v for k, v in r.items() if k not in ("val_correct", "top1_flip")} for r in old]
    reference_file.write_text("".join(json.dumps(r) + "\n" for r in stripped))
    plain = run_study("repeatability_benchmark", *args, env=env)
    assert plain.returncode == 0 and "training" not in plain.stdout
    rescored = run_study("repeatability_benchmark", *args, "--rescore", "--only", "canonical", env=env)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert rescored.stdout.count("training") == 1 and "repeat of a recorded run: top-1 identical" in rescored.stdout
    repeat = json.loads(reference_file.read_text().splitlines()[-1])
    assert repeat["spec"] == "canonical" and repeat["repeat_identical"] and "val_correct" in repeat
    summary = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    assert summary["protocols"]["reference"]["per_image"]["networks"] == ["canonical"]
