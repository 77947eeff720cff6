"""Datasets and loaders for proxy training: synthetic, ImageNet-style folders, CIFAR-10.

Three sources, chosen by :attr:`DataConfig.name`:

* ``synthetic``: class-conditional images generated in code (:class:`SyntheticImages`),
  deterministic by seed, any resolution and class count; the offline default.
* ``imagefolder``: ``root/train/<class>/<image>`` and, when present, ``root/val/<class>/...``
  (torchvision's ``ImageFolder``); reads ``../shared/datasets/cifar10-subset``.
* ``cifar10``: an ImageFolder-layout folder of equal-size images (``train/`` and ``val/``,
  e.g. ``../shared/datasets/cifar10``) decoded once into a uint8 tensor cache on disk and fed
  from memory with augmentation on tensors (:mod:`nas.training.tensor_data`): no image file is
  decoded during an epoch. ``train_per_class`` picks a class-balanced, seeded subset.
* ``webdataset``: tar shards of ``<key>.jpg`` + ``<key>.cls`` samples (e.g.
  ``../shared/datasets/tiny-imagenet``), decoded once into the same tensor cache and fed as
  ``cifar10`` (:mod:`nas.training.shards`), or with ``stream: true`` streamed shard by shard
  every epoch (:mod:`nas.training.shard_stream`).

When a source has no validation split (or ``carve_val`` asks for one), a fixed, class-
stratified split of ``val_fraction`` is carved from train, seeded by :attr:`DataConfig.seed`
only, so every training seed is scored on the same images.

**Small images, deep downsampling.** MobileNetV3 reduces its input 32x (stem and four
stride-2 blocks), so a 32x32 CIFAR image fed as is ends as a 1x1 map and the last stages see
no spatial structure. The transforms therefore *upsample* every image to
:attr:`DataConfig.resolution` with ``transforms.Resize`` before cropping: at resolution 64 a
32x32 image leaves a 2x2 map, at 96 a 3x3 map. Upsampling adds no information but gives each
layer the spatial extent the architecture was designed for, and it is the usual way
(e.g. NAS proxy tasks on CIFAR) to compare ImageNet-style networks on small images. The cost
grows with the square of the resolution, which is the proxy budget's main knob.

Augmentation is a pure function of ``(training seed, epoch, index)`` (see
:class:`EpochSampler`), so a run is repeatable whatever ``num_workers`` is, and a run resumed
mid-epoch from a checkpoint sees exactly the images the uninterrupted run saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from nas.config import ConfigError
from nas.training.data_config import (
    DEFAULT_SYNTHETIC_TRAIN,
    DEFAULT_SYNTHETIC_VAL,
    DataConfig,
    DataError,
)
from nas.training.synthetic import SyntheticImages
from nas.training.transforms import (
    EpochSampler,
    TransformedDataset,
    eval_transform,
    train_transform,
)


def _class_folders(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_folder(directory: Path) -> Any:
    from torchvision.datasets import ImageFolder

    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    if not _class_folders(directory):
        raise DataError(f"{directory}: empty, expected one sub-folder of images per class")
    try:
        return ImageFolder(str(directory))
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{directory}: {err}") from None


def _check_class_count(cfg: DataConfig, classes: Sequence[str], where: str) -> None:
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise DataError(
            f"{where} has {len(classes)} classes but DataConfig.num_classes is {cfg.num_classes}"
        )


def _stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): ``fraction`` of every class to val, chosen by ``seed``."""
    rng = np.random.default_rng([seed, 0x5917])
    targets_arr = np.asarray(targets)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in np.unique(targets_arr):
        members = rng.permutation(np.flatnonzero(targets_arr == label))
        n_val = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        val_idx += members[:n_val].tolist()
        train_idx += members[n_val:].tolist()
    return sorted(train_idx), sorted(val_idx)


def _subset_indices(n: int, limit: int, seed: int, tag: int) -> list[int]:
    """``limit`` of ``range(n)`` chosen by ``(seed, tag)``, in order (the seeded subsets)."""
    return sorted(np.random.default_rng([seed, tag]).permutation(n)[:limit].tolist())


