"""nas-predict: top-5 classes from a nas-train folder or a torchvision state_dict."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import write_image_folder
from nas.cli.predict import main as predict_main
from nas.cli.train import main as train_main


def _image(path: Path, size: int) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_predicts_from_a_nas_train_folder(tmp_path: Path, capsys) -> None:
    root = write_image_folder(tmp_path / "data", {"train": 8, "val": 4}, size=32)
    run = tmp_path / "run"
    assert train_main(["small_minimal", "--data", "imagefolder", "--root", str(root), "--resolution", "32",
                       "--epochs", "1", "--batch-size", "8", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    image = root / "val" / "class1" / "0.png"
    assert predict_main([str(run), str(image), "--top", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count("%") == 3
    assert {name.split()[0] for name in line.split(": ", 1)[1].split(", ")} == {"class0", "class1", "class2"}


def test_predicts_with_torchvision_weights(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "mobilenet_v3_small.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)  # no download
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"label{i}" for i in range(1000)))
    image = _image(tmp_path / "photo.jpg", 300)
    assert predict_main([str(weights), str(image), "--arch", "small", "--classes", str(classes)]) == 0
    out = capsys.readouterr().out
    probabilities = [float(p) for p in re.findall(r"([\d.]+)%", out)]
    assert out.count("label") == 5 and len(probabilities) == 5
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 100.1


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere.pth", "{tmp}/x.jpg", "--arch", "small"], "needs --arch and --classes"),
    (["{tmp}", "{tmp}/x.jpg"], "summary.yaml: missing"),
])
def test_bad_inputs_name_the_file(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert predict_main([a.format(tmp=tmp_path) for a in args]) == 2
    assert message in capsys.readouterr().err
