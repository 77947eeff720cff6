"""Image folders decoded once into a uint8 tensor cache, fed from memory with tensor augmentation.

The ``cifar10`` source of :mod:`nas.training.data`. A folder in the ImageFolder layout
(``root/train/<class>/<image>``, ``root/val/<class>/<image>``; every image the same size,
as in ``../shared/datasets/cifar10``) is validated and decoded once into
``(N, 3, H, W)`` uint8 tensors that are stored in a cache folder keyed by the folder's
content (relative path, size and modification time of every file: a changed, added or
removed image rebuilds the cache). Every later run loads about 150 MB of tensors in a
fraction of a second, and an epoch never decodes an image file.

Batches are assembled and augmented on tensors (:class:`TensorLoader`): the CIFAR recipe
(random crop with 4-pixel zero padding at the native size, horizontal flip) on the uint8
batch, then conversion to float, ImageNet normalisation and an upsampling to the
training resolution (see :mod:`nas.training.data` for why 32x32 images are upsampled). The order and
the augmentation are pure functions of ``(seed, epoch, batch)``, so a run resumed
mid-epoch sees the batches the uninterrupted run saw, and data-parallel ranks take
disjoint slices of the same global batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from nas._io import default_cache_dir, writing
from nas.errors import NASError

CACHE_FORMAT = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")


class TensorDataError(NASError, ValueError):
    """A folder cannot be decoded into a tensor cache; the message names the path."""


@dataclass(frozen=True)
class TensorSplit:
    """One decoded split: ``images`` uint8 ``(N, 3, H, W)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ---------------------------------------------------------------------------- scanning