def _subset(dataset: Dataset, limit: int | None, seed: int, tag: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    return Subset(dataset, _subset_indices(n, limit, seed, tag))


def _resolve_augment(cfg: DataConfig, first_image_path: str | None) -> str:
    if cfg.augment != "auto":
        return cfg.augment
    if first_image_path is None:
        return "pad_crop"
    from PIL import Image

    with Image.open(first_image_path) as img:
        return "pad_crop" if min(img.size) <= cfg.resolution else "resized_crop"


def _imagefolder_sources(cfg: DataConfig) -> tuple[Any, Any | None, list[str], str | None]:
    root = Path(cfg.root or "")
    if not root.is_dir():
        raise DataError(f"{root}: no such directory (an imagefolder root holds train/<class>/ "
                        "images and optionally val/<class>/)")
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: no such directory; an imagefolder root needs "
                        "train/<class>/<image> (and optionally val/<class>/<image>)")
    train = _image_folder(train_dir)
    val = None
    if val_dir.exists():
        val = _image_folder(val_dir)
        if val.classes != train.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise DataError(
                f"class folders differ between {train_dir} and {val_dir}: "
                f"only in train: {only_train}; only in val: {only_val}"
            )
    return train, val, list(train.classes), train.samples[0][0] if train.samples else None


def make_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset, int]:
    """``(train_ds, val_ds, num_classes)`` for ``cfg``.

    Items are ``(image tensor (3, R, R), label)``. The train set also accepts the
    ``(seed, index)`` keys of :class:`EpochSampler` (seeded augmentation).
    """
    if cfg.name == "synthetic":
        num_classes = cfg.num_classes or 10
        common = dict(num_classes=num_classes, size=cfg.resolution, seed=cfg.seed)
        train = SyntheticImages(num_samples=cfg.train_samples or DEFAULT_SYNTHETIC_TRAIN,
                                split=0, **common)  # type: ignore[arg-type]
        val = SyntheticImages(num_samples=cfg.val_samples or DEFAULT_SYNTHETIC_VAL,
                              split=1, **common)  # type: ignore[arg-type]
        return TransformedDataset(train, None), TransformedDataset(val, None), num_classes

    if cfg.name in ("cifar10", "webdataset"):
        raise ConfigError(f"DataConfig.name={cfg.name!r} is fed from a tensor cache or a shard "
                          "stream: use make_loaders")
    train_src, val_src, classes, first = _imagefolder_sources(cfg)
    where = str(Path(cfg.root or "") / "train")
    _check_class_count(cfg, classes, where)
    augment = _resolve_augment(cfg, first)
    train_tf = train_transform(cfg.resolution, augment)
    eval_tf = eval_transform(cfg.resolution, augment)
    if val_src is None or cfg.carve_val:
        train_idx, val_idx = _stratified_split(train_src.targets, cfg.val_fraction, cfg.seed)
        if not val_idx or not train_idx:
            raise DataError(f"{where}: too few images to carve a validation split "
                            f"(val_fraction={cfg.val_fraction})")
        train_base: Dataset = Subset(train_src, train_idx)
        val_base: Dataset = Subset(train_src, val_idx)
    else:
        train_base, val_base = train_src, val_src
    train_base = _subset(train_base, cfg.train_samples, cfg.seed, 1)
    val_base = _subset(val_base, cfg.val_samples, cfg.seed, 2)
    return TransformedDataset(train_base, train_tf), TransformedDataset(val_base, eval_tf), len(classes)


class Loaders(NamedTuple):
    """Training and validation loaders with the dataset's class count.

    ``train``/``val`` are torch ``DataLoader`` objects (``synthetic``, ``imagefolder``; a
    data-parallel rank's ``train``: :class:`RankSlicedLoader`) or
    :class:`nas.training.tensor_data.TensorLoader` objects (``cifar10``, ``webdataset``) or
    :class:`nas.training.shard_stream.ShardStream` objects (streamed shards); all iterate
    ``(images, labels)`` batches and expose ``sampler.set_epoch(epoch, start)``.
    """

    train: Any
    val: Any
    num_classes: int
    classes: tuple[str, ...] = ()


def _class_names(dataset: Any) -> tuple[str, ...]:
    """The class names behind wrapped datasets (TransformedDataset, Subset, ImageFolder)."""
    while dataset is not None:
        if hasattr(dataset, "classes"):
            return tuple(dataset.classes)
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
    return ()


