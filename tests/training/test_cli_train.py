from __future__ import annotations

import pandas as pd
import pytest
import torch
import torchvision
import yaml

from nas.arch.codecs import from_string, save_spec
from nas.cli.train import main

TINY = from_string(
    "stem8_hs|k3_e8_c8_s2_se_re|k3_e32_c16_s2_re|k5_e48_c16_s1_se_hs|k3_e64_c24_s2_hs"
    "|head96_128_hs_efficient|drop0.2|cls10|res32|w1.0_torchvision"
)
QUICK = ["--resolution", "32", "--batch-size", "16", "--train-samples", "48", "--val-samples",
         "16", "--bn-recalibration-batches", "1", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


@pytest.fixture
def tiny_yaml(tmp_path):
    return str(save_spec(TINY, tmp_path / "tiny.yaml"))


def test_end_to_end_on_synthetic(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "run"
    assert main([tiny_yaml, "--data", "synthetic", "--steps", "4", "--out", str(out), *QUICK]) == 0
    assert "top-1" in capsys.readouterr().out
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2] and "val_top1" in metrics
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["steps"] == 4 and 0.0 <= summary["top1"] <= summary["top5"] <= 1.0
    assert summary["images_per_second"] > 0 and summary["seconds"] > 0
    assert summary["settings"]["train"]["optimizer"] == "sgd"
    state = torch.load(out / "model.pth", weights_only=True)
    assert state["classifier.3.weight"].shape == (10, 128)
    # --resume on a finished run trains nothing more and reports the same figures.
    assert main([tiny_yaml, "--data", "synthetic", "--steps", "4", "--out", str(out), "--resume",
                 *QUICK]) == 0
    assert yaml.safe_load((out / "summary.yaml").read_text())["top1"] == summary["top1"]


def test_starts_from_torchvision_weights(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "mnv3_small.pth"
    reference = torchvision.models.mobilenet_v3_small().state_dict()
    torch.save(reference, weights)
    out = tmp_path / "run"
    args = ["small", "--data", "synthetic", "--steps", "1", "--out", str(out), "--lr", "1e-9",
            "--weights", str(weights), *QUICK]
    assert main(args) == 0
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["reinitialised"] == ["classifier.3.bias", "classifier.3.weight"]
    trained = torch.load(out / "model.pth", weights_only=True)
    # A near-zero learning rate: the convolutions are still torchvision's.
    assert torch.allclose(trained["features.0.0.weight"], reference["features.0.0.weight"], atol=1e-6)


def test_mismatched_weights_are_a_clear_error(tmp_path, capsys):
    weights = tmp_path / "large.pth"
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), weights)
    code = main(["small", "--data", "synthetic", "--steps", "1", "--out", str(tmp_path / "r"),
                 "--weights", str(weights), *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nas-train: error: ") and "keys do not match" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--data", "imagefolder", "--root", "/no/such/dir"], "/no/such/dir: no such directory"),
    (["--data", "imagefolder"], "root is required"),
    (["--weights", "/no/such.pth"], "/no/such.pth: no such weights file"),
    (["--optimizer", "sgd", "--lr", "-1"], "TrainConfig.lr"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_yaml, capsys, args, message):
    code = main([tiny_yaml, "--steps", "1", "--out", str(tmp_path / "r"), *QUICK, *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nas-train: error: ") and message in err
    assert err.count("\n") == 1


def test_unknown_arch_is_a_clear_error(tmp_path, capsys):
    assert main(["tiny_nonexistent", "--out", str(tmp_path), *QUICK]) == 2
    assert "not a canonical name" in capsys.readouterr().err


def test_on_the_cifar_subset(tmp_path, tiny_yaml, cifar_subset):
    out = tmp_path / "run"
    assert main([tiny_yaml, "--data", "imagefolder", "--root", str(cifar_subset), "--steps", "2",
                 "--out", str(out), *QUICK]) == 0
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["num_classes"] == 10 and summary["steps"] == 2
