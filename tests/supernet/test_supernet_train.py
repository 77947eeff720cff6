"""Sandwich-rule training, checkpoints, and the supernet evaluator."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.arch.spec import BlockSpec, NetworkSpec
from nas.config import ConfigError
from nas.arch.space import SearchSpace, StageSpace, load_space
from test_supernet import tiny_space  # the same two-stage space
from nas.supernet.evaluator import (
    SupernetEvaluator,
    SupernetEvaluatorConfig,
    supernet_evaluator_from_config,
)
from nas.supernet.network import Supernet
from nas.supernet.train import (
    SupernetCheckpointError,
    SupernetTrainConfig,
    load_supernet,
    new_supernet,
    read_checkpoint,
    sandwich_specs,
    sandwich_step,
    space_from_plain,
    space_to_dict,
    train_supernet,
)
from nas.training.checkpoint import steps_done
from nas.training.data import make_loaders
from nas.training.data_config import DataConfig
from nas.training.evaluator import EvalResult, Evaluator

DATA = DataConfig(name="synthetic", resolution=32, num_classes=4, train_samples=64,
                  val_samples=32, batch_size=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread



def config(**changes: Any) -> SupernetTrainConfig:
    base = SupernetTrainConfig(steps=4, lr=0.05, num_random=1, device="cpu", progress=False,
                               checkpoint_every=1)
    return dataclasses.replace(base, **changes)


def test_sandwich_steps_reduce_the_loss_on_a_tiny_problem() -> None:
    torch.manual_seed(0)
    net = Supernet(tiny_space(), num_classes=4)
    images, target = next(iter(make_loaders(DATA).train))  # one synthetic batch, 16 images
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    rng = random.Random(0)
    history = []
    for _ in range(12):
        specs = sandwich_specs(net, rng, num_random=2)
        assert [role for role, _ in specs] == ["largest", "smallest", "random", "random"]
        optimizer.zero_grad()
        losses = sandwich_step(net, images, target, specs)
        optimizer.step()
        history.append(losses)
    assert set(history[0]) == {"largest", "smallest", "random"}
    assert history[0]["largest"] == pytest.approx(1.386, abs=0.05)  # log 4 at the start
    assert history[-1]["largest"] < 0.8 * history[0]["largest"]
    # The students are trained towards the teacher: their KL to its soft targets stays small.
    assert history[-1]["smallest"] < history[-1]["largest"]


def test_without_distillation_students_learn_the_labels() -> None:
    torch.manual_seed(0)
    net = Supernet(tiny_space(), num_classes=4)
    images, target = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    specs = sandwich_specs(net, random.Random(0), num_random=0)
    losses = sandwich_step(net, images, target, specs, distill=False)
    assert losses["smallest"] == pytest.approx(1.386, abs=0.1)  # cross-entropy near log 4
    with pytest.raises(ValueError, match="largest"):
        sandwich_step(net, images, target, specs[1:])


def test_training_runs_and_checkpoints(tmp_path: Path) -> None:
    cfg = config(steps=3, checkpoint_every=None)
    result = train_supernet(new_supernet(tiny_space(), 4, cfg), DATA, cfg, checkpoint_dir=tmp_path)
    assert result.finished and result.steps == 3
    assert result.history[-1]["step"] == 3 and "loss_smallest" in result.history[-1]
    ckpt = read_checkpoint(tmp_path / "supernet.pt")
    assert ckpt["finished"] and ckpt["progress"]["step"] == 3
    loaded, record = load_supernet(tmp_path / "supernet.pt")
    assert loaded.space == tiny_space() and record["settings"]["train"]["steps"] == 3
    assert steps_done(record) == steps_done(ckpt) == 3  # the record keeps the checkpoint's progress
    state = result.supernet.state_dict()
    assert all(torch.equal(v.cpu(), loaded.state_dict()[k]) for k, v in state.items())


def test_resumed_training_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    cfg = config(steps=6, largest_warmup_steps=2)  # also crosses the channel sort
    straight = train_supernet(new_supernet(tiny_space(), 4, cfg), DATA, cfg).supernet.state_dict()
    first = train_supernet(new_supernet(tiny_space(), 4, cfg), DATA, cfg, checkpoint_dir=tmp_path,
                           stop_after=3)
    assert not first.finished and first.steps == 3
    assert read_checkpoint(tmp_path / "supernet.pt")["progress"]["flags"]["sorted"]
    resumed = train_supernet(new_supernet(tiny_space(), 4, cfg), DATA, cfg, checkpoint_dir=tmp_path)
    assert resumed.finished and resumed.steps == 6
    for key, value in resumed.supernet.state_dict().items():
        assert torch.equal(value, straight[key]), key


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    cfg = config(steps=2)
    train_supernet(new_supernet(tiny_space(), 4, cfg), DATA, cfg, checkpoint_dir=tmp_path)
    other = config(steps=2, lr=0.01)
    with pytest.raises(SupernetCheckpointError, match="train.lr"):
        train_supernet(new_supernet(tiny_space(), 4, other), DATA, other, checkpoint_dir=tmp_path)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="num_random"):
        SupernetTrainConfig(num_random=-1)
    with pytest.raises(ConfigError, match="SupernetTrainConfig.optimizer"):
        SupernetTrainConfig(optimizer="lamb")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key"):
        SupernetTrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="evaluator.kind"):
        SupernetEvaluatorConfig.from_dict({"kind": "proxy"})
    with pytest.raises(ConfigError, match="bn_batches"):
        SupernetEvaluatorConfig.from_dict({"bn_batches": 0})


def test_space_round_trips_through_the_checkpoint_format() -> None:
    for space in (tiny_space(), load_space("mobilenetv3_large")):
        assert space_from_plain(space_to_dict(space)) == space


def test_evaluator_implements_the_interface() -> None:
    torch.manual_seed(0)
    net = Supernet(tiny_space(), num_classes=4)
    evaluator = SupernetEvaluator(net, DATA, bn_batches=2, device="cpu")
    assert isinstance(evaluator, Evaluator)
    spec = tiny_space().sample(random.Random(1))
    first = evaluator.evaluate(spec)
    assert isinstance(first, EvalResult) and 0.0 <= first.top1 <= 1.0
    assert first.top5 is None  # 4 classes
    assert first.details["evaluator"] == "supernet" and first.details["seconds"] > 0
    other = evaluator.evaluate(net.largest_spec())
    again = evaluator.evaluate(spec)
    assert again.top1 == first.top1 and again.details["val_loss"] == first.details["val_loss"]
    assert other.details["arch"] != first.details["arch"]


def test_evaluator_recalibrates_bn_so_extraction_scores_the_same() -> None:
    from nas.training.scoring import evaluate_model

    torch.manual_seed(0)
    net = Supernet(tiny_space(), num_classes=4)
    evaluator = SupernetEvaluator(net, DATA, bn_batches=2, device="cpu")
    spec = tiny_space().sample(random.Random(3))
    score = evaluator.evaluate(spec)
    top1, _, loss = evaluate_model(net.extract(spec), evaluator.validation_batches(), "cpu")
    assert top1 == score.top1 and loss == pytest.approx(score.details["val_loss"], abs=1e-5)


def _search_cfg(space: SearchSpace, **evaluator: Any) -> dict[str, Any]:
    # The search passes its space as a YAML mapping; a SearchSpace object is accepted too.
    return {"space": space, "evaluator": {"kind": "supernet", "bn_batches": 2, "device": "cpu",
                                          "train": {"steps": 2, "num_random": 1, "progress": False},
                                          **evaluator}}


def test_from_config_trains_once_per_run_folder(tmp_path: Path) -> None:
    space = tiny_space()
    evaluator = supernet_evaluator_from_config(_search_cfg(space), DATA, tmp_path)
    ckpt = tmp_path / "supernet" / "supernet.pt"
    assert ckpt.is_file() and isinstance(evaluator, Evaluator)
    stamp = ckpt.stat().st_mtime_ns
    score = evaluator.evaluate(space.base)
    assert score.details["supernet_steps"] == 2
    # A resumed search reuses the finished supernet instead of training again.
    again = supernet_evaluator_from_config(_search_cfg(space), DATA, tmp_path)
    assert ckpt.stat().st_mtime_ns == stamp
    assert again.evaluate(space.base).top1 == score.top1


def test_from_config_loads_a_checkpoint_and_checks_its_space(tmp_path: Path) -> None:
    space = tiny_space()
    cfg = config(steps=2)
    train_supernet(new_supernet(space, 4, cfg), DATA, cfg, checkpoint_dir=tmp_path / "sn")
    path = str(tmp_path / "sn" / "supernet.pt")
    evaluator = supernet_evaluator_from_config(_search_cfg(space, checkpoint=path), DATA, tmp_path)
    assert evaluator.evaluate(space.base).details["supernet_checkpoint"] == path
    other = dataclasses.replace(space, kernels=(3, 5))
    with pytest.raises(SupernetCheckpointError, match="space"):
        supernet_evaluator_from_config(_search_cfg(other, checkpoint=path), DATA, tmp_path)
    # An unfinished run is refused rather than scored.
    train_supernet(new_supernet(space, 4, cfg), DATA, config(steps=4), checkpoint_dir=tmp_path / "part",
                   stop_after=1)
    with pytest.raises(SupernetCheckpointError, match="unfinished"):
        supernet_evaluator_from_config(
            _search_cfg(space, checkpoint=str(tmp_path / "part" / "supernet.pt")), DATA, tmp_path)


def test_from_config_reads_the_shipped_yaml(tmp_path: Path) -> None:
    import yaml

    shipped = Path(__file__).resolve().parents[2] / "nas" / "conf" / "evaluator" / "supernet.yaml"
    data = yaml.safe_load(shipped.read_text())
    parsed = SupernetEvaluatorConfig.from_dict(data)
    assert parsed.checkpoint is None and parsed.train.num_random == 2
    data["train"].update(steps=1, num_random=0)
    data.update(bn_batches=1, device="cpu")
    space_doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "search_spaces"
                                / "mobilenetv3_small.yaml").read_text())
    data_cfg = dataclasses.replace(DATA, train_samples=16, val_samples=16)
    evaluator = supernet_evaluator_from_config({"space": space_doc, "evaluator": data}, data_cfg,
                                               tmp_path)
    assert 0.0 <= evaluator.evaluate(load_space("mobilenetv3_small").base).top1 <= 1.0


def test_loaders_with_other_class_count_are_refused() -> None:
    net = Supernet(tiny_space(), num_classes=5)
    with pytest.raises(ConfigError, match="classes"):
        SupernetEvaluator(net, DATA, loaders=make_loaders(DATA), device="cpu")


def test_checkpoint_data_roots_compare_by_resolved_path(tmp_path: Path, caplog, monkeypatch) -> None:
    import logging

    from nas.supernet.evaluator import _check_checkpoint

    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    relative = DataConfig(name="imagefolder", root="../shared/data", resolution=32)
    absolute = DataConfig(name="imagefolder", root=str(tmp_path / "shared" / "data"), resolution=32)
    record = {"finished": True, "progress": {"step": 1},
              "arch": {"space": space_to_dict(tiny_space())}, "settings": {"data": relative.settings()}}
    with caplog.at_level(logging.WARNING):
        _check_checkpoint(tmp_path / "s.pt", record, tiny_space(), absolute)
    assert "other data settings" not in caplog.text  # the same folder spelled two ways
    other = DataConfig(name="imagefolder", root=str(tmp_path / "shared"), resolution=32)
    with caplog.at_level(logging.WARNING):
        _check_checkpoint(tmp_path / "s.pt", record, tiny_space(), other)
    assert "other data settings" in caplog.text and "root" in caplog.text
