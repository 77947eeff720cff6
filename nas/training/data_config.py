"""What data a training run uses (:class:`DataConfig`), checked field by field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


from nas.config import Config, ConfigError, check_choice, check_int, check_number
from nas.errors import NASError


DATASETS = ("synthetic", "imagefolder", "cifar10", "webdataset")
# Sources decoded once into the uint8 tensor cache (nas/training/tensor_data.py).
TENSOR_SOURCES = ("cifar10", "webdataset")
SHARD_FIELDS = ("train_shards", "val_shards", "class_list", "stream")
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
        name: ``synthetic``, ``imagefolder``, ``cifar10`` or ``webdataset`` (tar shards of
            ``<key>.jpg`` + ``<key>.cls`` samples, :mod:`nas.training.shards`).
        root: dataset directory (``imagefolder``, ``cifar10``; ``webdataset``: what relative
            shard patterns and ``class_list`` are relative to); unused by ``synthetic``.
        resolution: side of the square images the network sees (all sources are resized).
        num_classes: classes of ``synthetic``; for the other sources, when set, it must
            match the class folders (a guard against pointing at the wrong dataset).
        train_samples: ``synthetic``: images in train (default 2000); others: when set, a
            seeded random subset of train of that size (for quick runs).
        train_per_class: ``cifar10`` and cached ``webdataset``: a class-balanced, seeded
            subset of train with this many images per class (cheap proxies); exclusive with
            ``train_samples``.
        val_samples: ``synthetic``: images in val (default 500); others: subset of val.
        batch_size: images per training and evaluation batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: seeds what the data *is*: the synthetic images, the carved val split and
            subsets. Training randomness (shuffling, augmentation) is the training seed.
        val_fraction: share of train carved out as val when no val split exists.
        carve_val: carve val from train even when the source has a val/test split
            (keeps the official test images untouched for the final report).
        cache_dir: ``cifar10``, ``webdataset``: where the decoded tensors (and shard sample
            counts) are cached (null:
            ``$NAS_CACHE_DIR`` or ``~/.cache/mnv3-nas``); not a result-changing setting.
        augment: training augmentation of real images: ``pad_crop`` (resize, random crop
            with 1/8 padding, horizontal flip: the CIFAR recipe), ``resized_crop``
            (``RandomResizedCrop`` + flip: the ImageNet recipe), ``none``, or ``auto``
            (``pad_crop`` when the images are no larger than ``resolution``, else
            ``resized_crop``). Synthetic images vary by construction and ignore it. The
            tensor-fed sources (``cifar10``, ``webdataset``) know ``pad_crop`` and ``none``.
        train_shards: ``webdataset``: the training shards: a pattern (a glob such as
            ``train/*.tar`` or a brace range ``train-{0000..0004}.tar``; relative to ``root``
            unless absolute) or a URL (``https://...``, ``pipe:...``), or a list of them
            (default ``train/*.tar``).
        val_shards: ``webdataset``: the validation shards, as ``train_shards`` (default
            ``val/*.tar``).
        class_list: ``webdataset``: a TSV file (relative to ``root`` unless absolute) of
            ``index<TAB>name[<TAB>words]`` lines in index order: the class names, and the
            labels a ``.cls`` may hold. Null: ``num_classes`` classes named by index.
        stream: ``webdataset``: stream the shards every epoch (split by shard across
            data-parallel ranks and loader workers, a shard and sample order fixed by
            ``(seed, epoch)``) instead of decoding them once into memory; for sets that do
            not fit. Streamed batches depend on ``num_workers`` (which is then a setting).
    """

    NOT_SETTINGS = ("num_workers", "cache_dir")  # not results (Config.settings)

    name: Literal["synthetic", "imagefolder", "cifar10", "webdataset"] = "synthetic"
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
    train_shards: str | list[str] | None = None
    val_shards: str | list[str] | None = None
    class_list: str | None = None
    stream: bool = False

    def __post_init__(self) -> None:
        owner = "DataConfig"
        check_choice(owner, "name", self.name, DATASETS)
        if self.root is not None and not isinstance(self.root, (str, Path)):
            raise ConfigError(f"{owner}.root must be a path string or null, got {self.root!r}")
        if self.root is not None:
            object.__setattr__(self, "root", str(self.root))
        if self.name not in ("synthetic", "webdataset") and not self.root:
            raise ConfigError(f"{owner}.root is required for name={self.name!r}")
        check_int(owner, "resolution", self.resolution, minimum=8)
        check_int(owner, "num_classes", self.num_classes, minimum=2, optional=True)
        check_int(owner, "train_samples", self.train_samples, minimum=1, optional=True)
        check_int(owner, "train_per_class", self.train_per_class, minimum=1, optional=True)
        if self.train_per_class is not None and (self.name not in TENSOR_SOURCES or self.stream):
            raise ConfigError(f"{owner}.train_per_class needs the tensor cache (name 'cifar10' or "
                              f"'webdataset' without stream), got name={self.name!r}"
                              f"{' with stream' if self.stream else ''}; use train_samples for "
                              "a random subset")
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
        self._check_shards(owner)

    def _check_shards(self, owner: str) -> None:
        """The ``webdataset`` fields: only with that source, of the right types, consistent."""
        for field in ("train_shards", "val_shards"):
            value = getattr(self, field)
            if value is None:
                continue
            if not isinstance(value, str):
                try:  # a list, or Hydra's ListConfig
                    value = list(value)
                except TypeError:
                    value = None
                if value is not None and value and all(isinstance(v, str) and v for v in value):
                    object.__setattr__(self, field, value)
                    continue
                raise ConfigError(f"{owner}.{field} must be a shard pattern or URL, or a "
                                  f"non-empty list of them, got {getattr(self, field)!r}")
            if not value:
                raise ConfigError(f"{owner}.{field} must not be empty")
        if self.class_list is not None and not isinstance(self.class_list, (str, Path)):
            raise ConfigError(f"{owner}.class_list must be a path string or null, got {self.class_list!r}")
        if self.class_list is not None:
            object.__setattr__(self, "class_list", str(self.class_list))
        if not isinstance(self.stream, bool):
            raise ConfigError(f"{owner}.stream must be true or false, got {self.stream!r}")
        shard_fields = [f for f in ("train_shards", "val_shards", "class_list")
                        if getattr(self, f) is not None] + (["stream"] if self.stream else [])
        if self.name != "webdataset":
            if shard_fields:
                raise ConfigError(f"{owner}.{shard_fields[0]} needs name='webdataset', got "
                                  f"name={self.name!r}")
            return
        if not self.root and (self.train_shards is None or self.val_shards is None):
            raise ConfigError(f"{owner}: name='webdataset' needs root (with the default shards "
                              "train/*.tar and val/*.tar) or both train_shards and val_shards")
        if self.class_list is None and self.num_classes is None:
            raise ConfigError(f"{owner}: name='webdataset' needs class_list (a TSV of the "
                              "classes) or num_classes (labels 0..num_classes-1)")
        if self.augment == "resized_crop":
            raise ConfigError(f"{owner}.augment='resized_crop' is not available for "
                              "name='webdataset' (augmented on tensors: pad_crop or none)")
        if self.stream:
            refused = [f for f in ("train_samples", "val_samples") if getattr(self, f) is not None]
            refused += ["carve_val"] if self.carve_val else []
            if refused:
                raise ConfigError(f"{owner}.{refused[0]} is not available with stream=true "
                                  "(a streamed set is read whole, shard by shard); use the "
                                  "decoded-once cache (stream=false) for subsets")

    def settings(self) -> dict[str, Any]:
        """As :meth:`Config.settings`; a streamed set's batches depend on ``num_workers``
        (each worker reads its own shards), so there it is a setting. The shard fields are
        left out where they are unset: the results keyed by the settings of the other sources
        (protocol keys, caches) stay theirs."""
        out = super().settings()
        for field in SHARD_FIELDS:
            if out[field] in (None, False):
                del out[field]
        if self.stream:
            out["num_workers"] = self.num_workers
        return out


# ---------------------------------------------------------------------------- synthetic