def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    """``{class: sorted image files}`` of one split folder, validated."""
    if not split_dir.is_dir():
        raise TensorDataError(f"{split_dir}: no such directory; expected <root>/{split_dir.name}/"
                              "<class>/<image> (the ImageFolder layout)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TensorDataError(f"{split_dir}: no class folders; expected one sub-folder of images "
                              "per class")
    files: dict[str, list[Path]] = {}
    for name in classes:
        images = sorted(p for p in (split_dir / name).iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise TensorDataError(f"{split_dir / name}: empty class folder (no image files with "
                                  f"extensions {', '.join(IMAGE_EXTENSIONS)})")
        files[name] = images
    return files


def scan_folder(root: str | Path) -> dict[str, dict[str, list[Path]]]:
    """``{split: {class: files}}`` for both splits; the classes must agree."""
    root = Path(root)
    if not root.is_dir():
        raise TensorDataError(f"{root}: no such directory (expected train/<class>/ and "
                              "val/<class>/ image folders)")
    splits = {split: _class_files(root / split) for split in SPLITS}
    train, val = set(splits["train"]), set(splits["val"])
    if train != val:
        raise TensorDataError(
            f"{root}: class folders differ between train/ and val/: missing in val/: "
            f"{sorted(train - val)}; missing in train/: {sorted(val - train)}")
    return splits


def fingerprint(root: str | Path, splits: dict[str, dict[str, list[Path]]]) -> str:
    """A hash of every file's relative path, size and modification time (the cache key)."""
    root = Path(root)
    digest = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
    for split in SPLITS:
        for name, files in splits[split].items():
            for path in files:
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


# ---------------------------------------------------------------------------- decoding
def _decode_split(files: dict[str, list[Path]]) -> TensorSplit:
    from PIL import Image, UnidentifiedImageError

    classes = tuple(files)
    total = sum(len(v) for v in files.values())
    images: np.ndarray | None = None
    labels = np.empty(total, dtype=np.int64)
    size: tuple[int, int] | None = None
    first: Path | None = None
    i = 0
    for label, name in enumerate(classes):
        for path in files[name]:
            try:
                with Image.open(path) as img:
                    array = np.asarray(img.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise TensorDataError(f"{path}: cannot decode image ({err})") from None
            if size is None:
                size, first = array.shape[:2], path
                images = np.empty((total, *array.shape), dtype=np.uint8)
            elif array.shape[:2] != size:
                raise TensorDataError(
                    f"{path}: image is {array.shape[1]}x{array.shape[0]} but {first} is "
                    f"{size[1]}x{size[0]}; a tensor cache needs one image size (use "
                    "name=imagefolder for mixed sizes)")
            images[i] = array  # type: ignore[index]
            labels[i] = label
            i += 1
    assert images is not None
    return TensorSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                       torch.from_numpy(labels), classes)


def _save_cache(folder: Path, data: dict[str, TensorSplit], source: str) -> None:
    """Write the cache into a temporary sibling and rename it: never half-written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        for split, part in data.items():
            torch.save({"images": part.images, "labels": part.labels}, tmp / f"{split}.pt")
        meta = {"format": CACHE_FORMAT, "source": str(source), "classes": list(data["train"].classes),
                "sizes": {s: len(p) for s, p in data.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cache(folder: Path) -> dict[str, TensorSplit] | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT:
            return None
        out = {}
        for split in SPLITS:
            blob = torch.load(folder / f"{split}.pt", map_location="cpu", weights_only=True)
            out[split] = TensorSplit(blob["images"], blob["labels"], tuple(meta["classes"]))
        return out
    except (OSError, ValueError, KeyError, RuntimeError):
        return None  # unreadable: rebuilt by the caller


def cached_splits(folder: Path, build: Callable[[], dict[str, TensorSplit]], source: str, *,
                  announce: str | None = None) -> dict[str, TensorSplit]:
    """The splits cached in ``folder``, or ``build()`` them and cache them there.

    Shared by every decoded-once source (image folders here, WebDataset shards in
    :mod:`nas.training.shards`): ``build`` raises before anything is written, and the cache is
    written into a temporary sibling and renamed, so a failure leaves nothing half-written.
    ``announce`` is printed before a build (what is decoded, once).
    """
    cached = _load_cache(folder)
    if cached is not None:
        return cached
    if announce:
        print(f"nas: decoding {announce} once into {folder}", flush=True)
    data = build()
    if folder.exists():  # a stale or unreadable cache under the same key
        shutil.rmtree(folder)
    with writing(folder, "the decoded-image cache (nothing is left half-written)"):
        _save_cache(folder, data, source)
    return data


def load_tensor_folder(root: str | Path, *, cache_dir: str | Path | None = None,
                       verbose: bool = True) -> dict[str, TensorSplit]:
    """``{"train": ..., "val": ...}`` of ``root``, decoded once and cached on disk.

    The cache lives in ``cache_dir`` (default :func:`default_cache_dir`) under
    ``tensors/<folder name>-<fingerprint>``; it is rebuilt whenever the fingerprint changes.
    Raises :class:`TensorDataError` naming the folder or file for a missing split, an empty
    class folder, classes that differ between splits, an undecodable image or mixed sizes.
    """
    root = Path(root)
    splits = scan_folder(root)
    key = fingerprint(root, splits)
    folder = Path(cache_dir or default_cache_dir()) / "tensors" / f"{root.resolve().name}-{key}"
    total = sum(len(f) for s in splits.values() for f in s.values())

    def build() -> dict[str, TensorSplit]:
        data = {split: _decode_split(splits[split]) for split in SPLITS}
        _check_one_size(data, root)
        return data

    data = cached_splits(folder, build, str(root.resolve()),
                         announce=f"{total} images of {root}" if verbose else None)
    _check_one_size(data, root)
    return data


def _check_one_size(data: dict[str, TensorSplit], root: Path) -> None:
    """Train and val at one size: a network trained on one size and scored on another would
    be scored on images it was not trained for, silently."""
    sizes = {split: tuple(part.images.shape[-2:]) for split, part in data.items()}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{root / split} {w}x{h}" for split, (h, w) in sizes.items())
        raise TensorDataError(f"{root}: the splits hold images of different sizes ({shown}); "
                              "train and val must be one size")


def balanced_subset(split: TensorSplit, per_class: int, seed: int, where: str) -> TensorSplit:
    """``per_class`` images of every class, chosen by ``seed`` (order kept)."""
    counts = torch.bincount(split.labels, minlength=len(split.classes))
    if per_class > int(counts.min()):
        smallest = split.classes[int(counts.argmin())]
        raise TensorDataError(f"DataConfig.train_per_class={per_class} exceeds the "
                              f"{int(counts.min())} images of class {smallest!r} in {where}")
    rng = np.random.default_rng([seed, 0xC1A55])
    labels = split.labels.numpy()
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                           for c in range(len(split.classes))])
    keep.sort()
    index = torch.from_numpy(keep)
    return TensorSplit(split.images[index], split.labels[index], split.classes)


# ---------------------------------------------------------------------------- batches
def _mix(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class BatchOrder:
    """The batch order of one epoch: a permutation fixed by ``(seed, epoch)``.

    Mirrors :class:`nas.training.data.EpochSampler`'s interface (``set_epoch(epoch, start)`` with
    ``start`` counted in images), which the training loop uses to resume mid-epoch.
    ``rank``/``world`` give a data-parallel rank its slice of every global batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, *, shuffle: bool,
                 drop_last: bool, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} ranks")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world = shuffle, drop_last, rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.size:
            raise ValueError(f"start {start} outside [0, {self.size}]")
        self.epoch, self.start = epoch, start

    def num_batches(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def batches(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(global batch number, this rank's indices)`` from ``start`` on."""
        epoch_seed = _mix(self.seed, self.epoch)
        order = (torch.from_numpy(np.random.default_rng(epoch_seed).permutation(self.size))
                 if self.shuffle else torch.arange(self.size))
        first = self.start // self.batch_size
        for b in range(first, self.num_batches()):
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            share = len(chunk) // self.world
            yield b, chunk[self.rank * share:(self.rank + 1) * share]


class TensorLoader:
    """Batches of a :class:`TensorSplit` as normalised float images at ``resolution``.

    Args:
        split: the decoded images.
        batch_size: the global batch (each of ``world`` ranks gets ``batch_size / world``).
        resolution: output side; images are upsampled to it (bilinear) after augmentation.
        seed: fixes the order and the augmentation.
        train: shuffle and augment (random crop with ``pad`` zero padding, flip); else a
            fixed order without augmentation.
        device: where batches are assembled (the split is moved there once: on CUDA the
            whole uint8 set lives on the GPU and augmentation runs there).
    """

    def __init__(self, split: TensorSplit, *, batch_size: int, resolution: int, seed: int,
                 train: bool, pad: int = 4, device: torch.device | str = "cpu",
                 rank: int = 0, world: int = 1, pin_memory: bool = False) -> None:
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.classes = split.classes
        self.dataset = split  # as DataLoader.dataset: len() is the number of images
        self.batch_size = batch_size
        self.resolution = resolution
        self.train = train
        self.pad = pad
        self.pin_memory = pin_memory and self.device.type == "cpu"
        self.sampler = BatchOrder(len(split), batch_size, seed, shuffle=train,
                                  drop_last=train and len(split) > batch_size, rank=rank, world=world)
        self.augment = BatchAugment(resolution, pad if train else 0, self.device)

    def __len__(self) -> int:
        return self.sampler.num_batches() - self.sampler.start // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch_seed = _mix(self.sampler.seed, self.sampler.epoch)
        for number, index in self.sampler.batches():
            index = index.to(self.device)
            # Drawn for the whole global batch, then sliced: data-parallel ranks together
            # see exactly the augmentation a single process sees.
            rows = slice(self.sampler.rank * len(index), (self.sampler.rank + 1) * len(index))
            out = self.augment(self.images[index], _mix(epoch_seed, number),
                               self.sampler.batch_size, rows)
            labels = self.labels[index]
            if self.pin_memory:
                out, labels = out.pin_memory(), labels.pin_memory()
            yield out, labels


class BatchAugment:
    """uint8 batches to normalised float images at ``resolution``, augmented on tensors.

    The CIFAR recipe at the images' own size (random crop with ``pad`` zero padding,
    horizontal flip; ``pad=0``: none), then ImageNet normalisation and a bilinear resize to
    ``resolution``. The offsets and flips of a batch are drawn from ``seed`` for ``total``
    images and ``rows`` of them applied, so data-parallel slices of one global batch are
    augmented as the whole batch would be.
    """

    def __init__(self, resolution: int, pad: int, device: torch.device) -> None:
        self.resolution, self.pad, self.device = resolution, pad, device
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor, seed: int, total: int, rows: slice) -> torch.Tensor:
        if self.pad:
            generator = torch.Generator().manual_seed(seed)
            p = self.pad
            dy = torch.randint(0, 2 * p + 1, (total,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (total,), generator=generator)
            flip = torch.rand(total, generator=generator) < 0.5
            images = _crop_flip(images, dy[rows].to(self.device), dx[rows].to(self.device),
                                flip[rows].to(self.device), p)
        out = (images.float() - self._mean) / self._std
        if out.shape[-1] != self.resolution or out.shape[-2] != self.resolution:
            out = F.interpolate(out, size=(self.resolution, self.resolution), mode="bilinear",
                                align_corners=False)
        return out


def _crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
               pad: int) -> torch.Tensor:
    """Per-image crop of the ``pad``-padded batch at offsets ``(dy, dx)``, flipped where set."""
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=device)[None]
    cols = dx[:, None] + torch.arange(w, device=device)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


__all__ = [
    "BatchAugment", "BatchOrder", "cached_splits", "TensorDataError", "TensorLoader", "TensorSplit", "balanced_subset",
    "default_cache_dir", "fingerprint", "load_tensor_folder", "scan_folder",
]
