"""WebDataset shards streamed epoch by epoch (``DataConfig.stream: true``).

For shard sets that do not fit in memory. Every epoch the training shards are put in an
order fixed by ``(seed, epoch)``; the ``webdataset`` pipeline then deals that list out
shard by shard, to the data-parallel ranks (``wds.split_by_node``: rank ``r`` of ``R`` reads
shards ``r, r + R, ...``) and within a rank to its loader workers (``wds.split_by_worker``),
decodes, and shuffles samples in a buffer seeded by ``(seed, epoch)``. Each process thus
reads its own shards, never the others', and the whole order is a pure function of the
seed, the epoch, the number of ranks and of workers: a run resumed mid-epoch replays the
epoch up to where it stopped and goes on with exactly the batches an uninterrupted run saw.

Data-parallel training needs every rank to take the same number of steps, and shards
need not hold equal counts. The steps of an epoch are therefore the most that every rank is
sure to fill whatever shards the epoch deals it (:func:`train_steps`, from the shard sizes,
counted once and cached); a rank whose share holds more stops there, and the samples it did
not reach come in other epochs (shards move between ranks from epoch to epoch). With equal
shards that divide evenly, nothing is left out.

Augmentation is :class:`nas.training.tensor_data.BatchAugment` (random crop with
``resolution / 8`` padding, flip) on each rank's batch; images are resized to the
training resolution as they are decoded, so shards may hold images of any size.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from nas._io import default_cache_dir, write_text_atomic
from nas.config import ConfigError
from nas.training.data_config import DataConfig, DataError
from nas.training.shards import ShardReader, read_classes, shard_fingerprint, shard_lists
from nas.training.tensor_data import BatchAugment, _mix

# Decoded images held for the sample shuffle of each reader (about 12 MB at 64 px).
SHUFFLE_BUFFER = 1000


def train_steps(sizes: Sequence[int], world: int, workers: int, batch: int) -> int:
    """Batches of ``batch`` images every rank can fill in any epoch.

    A rank gets at least ``len(sizes) // world`` shards, so at least the sum ``n`` of that
    many smallest shards; its workers (each dropping its last partial batch) fill at least
    ``n // batch - (workers - 1)`` batches, and at least ``workers`` times what the worker with
    the fewest, smallest shards fills. The larger of the two bounds.
    """
    workers = max(workers, 1)
    ordered = sorted(sizes)
    per_rank = len(ordered) // world
    per_worker = per_rank // workers
    by_total = sum(ordered[:per_rank]) // batch - (workers - 1)
    by_worker = workers * (sum(ordered[:per_worker]) // batch)
    return max(by_total, by_worker)


def val_batches(sizes: Sequence[int], workers: int, batch: int) -> int:
    """Batches of the (unsplit, unshuffled) val stream: each worker's shards, last batch partial."""
    workers = max(workers, 1)
    return sum(-(-sum(sizes[w::workers]) // batch) for w in range(workers))


class StreamOrder:
    """The epoch and the resume point of a stream, as :class:`~nas.training.tensor_data.BatchOrder`
    has them (``set_epoch(epoch, start)``, ``start`` counted in images of the global batch)."""

    def __init__(self, steps: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.steps, self.batch_size, self.seed = steps, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.steps * self.batch_size:
            raise ValueError(f"start {start} outside [0, {self.steps * self.batch_size}]")
        self.epoch, self.start = epoch, start


class ShardStream:
    """Batches ``(images, labels)`` streamed from shards; ``len()`` is the batches left.

    Args:
        reader: the pipelines' builder (class count, resize to the resolution).
        shards: the split's shards; ``sizes`` their sample counts.
        batch_size: the global batch (a rank gets ``batch_size / world`` images a step).
        train: shuffle shards and samples, augment, split shards across ranks, a fixed number
            of steps; else every rank reads every shard in order (the whole split, scored
            alike on every rank).
    """

    def __init__(self, reader: ShardReader, shards: Sequence[str], sizes: Sequence[int], *,
                 batch_size: int, resolution: int, seed: int, train: bool, pad: int,
                 rank: int = 0, world: int = 1, num_workers: int = 0,
                 classes: tuple[str, ...] = ()) -> None:
        if batch_size % world:
            raise ConfigError(f"DataConfig.batch_size={batch_size} (the global batch) is not "
                              f"divisible by the {world} data-parallel processes")
        if not train:  # val is read whole by every rank: fewer shards, fewer workers
            num_workers = min(num_workers, len(shards))
        readers = world * max(num_workers, 1)
        if train and len(shards) < readers:
            raise DataError(f"{shards[0]}{' ...' if len(shards) > 1 else ''}: {len(shards)} "
                            f"shard(s) cannot feed {world} rank(s) x {max(num_workers, 1)} "
                            "loader worker(s): every reader needs a shard of its own")
        self.reader, self.shards, self.sizes = reader, list(shards), list(sizes)
        self.batch_size = batch_size
        self.local_batch = batch_size // world
        self.train, self.num_workers = train, num_workers
        self.classes = classes
        steps = (train_steps(self.sizes, world, num_workers, self.local_batch) if train
                 else val_batches(self.sizes, num_workers, batch_size))
        if steps < 1:
            raise DataError(f"{shards[0]} ...: {sum(self.sizes)} samples in {len(shards)} shards "
                            f"fill no batch of {self.local_batch} on each of {world} rank(s)")
        self.sampler = StreamOrder(steps, batch_size, seed, rank, world)
        self.augment = BatchAugment(resolution, pad if train else 0, torch.device("cpu"))
        self.dataset = range(sum(self.sizes))  # as DataLoader.dataset: len() is the images

    def __len__(self) -> int:
        return self.sampler.steps - self.sampler.start // self.batch_size

    def epoch_shards(self, epoch: int) -> list[str]:
        """The shard order of ``epoch`` (train: a permutation fixed by seed and epoch)."""
        if not self.train:
            return list(self.shards)
        order = np.random.default_rng(_mix(self.sampler.seed, epoch, 0x5A4D)).permutation(len(self.shards))
        return [self.shards[i] for i in order]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler
        epoch_seed = _mix(order.seed, order.epoch)
        pipeline = self.reader.pipeline(self.epoch_shards(order.epoch), split_nodes=self.train,
                                        shuffle_seed=epoch_seed if self.train else None,
                                        buffer=SHUFFLE_BUFFER)
        loader = DataLoader(pipeline, batch_size=self.local_batch if self.train else self.batch_size,
                            num_workers=self.num_workers, drop_last=self.train,
                            persistent_workers=False)
        first = order.start // self.batch_size
        batches = itertools.islice(_named(loader), first, order.steps)
        for number, (images, labels) in enumerate(batches, start=first):
            # Each rank draws its own batch's augmentation (its images are its own).
            yield self.augment(images, _mix(epoch_seed, number, order.rank),
                               len(labels), slice(None)), labels


def _named(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches; a worker's :class:`DataError` re-raised as its own one line
    (the loader wraps a worker's exception in a traceback)."""
    try:
        yield from loader
    except DataError as err:
        text = str(err).strip().splitlines()
        last = text[-1] if text else str(err)
        raise DataError(last.split("DataError: ", 1)[-1]) from None


def shard_sizes(reader: ShardReader, shards: Sequence[str], key: str, cache_dir: str | None) -> list[int]:
    """Samples in each shard, counted once (a pass without decoding) and cached by ``key``."""
    path = Path(cache_dir or default_cache_dir()) / "shards" / f"{key}.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if known.get("shards") == list(shards):
            return [int(n) for n in known["sizes"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sizes = reader.count_samples(shards)
    write_text_atomic(path, json.dumps({"shards": list(shards), "sizes": sizes}),
                      what="the shard sample counts")
    return sizes


def stream_loaders(cfg: DataConfig, seed: int, rank: int, world: int) -> tuple[ShardStream, ShardStream, tuple[str, ...]]:
    """The train and val streams of ``cfg`` (``stream: true``) for this rank."""
    import webdataset as wds

    # The library finds the rank in the environment (torchrun) or the process group: it must
    # be the one this process was given, or the ranks' shard shares would overlap.
    found = tuple(wds.utils.pytorch_worker_info()[:2])
    if found != (rank, world):
        raise ConfigError(f"data-parallel rank {rank} of {world} given, but the environment "
                          f"(RANK/WORLD_SIZE or torch.distributed) says rank {found[0]} of "
                          f"{found[1]}: the shard split would not be disjoint")
    classes = read_classes(cfg)
    shards = shard_lists(cfg)
    key = shard_fingerprint(shards, classes)
    reader = ShardReader(len(classes), resize=cfg.resolution)
    sizes = {split: shard_sizes(reader, urls, f"{split}-{key}", cfg.cache_dir)
             for split, urls in shards.items()}
    pad = max(1, round(4 * cfg.resolution / 32)) if cfg.augment != "none" else 0
    common = dict(batch_size=cfg.batch_size, resolution=cfg.resolution, seed=seed,
                  num_workers=cfg.num_workers, classes=classes)
    train = ShardStream(reader, shards["train"], sizes["train"], train=True, pad=pad, rank=rank,
                        world=world, **common)  # type: ignore[arg-type]
    val = ShardStream(reader, shards["val"], sizes["val"], train=False, pad=0,
                      **common)  # type: ignore[arg-type]
    return train, val, classes


__all__ = ["SHUFFLE_BUFFER", "ShardStream", "StreamOrder", "shard_sizes", "stream_loaders",
           "train_steps", "val_batches"]
