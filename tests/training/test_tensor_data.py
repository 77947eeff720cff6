"""The cifar10 source: a folder decoded once into a tensor cache, batches built on tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nas.training.tensor_data as tensor_data
from nas.arch.codecs import load_spec
from nas.config import ConfigError
from nas.training.data import make_loaders
from nas.training.data_config import DataConfig, DataError
from nas.training.train import train
from nas.training.train_config import TrainConfig

CLASSES = ("cat", "dog", "frog")


def _write(root: Path, per_class: dict[str, int] | None = None, split: str = "train",
           size: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range((per_class or {}).get(name, 6)):
            pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write(root, {"cat": 8, "dog": 8, "frog": 8}, "train")
    _write(root, {"cat": 2, "dog": 2, "frog": 2}, "val", seed=1)
    return root


def _cfg(root: Path, cache: Path, **fields) -> DataConfig:
    base = dict(name="cifar10", root=str(root), resolution=16, batch_size=4, cache_dir=str(cache))
    return DataConfig(**{**base, **fields})


def test_decodes_exact_pixels_and_labels(folder: Path, tmp_path: Path) -> None:
    splits = tensor_data.load_tensor_folder(folder, cache_dir=tmp_path / "cache", verbose=False)
    train_split = splits["train"]
    assert train_split.images.shape == (24, 3, 8, 8) and train_split.images.dtype == torch.uint8
    assert train_split.classes == CLASSES and len(splits["val"]) == 6
    assert train_split.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    png = np.array(Image.open(folder / "train" / "dog" / "0003.png").convert("RGB"))
    assert torch.equal(train_split.images[8 + 3], torch.from_numpy(png).permute(2, 0, 1))


def test_cache_is_reused_and_rebuilt_when_the_folder_changes(folder: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    calls = {"n": 0}
    real = tensor_data._decode_split

    def counting(files):
        calls["n"] += 1
        return real(files)

    monkeypatch.setattr(tensor_data, "_decode_split", counting)
    cache = tmp_path / "cache"
    first = tensor_data.load_tensor_folder(folder, cache_dir=cache, verbose=False)
    assert calls["n"] == 2  # train and val decoded once
    again = tensor_data.load_tensor_folder(folder, cache_dir=cache, verbose=False)
    assert calls["n"] == 2 and torch.equal(first["train"].images, again["train"].images)
    # A changed image (new content, new modification time) makes a new cache.
    changed = folder / "train" / "cat" / "0000.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 10**18))
    rebuilt = tensor_data.load_tensor_folder(folder, cache_dir=cache, verbose=False)
    assert calls["n"] == 4 and int(rebuilt["train"].images[0].sum()) == 0
    assert len(list((cache / "tensors").iterdir())) == 2  # one cache per content


def test_batches_are_repeatable_resumable_and_shard_over_ranks(folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(folder, tmp_path / "cache")
    loader = make_loaders(cfg, seed=3).train
    loader.sampler.set_epoch(1)
    full = list(loader)
    assert len(full) == 6 and full[0][0].shape == (4, 3, 16, 16)
    loader.sampler.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, loader))
    loader.sampler.set_epoch(1, start=2 * 4)  # resume after two batches
    tail = list(loader)
    assert len(tail) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))
    loader.sampler.set_epoch(2)
    assert not torch.equal(next(iter(loader))[0], full[0][0])
    # Two data-parallel ranks see the two halves of every global batch, augmentation included.
    halves = [make_loaders(cfg, seed=3, rank=r, world=2).train for r in (0, 1)]
    for half in halves:
        half.sampler.set_epoch(1)
    for (img, lab), (a, la), (b, lb) in zip(full, *halves):
        assert torch.equal(img, torch.cat([a, b])) and torch.equal(lab, torch.cat([la, lb]))


def test_augmentation_is_a_padded_crop_and_flip(folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(folder, tmp_path / "cache", resolution=8, augment="none")
    plain = make_loaders(cfg, seed=0)
    assert plain.train.pad == 0
    images = tensor_data.load_tensor_folder(folder, cache_dir=tmp_path / "cache")["train"].images[:2]
    dy, dx = torch.tensor([4, 0]), torch.tensor([4, 8])
    out = tensor_data._crop_flip(images, dy, dx, torch.tensor([False, True]), 4)
    assert torch.equal(out[0], images[0])  # offset (4, 4) of a 4-padded image: unchanged
    shifted = torch.nn.functional.pad(images[1:2], (4, 4, 4, 4))[0, :, 0:8, 8:16].flip(-1)
    assert torch.equal(out[1], shifted)


def test_train_per_class_is_balanced_and_seeded(folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(folder, tmp_path / "cache", train_per_class=3, batch_size=3)
    labels = make_loaders(cfg).train.dataset.labels
    assert torch.bincount(labels).tolist() == [3, 3, 3]
    other = make_loaders(_cfg(folder, tmp_path / "cache", train_per_class=3, batch_size=3, seed=5))
    assert torch.bincount(other.train.dataset.labels).tolist() == [3, 3, 3]
    with pytest.raises(DataError, match=r"train_per_class=9 exceeds the 8 images of class 'cat'"):
        make_loaders(_cfg(folder, tmp_path / "cache", train_per_class=9))
    with pytest.raises(ConfigError, match=r"train_per_class needs the tensor cache \(name 'cifar10' or 'webdataset'"):
        DataConfig(name="synthetic", train_per_class=3)


@pytest.mark.parametrize("damage, message", [
    ("missing_val_class", r"missing in val/: \['frog'\]"),
    ("empty_class", r"val/dog: empty class folder"),
    ("corrupt_image", r"train/cat/0002.png: cannot decode image"),
    ("mixed_sizes", r"train/dog/0001.png: image is 9x9 but"),
    ("no_val", r"data/val: no such directory"),
])
def test_bad_folders_are_named_and_leave_no_cache(folder: Path, tmp_path: Path, damage: str,
                                                  message: str) -> None:
    if damage == "missing_val_class":
        for f in (folder / "val" / "frog").iterdir():
            f.unlink()
        (folder / "val" / "frog").rmdir()
    elif damage == "empty_class":
        for f in (folder / "val" / "dog").iterdir():
            f.unlink()
    elif damage == "corrupt_image":
        (folder / "train" / "cat" / "0002.png").write_bytes(b"not a png")
    elif damage == "mixed_sizes":
        Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(folder / "train" / "dog" / "0001.png")
    elif damage == "no_val":
        for f in (folder / "val").rglob("*.png"):
            f.unlink()
        for d in (folder / "val").iterdir():
            d.rmdir()
        (folder / "val").rmdir()
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=message):
        make_loaders(_cfg(folder, cache))
    leftovers = list((cache / "tensors").iterdir()) if (cache / "tensors").exists() else []
    assert leftovers == []


def test_resolution_below_the_network_stride_is_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resolution=16 is below the network's total stride 32"):
        train(load_spec("small"), _cfg(folder, tmp_path / "cache"), TrainConfig(progress=False))


def test_training_on_the_tensor_source_resumes_bit_identically(folder: Path, tmp_path: Path) -> None:
    data = _cfg(folder, tmp_path / "cache", resolution=32, batch_size=6)
    spec = load_spec("small_minimal")
    cfg = TrainConfig(epochs=2, progress=False, bn_recalibration_batches=1, lr=0.05)
    straight = train(spec, data, cfg)

    class Stop(Exception):
        pass

    def interrupt(step: int, metrics: dict) -> None:
        if step == 5:
            raise Stop

    ckpt = TrainConfig(epochs=2, progress=False, bn_recalibration_batches=1, lr=0.05,
                       checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2)
    with pytest.raises(Stop):
        train(spec, data, ckpt, on_step=interrupt)
    resumed = train(spec, data, ckpt, resume=True)
    assert resumed.top1 == straight.top1 and resumed.loss == straight.loss
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_the_shared_cifar10_subset_loads_through_the_cache(tmp_path: Path, cifar_subset: Path) -> None:
    loaders = make_loaders(DataConfig(name="cifar10", root=str(cifar_subset), resolution=48,
                                      batch_size=64, cache_dir=str(tmp_path)))
    assert loaders.num_classes == 10 and len(loaders.train.dataset) + len(loaders.val.dataset) == 4660
    images, labels = next(iter(loaders.val))
    assert images.shape == (64, 3, 48, 48) and abs(float(images.mean())) < 1.0
