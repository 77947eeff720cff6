"""Augmentation as a pure function of (seed, epoch, index), and the epoch sampler, so a
run resumed mid-epoch sees exactly the images an uninterrupted one saw."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from nas.training.data_config import IMAGENET_MEAN, IMAGENET_STD


def train_transform(resolution: int, augment: str) -> Any:
    """torchvision training transforms for PIL images (``augment`` resolved, not ``auto``)."""
    from torchvision import transforms as T

    normalise = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if augment == "pad_crop":
        # Upsample first (see the module docstring), then the CIFAR recipe at that size.
        head = [T.Resize((resolution, resolution)),
                T.RandomCrop(resolution, padding=max(1, resolution // 8), padding_mode="reflect"),
                T.RandomHorizontalFlip()]
    elif augment == "resized_crop":
        head = [T.RandomResizedCrop(resolution), T.RandomHorizontalFlip()]
    else:
        head = [T.Resize((resolution, resolution))]
    return T.Compose(head + normalise)


def eval_transform(resolution: int, augment: str) -> Any:
    """Evaluation transforms: a plain resize for small images, resize + centre crop otherwise."""
    from torchvision import transforms as T

    if augment == "resized_crop":
        # ImageNet convention: resize the short side to res / 0.875, centre-crop res.
        head = [T.Resize(int(round(resolution / 0.875))), T.CenterCrop(resolution)]
    else:
        head = [T.Resize((resolution, resolution))]
    return T.Compose(head + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _mix_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class TransformedDataset(Dataset):
    """Applies ``transform`` to ``base``; seeded per sample when keyed by ``(seed, index)``.

    An :class:`EpochSampler` yields ``(epoch_seed, index)`` keys; the transform then runs
    under a torch RNG forked and seeded from that pair, which makes augmentation a pure
    function of (training seed, epoch, index). Plain integer keys apply the transform
    unseeded (evaluation transforms are deterministic).
    """

    def __init__(self, base: Dataset, transform: Any | None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        seed, index = key if isinstance(key, tuple) else (None, key)
        image, label = self.base[index]
        if self.transform is None:
            return image, label
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix_seed(seed, index))
            return self.transform(image), label


class EpochSampler(Sampler):
    """Shuffles ``size`` indices with a permutation fixed by ``(seed, epoch)``.

    Yields ``(epoch_seed, index)`` keys for :class:`TransformedDataset`. ``set_epoch(e,
    start=k)`` skips the first ``k`` positions of epoch ``e``'s order, which is how a run
    resumes mid-epoch without loading the images it already trained on.
    """

    def __init__(self, size: int, seed: int, *, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.size:
            raise ValueError(f"start {start} outside [0, {self.size}]")
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return self.size - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = _mix_seed(self.seed, self.epoch)
        if self.shuffle:
            order = np.random.default_rng(epoch_seed).permutation(self.size)
        else:
            order = np.arange(self.size)
        for index in order[self.start:]:
            yield epoch_seed, int(index)


# ---------------------------------------------------------------------------- real datasets
