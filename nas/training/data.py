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
mid-epoch from a checkpoint sees exactly the images the uninterrupted run saw.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from nas.errors import NASError

DATASETS = ("synthetic", "imagefolder", "cifar10")
AUGMENTATIONS = ("auto", "pad_crop", "resized_crop", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Synthetic sizes used when the config leaves them unset.
DEFAULT_SYNTHETIC_TRAIN = 2000
DEFAULT_SYNTHETIC_VAL = 500


class ConfigError(NASError, ValueError):
    """A config field has a wrong type or value; the message names the field and the choices."""


class DataError(NASError, ValueError):
    """A dataset cannot be used as configured; the message names the path or the classes."""


# ---------------------------------------------------------------------------- config helpers
C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
    """Build the dataclass ``cls`` from a mapping (e.g. Hydra YAML), rejecting unknown keys."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown key(s) {unknown}; allowed keys: {names}"
        )
    return cls(**data)


def check_choice(owner: str, name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``."""
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"{owner}.{name} must be one of {list(allowed)}, got {value!r}")


def check_int(owner: str, name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``minimum`` (or None)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "an integer or null" if optional else "an integer"
        raise ConfigError(f"{owner}.{name} must be {kind} >= {minimum}, got {value!r}")


def check_number(owner: str, name: str, value: object, *, low: float, high: float = math.inf,
                 low_open: bool = False, optional: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in the given range."""
    if optional and value is None:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        bracket = "(" if low_open else "["
        upper = "inf)" if high == math.inf else f"{high}]"
        raise ConfigError(f"{owner}.{name} must be a number in {bracket}{low}, {upper}, got {value!r}")


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DataConfig:
    """What data to train and evaluate on, and how to load it.

    Attributes:
        name: ``synthetic``, ``imagefolder`` or ``cifar10``.
        root: dataset directory (``imagefolder``, ``cifar10``); unused by ``synthetic``.
        resolution: side of the square images the network sees (all sources are resized).
        num_classes: classes of ``synthetic``; for the other sources, when set, it must
            match the class folders (a guard against pointing at the wrong dataset).
        train_samples: ``synthetic``: images in train (default 2000); others: when set, a
            seeded random subset of train of that size (for quick runs).
        train_per_class: ``cifar10`` only: a class-balanced, seeded subset of train with
            this many images per class (cheap proxies); exclusive with ``train_samples``.
        val_samples: ``synthetic``: images in val (default 500); others: subset of val.
        batch_size: images per training and evaluation batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: seeds what the data *is*: the synthetic images, the carved val split and
            subsets. Training randomness (shuffling, augmentation) is the training seed.
        val_fraction: share of train carved out as val when no val split exists.
        carve_val: carve val from train even when the source has a val/test split
            (keeps the official test images untouched for the final report).
        cache_dir: ``cifar10`` only: where the decoded tensors are cached (null:
            ``$NAS_CACHE_DIR`` or ``~/.cache/mnv3-nas``); not a result-changing setting.
        augment: training augmentation of real images: ``pad_crop`` (resize, random crop
            with 1/8 padding, horizontal flip: the CIFAR recipe), ``resized_crop``
            (``RandomResizedCrop`` + flip: the ImageNet recipe), ``none``, or ``auto``
            (``pad_crop`` when the images are no larger than ``resolution``, else
            ``resized_crop``). Synthetic images vary by construction and ignore it.
    """

    name: Literal["synthetic", "imagefolder", "cifar10"] = "synthetic"
    root: str | None = None
    resolution: int = 64
    num_classes: int | None = None
    train_samples: int | None = None
    train_per_class: int | None = None
    val_samples: int | None = None
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    val_fraction: float = 0.1
    carve_val: bool = False
    cache_dir: str | None = None
    augment: Literal["auto", "pad_crop", "resized_crop", "none"] = "auto"

    def __post_init__(self) -> None:
        owner = "DataConfig"
        check_choice(owner, "name", self.name, DATASETS)
        if self.root is not None and not isinstance(self.root, (str, Path)):
            raise ConfigError(f"{owner}.root must be a path string or null, got {self.root!r}")
        if self.root is not None:
            object.__setattr__(self, "root", str(self.root))
        if self.name != "synthetic" and not self.root:
            raise ConfigError(f"{owner}.root is required for name={self.name!r}")
        check_int(owner, "resolution", self.resolution, minimum=8)
        check_int(owner, "num_classes", self.num_classes, minimum=2, optional=True)
        check_int(owner, "train_samples", self.train_samples, minimum=1, optional=True)
        check_int(owner, "train_per_class", self.train_per_class, minimum=1, optional=True)
        if self.train_per_class is not None and self.name != "cifar10":
            raise ConfigError(f"{owner}.train_per_class needs name='cifar10' (the tensor cache), "
                              f"got name={self.name!r}; use train_samples for a random subset")
        if self.train_per_class is not None and self.train_samples is not None:
            raise ConfigError(f"{owner}: set train_per_class or train_samples, not both")
        check_int(owner, "val_samples", self.val_samples, minimum=1, optional=True)
        check_int(owner, "batch_size", self.batch_size, minimum=1)
        check_int(owner, "num_workers", self.num_workers, minimum=0)
        check_int(owner, "seed", self.seed, minimum=0)
        check_number(owner, "val_fraction", self.val_fraction, low=0.0, high=0.9, low_open=True)
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, Path)):
            raise ConfigError(f"{owner}.cache_dir must be a path string or null, got {self.cache_dir!r}")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", str(self.cache_dir))
        for flag in ("carve_val",):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{owner}.{flag} must be true or false, got {getattr(self, flag)!r}")
        check_choice(owner, "augment", self.augment, AUGMENTATIONS)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DataConfig:
        """Build from a mapping; unknown keys raise :class:`ConfigError`."""
        return config_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def settings(self) -> dict[str, Any]:
        """The fields that change results (not ``num_workers``, ``cache_dir``), for cache keys."""
        out = self.to_dict()
        out.pop("num_workers")
        out.pop("cache_dir")
        return out


# ---------------------------------------------------------------------------- synthetic
class SyntheticImages(Dataset):
    """Class-conditional images generated lazily from ``(seed, split, index)``.

    Each class owns a seeded *prototype*: two oriented colour gratings (orientation,
    spatial frequency, colour, relative strength). A sample draws, from its own seed, a
    random phase for each grating (shift), a common frequency scale and orientation jitter
    (scaling/rotation), a Gaussian window at a random place (where the pattern is), a
    contrast, a distractor grating borrowed from another class, a coloured blob, a random
    background colour gradient, and pixel noise.

    Random phases make every class's mean image nearly flat, so a linear model on pixels
    is close to chance; recognising a class needs phase-invariant, orientation- and
    frequency-selective features, which a small CNN learns in a few epochs, and a bigger
    or better one learns faster. Labels cycle through the classes (balanced).

    Images are float tensors ``(3, size, size)``, zero-mean with a standard deviation of
    about 0.5 (already normalised: no ``Normalize`` needed). Nothing is stored but the
    prototypes, so any size costs no memory.
    """

    # Difficulty: ranges of the pattern window's width (fraction of the image), the
    # distractor's amplitude and the pixel noise's standard deviation.
    # Tuned so that at resolution 64, 2 epochs of 3000 images, canonical Small reaches about
    # 0.68 top-1, Small x0.5 0.44 and Large 0.85 (10 classes): learnable, not saturated,
    # and different networks visibly apart.
    WINDOW = (0.3, 0.6)
    DISTRACTOR = (0.2, 0.5)
    NOISE = (0.1, 0.3)

    def __init__(self, *, num_samples: int, num_classes: int, size: int, seed: int,
                 split: int = 0) -> None:
        if num_samples < 1 or num_classes < 2 or size < 4:
            raise ConfigError("SyntheticImages needs num_samples >= 1, num_classes >= 2, size >= 4")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.size = size
        self.seed = seed
        self.split = split
        self.classes = [f"class_{c:03d}" for c in range(num_classes)]
        rng = np.random.default_rng([seed, 0x5EED, num_classes])
        # Prototype: per class, two gratings: (orientation, cycles per image, colour, amplitude).
        self._theta = rng.uniform(0.0, np.pi, size=(num_classes, 2))
        self._freq = rng.uniform(1.5, 5.0, size=(num_classes, 2))
        colour = rng.normal(size=(num_classes, 2, 3))
        self._colour = colour / np.linalg.norm(colour, axis=-1, keepdims=True)
        self._amp = np.stack([np.ones(num_classes), rng.uniform(0.5, 0.9, num_classes)], axis=1)
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        self._yy, self._xx = np.meshgrid(coords, coords, indexing="ij")
        self.targets = [i % num_classes for i in range(num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def _grating(self, theta: float, freq: float, phase: float) -> np.ndarray:
        proj = self._xx * math.cos(theta) + self._yy * math.sin(theta)
        return np.cos(2.0 * math.pi * freq * proj + phase)

    def _window(self, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        width = rng.uniform(low, high)
        return np.exp(-((self._xx - cx) ** 2 + (self._yy - cy) ** 2) / (2.0 * width**2))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        label = self.targets[index]
        rng = np.random.default_rng([self.seed, self.split, index])
        scale = rng.uniform(0.8, 1.25)
        jitter = rng.normal(0.0, 0.1)
        window = self._window(rng, *self.WINDOW)
        image = np.zeros((3, self.size, self.size), dtype=np.float64)
        contrast = rng.uniform(0.6, 1.2)
        for j in range(2):
            pattern = self._grating(self._theta[label, j] + jitter, self._freq[label, j] * scale,
                                    rng.uniform(0.0, 2.0 * math.pi))
            image += (contrast * self._amp[label, j] * window * pattern)[None] * \
                self._colour[label, j][:, None, None]
        # Distractor: a grating of another class, weaker and elsewhere, so single features
        # are ambiguous and the network must combine orientation, frequency and colour.
        other = (label + 1 + int(rng.integers(self.num_classes - 1))) % self.num_classes
        k = int(rng.integers(2))
        distractor = self._grating(self._theta[other, k] + rng.normal(0.0, 0.1),
                                   self._freq[other, k] * rng.uniform(0.8, 1.25),
                                   rng.uniform(0.0, 2.0 * math.pi))
        image += (rng.uniform(*self.DISTRACTOR) * self._window(rng, 0.15, 0.35) * distractor)[None] * \
            self._colour[other, k][:, None, None]
        # A coloured blob and a background gradient: class-independent clutter.
        image += rng.uniform(0.3, 1.0) * self._window(rng, 0.05, 0.15)[None] * \
            rng.normal(size=3)[:, None, None]
        gx, gy = rng.normal(0.0, 0.3, size=2)
        image += rng.normal(0.0, 0.3, size=3)[:, None, None] + \
            (gx * (self._xx - 0.5) + gy * (self._yy - 0.5))[None]
        image += rng.normal(0.0, rng.uniform(*self.NOISE), size=image.shape)
        return torch.from_numpy(image.astype(np.float32)), label


# ---------------------------------------------------------------------------- transforms
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

    if cfg.name == "cifar10":
        raise ConfigError("DataConfig.name='cifar10' is fed from a tensor cache: use make_loaders")
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

    ``train``/``val`` are torch ``DataLoader`` objects (``synthetic``, ``imagefolder``) or
    :class:`nas.training.tensor_data.TensorLoader` objects (``cifar10``); both iterate
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
    """The ``cifar10`` source: cached uint8 tensors, batches built in memory."""
    from nas.training.tensor_data import TensorDataError, TensorSplit, balanced_subset, load_tensor_folder

    try:
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
    ``cifar10`` source keeps its tensors and builds batches (the training device);
    ``rank``/``world`` give a data-parallel process its share of every batch (``cifar10``).
    """
    if cfg.name == "cifar10":
        return _tensor_loaders(cfg, seed, device, rank, world, pin_memory)
    if world != 1:
        raise ConfigError(f"data-parallel training needs DataConfig.name='cifar10' (the tensor "
                          f"source), got name={cfg.name!r}")
    train_ds, val_ds, num_classes = make_datasets(cfg)
    n_train = len(train_ds)  # type: ignore[arg-type]
    common = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, pin_memory=pin_memory)
    # Own generators: a DataLoader without one draws worker seeds from the global torch RNG
    # each time it is iterated, which would shift the dropout stream of a resumed run.
    train = DataLoader(train_ds, sampler=EpochSampler(n_train, seed), drop_last=n_train > cfg.batch_size,
                       generator=torch.Generator().manual_seed(seed), **common)  # type: ignore[arg-type]
    val = DataLoader(val_ds, shuffle=False, generator=torch.Generator().manual_seed(seed),
                     **common)  # type: ignore[arg-type]
    return Loaders(train, val, num_classes, _class_names(train_ds))


__all__ = [
    "ConfigError", "DataConfig", "DataError", "EpochSampler", "Loaders", "SyntheticImages",
    "TransformedDataset", "config_from_dict", "eval_transform", "make_datasets", "make_loaders",
    "train_transform",
]
