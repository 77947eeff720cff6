"""What data a training run uses (:class:`DataConfig`), checked field by field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


from nas.config import Config, ConfigError, check_choice, check_int, check_number
from nas.errors import NASError


DATASETS = ("synthetic", "imagefolder", "cifar10")
AUGMENTATIONS = ("auto", "pad_crop", "resized_crop", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Synthetic sizes used when the config leaves them unset.
DEFAULT_SYNTHETIC_TRAIN = 2000
DEFAULT_SYNTHETIC_VAL = 500
class DataError(NASError, ValueError):
    """A dataset cannot be used as configured; the message names the path or the classes."""

# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DataConfig(Config):
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

    NOT_SETTINGS = ("num_workers", "cache_dir")  # not results (Config.settings)

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


# ---------------------------------------------------------------------------- synthetic
