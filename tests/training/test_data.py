from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.config import ConfigError
from nas.training.data import make_datasets, make_loaders
from nas.training.data_config import DataConfig, DataError
from nas.training.synthetic import SyntheticImages
from nas.training.transforms import EpochSampler


def _write_folder(root: Path, classes: dict[str, int], size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


# ---------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_by_seed():
    a = SyntheticImages(num_samples=20, num_classes=5, size=24, seed=3)
    b = SyntheticImages(num_samples=20, num_classes=5, size=24, seed=3)
    c = SyntheticImages(num_samples=20, num_classes=5, size=24, seed=4)
    for i in (0, 7, 19):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert not torch.equal(a[7][0], c[7][0])


def test_synthetic_any_resolution_and_class_count():
    train, val, k = make_datasets(DataConfig(resolution=40, num_classes=7, train_samples=70,
                                             val_samples=14))
    assert k == 7 and len(train) == 70 and len(val) == 14
    image, label = train[5]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    labels = [train[i][1] for i in range(70)]
    assert sorted(set(labels)) == list(range(7)) and labels.count(0) == 10
    # Train and val are different draws from the same class prototypes.
    assert not torch.equal(train[0][0], val[0][0])


def test_synthetic_is_not_linearly_trivial():
    # Random phases make class means nearly flat: nearest-class-mean on pixels is weak.
    ds = SyntheticImages(num_samples=400, num_classes=4, size=16, seed=0)
    x = torch.stack([ds[i][0] for i in range(400)]).flatten(1).numpy()
    y = np.array(ds.targets)
    means = np.stack([x[:300][y[:300] == c].mean(0) for c in range(4)])
    predicted = ((x[300:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == y[300:]).mean() < 0.5


# ---------------------------------------------------------------------------- config
def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"DataConfig.name must be one of \['synthetic', 'imagefolder', 'cifar10', 'webdataset'\]"):
        DataConfig(name="mnist")
    with pytest.raises(ConfigError, match="resolution"):
        DataConfig(resolution=4)
    with pytest.raises(ConfigError, match="root is required"):
        DataConfig(name="imagefolder")
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['resolutoin'\]"):
        DataConfig.from_dict({"resolutoin": 64})
    assert DataConfig.from_dict({"resolution": 48}).resolution == 48


# ---------------------------------------------------------------------------- image folders
def test_wrong_path_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        make_datasets(DataConfig(name="imagefolder", root=str(missing)))


def test_root_without_train_folder(tmp_path):
    with pytest.raises(DataError, match=r"train: no such directory"):
        make_datasets(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_empty_train_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train: empty"):
        make_datasets(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_class_folder_without_images(tmp_path):
    _write_folder(tmp_path / "train", {"a": 2})
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"train: Found no valid file for the classes b"):
        make_datasets(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_mismatched_classes_are_named(tmp_path):
    _write_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    _write_folder(tmp_path / "val", {"cat": 1, "emu": 1})
    with pytest.raises(DataError, match=r"only in train: \['dog'\]; only in val: \['emu'\]"):
        make_datasets(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_num_classes_guard(tmp_path):
    _write_folder(tmp_path / "train", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="has 2 classes but DataConfig.num_classes is 5"):
        make_datasets(DataConfig(name="imagefolder", root=str(tmp_path), num_classes=5))


def _val_files(ds) -> list[str]:
    subset = ds.base
    return sorted(subset.dataset.samples[i][0] for i in subset.indices)


def test_carved_val_split_is_seeded_and_stratified(tmp_path):
    _write_folder(tmp_path / "train", {"a": 10, "b": 10, "c": 10})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), resolution=16, val_fraction=0.2)
    train, val, k = make_datasets(cfg)
    assert k == 3 and len(val) == 6 and len(train) == 24
    files = _val_files(val)
    assert sorted(Path(f).parent.name for f in files) == ["a", "a", "b", "b", "c", "c"]
    train_files = {train.base.dataset.samples[i][0] for i in train.base.indices}
    assert not train_files & set(files)
    assert _val_files(make_datasets(cfg)[1]) == files
    other = DataConfig(name="imagefolder", root=str(tmp_path), resolution=16, val_fraction=0.2, seed=1)
    assert _val_files(make_datasets(other)[1]) != files
    # The training seed (shuffling, augmentation) does not move the split.
    assert _val_files(make_loaders(cfg, seed=5).val.dataset) == files


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    _write_folder(tmp_path / "train", {"a": 3, "b": 3}, size=8)
    train, _, _ = make_datasets(DataConfig(name="imagefolder", root=str(tmp_path), resolution=16))
    assert train[(11, 2)][0].shape == (3, 16, 16)
    assert torch.equal(train[(11, 2)][0], train[(11, 2)][0])
    differs = [not torch.equal(train[(11, 2)][0], train[(s, 2)][0]) for s in range(12, 20)]
    assert any(differs)
    # Seeded augmentation leaves the global RNG alone (dropout streams stay reproducible).
    state = torch.get_rng_state()
    train[(3, 1)]
    assert torch.equal(state, torch.get_rng_state())


def test_epoch_sampler_orders_and_resumes():
    sampler = EpochSampler(10, seed=1)
    sampler.set_epoch(0)
    first = [i for _, i in sampler]
    sampler.set_epoch(1)
    second = [i for _, i in sampler]
    assert sorted(first) == list(range(10)) and first != second
    sampler.set_epoch(1, start=4)
    assert [i for _, i in sampler] == second[4:] and len(sampler) == 6


def test_loaders_batches():
    loaders = make_loaders(DataConfig(resolution=16, train_samples=50, val_samples=20,
                                      batch_size=16), seed=0)
    assert loaders.num_classes == 10
    assert len(loaders.train) == 3  # the last incomplete batch is dropped
    images, labels = next(iter(loaders.train))
    assert images.shape == (16, 3, 16, 16) and labels.shape == (16,)
    assert sum(len(y) for _, y in loaders.val) == 20


# ---------------------------------------------------------------------------- the real subset
def test_cifar_subset_reads_upsampled(cifar_subset):
    cfg = DataConfig(name="imagefolder", root=str(cifar_subset), resolution=64)
    train, val, k = make_datasets(cfg)
    assert k == 10 and len(train) == 3728 and len(val) == 932
    image, label = train[(0, 0)]
    assert image.shape == (3, 64, 64) and 0 <= label < 10
    assert val[0][0].shape == (3, 64, 64)
    carved = make_datasets(DataConfig(name="imagefolder", root=str(cifar_subset), resolution=32,
                                      carve_val=True, val_fraction=0.1))
    assert len(carved[1]) == pytest.approx(373, abs=10) and len(carved[0]) + len(carved[1]) == 3728


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="absent: no such directory"):
        make_loaders(DataConfig(name="cifar10", root=str(tmp_path / "absent"), cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="train: no such directory"):
        make_loaders(DataConfig(name="cifar10", root=str(tmp_path), cache_dir=str(tmp_path)))
