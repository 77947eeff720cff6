"""selection=holdout: the search trains and ranks on train only; val is seen after it, for the report.

The data set here is built so that every image says who it is: each one is a single colour
whose red channel is its number and whose blue channel is 0 in train and 200 in val. A colour
survives the loaders' resize, flip, padded crop and normalisation at the centre pixel, so
wrapping the loaders the evaluators build tells exactly which images were trained on, used
for BatchNorm recalibration, and scored, in the search and in the val report after it.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

from nas.arch.space import load_space
from nas.search import report as report_module
from nas.search.config import SearchConfig
from nas.search.fingerprint import StudySettingsMismatch, check_or_store
from nas.search.pipeline import SearchRun, build_evaluator
from nas.search.selection import SelectionError, selection_data
from nas.search.storage import StorageSettings, open_storage
from nas.search.runner import load_or_create_study
from nas.supernet import evaluator as supernet_evaluator
from nas.supernet.train import SupernetCheckpointError, SupernetTrainConfig, new_supernet, train_supernet
from nas.training import proxy as proxy_module
from nas.training.data_config import IMAGENET_MEAN, IMAGENET_STD, DataConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE_FILE = Path(__file__).resolve().parents[1] / "data" / "spaces" / "space" / "tiny.yaml"
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 20, 6
VAL_MARK = 200  # blue channel of the val images (0 in train)
RESOLUTION = 32


# ---------------------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def coded_data(tmp_path_factory) -> Path:
    """A CIFAR-layout folder of 8x8 single-colour PNGs: (red, blue) = (number, split mark)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coded")
    number = {"train": 0, "val": 0}
    for split, per_class, blue in (("train", TRAIN_PER_CLASS, 0), ("val", VAL_PER_CLASS, VAL_MARK)):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for _ in range(per_class):
                pixels = np.zeros((8, 8, 3), np.uint8)
                pixels[..., 0], pixels[..., 1], pixels[..., 2] = number[split], 10 + 60 * c, blue
                Image.fromarray(pixels).save(folder / f"{number[split]}.png")
                number[split] += 1
    return root


TRAIN_IDS = {("train", i) for i in range(CLASSES * TRAIN_PER_CLASS)}
VAL_IDS = {("val", i) for i in range(CLASSES * VAL_PER_CLASS)}


def image_ids(images: torch.Tensor) -> set[tuple[str, int]]:
    """The (split, number) of every image of a normalised batch, read at its centre pixel."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3) * 255
    centre = images[:, :, images.shape[2] // 2, images.shape[3] // 2].float().cpu() * std + mean
    rgb = centre.round().to(torch.int64).tolist()
    return {("val" if blue == VAL_MARK else "train", red) for red, _, blue in rgb}


class Recording:
    """A loader that notes every image it yields under (phase, role), else the loader itself."""

    def __init__(self, loader: Any, role: str, seen: dict[tuple[str, str], set], phase: list[str]) -> None:
        self._loader, self._role, self._seen, self._phase = loader, role, seen, phase

    def __iter__(self) -> Iterator[Any]:
        for images, labels in self._loader:
            self._seen.setdefault((self._phase[0], self._role), set()).update(image_ids(images))
            yield images, labels

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@pytest.fixture
def seen(monkeypatch) -> dict[tuple[str, str], set]:
    """Every image the evaluators' loaders yield, by phase (search, report) and role (train, val)."""
    records: dict[tuple[str, str], set] = {}
    phase = ["search"]

    def recording(make):
        def make_loaders(*args: Any, **kwargs: Any) -> Any:
            loaders = make(*args, **kwargs)
            return loaders._replace(train=Recording(loaders.train, "train", records, phase),
                                    val=Recording(loaders.val, "val", records, phase))
        return make_loaders

    for module in (supernet_evaluator, proxy_module):
        monkeypatch.setattr(module, "make_loaders", recording(module.make_loaders))
    report_on_val = report_module.report_on_val

    def reporting(*args: Any, **kwargs: Any) -> Any:
        phase[0] = "report"
        return report_on_val(*args, **kwargs)

    monkeypatch.setattr("nas.search.pipeline.report_on_val", reporting)
    return records


def _data(root: Path, tmp_path: Path) -> dict[str, Any]:
    return {"name": "cifar10", "root": str(root), "cache_dir": str(tmp_path / "cache"),
            "resolution": RESOLUTION, "num_classes": CLASSES, "batch_size": 12, "val_fraction": 0.25}


SUPERNET = {"kind": "supernet", "bn_batches": 2, "device": "cpu", "cache_batches": True,
            "train": {"steps": 2, "device": "cpu", "progress": False}}
PROXY = {"kind": "proxy", "train": {"epochs": 1, "device": "cpu", "bn_recalibration_batches": 1}}


def _config(table: Path, data: dict[str, Any], evaluator: dict[str, Any], **settings: Any) -> SearchConfig:
    return SearchConfig(space=yaml.safe_load(SPACE_FILE.read_text()), data=data, evaluator=evaluator,
                        trials=2, profile_costs=False,
                        latency={"table": str(table), "resolution": 64}, **settings)


