"""``nas-supernet train`` and ``extract`` end to end on synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nas.arch.codecs import load_spec
from nas.cli.supernet import main
from nas.models.builder import MobileNetV3Net, build_model
from nas.arch.space import load_space

TINY = ["--set", "data.resolution=32", "--set", "data.train_samples=32",
        "--set", "data.val_samples=16", "--set", "data.batch_size=16", "--set", "data.num_classes=4",
        "--set", "train.steps=2", "--set", "train.num_random=1", "--set", "train.progress=false",
        "--set", "train.device=cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("supernet")
    assert main(["train", "--space", "mobilenetv3_small", "--data", "synthetic", "--out", str(out),
                 "--no-eval", *TINY]) == 0
    return out


def test_train_writes_checkpoint_config_and_history(trained: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("supernet.pt", "config.yaml", "history.csv"):
        assert (trained / name).is_file(), name
    # Running again resumes the finished run: nothing to train, same checkpoint.
    stamp = (trained / "supernet.pt").stat().st_mtime_ns
    assert main(["train", "--space", "mobilenetv3_small", "--data", "synthetic", "--out", str(trained),
                 "--bn-batches", "1", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "2 steps" in printed and "largest" in printed and "smallest" in printed
    assert (trained / "supernet.pt").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("which", ["random", "canonical"])
def test_extract_writes_a_spec_and_weights_that_load(trained: Path, tmp_path: Path, which: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["extract", "--checkpoint", str(trained / "supernet.pt"), "--which", which,
                 "--seed", "5", "--out", str(tmp_path), "--name", "net", "--bn-batches", "1",
                 "--evaluate"]) == 0
    assert "top-1" in capsys.readouterr().out
    spec = load_spec(tmp_path / "net.yaml")
    assert spec.num_classes == 4 and spec.name == "net"
    load_space("mobilenetv3_small").params_of(spec.replace(num_classes=1000))  # inside the space
    model = build_model(spec)
    model.load_state_dict(torch.load(tmp_path / "net.pth", weights_only=True))  # strict
    assert isinstance(model, MobileNetV3Net)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_extract_of_a_spec_file_matches_the_supernet(trained: Path, tmp_path: Path) -> None:
    from nas.arch.codecs import save_spec
    from nas.supernet.train import load_supernet

    supernet, _ = load_supernet(trained / "supernet.pt")
    spec = supernet.smallest_spec()
    save_spec(spec, tmp_path / "small.yaml")
    assert main(["extract", "--checkpoint", str(trained / "supernet.pt"), "--spec",
                 str(tmp_path / "small.yaml"), "--out", str(tmp_path / "out"), "--no-recalibrate"]) == 0
    model = build_model(load_spec(tmp_path / "out" / "small.yaml"))
    model.load_state_dict(torch.load(tmp_path / "out" / "small.pth", weights_only=True))
    supernet.set_active(spec)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (supernet.eval()(x) - model.eval()(x)).abs().max().item() <= 1e-5


def test_errors_are_one_line_with_exit_code_2(trained: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["extract", "--checkpoint", str(trained / "supernet.pt"), "--spec", "large",
                 "--out", str(tmp_path), "--no-recalibrate"]) == 2
    assert "not a point of the supernet's space" in capsys.readouterr().err
    assert main(["extract", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    assert "no such supernet checkpoint" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--set", "epochs=3"]) == 2
    assert "train.<key>" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--data", "nowhere"]) == 2
    assert "shipped" in capsys.readouterr().err


def test_set_overrides_read_like_hydra_overrides():
    """--set uses OmegaConf's dotlist grammar (Hydra's), not a parser of our own."""
    from nas.cli.supernet import CliError, apply_overrides

    config: dict = {"data": {"resolution": 64}, "train": {}}
    apply_overrides(config, ["train.steps=20", "data.root=null", "train.note=[1,2]"])
    assert config == {"data": {"resolution": 64, "root": None}, "train": {"steps": 20, "note": [1, 2]}}
    for bad in ("train.steps", "epochs=3", "model.depth=2", "train.steps=[1"):
        with pytest.raises(CliError, match="--set"):
            apply_overrides(config, [bad])