def _tensor_loaders(cfg: DataConfig, seed: int, device: torch.device | str, rank: int, world: int,
                    pin_memory: bool) -> Loaders:
    """The tensor-cache sources (``cifar10``, cached ``webdataset``): batches built in memory."""
    from nas.training.tensor_data import TensorDataError, TensorSplit, balanced_subset, load_tensor_folder

    try:
        if cfg.name == "webdataset":
            from nas.training.shards import load_shard_tensors

            splits = load_shard_tensors(cfg)
        else:
            splits = load_tensor_folder(cfg.root or "", cache_dir=cfg.cache_dir)
    except TensorDataError as err:
        raise DataError(str(err)) from None
    train, val = splits["train"], splits["val"]
    classes = train.classes
    _check_class_count(cfg, classes, str(Path(cfg.root or "") / "train"))

    def take(split: TensorSplit, index: Sequence[int]) -> TensorSplit:
        picked = torch.as_tensor(list(index), dtype=torch.long)
        return TensorSplit(split.images[picked], split.labels[picked], split.classes)

    if cfg.carve_val:
        train_idx, val_idx = _stratified_split(train.labels.tolist(), cfg.val_fraction, cfg.seed)
        train, val = take(train, train_idx), take(train, val_idx)
    if cfg.train_per_class is not None:
        try:
            train = balanced_subset(train, cfg.train_per_class, cfg.seed, f"{cfg.root}/train")
        except TensorDataError as err:
            raise DataError(str(err)) from None
    for split, limit, name in ((train, cfg.train_samples, "train"), (val, cfg.val_samples, "val")):
        if limit is not None and limit > len(split):
            raise DataError(f"DataConfig.{name}_samples={limit} exceeds the {len(split)} images "
                            f"of {cfg.root}/{name}")
    # The same seeded subsets as the other sources (tags 1 and 2).
    if cfg.train_samples is not None:
        train = take(train, _subset_indices(len(train), cfg.train_samples, cfg.seed, 1))
    if cfg.val_samples is not None:
        val = take(val, _subset_indices(len(val), cfg.val_samples, cfg.seed, 2))
    if cfg.batch_size % world:
        raise ConfigError(f"DataConfig.batch_size={cfg.batch_size} (the global batch) is not "
                          f"divisible by the {world} data-parallel processes")
    from nas.training.tensor_data import TensorLoader

    pad = max(1, round(4 * train.images.shape[-1] / 32)) if cfg.augment != "none" else 0
    common = dict(batch_size=cfg.batch_size, resolution=cfg.resolution, device=device,
                  pin_memory=pin_memory)
    # Every rank scores the whole val split: all ranks then report the same accuracy.
    return Loaders(TensorLoader(train, seed=seed, train=True, pad=pad, rank=rank, world=world,
                                **common),  # type: ignore[arg-type]
                   TensorLoader(val, seed=seed, train=False, **common),  # type: ignore[arg-type]
                   len(classes), tuple(classes))