# ---------------------------------------------------------------------------- what is scored
def test_supernet_search_trains_and_ranks_on_train_only_and_reports_on_val(
        coded_data: Path, tiny_table: Path, tmp_path: Path, seen: dict) -> None:
    lines: list[str] = []
    SearchRun(_config(tiny_table, _data(coded_data, tmp_path), SUPERNET), tmp_path / "run",
              report=lines.append).run()
    trained, ranked = seen["search", "train"], seen["search", "val"]
    # Trained (and BN-recalibrated) and ranked on train's images only, never on val's ...
    assert trained | ranked <= TRAIN_IDS
    # ... and the ranked ones are held out of training: a class-stratified 25% of train.
    assert not trained & ranked
    assert len(ranked) == round(0.25 * TRAIN_PER_CLASS) * CLASSES
    assert Counter(number // TRAIN_PER_CLASS for _, number in ranked) == {
        c: round(0.25 * TRAIN_PER_CLASS) for c in range(CLASSES)}
    # After the search: the Pareto members scored on the whole val split, with BatchNorm
    # recalibrated on the same training images as in the search.
    assert seen["report", "val"] == VAL_IDS
    assert seen["report", "train"] <= trained
    pareto = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert list(pareto.columns[:5]) == ["number", "state", "accuracy", "val_accuracy", "latency_ms"]
    assert pareto["val_accuracy"].between(0, 1).all() and pareto["accuracy"].between(0, 1).all()
    assert any(line.startswith("selection=holdout") for line in lines)


def test_selection_val_ranks_on_val(coded_data: Path, tiny_table: Path, tmp_path: Path, seen: dict) -> None:
    """The instrument above can see val images: with selection=val the search ranks on them."""
    SearchRun(_config(tiny_table, _data(coded_data, tmp_path), SUPERNET, selection="val"),
              tmp_path / "run", report=lambda line: None).run()
    assert seen["search", "val"] == VAL_IDS and seen["search", "train"] <= TRAIN_IDS
    pareto = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert (pareto["val_accuracy"] == pareto["accuracy"]).all()  # ranked on val: the same figure


def test_proxy_search_trains_and_ranks_on_train_only_and_leaves_val_to_nas_train(
        coded_data: Path, tiny_table: Path, tmp_path: Path, seen: dict) -> None:
    lines: list[str] = []
    SearchRun(_config(tiny_table, _data(coded_data, tmp_path), PROXY), tmp_path / "run",
              report=lines.append).run()
    trained, ranked = seen["search", "train"], seen["search", "val"]
    assert trained | ranked <= TRAIN_IDS and not trained & ranked
    assert len(ranked) == round(0.25 * TRAIN_PER_CLASS) * CLASSES
    assert not any(phase == "report" for phase, _ in seen)  # no weights kept: nothing scored
    pareto = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert "val_accuracy" in pareto.columns and pareto["val_accuracy"].isna().all()
    assert any("val_accuracy is empty" in line and "nas-train" in line for line in lines)


# ---------------------------------------------------------------------------- refusals
def test_a_resume_with_another_selection_is_refused_naming_the_field(tiny_table: Path, tmp_path: Path) -> None:
    data = {"name": "synthetic", "resolution": RESOLUTION, "train_samples": 48, "val_samples": 24,
            "batch_size": 24}
    config = _config(tiny_table, data, {**PROXY, "cache": False}).replace(trials=1)
    SearchRun(config, tmp_path / "run", report=lambda line: None).run()
    with pytest.raises(StudySettingsMismatch, match='selection: the study has "holdout", this start "val"'):
        SearchRun(config.replace(selection="val", resume=True), tmp_path / "run",
                  report=lambda line: None).run()


def test_a_study_fingerprinted_before_the_setting_resumes_as_val_only(tmp_path: Path) -> None:
    storage = open_storage(StorageSettings(run_dir=str(tmp_path)))
    study = load_or_create_study(storage, study_name="old", directions=["maximize"],
                                 sampler=optuna.samplers.RandomSampler(), resume=False)
    check_or_store(study, {"mode": '"pareto"'})  # stored without a selection: it ranked on val
    check_or_store(study, {"mode": '"pareto"', "selection": '"val"'})
    with pytest.raises(StudySettingsMismatch, match='selection: the study has "val", this start "holdout"'):
        check_or_store(study, {"mode": '"pareto"', "selection": '"holdout"'})


def test_a_bad_selection_is_one_line_naming_the_field_and_the_choices(tmp_path: Path) -> None:
    script = str(Path(sys.executable).parent / "nas-search")
    result = subprocess.run([script, "selection=test", "data=synthetic", "evaluator=proxy",
                             f"hydra.run.dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ("nas-search: error: search.selection must be one of "
                                     "['holdout', 'val'], got 'test'")


def test_a_streamed_data_set_cannot_be_carved() -> None:
    streamed = DataConfig(name="webdataset", root="/shards", num_classes=3, stream=True)
    assert selection_data(streamed, "val") is streamed
    with pytest.raises(SelectionError, match=r"selection=holdout .*data\.stream=true"):
        selection_data(streamed, "holdout")


def _supernet_checkpoint(data: DataConfig, folder: Path) -> Path:
    cfg = SupernetTrainConfig(steps=1, device="cpu", progress=False)
    train_supernet(new_supernet(load_space(SPACE_FILE), CLASSES, cfg), data, cfg, checkpoint_dir=folder)
    return folder / "supernet.pt"


def test_a_supernet_trained_on_the_holdout_is_refused(coded_data: Path, tiny_table: Path,
                                                       tmp_path: Path) -> None:
    data = _data(coded_data, tmp_path)
    whole = _supernet_checkpoint(DataConfig.from_dict(data), tmp_path / "whole")
    config = _config(tiny_table, data, {**SUPERNET, "checkpoint": str(whole)})
    with pytest.raises(SupernetCheckpointError) as refused:
        build_evaluator(config, tmp_path / "run")
    message = str(refused.value)
    assert "\n" not in message
    assert "data.carve_val=false" in message and "selection=holdout" in message
    build_evaluator(config.replace(selection="val"), tmp_path / "run")  # ranked on val: fine
    carved = _supernet_checkpoint(selection_data(DataConfig.from_dict(data), "holdout"), tmp_path / "carved")
    build_evaluator(config.replace(evaluator={**SUPERNET, "checkpoint": str(carved)}), tmp_path / "run")