def make_loaders(cfg: DataConfig, *, seed: int = 0, pin_memory: bool = False,
                 device: torch.device | str = "cpu", rank: int = 0, world: int = 1) -> Loaders:
    """Loaders for ``cfg``; ``seed`` (the training seed) fixes shuffling and augmentation.

    The training loader's sampler is an :class:`EpochSampler` (or the tensor source's
    :class:`nas.training.tensor_data.BatchOrder`; call ``set_epoch`` each epoch); it drops the last
    incomplete batch so BatchNorm never sees a batch of one. ``device`` is where the
    tensor-cache sources keep their tensors and build batches (the training device);
    ``rank``/``world`` give a data-parallel process its share of every batch (streamed
    shards: its share of the shards, :mod:`nas.training.shard_stream`; the ``DataLoader``
    sources: :class:`RankSlicedLoader`).
    """
    if cfg.name == "webdataset" and cfg.stream:
        from nas.training.shard_stream import stream_loaders

        train_stream, val_stream, classes = stream_loaders(cfg, seed, rank, world)
        return Loaders(train_stream, val_stream, len(classes), classes)
    if cfg.name in ("cifar10", "webdataset"):
        return _tensor_loaders(cfg, seed, device, rank, world, pin_memory)
    train_ds, val_ds, num_classes = make_datasets(cfg)
    n_train = len(train_ds)  # type: ignore[arg-type]
    drop_last = n_train > cfg.batch_size
    common = dict(num_workers=cfg.num_workers, pin_memory=pin_memory)
    # Own generators: a DataLoader without one draws worker seeds from the global torch RNG
    # each time it is iterated, which would shift the dropout stream of a resumed run.
    train: Any
    if world == 1:
        train = DataLoader(train_ds, sampler=EpochSampler(n_train, seed), drop_last=drop_last,
                           batch_size=cfg.batch_size, generator=torch.Generator().manual_seed(seed),
                           **common)  # type: ignore[arg-type]
    else:
        train = RankSlicedLoader(train_ds, EpochSampler(n_train, seed), batch_size=cfg.batch_size,
                                 rank=rank, world=world, drop_last=drop_last,
                                 generator=torch.Generator().manual_seed(seed), **common)
    # Every rank scores the whole val split (as the tensor sources do).
    val = DataLoader(val_ds, shuffle=False, batch_size=cfg.batch_size,
                     generator=torch.Generator().manual_seed(seed), **common)  # type: ignore[arg-type]
    return Loaders(train, val, num_classes, _class_names(train_ds))


class RankBatches(Sampler[list[Any]]):
    """This rank's share of every global batch of an :class:`EpochSampler`'s order.

    A batch sampler: global batch ``b`` is positions ``[b * batch_size, (b + 1) * batch_size)``
    of the epoch's order, and rank ``r`` of ``world`` takes its ``r``-th equal slice. The
    augmentation of an image is a function of (seed, epoch, index) alone, so the ranks
    together load exactly the images (and crops) one process loads, each only its own.
    """

    def __init__(self, order: EpochSampler, batch_size: int, rank: int, world: int,
                 drop_last: bool) -> None:
        self.order, self.batch_size, self.rank, self.world = order, batch_size, rank, world
        self.drop_last = drop_last

    def __len__(self) -> int:
        full, rest = divmod(len(self.order), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[Any]]:
        keys = list(self.order)
        for b in range(len(self)):
            chunk = keys[b * self.batch_size:(b + 1) * self.batch_size]
            share = len(chunk) // self.world
            yield chunk[self.rank * share:(self.rank + 1) * share]


class RankSlicedLoader:
    """A data-parallel rank's training loader for the ``DataLoader`` sources (``synthetic``,
    ``imagefolder``): its slice of every global batch (:class:`RankBatches`).

    Looks to the training loop as a ``DataLoader`` does: ``sampler`` (the epoch order, whose
    ``set_epoch(epoch, start)`` counts images of the global batches), ``batch_size`` (the
    global batch), ``len()`` (global batches left) and iteration; ``rank``/``world`` say
    whose share it is.
    """

    def __init__(self, dataset: Dataset, order: EpochSampler, *, batch_size: int, rank: int,
                 world: int, drop_last: bool, **loader_options: Any) -> None:
        if batch_size % world:
            raise ConfigError(f"DataConfig.batch_size={batch_size} (the global batch) is not "
                              f"divisible by the {world} data-parallel processes")
        size = len(dataset)  # type: ignore[arg-type]
        if not drop_last and size % world:
            raise ConfigError(f"the {size} training images (one batch smaller than "
                              f"DataConfig.batch_size={batch_size}) do not split evenly over "
                              f"{world} data-parallel processes")
        self.dataset, self.sampler, self.batch_size = dataset, order, batch_size
        self.rank, self.world = rank, world
        self._loader = DataLoader(dataset, batch_sampler=RankBatches(order, batch_size, rank, world,
                                                                     drop_last), **loader_options)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._loader)


def loader_share(loader: Any) -> tuple[int, int]:
    """``(rank, world)`` of the share of every global batch a training loader yields
    (``(0, 1)``: whole batches)."""
    for holder in (loader, getattr(loader, "sampler", None)):
        if hasattr(holder, "world") and hasattr(holder, "rank"):
            return int(holder.rank), int(holder.world)
    return 0, 1
